//! Captures and voids of holds (README, "Holds, reversals and balance history"): each request
//! *claims* the settlement on its hold (`transfers.hold_action`) and enqueues the posting job
//! that carries it out, in one transaction; the posting engine then moves the money or
//! releases the reservation. The claim is a guarded UPDATE of a `held` row with no claim yet,
//! so when a capture, a void and expiry race for one hold, exactly one claims it and the others
//! are told `transfer_not_held`.

use backon::Retryable;
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::transfers::AcceptError;
use crate::domain::{Amount, IdempotencyKey, TransferStatus};
use crate::events::transfer::{TransferView, read_in_transaction};
use crate::queue::payloads::PostTransfers;
use crate::queue::{self, POST_TRANSFERS_QUEUE};
use crate::retry::{RetryClass, RetryPolicy};

/// What a settlement request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Move `amount` (all of the hold when `None`) and release the rest.
    Capture { amount: Option<Amount> },
    /// Release the reservation; no money moves.
    Void,
}

impl Settlement {
    pub fn action(self) -> &'static str {
        match self {
            Self::Capture { .. } => "capture",
            Self::Void => "void",
        }
    }

    fn amount(self) -> Option<Decimal> {
        match self {
            Self::Capture { amount } => amount.map(|a| a.value()),
            Self::Void => None,
        }
    }
}

/// A capture or void of the hold `transfer_id`, under an API key and idempotency key.
#[derive(Debug, Clone)]
pub struct SettleRequest {
    pub api_key_id: Uuid,
    pub idempotency_key: IdempotencyKey,
    pub transfer_id: Uuid,
    pub settlement: Settlement,
}

impl SettleRequest {
    /// Tells a replay (same request under the same key) from reuse of the key.
    fn fingerprint(&self) -> Vec<u8> {
        let canonical = serde_json::json!({
            "transfer_id": self.transfer_id,
            "action": self.settlement.action(),
            "amount": self.settlement.amount().map(|a| a.normalize().to_string()),
        });
        Sha256::digest(canonical.to_string().as_bytes()).to_vec()
    }
}

/// What became of one settlement request.
#[derive(Debug, Clone)]
pub enum SettleOutcome {
    /// Claimed, with its posting job: the hold as it now is (still `held`, its settlement set).
    Accepted(TransferView),
    /// The key was used before for this same request: the hold as it is now.
    Replayed(TransferView),
    /// The key was used before for another request; nothing was stored.
    KeyReused,
    /// No such transfer under this API key.
    NotFound,
    /// Not an open hold: why.
    NotHeld(String),
    /// A capture of more than the hold holds.
    ExceedsHold(String),
}

/// Commits a group of settlement requests in one transaction, with one posting job for those
/// claimed. Outcomes in the order given.
pub async fn settle(
    pool: &PgPool,
    requests: &[SettleRequest],
) -> Result<Vec<SettleOutcome>, AcceptError> {
    // Two groups claiming the same holds in opposite orders can deadlock (40P01): retried.
    (|| settle_once(pool, requests))
        .retry(RetryPolicy::SERIALIZATION.schedule())
        .sleep(tokio::time::sleep)
        .when(|e: &AcceptError| e.retry_class() == RetryClass::Serialization)
        .await
}

