//! The posting transaction's writes (`super::posting`): what a batch did to the ledger and the
//! transfers' new statuses, in one statement checked against the in-memory result, the
//! transfers read back as their events show them.

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

/// Writes everything the batch did in one statement (one round trip under the gate):
/// entries (with each account's balance after them), hold lines, each touched account's
/// balance and reservations, and the transfers' new statuses, which come back as their events
/// show them (anomaly flags included). A placed hold starts its expiry clock here; a capture
/// records what it moved.
///
/// The same statement checks that the database agrees with the in-memory result: each
/// updated account is compared with what posting computed it is left at, and an account that
/// disagrees (a trigger, a writer behind ferry's back) ends the transaction as an invariant
/// violation, as do row counts other than those asked for.
pub(super) async fn write_batch(
    tx: &mut Transaction<'_, Postgres>,
    applied: &Applied,
    accounts: &HashMap<AccountKey, LockedAccount>,
    transfers: &[PendingTransfer],
) -> Result<Vec<TransferView>, PostingError> {
    // Every entry, hold line and balance change belongs to an outcome.
    if applied.outcomes.is_empty() {
        return Ok(Vec::new());
    }
    let entries = EntryColumns::of(&applied.entries, accounts)?;
    let hold_lines = HoldLineColumns::of(&applied.hold_lines, accounts)?;
    let balances = BalanceColumns::of(&applied.deltas, accounts)?;
    let statuses = StatusColumns::of(applied, transfers);
    // `statement_timestamp()`, not the transaction's start: this statement runs under the
    // gate, after the previous holder committed, so within an account `created_at` grows
    // with `id` — what balance-at-an-instant reads rely on. The parts touch different tables,
    // so running them as one statement's parts (one snapshot) changes nothing they see.
    // `checked` is one row (an aggregate), so every returned transfer carries the same check.
    let rows: Vec<WrittenRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH new_entries AS ( \
           INSERT INTO entries (transfer_id, account_no, side, amount, currency, balance_after, \
             created_at) \
           SELECT e.*, statement_timestamp() FROM unnest($1::uuid[], $2::int8[], $3::text[], \
             $4::numeric[], $5::text[], $6::numeric[]) AS e \
           RETURNING 1 \
         ), new_hold_lines AS ( \
           INSERT INTO hold_lines (transfer_id, account_no, kind, pending_debits_after, \
             created_at) \
           SELECT h.*, statement_timestamp() FROM unnest($7::uuid[], $8::int8[], $9::text[], \
             $10::numeric[]) AS h \
           RETURNING 1 \
         ), balances AS ( \
           UPDATE accounts AS a SET balance = a.balance + d.balance, \
             pending_debits = a.pending_debits + d.pending_debits, \
             pending_credits = a.pending_credits + d.pending_credits \
           FROM unnest($11::int8[], $12::numeric[], $13::numeric[], $14::numeric[], \
             $15::numeric[], $16::numeric[], $17::numeric[]) \
             AS d(no, balance, pending_debits, pending_credits, balance_after, \
               pending_debits_after, pending_credits_after) \
           WHERE a.no = d.no \
           RETURNING a.no, a.balance, a.pending_debits, a.pending_credits, \
             (a.balance, a.pending_debits, a.pending_credits) IS NOT DISTINCT FROM \
               (d.balance_after, d.pending_debits_after, d.pending_credits_after) AS agrees \
         ), checked AS ( \
           SELECT (SELECT count(*) FROM new_entries) AS ledger_entries, \
             (SELECT count(*) FROM new_hold_lines) AS ledger_hold_lines, \
             count(*) AS ledger_balances, \
             coalesce(array_agg(b.no) FILTER (WHERE NOT b.agrees), '{{}}') AS disagreeing_nos, \
             coalesce(array_agg(format('balance %s, pending debits %s, pending credits %s', \
               b.balance, b.pending_debits, b.pending_credits)) FILTER (WHERE NOT b.agrees), \
               '{{}}') AS disagreeing_stored \
           FROM balances b \
         ), updated AS ( \
           UPDATE transfers AS t SET status = u.status, failure_code = u.failure_code, \
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
           FROM unnest($18::uuid[], $19::text[], $20::text[], $21::numeric[]) \
             AS u(id, status, failure_code, captured) \
           WHERE t.id = u.id AND {} \
           RETURNING {}, {} \
         ) \
         SELECT updated.*, checked.* FROM updated CROSS JOIN checked",
        postable("t"),
        events::transfer::qualified_columns("t"),
        events::transfer::flags_column("t")
    )))
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
    .bind(&balances.deltas.balance)
    .bind(&balances.deltas.pending_debits)
    .bind(&balances.deltas.pending_credits)
    .bind(&balances.after.balance)
    .bind(&balances.after.pending_debits)
    .bind(&balances.after.pending_credits)
    .bind(&statuses.ids)
    .bind(&statuses.statuses)
    .bind(&statuses.codes)
    .bind(&statuses.captured)
    .fetch_all(&mut **tx)
    .await?;
    let Some(first) = rows.first() else {
        return Err(PostingError::Invariant(format!(
            "transfer statuses updated: 0 rows, expected {}",
            statuses.ids.len()
        )));
    };
    expect_rows(
        "entries inserted",
        first.ledger_entries as u64,
        applied.entries.len(),
    )?;
    expect_rows(
        "hold lines inserted",
        first.ledger_hold_lines as u64,
        applied.hold_lines.len(),
    )?;
    expect_rows(
        "balances updated",
        first.ledger_balances as u64,
        balances.nos.len(),
    )?;
    if let Some((no, stored)) = first
        .disagreeing_nos
        .iter()
        .zip(&first.disagreeing_stored)
        .next()
    {
        let (key, computed) = balances.computed.get(no).ok_or_else(|| {
            PostingError::Invariant(format!("account number {no} was updated but not asked for"))
        })?;
        return Err(PostingError::Invariant(format!(
            "account {key}: database has {stored} but posting computed {computed:?}"
        )));
    }
    expect_rows(
        "transfer statuses updated",
        rows.len() as u64,
        statuses.ids.len(),
    )?;
    rows.into_iter()
        .map(|row| TransferView::try_from(row.transfer).map_err(PostingError::Database))
        .collect()
}

