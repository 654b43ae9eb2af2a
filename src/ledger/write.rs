//! The posting transaction's writes (`super::posting`): what a batch did to the ledger, in one
//! statement checked against the in-memory result, then the transfers' new statuses, read back
//! as their events show them.

use std::collections::HashMap;

use rust_decimal::Decimal;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::apply::{
    AccountDelta, Applied, EntryLine, HoldLine, Instruction, LockedAccount, Outcome,
    PendingTransfer,
};
use super::load::postable;
use super::posting::PostingError;
use crate::domain::AccountKey;
use crate::events::{
    self,
    transfer::{FlaggedTransferRow, TransferView},
};

/// Writes what the batch did to the ledger in one statement (one round trip under the gate):
/// entries (with each account's balance after them), hold lines, and each touched account's
/// balance and reservations; then checks that the database agrees with the in-memory result.
pub(super) async fn write_ledger(
    tx: &mut Transaction<'_, Postgres>,
    applied: &Applied,
    accounts: &HashMap<AccountKey, LockedAccount>,
) -> Result<(), PostingError> {
    // Every entry and hold line changes an account, so no delta means nothing to write (a
    // batch whose transfers all failed): no round trip.
    if applied.deltas.is_empty() {
        return Ok(());
    }
    let entries = EntryColumns::of(&applied.entries, accounts)?;
    let hold_lines = HoldLineColumns::of(&applied.hold_lines, accounts)?;
    let balances = BalanceColumns::of(&applied.deltas, accounts)?;
    // `statement_timestamp()`, not the transaction's start: this statement runs under the
    // gate, after the previous holder committed, so within an account `created_at` grows
    // with `id` — what balance-at-an-instant reads rely on. The three parts touch different
    // tables, so running them as one statement's parts (one snapshot) changes nothing they see.
    let written: WrittenLedger = sqlx::query_as(
        "WITH new_entries AS ( \
           INSERT INTO entries (transfer_id, account_no, side, amount, currency, balance_after, \
             created_at) \
           SELECT t.*, statement_timestamp() FROM unnest($1::uuid[], $2::int8[], $3::text[], \
             $4::numeric[], $5::text[], $6::numeric[]) AS t \
           RETURNING 1 \
         ), new_hold_lines AS ( \
           INSERT INTO hold_lines (transfer_id, account_no, kind, pending_debits_after, \
             created_at) \
           SELECT t.*, statement_timestamp() FROM unnest($7::uuid[], $8::int8[], $9::text[], \
             $10::numeric[]) AS t \
           RETURNING 1 \
         ), balances AS ( \
           UPDATE accounts AS a SET balance = a.balance + d.balance, \
             pending_debits = a.pending_debits + d.pending_debits, \
             pending_credits = a.pending_credits + d.pending_credits \
           FROM unnest($11::int8[], $12::numeric[], $13::numeric[], $14::numeric[]) \
             AS d(no, balance, pending_debits, pending_credits) \
           WHERE a.no = d.no RETURNING a.no, a.balance, a.pending_debits, a.pending_credits \
         ) \
         SELECT (SELECT count(*) FROM new_entries) AS entries, \
           (SELECT count(*) FROM new_hold_lines) AS hold_lines, \
           coalesce(array_agg(b.no), '{}') AS nos, \
           coalesce(array_agg(b.balance), '{}') AS balances, \
           coalesce(array_agg(b.pending_debits), '{}') AS pending_debits, \
           coalesce(array_agg(b.pending_credits), '{}') AS pending_credits \
         FROM balances b",
    )
    .bind(&entries.transfer_ids)
    .bind(&entries.account_nos)
    .bind(&entries.sides)
    .bind(&entries.amounts)
    .bind(&entries.currencies)
    .bind(&entries.balances_after)
    .bind(&hold_lines.transfer_ids)
    .bind(&hold_lines.account_nos)
    .bind(&hold_lines.kinds)
    .bind(&hold_lines.pending_debits_after)
    .bind(&balances.nos)
    .bind(&balances.balances)
    .bind(&balances.pending_debits)
    .bind(&balances.pending_credits)
    .fetch_one(&mut **tx)
    .await?;
    expect_rows(
        "entries inserted",
        written.entries as u64,
        applied.entries.len(),
    )?;
    expect_rows(
        "hold lines inserted",
        written.hold_lines as u64,
        applied.hold_lines.len(),
    )?;
    expect_rows(
        "balances updated",
        written.nos.len() as u64,
        balances.nos.len(),
    )?;
    for (n, no) in written.nos.iter().enumerate() {
        let Some((key, computed)) = balances.computed.get(no) else {
            return Err(PostingError::Invariant(format!(
                "account number {no} was updated but not asked for"
            )));
        };
        let stored = AccountDelta {
            balance: written.balances[n],
            pending_debits: written.pending_debits[n],
            pending_credits: written.pending_credits[n],
        };
        if *computed != stored {
            return Err(PostingError::Invariant(format!(
                "account {key}: database has {stored:?} but posting computed {computed:?}"
            )));
        }
    }
    Ok(())
}