/// A group's requests, set-based: a handful of statements per group, whatever its size
/// (the group commit's point: one round trip per request would cap captures at a few
/// thousand a second).
async fn settle_once(
    pool: &PgPool,
    requests: &[SettleRequest],
) -> Result<Vec<SettleOutcome>, AcceptError> {
    let mut tx = pool.begin().await?;
    // Every statement below looks rows up by key: planned as index probes, O(group) whatever
    // the table sizes, as in posting.
    sqlx::raw_sql(
        "SET LOCAL enable_seqscan = off; SET LOCAL enable_hashjoin = off; \
         SET LOCAL enable_mergejoin = off",
    )
    .execute(&mut *tx)
    .await?;
    let fingerprints: Vec<Vec<u8>> = requests.iter().map(SettleRequest::fingerprint).collect();
    let mut outcomes: Vec<Option<SettleOutcome>> = vec![None; requests.len()];
    // 1. The keys first: a concurrent request under the same key waits here for the first to
    // commit, then reads as a replay; a key seen before is answered from its first request.
    let recorded = record_keys(&mut tx, requests, &fingerprints).await?;
    // 2. Claim, for the requests whose key is new.
    let fresh: Vec<usize> = (0..requests.len())
        .filter(|i| recorded.contains(i))
        .collect();
    let claimed = claim(&mut tx, requests, &fresh).await?;
    // 3. The refused give their key back (a refused request stores nothing) and learn why.
    let refused: Vec<usize> = fresh
        .iter()
        .copied()
        .filter(|i| !claimed.contains(i))
        .collect();
    forget_keys(&mut tx, requests, &refused).await?;
    let reasons = refusals(&mut tx, requests, &refused).await?;
    for (i, reason) in refused.iter().zip(reasons) {
        outcomes[*i] = Some(reason);
    }
    let mut claimed_ids: Vec<Uuid> = claimed.iter().map(|i| requests[*i].transfer_id).collect();
    claimed_ids.sort_unstable();
    enqueue_posting(&mut tx, &claimed_ids).await?;
    // 4. Keys seen before (in an earlier commit, or earlier in this group): a replay of the
    // same request, or the key reused.
    let seen: Vec<usize> = (0..requests.len())
        .filter(|i| !recorded.contains(i))
        .collect();
    let earlier = earlier_fingerprints(&mut tx, requests, &seen).await?;
    for i in &seen {
        let key = (
            requests[*i].api_key_id,
            requests[*i].idempotency_key.as_str(),
        );
        let outcome = match earlier.get(&(key.0, key.1.to_owned())) {
            Some(fingerprint) if *fingerprint == fingerprints[*i] => None,
            Some(_) => Some(SettleOutcome::KeyReused),
            // Its first request, earlier in this group, was refused: so is this one.
            None => refused
                .iter()
                .find(|j| {
                    requests[**j].api_key_id == key.0
                        && requests[**j].idempotency_key.as_str() == key.1
                })
                .and_then(|j| outcomes[*j].clone()),
        };
        outcomes[*i] = outcome;
    }
    let ids: Vec<Uuid> = requests.iter().map(|r| r.transfer_id).collect();
    let views: std::collections::HashMap<Uuid, TransferView> = read_in_transaction(&mut tx, &ids)
        .await?
        .into_iter()
        .map(|view| (view.id, view))
        .collect();
    tx.commit().await?;
    Ok(outcomes
        .into_iter()
        .enumerate()
        .map(|(i, outcome)| {
            outcome.unwrap_or_else(|| {
                let view = views.get(&requests[i].transfer_id).cloned();
                match view {
                    None => SettleOutcome::NotFound,
                    Some(view) if claimed.contains(&i) => SettleOutcome::Accepted(view),
                    Some(view) => SettleOutcome::Replayed(view),
                }
            })
        })
        .collect())
}

