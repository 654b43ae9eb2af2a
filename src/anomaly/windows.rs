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

/// Per transfer i, in posting order: KEYS[3i-2] its account's window, KEYS[3i-1] its
/// (account, amount) window, KEYS[3i] its account's failure streak; ARGV[6i-5..6i]: transfer
/// id, acceptance time (ms), the two windows (ms), the streak step ([`StreakStep`]: `1` it
/// failed, `0` it posted, which ends the streak, `r` not posted yet: read the streak only),
/// the streak's TTL (ms). A window of 0 ms is not counted (0): the transfer was counted before
/// posting. Returns, per transfer, the two window counts and the streak after it, flattened.
const JUDGE: &str = r"
local out = {}
for i = 1, #KEYS / 3 do
  local id, at = ARGV[6 * i - 5], tonumber(ARGV[6 * i - 4])
  for w = 0, 1 do
    local key, window_ms = KEYS[3 * i - 2 + w], tonumber(ARGV[6 * i - 3 + w])
    if window_ms == 0 then
      out[#out + 1] = 0
    else
      redis.call('ZADD', key, at, id)
      -- Most transfers are their account's only one in the window: nothing to trim or rank.
      if redis.call('ZCARD', key) == 1 then
        out[#out + 1] = 1
      else
        redis.call('ZREMRANGEBYSCORE', key, '-inf', at - window_ms)
        out[#out + 1] = redis.call('ZRANK', key, id) + 1
      end
      redis.call('PEXPIRE', key, window_ms)
    end
  end
  local streak, step = KEYS[3 * i], ARGV[6 * i - 1]
  if step == '1' then
    redis.call('SADD', streak, id)
    redis.call('PEXPIRE', streak, ARGV[6 * i])
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
fn window_key(namespace: &str, candidate: &Candidate) -> String {
    format!(
        "ferry:{namespace}:anomaly:transfers:{}:{}",
        candidate.account.ledger, candidate.account.id
    )
}

fn amount_key(namespace: &str, candidate: &Candidate) -> String {
    format!(
        "ferry:{namespace}:anomaly:amounts:{}:{}:{}:{}",
        candidate.account.ledger,
        candidate.currency.code(),
        candidate.amount.normalize(),
        candidate.account.id
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
/// transfer's windows (its ledger's); `None`: its windows were counted before posting, only
/// its streak step is taken (its window counts are 0).
pub async fn count(
    connection: &mut ConnectionManager,
    namespace: &str,
    transfers: &[(&Candidate, StreakStep, Option<&RuleSettings>)],
    timeout: Duration,
) -> Result<Vec<Counted>, SkipReason> {
    let mut invocation = JUDGE_SCRIPT.prepare_invoke();
    let ttl_ms = u64::try_from(STREAK_TTL.as_millis()).unwrap_or(u64::MAX);
    for (candidate, step, rules) in transfers {
        invocation
            .key(window_key(namespace, candidate))
            .key(amount_key(namespace, candidate))
            .key(streak_key(namespace, candidate))
            .arg(candidate.transfer_id.to_string())
            .arg(candidate.accepted_at_ms)
            .arg(rules.map_or(0, |r| r.velocity.window_ms()))
            .arg(rules.map_or(0, |r| r.duplicate_amount.window_ms()))
            .arg(step.arg())
            .arg(ttl_ms);
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
