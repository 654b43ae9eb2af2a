//! The rules' memory in Redis: sliding windows of each account's recent transfers and of its
//! recent amounts, and each account's streak of failures. One script call per batch, atomic,
//! every key with a TTL so memory stays bounded by the accounts active within the longest
//! window (README, "Anomaly detection").
//!
//! Windows are sorted sets scored by acceptance time (ms), one member per transfer id: a
//! transfer checked twice (a redelivered job) is counted once. A transfer counts the
//! transfers of its window accepted in `(accepted_at − window, accepted_at]` and before it,
//! itself included: transfers accepted in one commit share `accepted_at`, and among those the
//! member order — transfer ids are UUIDv7, so acceptance order — says which came first. So
//! the fifth of a burst is the first to trip a rule of five, whether the burst came as five
//! requests or as one batch.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;

use super::rules::{Candidate, WindowCounts};
use super::settings::RuleSettings;

/// Per transfer i, in posting order: KEYS[4i-3] its account's latest transfer, KEYS[4i-2] its
/// account's window, KEYS[4i-1] its (account, amount) window, KEYS[4i] its account's failure
/// streak; ARGV[9i-8..9i]: transfer id, acceptance time (ms), the velocity and duplicate
/// windows (ms), the streak step ([`StreakStep`]: `1` it failed, `0` it posted, which ends the
/// streak, `r` not posted yet: read the streak only), the streak's TTL (ms), the amount, and
/// the prefix and suffix that make an amount's window key. Returns, per transfer, the two
/// window counts and the streak after it, flattened.
///
/// Most transfers are their account's only one within the longest window. So each account
/// keeps its latest transfer (`<accepted ms>|<id>|<amount>`) in a plain key that lives one
/// longest window: a transfer that finds none is alone — both counts are 1, one call. Only
/// when there is one do the sorted sets come in: the account's window (longest of the two,
/// members `<id>|<amount>`: ids have one length, so members sort by id) and the amount's. A
/// transfer is in its account's window exactly when it is in its amount's: one that was alone
/// joins both when the next one arrives.
const JUDGE: &str = r"
local out = {}
for i = 1, #KEYS / 4 do
  local latest, account, amounts, streak = KEYS[4 * i - 3], KEYS[4 * i - 2], KEYS[4 * i - 1],
    KEYS[4 * i]
  local a = 9 * (i - 1)
  local id, at = ARGV[a + 1], tonumber(ARGV[a + 2])
  local velocity_ms, duplicate_ms = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local amount, amount_prefix, amount_suffix = ARGV[a + 7], ARGV[a + 8], ARGV[a + 9]
  local longest_ms = math.max(velocity_ms, duplicate_ms)
  local member = id .. '|' .. amount
  local earlier = redis.call('SET', latest, at .. '|' .. member, 'PX', longest_ms, 'GET')
  if not earlier then
    out[#out + 1] = 1
    out[#out + 1] = 1
  else
    local bar = string.find(earlier, '|', 1, true)
    local earlier_at, earlier_member = tonumber(string.sub(earlier, 1, bar - 1)),
      string.sub(earlier, bar + 1)
    if earlier_member ~= member and earlier_at > at - longest_ms
        and redis.call('ZADD', account, earlier_at, earlier_member) == 1 then
      -- It was alone: it joins its amount's window too.
      local other = amount_prefix .. string.sub(earlier_member, string.find(earlier_member, '|',
        1, true) + 1) .. amount_suffix
      redis.call('ZADD', other, earlier_at, earlier_member)
      redis.call('PEXPIRE', other, duplicate_ms)
    end
    redis.call('ZADD', account, at, member)
    redis.call('PEXPIRE', account, longest_ms)
    local card = redis.call('ZCARD', account)
    if card > 1 then
      card = card - redis.call('ZREMRANGEBYSCORE', account, '-inf', at - longest_ms)
    end
    if card == 1 then
      -- Alone after all: out again, so that the next transfer brings it in with its amount.
      redis.call('ZREM', account, member)
      out[#out + 1] = 1
      out[#out + 1] = 1
    else
      local rank = redis.call('ZRANK', account, member)
      local older = redis.call('ZCOUNT', account, '-inf', at - velocity_ms)
      out[#out + 1] = rank + 1 - older
      redis.call('ZADD', amounts, at, member)
      redis.call('PEXPIRE', amounts, duplicate_ms)
      if redis.call('ZCARD', amounts) == 1 then
        out[#out + 1] = 1
      else
        redis.call('ZREMRANGEBYSCORE', amounts, '-inf', at - duplicate_ms)
        out[#out + 1] = redis.call('ZRANK', amounts, member) + 1
      end
    end
  end
  local step = ARGV[a + 5]
  if step == '1' then
    redis.call('SADD', streak, id)
    redis.call('PEXPIRE', streak, ARGV[a + 6])
    out[#out + 1] = redis.call('SCARD', streak)
  elseif step == 'r' then
    out[#out + 1] = redis.call('SCARD', streak)
  else
    redis.call('DEL', streak)
    out[#out + 1] = 0
  end
end
return out
";

static JUDGE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(JUDGE));

/// How long an account's streak of failures is remembered after its last failure.
pub const STREAK_TTL: Duration = Duration::from_secs(86_400);

/// Why a batch's check was skipped (the `reason` of `ferry_anomaly_checks_skipped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// No Redis connection (yet, or any more).
    Unavailable,
    /// Redis did not answer within the timeout.
    Timeout,
    /// Redis answered with an error.
    Error,
    /// The database could not store the hits.
    Database,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unavailable => "unavailable",
            Self::Timeout => "timeout",
            Self::Error => "error",
            Self::Database => "database",
        }
    }
}

// Keys start with the namespace (the database's name: ferry deployments sharing a Redis keep
// apart) and end with the account id; ledger names cannot contain ':', so the ledger and the
// account cannot be read two ways.
fn latest_key(namespace: &str, candidate: &Candidate) -> String {
    format!(
        "ferry:{namespace}:anomaly:latest:{}:{}",
        candidate.account.ledger, candidate.account.id
    )
}

fn window_key(namespace: &str, candidate: &Candidate) -> String {
    format!(
        "ferry:{namespace}:anomaly:transfers:{}:{}",
        candidate.account.ledger, candidate.account.id
    )
}

/// The key of an amount's window is `prefix + amount + suffix`: the script builds the key of
/// an earlier transfer's amount from its member.
fn amount_key_parts(namespace: &str, candidate: &Candidate) -> (String, String) {
    (
        format!(
            "ferry:{namespace}:anomaly:amounts:{}:{}:",
            candidate.account.ledger,
            candidate.currency.code(),
        ),
        format!(":{}", candidate.account.id),
    )
}

fn streak_key(namespace: &str, candidate: &Candidate) -> String {
    format!(
        "ferry:{namespace}:anomaly:streak:{}:{}",
        candidate.account.ledger, candidate.account.id
    )
}

/// What one transfer does to its account's failure streak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreakStep {
    /// It failed: the streak grows by it.
    Failed,
    /// It posted: the streak ends.
    Posted,
    /// It is about to be posted (judged for review): the streak is read, not changed.
    Read,
}

impl StreakStep {
    fn arg(self) -> &'static str {
        match self {
            Self::Failed => "1",
            Self::Posted => "0",
            Self::Read => "r",
        }
    }
}

/// What the windows and the streak say about one transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    pub windows: WindowCounts,
    /// The account's consecutive failures after this transfer (0 after a posted one; before
    /// it, for [`StreakStep::Read`]).
    pub streak: u64,
}

/// Adds each transfer to its windows and takes its step on its account's streak, in posting
/// order, and counts them: one round trip bounded by `timeout`. `rules` gives each
/// transfer's windows (its ledger's).
pub async fn count(
    connection: &mut ConnectionManager,
    namespace: &str,
    transfers: &[(&Candidate, StreakStep, &RuleSettings)],
    timeout: Duration,
) -> Result<Vec<Counted>, SkipReason> {
    let mut invocation = JUDGE_SCRIPT.prepare_invoke();
    let ttl_ms = u64::try_from(STREAK_TTL.as_millis()).unwrap_or(u64::MAX);
    for (candidate, step, rules) in transfers {
        let amount = candidate.amount.normalize().to_string();
        let (amount_prefix, amount_suffix) = amount_key_parts(namespace, candidate);
        invocation
            .key(latest_key(namespace, candidate))
            .key(window_key(namespace, candidate))
            .key(format!("{amount_prefix}{amount}{amount_suffix}"))
            .key(streak_key(namespace, candidate))
            .arg(candidate.transfer_id.to_string())
            .arg(candidate.accepted_at_ms)
            .arg(rules.velocity.window_ms())
            .arg(rules.duplicate_amount.window_ms())
            .arg(step.arg())
            .arg(ttl_ms)
            .arg(amount)
            .arg(amount_prefix)
            .arg(amount_suffix);
    }
    let counts: Vec<u64> = invoke(invocation, connection, timeout).await?;
    if counts.len() != transfers.len() * 3 {
        return Err(SkipReason::Error);
    }
    Ok(counts
        .chunks_exact(3)
        .map(|c| Counted {
            windows: WindowCounts {
                transfers: c[0],
                same_amount: c[1],
            },
            streak: c[2],
        })
        .collect())
}

async fn invoke<T: redis::FromRedisValue>(
    invocation: redis::ScriptInvocation<'_>,
    connection: &mut ConnectionManager,
    timeout: Duration,
) -> Result<T, SkipReason> {
    match tokio::time::timeout(timeout, invocation.invoke_async(connection)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) if e.is_timeout() => Err(SkipReason::Timeout),
        Ok(Err(e)) if e.is_io_error() || e.is_connection_dropped() => Err(SkipReason::Unavailable),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "anomaly window script failed");
            Err(SkipReason::Error)
        }
        Err(_) => Err(SkipReason::Timeout),
    }
}