/// Inserts the requests' keys; returns the indices whose key was new. In (API key, key)
/// order, so two groups never wait on each other's keys in opposite orders.
async fn record_keys(
    conn: &mut PgConnection,
    requests: &[SettleRequest],
    fingerprints: &[Vec<u8>],
) -> Result<std::collections::HashSet<usize>, sqlx::Error> {
    let mut order: Vec<usize> = (0..requests.len()).collect();
    order.sort_by(|a, b| {
        let key = |i: &usize| {
            (
                requests[*i].api_key_id,
                requests[*i].idempotency_key.as_str(),
            )
        };
        key(a).cmp(&key(b)).then(a.cmp(b))
    });
    let column = |f: &dyn Fn(&SettleRequest) -> String| -> Vec<String> {
        order.iter().map(|i| f(&requests[*i])).collect()
    };
    let inserted: Vec<(Uuid, String)> = sqlx::query_as(
        "INSERT INTO settlement_requests (api_key_id, idempotency_key, request_fingerprint, \
           transfer_id, action, amount) \
         SELECT a, k, f, t, c, m FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::uuid[], $5::text[], \
           $6::numeric[]) WITH ORDINALITY AS r(a, k, f, t, c, m, ord) ORDER BY ord \
         ON CONFLICT (api_key_id, idempotency_key) DO NOTHING \
         RETURNING api_key_id, idempotency_key",
    )
    .bind(order.iter().map(|i| requests[*i].api_key_id).collect::<Vec<_>>())
    .bind(column(&|r| r.idempotency_key.as_str().to_owned()))
    .bind(order.iter().map(|i| fingerprints[*i].clone()).collect::<Vec<_>>())
    .bind(order.iter().map(|i| requests[*i].transfer_id).collect::<Vec<_>>())
    .bind(column(&|r| r.settlement.action().to_owned()))
    .bind(
        order
            .iter()
            .map(|i| requests[*i].settlement.amount())
            .collect::<Vec<_>>(),
    )
    .fetch_all(&mut *conn)
    .await?;
    // A key sent twice in the group is inserted by its first request (rows go in `order`).
    let mut first_of_key: std::collections::HashMap<(Uuid, &str), usize> = Default::default();
    for i in &order {
        let request = &requests[*i];
        first_of_key
            .entry((request.api_key_id, request.idempotency_key.as_str()))
            .or_insert(*i);
    }
    Ok(inserted
        .iter()
        .filter_map(|(api_key, key)| first_of_key.get(&(*api_key, key.as_str())).copied())
        .collect())
}

/// Claims the holds of `fresh` requests: one guarded UPDATE. Where two requests of the group
/// name one hold, the row is updated once and only that request claimed it. Returns the
/// indices that claimed.
async fn claim(
    conn: &mut PgConnection,
    requests: &[SettleRequest],
    fresh: &[usize],
) -> Result<std::collections::HashSet<usize>, sqlx::Error> {
    if fresh.is_empty() {
        return Ok(Default::default());
    }
    // An expired hold can no longer be captured (expiry voids it); it can still be voided.
    // "held" is spelled with `TransferStatus::sql_is` so the planner cannot pick the partial
    // index of held holds: with `status = 'held'` it scanned every held hold for each request
    // (measured: 100–400 ms a group with 20,000 holds open, against a primary-key probe each).
    let claimed: Vec<i32> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "UPDATE transfers t SET hold_action = u.action, capture_amount = u.amount, \
           updated_at = now() \
         FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::numeric[], $5::int4[]) \
           AS u(id, api_key_id, action, amount, ord) \
         WHERE t.id = u.id AND t.api_key_id = u.api_key_id \
           AND {} \
           AND t.hold_action IS NULL \
           AND (u.action = 'void' OR t.hold_expires_at > now()) \
           AND (u.amount IS NULL OR u.amount <= t.amount) \
         RETURNING u.ord",
        TransferStatus::Held.sql_is("t.status")
    )))
    .bind(
        fresh
            .iter()
            .map(|i| requests[*i].transfer_id)
            .collect::<Vec<_>>(),
    )
    .bind(
        fresh
            .iter()
            .map(|i| requests[*i].api_key_id)
            .collect::<Vec<_>>(),
    )
    .bind(
        fresh
            .iter()
            .map(|i| requests[*i].settlement.action())
            .collect::<Vec<_>>(),
    )
    .bind(
        fresh
            .iter()
            .map(|i| requests[*i].settlement.amount())
            .collect::<Vec<_>>(),
    )
    .bind(fresh.iter().map(|i| *i as i32).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?;
    Ok(claimed.into_iter().map(|i| i as usize).collect())
}