/// One row of [`write_batch`]'s statement: a transfer as it now is, and the ledger's check
/// (the same on every row).
#[derive(sqlx::FromRow)]
struct WrittenRow {
    #[sqlx(flatten)]
    transfer: FlaggedTransferRow,
    ledger_entries: i64,
    ledger_hold_lines: i64,
    ledger_balances: i64,
    /// Updated accounts whose stored balance or reservations differ from what posting
    /// computed, and what the database stores for each.
    disagreeing_nos: Vec<i64>,
    disagreeing_stored: Vec<String>,
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

/// Balances and reservations as column arrays.
#[derive(Default)]
struct AmountColumns {
    balance: Vec<Decimal>,
    pending_debits: Vec<Decimal>,
    pending_credits: Vec<Decimal>,
}

impl AmountColumns {
    fn push(&mut self, amounts: &AccountDelta) {
        self.balance.push(amounts.balance);
        self.pending_debits.push(amounts.pending_debits);
        self.pending_credits.push(amounts.pending_credits);
    }
}

/// Each touched account's net change, and what posting computed it is left at
/// (`apply_batch` left the locked accounts as the batch leaves them), as column arrays; and
/// the latter by account number, to name an account the database disagrees about.
struct BalanceColumns<'a> {
    nos: Vec<i64>,
    deltas: AmountColumns,
    after: AmountColumns,
    computed: HashMap<i64, (&'a AccountKey, AccountDelta)>,
}

impl<'a> BalanceColumns<'a> {
    fn of(
        deltas: &'a HashMap<AccountKey, AccountDelta>,
        accounts: &HashMap<AccountKey, LockedAccount>,
    ) -> Result<Self, PostingError> {
        let mut columns = Self {
            nos: Vec::with_capacity(deltas.len()),
            deltas: AmountColumns::default(),
            after: AmountColumns::default(),
            computed: HashMap::with_capacity(deltas.len()),
        };
        for (key, delta) in deltas {
            let account = locked(accounts, key)?;
            let after = AccountDelta {
                balance: account.balance,
                pending_debits: account.pending_debits,
                pending_credits: account.pending_credits,
            };
            columns.nos.push(account.no);
            columns.deltas.push(delta);
            columns.after.push(&after);
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

/// The batch's transfers' outcomes as column arrays: status, failure code, and for a
/// posted capture the amount it moved.
struct StatusColumns<'a> {
    ids: Vec<Uuid>,
    statuses: Vec<&'static str>,
    codes: Vec<Option<&'a str>>,
    captured: Vec<Option<Decimal>>,
}

impl<'a> StatusColumns<'a> {
    fn of(applied: &'a Applied, transfers: &[PendingTransfer]) -> Self {
        let captures: HashMap<Uuid, Decimal> = transfers
            .iter()
            .filter_map(|t| match t.instruction {
                Instruction::Capture { amount } => Some((t.id, amount)),
                _ => None,
            })
            .collect();
        let len = applied.outcomes.len();
        let mut columns = Self {
            ids: Vec::with_capacity(len),
            statuses: Vec::with_capacity(len),
            codes: Vec::with_capacity(len),
            captured: Vec::with_capacity(len),
        };
        for (id, outcome) in &applied.outcomes {
            let (status, code) = match outcome {
                Outcome::Posted => ("posted", None),
                Outcome::Held => ("held", None),
                Outcome::Voided => ("voided", None),
                Outcome::Failed(code) => ("failed", Some(code.as_str())),
            };
            columns.ids.push(*id);
            columns.statuses.push(status);
            columns.codes.push(code);
            columns.captured.push(
                captures
                    .get(id)
                    .copied()
                    .filter(|_| *outcome == Outcome::Posted),
            );
        }
        columns
    }
}

fn expect_rows(what: &str, actual: u64, expected: usize) -> Result<(), PostingError> {
    if actual != expected as u64 {
        return Err(PostingError::Invariant(format!(
            "{what}: {actual} rows, expected {expected}"
        )));
    }
    Ok(())
}
