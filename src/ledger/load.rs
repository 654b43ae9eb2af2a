//! The posting transaction's first statement (`super::posting`): the batch's postable
//! transfers and, locked, the accounts they name — read back strictly, so a stored value this
//! version does not know stops posting as an invariant instead of moving money.

use std::collections::HashMap;

use rust_decimal::Decimal;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::apply::{Instruction, LockedAccount, PendingTransfer};
use super::posting::PostingError;
use crate::domain::{
    AccountId, AccountKey, AccountStatus, Amount, Currency, LedgerName, TransferStatus,
};

// The posting statements spell "pending" with `TransferStatus::sql_is` so the planner cannot
// match the partial index `transfers_pending_by_age`: with stale statistics it scanned every
// pending transfer per batch (O(backlog), measured 84 ms for 1,200 transfers) instead of
// probing the primary key. A transfer held for review (`in_review`) is not posted until a reviewer
// approves it; a `held` hold is taken only once a capture or void is claimed on it.
pub(super) fn postable(alias: &str) -> String {
    format!(
        "({} OR ({alias}.status = 'held' AND {alias}.hold_action IS NOT NULL))",
        TransferStatus::Pending.sql_is(&format!("{alias}.status"))
    )
}

/// Reads the batch's postable transfers, in acceptance order, and locks the accounts they name
/// — one statement, one round trip under the gate. The accounts are locked in (ledger, id)
/// order, as every other writer of account rows does, and come back as rows of their own,
/// exactly as the lock left them (a row changed since the transaction's snapshot fails the
/// `FOR UPDATE` with 40001, so what is read is what is locked). Reading them from the lock
/// rather than joining each transfer to its two accounts again saves two index probes per
/// transfer (BENCHMARKS.md, issue 26, "Eighth sitting"). An account that does not exist in the
/// transfer's ledger has no row, and posting fails the transfer as `account_not_found`.
pub(super) async fn load_and_lock(
    tx: &mut Transaction<'_, Postgres>,
    transfer_ids: &[Uuid],
) -> Result<(Vec<PendingTransfer>, HashMap<AccountKey, LockedAccount>), PostingError> {
    let rows: Vec<LoadedRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH pending AS MATERIALIZED ( \
           SELECT id, ledger, from_account, to_account, amount, currency, status, mode, \
             hold_action, capture_amount, created_at FROM transfers t \
           WHERE id = ANY($1) AND {postable} \
         ), locked AS MATERIALIZED ( \
           SELECT a.ledger, a.id, a.no, a.currency, a.balance, a.pending_debits, \
             a.pending_credits, a.allow_overdraft, a.status FROM accounts a \
           JOIN (SELECT ledger, from_account AS id FROM pending \
                 UNION SELECT ledger, to_account FROM pending) AS k \
             ON a.ledger = k.ledger AND a.id = k.id \
           ORDER BY a.ledger, a.id FOR UPDATE OF a \
         ) \
         SELECT false AS is_account, p.id, p.ledger, p.from_account, p.to_account, p.amount, \
           p.currency, p.status, p.mode, p.hold_action, p.capture_amount, p.created_at, \
           (extract(epoch FROM p.created_at) * 1000)::bigint AS accepted_at_ms, \
           NULL::text AS account_id, NULL::int8 AS account_no, NULL::text AS account_currency, \
           NULL::numeric AS balance, NULL::numeric AS pending_debits, \
           NULL::numeric AS pending_credits, NULL::bool AS allow_overdraft, \
           NULL::text AS account_status \
         FROM pending p \
         UNION ALL \
         SELECT true, NULL, l.ledger, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, \
           NULL, l.id, l.no, l.currency, l.balance, l.pending_debits, l.pending_credits, \
           l.allow_overdraft, l.status \
         FROM locked l \
         ORDER BY is_account, created_at, id",
        postable = postable("t"),
    )))
    .bind(transfer_ids)
    .fetch_all(&mut **tx)
    .await?;
    let mut transfers = Vec::with_capacity(rows.len());
    let mut accounts = HashMap::new();
    for row in rows {
        match row {
            LoadedRow::Transfer(transfer) => transfers.push(PendingTransfer::try_from(transfer)?),
            LoadedRow::Account(key, account) => {
                accounts.insert(key, account.locked()?);
            }
        }
    }
    Ok((transfers, accounts))
}

