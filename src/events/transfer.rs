//! Transfers as the API shows them — the one rendering that both the HTTP answers and the
//! events about transfers use, so a webhook carries exactly what `GET /v1/transfers/{id}`
//! would have shown when the change committed.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use super::NewEvent;
use crate::domain::transfer::UnknownCode;
use crate::domain::{Currency, EventType, FailureCode, ReviewDecision, Rule, TransferStatus};

/// A transfer as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Transfer)]
pub struct TransferView {
    pub id: Uuid,
    /// The ledger both accounts belong to.
    #[schema(pattern = "^[a-z0-9_-]{1,64}$", example = "default")]
    pub ledger: String,
    #[schema(pattern = "^[!-~]{1,255}$")]
    pub idempotency_key: String,
    pub status: TransferStatus,
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,64}$")]
    pub from_account: String,
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,64}$")]
    pub to_account: String,
    /// A decimal string with the currency's decimal places, never a JSON number.
    #[schema(pattern = r"^[0-9]+(\.[0-9]+)?$", example = "12.30")]
    pub amount: String,
    #[schema(pattern = "^[A-Z]{3}$", example = "USD")]
    pub currency: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 255)]
    pub reference: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    /// Present when `status` is `failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_code: Option<FailureCode>,
    /// Posting attempts that failed for a transient reason (outages are not counted).
    #[schema(minimum = 0)]
    pub attempts: i32,
    /// The anomaly rules this transfer tripped (README, "Anomaly detection"); empty until
    /// posting judged it, and for most transfers.
    pub flags: Vec<Rule>,
    /// A reviewer's decision, for a transfer that was held for review (`in_review`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub review: Option<Review>,
    /// `transfer` moves the money when posted; `hold` reserves it (status `held`) until it is
    /// captured, voided or expires.
    #[schema(value_type = String, pattern = "^(transfer|hold)$", example = "transfer")]
    pub mode: &'static str,
    /// A hold's life, for `mode: hold`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold: Option<HoldView>,
    /// The transfer this one reverses (`POST /v1/transfers/{id}/reverse`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reverses: Option<Uuid>,
    /// How much of this transfer its reversals (those not failed) take back; absent when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(pattern = r"^[0-9]+(\.[0-9]+)?$")]
    pub reversed_amount: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub posted_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub(crate) fingerprint: Vec<u8>,
}

/// A hold's life: when it was placed and expires, the settlement claimed on it, and what a
/// capture moved.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HoldView {
    /// As requested: the hold expires this long after it is placed.
    pub expires_in_secs: i32,
    /// When posting placed the hold (status `held`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// The settlement claimed on it (`capture`, `void`, or `expire`), carried out by posting.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, pattern = "^(capture|void|expire)$")]
    pub settlement: Option<String>,
    /// The amount a capture asked for (absent: all of it).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(pattern = r"^[0-9]+(\.[0-9]+)?$")]
    pub capture_amount: Option<String>,
    /// What the capture moved: the amount of the transfer's two entries.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(pattern = r"^[0-9]+(\.[0-9]+)?$")]
    pub captured_amount: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub voided_at: Option<DateTime<Utc>>,
}

/// A reviewer's decision on a transfer, and when it was made.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Review {
    pub decision: ReviewDecision,
    pub at: DateTime<Utc>,
}