/// What [`write_ledger`]'s statement reports: rows inserted, and each updated account's
/// balance and reservations as stored (arrays of one length, in no particular order).
#[derive(sqlx::FromRow)]
struct WrittenLedger {
    entries: i64,
    hold_lines: i64,
    nos: Vec<i64>,
    balances: Vec<Decimal>,
    pending_debits: Vec<Decimal>,
    pending_credits: Vec<Decimal>,
}

/// The batch's entries as the statement's column arrays.
struct EntryColumns<'a> {
    transfer_ids: Vec<Uuid>,
    account_nos: Vec<i64>,
    sides: Vec<&'a str>,
    amounts: Vec<Decimal>,
    currencies: Vec<&'a str>,
    balances_after: Vec<Decimal>,
}

impl<'a> EntryColumns<'a> {
    fn of(
        entries: &'a [EntryLine],
        accounts: &HashMap<AccountKey, LockedAccount>,
    ) -> Result<Self, PostingError> {
        Ok(Self {
            transfer_ids: entries.iter().map(|e| e.transfer_id).collect(),
            account_nos: account_nos(entries.iter().map(|e| &e.account), accounts)?,
            sides: entries.iter().map(|e| e.side.as_str()).collect(),
            amounts: entries.iter().map(|e| e.amount).collect(),
            currencies: entries.iter().map(|e| e.currency.code()).collect(),
            balances_after: entries.iter().map(|e| e.balance_after).collect(),
        })
    }
}

/// Reservation history: one line on the source account for each hold placed or released.
struct HoldLineColumns {
    transfer_ids: Vec<Uuid>,
    account_nos: Vec<i64>,
    kinds: Vec<&'static str>,
    pending_debits_after: Vec<Decimal>,
}

impl HoldLineColumns {
    fn of(
        lines: &[HoldLine],
        accounts: &HashMap<AccountKey, LockedAccount>,
    ) -> Result<Self, PostingError> {
        Ok(Self {
            transfer_ids: lines.iter().map(|l| l.transfer_id).collect(),
            account_nos: account_nos(lines.iter().map(|l| &l.account), accounts)?,
            kinds: lines.iter().map(|l| l.kind.as_str()).collect(),
            pending_debits_after: lines.iter().map(|l| l.pending_debits_after).collect(),
        })
    }
}

/// Each touched account's net change as column arrays, and what posting computed it is left
/// at (`apply_batch` left the locked accounts as the batch leaves them), by account number.
struct BalanceColumns<'a> {
    nos: Vec<i64>,
    balances: Vec<Decimal>,
    pending_debits: Vec<Decimal>,
    pending_credits: Vec<Decimal>,
    computed: HashMap<i64, (&'a AccountKey, AccountDelta)>,
}

impl<'a> BalanceColumns<'a> {
    fn of(
        deltas: &'a HashMap<AccountKey, AccountDelta>,
        accounts: &HashMap<AccountKey, LockedAccount>,
    ) -> Result<Self, PostingError> {
        let len = deltas.len();
        let mut columns = Self {
            nos: Vec::with_capacity(len),
            balances: Vec::with_capacity(len),
            pending_debits: Vec::with_capacity(len),
            pending_credits: Vec::with_capacity(len),
            computed: HashMap::with_capacity(len),
        };
        for (key, delta) in deltas {
            let account = locked(accounts, key)?;
            columns.nos.push(account.no);
            columns.balances.push(delta.balance);
            columns.pending_debits.push(delta.pending_debits);
            columns.pending_credits.push(delta.pending_credits);
            let after = AccountDelta {
                balance: account.balance,
                pending_debits: account.pending_debits,
                pending_credits: account.pending_credits,
            };
            columns.computed.insert(account.no, (key, after));
        }
        Ok(columns)
    }
}