async fn forget_keys(
    conn: &mut PgConnection,
    requests: &[SettleRequest],
    refused: &[usize],
) -> Result<(), sqlx::Error> {
    if refused.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "DELETE FROM settlement_requests s \
         USING unnest($1::uuid[], $2::text[]) AS k(api_key_id, idempotency_key) \
         WHERE s.api_key_id = k.api_key_id AND s.idempotency_key = k.idempotency_key",
    )
    .bind(
        refused
            .iter()
            .map(|i| requests[*i].api_key_id)
            .collect::<Vec<_>>(),
    )
    .bind(
        refused
            .iter()
            .map(|i| requests[*i].idempotency_key.as_str())
            .collect::<Vec<_>>(),
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The fingerprints stored under the keys of `seen` requests.
async fn earlier_fingerprints(
    conn: &mut PgConnection,
    requests: &[SettleRequest],
    seen: &[usize],
) -> Result<std::collections::HashMap<(Uuid, String), Vec<u8>>, sqlx::Error> {
    if seen.is_empty() {
        return Ok(Default::default());
    }
    let rows: Vec<(Uuid, String, Vec<u8>)> = sqlx::query_as(
        "SELECT s.api_key_id, s.idempotency_key, s.request_fingerprint \
         FROM settlement_requests s \
         JOIN unnest($1::uuid[], $2::text[]) AS k(api_key_id, idempotency_key) \
           ON s.api_key_id = k.api_key_id AND s.idempotency_key = k.idempotency_key",
    )
    .bind(
        seen.iter()
            .map(|i| requests[*i].api_key_id)
            .collect::<Vec<_>>(),
    )
    .bind(
        seen.iter()
            .map(|i| requests[*i].idempotency_key.as_str())
            .collect::<Vec<_>>(),
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(api_key, key, fingerprint)| ((api_key, key), fingerprint))
        .collect())
}

/// One `post_transfers` job for `transfer_ids` (none when empty), in the caller's transaction.
pub(crate) async fn enqueue_posting(
    conn: &mut PgConnection,
    transfer_ids: &[Uuid],
) -> Result<(), sqlx::Error> {
    let job = queue::insert_job_sql(
        POST_TRANSFERS_QUEUE,
        PostTransfers::SQL_FROM_ID_ROWS,
        "unnest($1::uuid[]) AS claimed(id)",
    );
    sqlx::query(sqlx::AssertSqlSafe(job))
        .bind(transfer_ids)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Why each refused request's claim matched no row.
async fn refusals(
    conn: &mut PgConnection,
    requests: &[SettleRequest],
    refused: &[usize],
) -> Result<Vec<SettleOutcome>, sqlx::Error> {
    if refused.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = refused.iter().map(|i| requests[*i].transfer_id).collect();
    let rows: Vec<HoldState> = sqlx::query_as(
        "SELECT id, api_key_id, status, mode, amount, hold_action, \
           hold_expires_at <= now() AS expired \
         FROM transfers WHERE id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    let by_id: std::collections::HashMap<Uuid, HoldState> =
        rows.into_iter().map(|row| (row.id, row)).collect();
    Ok(refused
        .iter()
        .map(|i| {
            let request = &requests[*i];
            match by_id.get(&request.transfer_id) {
                // Another API key's transfer is not found, exactly like a missing one.
                Some(hold) if hold.api_key_id == request.api_key_id => refusal(request, hold),
                _ => SettleOutcome::NotFound,
            }
        })
        .collect())
}

fn refusal(request: &SettleRequest, hold: &HoldState) -> SettleOutcome {
    let id = request.transfer_id;
    if hold.mode != "hold" {
        SettleOutcome::NotHeld(format!("transfer {id} is not a hold (mode {})", hold.mode))
    } else if hold.status != "held" {
        SettleOutcome::NotHeld(format!("hold {id} is {}, not held", hold.status))
    } else if let Some(action) = &hold.hold_action {
        SettleOutcome::NotHeld(format!("hold {id} is already being settled ({action})"))
    } else if let Some(amount) = request.settlement.amount().filter(|a| *a > hold.amount) {
        SettleOutcome::ExceedsHold(format!(
            "capture amount {amount} exceeds the {} held",
            hold.amount
        ))
    } else if hold.expired == Some(true) {
        SettleOutcome::NotHeld(format!("hold {id} has expired and is being voided"))
    } else {
        SettleOutcome::NotHeld(format!("hold {id} cannot be settled now"))
    }
}

#[derive(sqlx::FromRow)]
struct HoldState {
    id: Uuid,
    api_key_id: Uuid,
    status: String,
    mode: String,
    amount: Decimal,
    hold_action: Option<String>,
    expired: Option<bool>,
}