/// [`TRANSFER_COLUMNS`] of the table aliased `alias` (for statements that join).
pub fn qualified_columns(alias: &str) -> String {
    TRANSFER_COLUMNS
        .split(',')
        .map(|c| format!("{alias}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

pub const TRANSFER_COLUMNS: &str = "id, ledger, idempotency_key, request_fingerprint, status, from_account, \
    to_account, amount, currency, reference, metadata, failure_code, attempts, review, \
    reviewed_at, created_at, updated_at, posted_at, failed_at, mode, hold_expires_in_secs, \
    held_at, hold_expires_at, hold_action, capture_amount, captured_amount, voided_at, reverses, \
    reversed_amount";

/// Fills in the `flags` of transfers read back (new ones have none yet).
pub async fn attach_flags<'a, 'c>(
    db: impl sqlx::PgExecutor<'c>,
    views: impl Iterator<Item = &'a mut TransferView>,
) -> Result<(), sqlx::Error> {
    let mut views: Vec<&mut TransferView> = views.collect();
    if views.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = views.iter().map(|v| v.id).collect();
    let rows: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT transfer_id, rule FROM anomaly_hits WHERE transfer_id = ANY($1) ORDER BY id",
    )
    .bind(&ids)
    .fetch_all(db)
    .await?;
    let by_id: std::collections::HashMap<Uuid, usize> =
        views.iter().enumerate().map(|(i, v)| (v.id, i)).collect();
    for (transfer_id, rule) in rows {
        let rule = Rule::parse_known(&rule).map_err(|e| sqlx::Error::Decode(e.into()))?;
        if let Some(i) = by_id.get(&transfer_id) {
            views[*i].flags.push(rule);
        }
    }
    Ok(())
}

/// A `transfers` row with its anomaly flags, read in one statement: [`TRANSFER_COLUMNS`] and
/// [`flags_column`] (posting's status update returns these, saving a round trip under the
/// posting gate).
#[derive(sqlx::FromRow)]
pub struct FlaggedTransferRow {
    #[sqlx(flatten)]
    row: TransferRow,
    flags: Vec<String>,
}

/// The `flags` column of [`FlaggedTransferRow`] for transfers aliased `alias`: the rules the
/// transfer tripped, in the order of its hits (as [`attach_flags`] reads them).
pub fn flags_column(alias: &str) -> String {
    format!(
        "ARRAY(SELECT h.rule FROM anomaly_hits h WHERE h.transfer_id = {alias}.id \
         ORDER BY h.id) AS flags"
    )
}

impl TryFrom<FlaggedTransferRow> for TransferView {
    type Error = sqlx::Error;
    fn try_from(flagged: FlaggedTransferRow) -> Result<Self, Self::Error> {
        let mut view = TransferView::from(flagged.row);
        view.flags = flagged
            .flags
            .iter()
            .map(|rule| Rule::parse_known(rule).map_err(|e| sqlx::Error::Decode(e.into())))
            .collect::<Result<_, _>>()?;
        Ok(view)
    }
}

/// A `transfers` row with the columns of `TRANSFER_COLUMNS`; status and failure code read
/// back strictly: a value this version does not know is an error, never a default.
#[derive(sqlx::FromRow)]
pub struct TransferRow {
    id: Uuid,
    ledger: String,
    idempotency_key: String,
    request_fingerprint: Vec<u8>,
    #[sqlx(try_from = "String")]
    status: TransferStatus,
    from_account: String,
    to_account: String,
    amount: Decimal,
    currency: String,
    reference: Option<String>,
    metadata: serde_json::Value,
    #[sqlx(try_from = "Option<String>")]
    failure_code: StoredFailureCode,
    attempts: i32,
    #[sqlx(try_from = "Option<String>")]
    review: StoredReview,
    reviewed_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    posted_at: Option<DateTime<Utc>>,
    failed_at: Option<DateTime<Utc>>,
    mode: String,
    hold_expires_in_secs: Option<i32>,
    held_at: Option<DateTime<Utc>>,
    hold_expires_at: Option<DateTime<Utc>>,
    hold_action: Option<String>,
    capture_amount: Option<Decimal>,
    captured_amount: Option<Decimal>,
    voided_at: Option<DateTime<Utc>>,
    reverses: Option<Uuid>,
    reversed_amount: Decimal,
}

/// The nullable `failure_code` column, decoded strictly when present.
struct StoredFailureCode(Option<FailureCode>);

impl TryFrom<Option<String>> for StoredFailureCode {
    type Error = UnknownCode;
    fn try_from(code: Option<String>) -> Result<Self, Self::Error> {
        code.map(FailureCode::try_from).transpose().map(Self)
    }
}

/// The nullable `review` column, decoded strictly when present.
struct StoredReview(Option<ReviewDecision>);

impl TryFrom<Option<String>> for StoredReview {
    type Error = crate::domain::UnknownValue;
    fn try_from(decision: Option<String>) -> Result<Self, Self::Error> {
        decision.map(ReviewDecision::try_from).transpose().map(Self)
    }
}

impl From<TransferRow> for TransferView {
    fn from(row: TransferRow) -> Self {
        let amount = |value: Decimal| format_amount(&row.currency, value);
        let hold = row.hold_expires_in_secs.map(|expires_in_secs| HoldView {
            expires_in_secs,
            held_at: row.held_at,
            expires_at: row.hold_expires_at,
            settlement: row.hold_action.clone(),
            capture_amount: row.capture_amount.map(amount),
            captured_amount: row.captured_amount.map(amount),
            voided_at: row.voided_at,
        });
        let reversed_amount = (!row.reversed_amount.is_zero()).then(|| amount(row.reversed_amount));
        // Only two modes exist (the table's CHECK); anything else reads as a plain transfer.
        let mode = if row.mode == "hold" {
            "hold"
        } else {
            "transfer"
        };
        Self {
            id: row.id,
            ledger: row.ledger,
            idempotency_key: row.idempotency_key,
            status: row.status,
            from_account: row.from_account,
            to_account: row.to_account,
            amount: format_amount(&row.currency, row.amount),
            currency: row.currency.trim().to_owned(),
            reference: row.reference,
            metadata: row.metadata,
            failure_code: row.failure_code.0,
            attempts: row.attempts,
            flags: Vec::new(),
            review: row
                .review
                .0
                .zip(row.reviewed_at)
                .map(|(decision, at)| Review { decision, at }),
            mode,
            hold,
            reverses: row.reverses,
            reversed_amount,
            created_at: row.created_at,
            updated_at: row.updated_at,
            posted_at: row.posted_at,
            failed_at: row.failed_at,
            fingerprint: row.request_fingerprint,
        }
    }
}

/// The transfers `ids` as they are now in the caller's transaction, with their flags: what
/// the events about a change just made carry.
pub async fn read_in_transaction(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<Vec<TransferView>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query_as::<_, TransferRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {TRANSFER_COLUMNS} FROM transfers WHERE id = ANY($1) ORDER BY created_at, id"
    )))
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut views: Vec<TransferView> = rows.into_iter().map(TransferView::from).collect();
    attach_flags(&mut *conn, views.iter_mut()).await?;
    Ok(views)
}