/// The numbers (`accounts.no`) of locked accounts, by which the statement names them.
fn account_nos<'k>(
    keys: impl Iterator<Item = &'k AccountKey>,
    accounts: &HashMap<AccountKey, LockedAccount>,
) -> Result<Vec<i64>, PostingError> {
    keys.map(|key| locked(accounts, key).map(|a| a.no))
        .collect()
}

/// A locked account; an entry or delta on an account posting did not lock is an invariant
/// violation (apply only moves money between locked accounts).
fn locked<'a>(
    accounts: &'a HashMap<AccountKey, LockedAccount>,
    key: &AccountKey,
) -> Result<&'a LockedAccount, PostingError> {
    accounts
        .get(key)
        .ok_or_else(|| PostingError::Invariant(format!("account {key} was not locked")))
}

/// Moves the batch's transfers to their outcomes; returns them as they now are, as their
/// events show them. A placed hold starts its expiry clock here; a capture records what it moved.
pub(super) async fn update_statuses(
    tx: &mut Transaction<'_, Postgres>,
    applied: &Applied,
    transfers: &[PendingTransfer],
) -> Result<Vec<TransferView>, PostingError> {
    let captures: HashMap<Uuid, Decimal> = transfers
        .iter()
        .filter_map(|t| match t.instruction {
            Instruction::Capture { amount } => Some((t.id, amount)),
            _ => None,
        })
        .collect();
    let len = applied.outcomes.len();
    let mut ids = Vec::with_capacity(len);
    let mut statuses = Vec::with_capacity(len);
    let mut codes: Vec<Option<&str>> = Vec::with_capacity(len);
    let mut captured: Vec<Option<Decimal>> = Vec::with_capacity(len);
    for (id, outcome) in &applied.outcomes {
        ids.push(*id);
        let (status, code) = match outcome {
            Outcome::Posted => ("posted", None),
            Outcome::Held => ("held", None),
            Outcome::Voided => ("voided", None),
            Outcome::Failed(code) => ("failed", Some(code.as_str())),
        };
        statuses.push(status);
        codes.push(code);
        captured.push(
            captures
                .get(id)
                .copied()
                .filter(|_| *outcome == Outcome::Posted),
        );
    }
    let updated: Vec<FlaggedTransferRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE transfers AS t SET status = u.status, failure_code = u.failure_code, \
           attempts = CASE WHEN t.status = 'pending' THEN t.attempts + 1 ELSE t.attempts END, \
           updated_at = now(), last_error = NULL, \
           posted_at = CASE WHEN u.status = 'posted' THEN now() END, \
           failed_at = CASE WHEN u.status = 'failed' THEN now() END, \
           held_at = CASE WHEN u.status = 'held' THEN now() ELSE t.held_at END, \
           hold_expires_at = CASE WHEN u.status = 'held' \
             THEN now() + t.hold_expires_in_secs * interval '1 second' \
             ELSE t.hold_expires_at END, \
           voided_at = CASE WHEN u.status = 'voided' THEN now() END, \
           captured_amount = u.captured \
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::numeric[]) \
           AS u(id, status, failure_code, captured) \
         WHERE t.id = u.id AND {} \
         RETURNING {}, {}",
        postable("t"),
        events::transfer::qualified_columns("t"),
        events::transfer::flags_column("t")
    )))
    .bind(&ids)
    .bind(&statuses)
    .bind(&codes)
    .bind(&captured)
    .fetch_all(&mut **tx)
    .await?;
    expect_rows("transfer statuses updated", updated.len() as u64, ids.len())?;
    updated
        .into_iter()
        .map(|row| TransferView::try_from(row).map_err(PostingError::Database))
        .collect()
}

fn expect_rows(what: &str, actual: u64, expected: usize) -> Result<(), PostingError> {
    if actual != expected as u64 {
        return Err(PostingError::Invariant(format!(
            "{what}: {actual} rows, expected {expected}"
        )));
    }
    Ok(())
}
