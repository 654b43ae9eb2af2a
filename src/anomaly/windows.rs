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
//!
//! Posting judges transfers in posting order, which is not acceptance order: two workers, a
//! retried job, a batch split across jobs. A transfer judged *late* raises the count of every
//! transfer accepted after it within a window, and those were judged already: if the fourth of
//! a burst is judged after the fifth, the fifth counted four when it was judged. So the script
//! also returns, per window, the transfers already judged that the late one brings to exactly
//! the rule's count — they trip the rule now, as they would have had the late one come first.
//! Only the `count − 1` members ranked right after the late one can: a member `d` ranks later
//! already counted at least `d` (every member between them is inside its window), so past
//! `count − 1` it had tripped the rule when it was judged. Members stay two windows (by
//! acceptance time before the newest judged, and as the key's TTL) so that a transfer judged
//! up to a window late still finds the ones accepted before it.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;
use uuid::Uuid;

use super::rules::{Candidate, WindowCounts};
use super::settings::RuleSettings;

/// Per transfer i, in posting order: KEYS[3i-2] its account's window, KEYS[3i-1] its
/// (account, amount) window, KEYS[3i] its account's failure streak; ARGV[8i-7..8i]: transfer
/// id, acceptance time (ms), the two windows (ms), the two windows' rule counts, the streak
/// step ([`StreakStep`]: `1` it failed, `0` it posted, which ends the streak, `r` not posted
/// yet: read the streak only), the streak's TTL (ms). A window of 0 ms is not counted (0): the
/// transfer was counted before posting. Returns, per transfer, `{transfers, same amount,
/// streak, {ids the transfer brought to the velocity count}, {… to the duplicate count}}`.
const JUDGE: &str = r"
local function tally(key, id, at, window_ms, threshold)
  if window_ms == 0 then
    return 0, {}
  end
  local added = redis.call('ZADD', key, at, id)
  redis.call('PEXPIRE', key, 2 * window_ms)
  local members = redis.call('ZCARD', key)
  -- Most transfers are their account's only one in the window: nothing to trim or rank.
  if members == 1 then
    return 1, {}
  end
  members = members - redis.call('ZREMRANGEBYSCORE', key, '-inf', at - 2 * window_ms)
  local rank = redis.call('ZRANK', key, id)
  local count = rank - redis.call('ZCOUNT', key, '-inf', at - window_ms) + 1
  local late = {}
  -- Judged in acceptance order, a transfer is the last member: nobody after it to recount.
  if added == 1 and threshold > 1 and rank + 1 < members then
    local after = redis.call('ZRANGE', key, rank + 1, rank + threshold - 1, 'WITHSCORES')
    for j = 1, #after, 2 do
      local score = tonumber(after[j + 1])
      if score >= at + window_ms then
        break
      end
      local later_rank = rank + (j + 1) / 2
      if later_rank - redis.call('ZCOUNT', key, '-inf', score - window_ms) + 1 == threshold then
        late[#late + 1] = after[j]
      end
    end
  end
  return count, late
end

local out = {}
for i = 1, #KEYS / 3 do
  local id, at = ARGV[8 * i - 7], tonumber(ARGV[8 * i - 6])
  local transfers, late_transfers = tally(KEYS[3 * i - 2], id, at,
    tonumber(ARGV[8 * i - 5]), tonumber(ARGV[8 * i - 3]))
  local same_amount, late_same_amount = tally(KEYS[3 * i - 1], id, at,
    tonumber(ARGV[8 * i - 4]), tonumber(ARGV[8 * i - 2]))
  local streak_key, step, streak = KEYS[3 * i], ARGV[8 * i - 1], 0
  if step == '1' then
    redis.call('SADD', streak_key, id)
    redis.call('PEXPIRE', streak_key, ARGV[8 * i])
    streak = redis.call('SCARD', streak_key)
  elseif step == 'r' then
    streak = redis.call('SCARD', streak_key)
  else
    redis.call('DEL', streak_key)
  end
  out[i] = {transfers, same_amount, streak, late_transfers, late_same_amount}
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    pub windows: WindowCounts,
    /// The account's consecutive failures after this transfer (0 after a posted one; before
    /// it, for [`StreakStep::Read`]).
    pub streak: u64,
    /// Transfers judged before this one, accepted after it, that it brought to exactly the
    /// velocity count: they trip the rule now (see the module's notes).
    pub late_velocity: Vec<Uuid>,
    /// The same for the duplicate-amount count.
    pub late_same_amount: Vec<Uuid>,
}

/// One transfer's answer from the script: counts, streak, and the ids it brought to a count.
type Tally = (u64, u64, u64, Vec<String>, Vec<String>);

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
            .arg(rules.map_or(0, |r| r.velocity.count))
            .arg(rules.map_or(0, |r| r.duplicate_amount.count))
            .arg(step.arg())
            .arg(ttl_ms);
    }
    let tallies: Vec<Tally> = invoke(invocation, connection, timeout).await?;
    if tallies.len() != transfers.len() {
        return Err(SkipReason::Error);
    }
    let ids = |members: Vec<String>| -> Result<Vec<Uuid>, SkipReason> {
        members
            .iter()
            .map(|m| m.parse().map_err(|_| SkipReason::Error))
            .collect()
    };
    tallies
        .into_iter()
        .map(
            |(transfers, same_amount, streak, late_velocity, late_same_amount)| {
                Ok(Counted {
                    windows: WindowCounts {
                        transfers,
                        same_amount,
                    },
                    streak,
                    late_velocity: ids(late_velocity)?,
                    late_same_amount: ids(late_same_amount)?,
                })
            },
        )
        .collect()
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