/// A row of [`load_and_lock`]'s answer: a postable transfer, or one of the accounts it locked.
enum LoadedRow {
    Transfer(PendingTransferRow),
    Account(AccountKey, AccountColumns),
}

impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for LoadedRow {
    fn from_row(row: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        if !row.try_get::<bool, _>("is_account")? {
            return Ok(Self::Transfer(PendingTransferRow::from_row(row)?));
        }
        let ledger: String = row.try_get("ledger")?;
        let id: String = row.try_get("account_id")?;
        let key = AccountKey::new(
            LedgerName::from_trusted(ledger),
            AccountId::from_trusted(id),
        );
        Ok(Self::Account(key, AccountColumns::from_row(row)?))
    }
}

/// A locked account's columns as [`load_and_lock`] reads them.
#[derive(sqlx::FromRow)]
struct AccountColumns {
    account_no: i64,
    account_currency: String,
    balance: Decimal,
    pending_debits: Decimal,
    pending_credits: Decimal,
    allow_overdraft: bool,
    account_status: String,
}

impl AccountColumns {
    /// The locked account, its currency parsed as in [`PendingTransferRow`], its status
    /// strictly (an unknown status fails the batch rather than moving money).
    fn locked(self) -> Result<LockedAccount, PostingError> {
        let no = self.account_no;
        let status = self.account_status;
        Ok(LockedAccount {
            no,
            currency: parse_currency(self.account_currency)?,
            balance: self.balance,
            pending_debits: self.pending_debits,
            pending_credits: self.pending_credits,
            allow_overdraft: self.allow_overdraft,
            status: AccountStatus::try_from(status.clone()).map_err(|_| {
                PostingError::Invariant(format!("account number {no} has status {status:?}"))
            })?,
        })
    }
}

/// A postable `transfers` row as posting reads it. The currency is parsed after decoding, so a
/// stored currency this version does not know is [`PostingError::Invariant`] (which the
/// combiner answers by posting each job's transfers on their own), not a decode error.
#[derive(sqlx::FromRow)]
struct PendingTransferRow {
    id: Uuid,
    ledger: String,
    from_account: String,
    to_account: String,
    amount: Decimal,
    currency: String,
    status: String,
    mode: String,
    hold_action: Option<String>,
    capture_amount: Option<Decimal>,
    accepted_at_ms: i64,
}

impl PendingTransferRow {
    fn instruction(&self) -> Result<Instruction, PostingError> {
        let id = self.id;
        match (
            self.status.as_str(),
            self.mode.as_str(),
            self.hold_action.as_deref(),
        ) {
            ("pending", "transfer", _) => Ok(Instruction::Transfer),
            ("pending", "hold", _) => Ok(Instruction::Hold),
            ("held", "hold", Some("capture")) => Ok(Instruction::Capture {
                amount: self.capture_amount.unwrap_or(self.amount),
            }),
            ("held", "hold", Some("void" | "expire")) => Ok(Instruction::Void),
            (status, mode, action) => Err(PostingError::Invariant(format!(
                "transfer {id} is {status} ({mode}, settlement {action:?}): nothing to post"
            ))),
        }
    }
}

impl TryFrom<PendingTransferRow> for PendingTransfer {
    type Error = PostingError;
    fn try_from(row: PendingTransferRow) -> Result<Self, Self::Error> {
        let instruction = row.instruction()?;
        let currency = parse_currency(row.currency)?;
        let id = row.id;
        // Both accounts are looked up in the transfer's own ledger: an id that exists only in
        // another ledger is not found, so no transfer can move another ledger's money.
        let ledger = LedgerName::from_trusted(row.ledger);
        let account = |id: String| AccountKey::new(ledger.clone(), AccountId::from_trusted(id));
        Ok(Self {
            id,
            from_account: account(row.from_account),
            to_account: account(row.to_account),
            amount: Amount::new(row.amount, currency).map_err(|e| {
                PostingError::Invariant(format!("transfer {id} holds a bad amount: {e}"))
            })?,
            accepted_at_ms: row.accepted_at_ms,
            instruction,
        })
    }
}

fn parse_currency(code: String) -> Result<Currency, PostingError> {
    Currency::parse(code.trim())
        .map_err(|e| PostingError::Invariant(format!("stored currency is invalid: {e}")))
}