/// The event a transfer's status announces; `None` for `pending` (nothing to announce). A
/// reversal's posting is `transfer.reversed`.
pub fn event_type(view: &TransferView) -> Option<EventType> {
    match view.status {
        TransferStatus::Pending => None,
        TransferStatus::InReview => Some(EventType::TransferInReview),
        TransferStatus::Held => Some(EventType::TransferHeld),
        TransferStatus::Posted if view.reverses.is_some() => Some(EventType::TransferReversed),
        TransferStatus::Posted => Some(EventType::TransferPosted),
        TransferStatus::Failed => Some(EventType::TransferFailed),
        TransferStatus::Voided => Some(EventType::TransferVoided),
    }
}

/// Writes, in the caller's transaction, one event per transfer of `ids` announcing the status
/// it now has (the caller has just changed it). Call [`super::lock_sequence`] first.
pub async fn record_changes(conn: &mut PgConnection, ids: &[Uuid]) -> Result<usize, sqlx::Error> {
    let views = read_in_transaction(conn, ids).await?;
    record_views(conn, &views).await
}

/// Writes each view's event (none for a status that has no event).
pub async fn record_views(
    conn: &mut PgConnection,
    views: &[TransferView],
) -> Result<usize, sqlx::Error> {
    let events: Vec<NewEvent> = views
        .iter()
        .filter_map(|view| {
            let event_type = event_type(view)?;
            Some(NewEvent::about_transfer(event_type, view))
        })
        .collect::<Result<_, _>>()
        .map_err(|e: serde_json::Error| sqlx::Error::Encode(e.into()))?;
    super::append(conn, &events).await
}

/// An amount as the API shows it: a decimal string with its currency's decimal places.
pub fn format_amount(currency: &str, value: Decimal) -> String {
    match Currency::parse(currency.trim()) {
        Ok(c) => c.format(value),
        Err(_) => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_stored_failure_code_is_an_error_not_a_default() {
        assert_eq!(StoredFailureCode::try_from(None).map(|c| c.0), Ok(None));
        assert_eq!(
            StoredFailureCode::try_from(Some("account_not_found".to_owned())).map(|c| c.0),
            Ok(Some(FailureCode::AccountNotFound))
        );
        assert_eq!(
            StoredFailureCode::try_from(Some("cosmic_rays".to_owned())).map(|c| c.0),
            Err(UnknownCode("cosmic_rays".to_owned()))
        );
        assert!(TransferStatus::try_from("archived".to_owned()).is_err());
    }
}
