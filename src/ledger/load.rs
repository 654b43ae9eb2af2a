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
/// order, as every other writer of account rows does (`locked`, evaluated once before any row
/// is returned); each transfer row then carries its two accounts as that lock left them (a row
/// changed since the transaction's snapshot fails the `FOR UPDATE` with 40001, so what is read
/// is what is locked). An account that does not exist in the transfer's ledger reads as NULLs.
pub(super) async fn load_and_lock(
    tx: &mut Transaction<'_, Postgres>,
    transfer_ids: &[Uuid],
) -> Result<(Vec<PendingTransfer>, HashMap<AccountKey, LockedAccount>), PostingError> {
    let rows: Vec<PendingRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH pending AS MATERIALIZED ( \
           SELECT id, ledger, from_account, to_account, amount, currency, status, mode, \
             hold_action, capture_amount, created_at FROM transfers t \
           WHERE id = ANY($1) AND {postable} \
         ), locked AS MATERIALIZED ( \
           SELECT a.no FROM accounts a \
           JOIN (SELECT ledger, from_account AS id FROM pending \
                 UNION SELECT ledger, to_account FROM pending) AS k \
             ON a.ledger = k.ledger AND a.id = k.id \
           ORDER BY a.ledger, a.id FOR UPDATE OF a \
         ) \
         SELECT p.id, p.ledger, p.from_account, p.to_account, p.amount, p.currency, p.status, \
           p.mode, p.hold_action, p.capture_amount, \
           (extract(epoch FROM p.created_at) * 1000)::bigint AS accepted_at_ms, {from}, {to} \
         FROM pending p \
         LEFT JOIN accounts f ON f.ledger = p.ledger AND f.id = p.from_account \
         LEFT JOIN accounts t ON t.ledger = p.ledger AND t.id = p.to_account \
         WHERE (SELECT count(*) FROM locked) >= 0 \
         ORDER BY p.created_at, p.id",
        postable = postable("t"),
        from = AccountColumns::select("f"),
        to = AccountColumns::select("t"),
    )))
    .bind(transfer_ids)
    .fetch_all(&mut **tx)
    .await?;
    let mut transfers = Vec::with_capacity(rows.len());
    let mut accounts = HashMap::new();
    for row in rows {
        let transfer = PendingTransfer::try_from(row.transfer)?;
        for (key, columns) in [
            (&transfer.from_account, row.from),
            (&transfer.to_account, row.to),
        ] {
            if let Some(account) = columns.locked()? {
                accounts.insert(key.clone(), account);
            }
        }
        transfers.push(transfer);
    }
    Ok((transfers, accounts))
}

/// A transfer as [`load_and_lock`] reads it, with its two accounts.
struct PendingRow {
    transfer: PendingTransferRow,
    from: AccountColumns,
    to: AccountColumns,
}

impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for PendingRow {
    fn from_row(row: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            transfer: PendingTransferRow::from_row(row)?,
            from: AccountColumns::read(row, "f")?,
            to: AccountColumns::read(row, "t")?,
        })
    }
}

/// An account's columns as [`load_and_lock`] reads them (prefixed `f_` or `t_`); all NULL
/// when the account does not exist in the transfer's ledger.
struct AccountColumns {
    no: Option<i64>,
    currency: Option<String>,
    balance: Option<Decimal>,
    pending_debits: Option<Decimal>,
    pending_credits: Option<Decimal>,
    allow_overdraft: Option<bool>,
    status: Option<String>,
}

impl AccountColumns {
    /// The select list that [`Self::read`] reads: the columns of `accounts` aliased `alias`,
    /// each renamed `{alias}_{column}`.
    fn select(alias: &str) -> String {
        [
            "no",
            "currency",
            "balance",
            "pending_debits",
            "pending_credits",
            "allow_overdraft",
            "status",
        ]
        .iter()
        .map(|column| format!("{alias}.{column} AS {alias}_{column}"))
        .collect::<Vec<_>>()
        .join(", ")
    }

    fn read(row: &sqlx::postgres::PgRow, alias: &str) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        let column = |name: &str| format!("{alias}_{name}");
        Ok(Self {
            no: row.try_get(column("no").as_str())?,
            currency: row.try_get(column("currency").as_str())?,
            balance: row.try_get(column("balance").as_str())?,
            pending_debits: row.try_get(column("pending_debits").as_str())?,
            pending_credits: row.try_get(column("pending_credits").as_str())?,
            allow_overdraft: row.try_get(column("allow_overdraft").as_str())?,
            status: row.try_get(column("status").as_str())?,
        })
    }

    /// The locked account; `None` when it does not exist. Its currency is parsed as in
    /// [`PendingTransferRow`], its status strictly (an unknown status fails the batch rather
    /// than moving money).
    fn locked(self) -> Result<Option<LockedAccount>, PostingError> {
        let Some(no) = self.no else {
            return Ok(None);
        };
        let missing = || PostingError::Invariant(format!("account number {no} read incomplete"));
        let status = self.status.ok_or_else(missing)?;
        Ok(Some(LockedAccount {
            no,
            currency: parse_currency(self.currency.ok_or_else(missing)?)?,
            balance: self.balance.ok_or_else(missing)?,
            pending_debits: self.pending_debits.ok_or_else(missing)?,
            pending_credits: self.pending_credits.ok_or_else(missing)?,
            allow_overdraft: self.allow_overdraft.ok_or_else(missing)?,
            status: AccountStatus::try_from(status.clone()).map_err(|_| {
                PostingError::Invariant(format!("account number {no} has status {status:?}"))
            })?,
        }))
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
