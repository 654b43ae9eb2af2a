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

/// Per transfer i: KEYS[2i-1] its account's window, KEYS[2i] its (account, amount) window;
/// ARGV[4i-3..4i]: transfer id, acceptance time (ms), the two windows (ms). Returns the two
/// counts per transfer, flattened.
const COUNT_WINDOWS: &str = r"
local counts = {}
for i = 1, #KEYS / 2 do
  local id, at = ARGV[4 * i - 3], tonumber(ARGV[4 * i - 2])
  for w = 0, 1 do
    local key, window_ms = KEYS[2 * i - 1 + w], tonumber(ARGV[4 * i - 1 + w])
    redis.call('ZADD', key, at, id)
    redis.call('ZREMRANGEBYSCORE', key, '-inf', at - window_ms)
    counts[#counts + 1] = redis.call('ZRANK', key, id) + 1
    redis.call('PEXPIRE', key, window_ms)
  end
end
return counts
";

/// Per transfer i, in posting order: KEYS[i] its account's streak; ARGV[3i-2..3i]: transfer
/// id, `1` if it failed (`0`: posted, which ends the streak), the streak's TTL (ms). Returns
/// each transfer's streak length after it.
const RECORD_OUTCOMES: &str = r"
local streaks = {}
for i = 1, #KEYS do
  local key, id, failed, ttl_ms = KEYS[i], ARGV[3 * i - 2], ARGV[3 * i - 1], ARGV[3 * i]
  if failed == '1' then
    redis.call('SADD', key, id)
    redis.call('PEXPIRE', key, ttl_ms)
    streaks[i] = redis.call('SCARD', key)
  else
    redis.call('DEL', key)
    streaks[i] = 0
  end
end
return streaks
";

static COUNT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(COUNT_WINDOWS));
static RECORD_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RECORD_OUTCOMES));

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
    /// The database could not read the batch or store its hits.
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

/// Adds `candidates` to their windows and counts them, in one round trip bounded by `timeout`.
/// `rules` gives each candidate's windows (its ledger's).
pub async fn count(
    connection: &mut ConnectionManager,
    namespace: &str,
    candidates: &[(Candidate, &RuleSettings)],
    timeout: Duration,
) -> Result<Vec<WindowCounts>, SkipReason> {
    let mut invocation = COUNT_SCRIPT.prepare_invoke();
    for (candidate, rules) in candidates {
        invocation
            .key(window_key(namespace, candidate))
            .key(amount_key(namespace, candidate))
            .arg(candidate.transfer_id.to_string())
            .arg(candidate.accepted_at_ms)
            .arg(rules.velocity.window_ms())
            .arg(rules.duplicate_amount.window_ms());
    }
    let counts: Vec<u64> = invoke(invocation, connection, timeout).await?;
    if counts.len() != candidates.len() * 2 {
        return Err(SkipReason::Error);
    }
    Ok(counts
        .chunks_exact(2)
        .map(|pair| WindowCounts {
            transfers: pair[0],
            same_amount: pair[1],
        })
        .collect())
}

/// Records posting outcomes (`true`: failed) in their accounts' streaks, in posting order;
/// returns each one's streak length after it.
pub async fn record_outcomes(
    connection: &mut ConnectionManager,
    namespace: &str,
    outcomes: &[(Candidate, bool)],
    timeout: Duration,
) -> Result<Vec<u64>, SkipReason> {
    let mut invocation = RECORD_SCRIPT.prepare_invoke();
    let ttl_ms = u64::try_from(STREAK_TTL.as_millis()).unwrap_or(u64::MAX);
    for (candidate, failed) in outcomes {
        invocation
            .key(streak_key(namespace, candidate))
            .arg(candidate.transfer_id.to_string())
            .arg(if *failed { "1" } else { "0" })
            .arg(ttl_ms);
    }
    let streaks: Vec<u64> = invoke(invocation, connection, timeout).await?;
    if streaks.len() != outcomes.len() {
        return Err(SkipReason::Error);
    }
    Ok(streaks)
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
