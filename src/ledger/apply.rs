//! Applying a batch of transfers to locked account balances, in memory, one by one.
//!
//! Pure: no I/O, so every rule is unit-tested without a database. The posting engine feeds it
//! rows it has locked and writes back what it returns.

use std::collections::HashMap;

use rust_decimal::Decimal;
use uuid::Uuid;

use crate::domain::{AccountKey, AccountStatus, Amount, Currency, FailureCode};

/// An account row as locked by the posting transaction.
#[derive(Debug, Clone)]
pub struct LockedAccount {
    /// The account's internal number (`accounts.no`), by which entries and the balance update
    /// refer to it.
    pub no: i64,
    pub currency: Currency,
    pub balance: Decimal,
    pub allow_overdraft: bool,
    pub status: AccountStatus,
}

/// A pending transfer as read by the posting transaction. Both accounts are in the transfer's
/// ledger: an id that exists only in another ledger is simply not found.
#[derive(Debug, Clone)]
pub struct PendingTransfer {
    pub id: Uuid,
    pub from_account: AccountKey,
    pub to_account: AccountKey,
    pub amount: Amount,
    /// When intake accepted it (ms since the epoch), for what reads the outcome afterwards.
    pub accepted_at_ms: i64,
}

/// The fate of one transfer in this batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Posted,
    Failed(FailureCode),
}

/// One ledger line to insert; `amount` is signed (debit < 0 < credit).
#[derive(Debug, Clone, PartialEq)]
pub struct EntryLine {
    pub transfer_id: Uuid,
    pub account: AccountKey,
    pub side: Side,
    pub amount: Decimal,
    pub currency: Currency,
}

pub use crate::domain::Side;

/// What a batch does to the ledger.
#[derive(Debug, Default)]
pub struct Applied {
    pub outcomes: Vec<(Uuid, Outcome)>,
    pub entries: Vec<EntryLine>,
    /// Net change per account touched by a posted transfer.
    pub balance_deltas: HashMap<AccountKey, Decimal>,
}

/// Applies `transfers` in order against `accounts`, mutating their balances. A transfer that
/// cannot post fails alone with its code; the ones after it still see the balances as left by
/// the ones before.
pub fn apply_batch(
    accounts: &mut HashMap<AccountKey, LockedAccount>,
    transfers: &[PendingTransfer],
) -> Applied {
    let mut applied = Applied::default();
    for transfer in transfers {
        let outcome = match apply_one(accounts, transfer) {
            Ok(()) => {
                record_entries(&mut applied, transfer);
                Outcome::Posted
            }
            Err(code) => Outcome::Failed(code),
        };
        applied.outcomes.push((transfer.id, outcome));
    }
    debug_assert!(entries_balance(&applied.entries));
    applied
}

fn apply_one(
    accounts: &mut HashMap<AccountKey, LockedAccount>,
    transfer: &PendingTransfer,
) -> Result<(), FailureCode> {
    let amount = transfer.amount.value();
    let currency = transfer.amount.currency();
    let from = accounts
        .get(&transfer.from_account)
        .ok_or(FailureCode::AccountNotFound)?;
    let to = accounts
        .get(&transfer.to_account)
        .ok_or(FailureCode::AccountNotFound)?;
    // Closed outranks frozen: a closed account will never take the transfer.
    let either = |status| from.status == status || to.status == status;
    if either(AccountStatus::Closed) {
        return Err(FailureCode::AccountClosed);
    }
    if either(AccountStatus::Frozen) {
        return Err(FailureCode::AccountFrozen);
    }
    if from.currency != currency || to.currency != currency {
        return Err(FailureCode::CurrencyMismatch);
    }
    let from_after = from
        .balance
        .checked_sub(amount)
        .ok_or(FailureCode::InsufficientFunds)?;
    if from_after < Decimal::ZERO && !from.allow_overdraft {
        return Err(FailureCode::InsufficientFunds);
    }
    // Overflow needs ~10^13 maximal transfers into one account; refuse rather than wrap.
    let to_after = to
        .balance
        .checked_add(amount)
        .ok_or(FailureCode::InsufficientFunds)?;
    if let Some(from) = accounts.get_mut(&transfer.from_account) {
        from.balance = from_after;
    }
    if let Some(to) = accounts.get_mut(&transfer.to_account) {
        to.balance = to_after;
    }
    Ok(())
}

fn record_entries(applied: &mut Applied, transfer: &PendingTransfer) {
    let amount = transfer.amount.value();
    let currency = transfer.amount.currency();
    for (account, side, signed) in [
        (&transfer.from_account, Side::Debit, -amount),
        (&transfer.to_account, Side::Credit, amount),
    ] {
        applied.entries.push(EntryLine {
            transfer_id: transfer.id,
            account: account.clone(),
            side,
            amount: signed,
            currency,
        });
        *applied
            .balance_deltas
            .entry(account.clone())
            .or_insert(Decimal::ZERO) += signed;
    }
}

/// Invariant 5 for a batch: per currency, entries sum to zero.
pub fn entries_balance(entries: &[EntryLine]) -> bool {
    let mut sums: HashMap<Currency, Decimal> = HashMap::new();
    for entry in entries {
        *sums.entry(entry.currency).or_insert(Decimal::ZERO) += entry.amount;
    }
    sums.values().all(|sum| sum.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AccountId, LedgerName};

    fn usd() -> Currency {
        Currency::parse("USD").expect("USD")
    }

    fn account(balance: &str, allow_overdraft: bool) -> LockedAccount {
        LockedAccount {
            no: 0,
            currency: usd(),
            balance: balance.parse().expect("decimal"),
            allow_overdraft,
            status: AccountStatus::Active,
        }
    }

    fn id(s: &str) -> AccountKey {
        AccountKey::new(
            LedgerName::default_ledger(),
            AccountId::parse(s).expect("id"),
        )
    }

    fn transfer(from: &str, to: &str, amount: &str) -> PendingTransfer {
        PendingTransfer {
            id: Uuid::new_v4(),
            from_account: id(from),
            to_account: id(to),
            amount: Amount::parse(amount, usd()).expect("amount"),
            accepted_at_ms: 0,
        }
    }

    fn book() -> HashMap<AccountKey, LockedAccount> {
        HashMap::from([
            (id("treasury"), account("0", true)),
            (id("alice"), account("10.00", false)),
            (id("bob"), account("0", false)),
        ])
    }

    #[test]
    fn each_transfer_succeeds_or_fails_on_its_own_in_order() {
        let mut accounts = book();
        let batch = [
            transfer("alice", "bob", "6.00"),
            transfer("alice", "bob", "6.00"), // only 4.00 left
            transfer("alice", "bob", "4.00"),
            transfer("bob", "nobody", "1.00"),
        ];
        let applied = apply_batch(&mut accounts, &batch);
        let outcomes: Vec<_> = applied.outcomes.iter().map(|(_, o)| *o).collect();
        assert_eq!(
            outcomes,
            [
                Outcome::Posted,
                Outcome::Failed(FailureCode::InsufficientFunds),
                Outcome::Posted,
                Outcome::Failed(FailureCode::AccountNotFound),
            ]
        );
        assert_eq!(accounts[&id("alice")].balance, Decimal::ZERO);
        assert_eq!(accounts[&id("bob")].balance.to_string(), "10.00");
        assert_eq!(applied.entries.len(), 4);
        assert!(entries_balance(&applied.entries));
        assert_eq!(applied.balance_deltas[&id("bob")].to_string(), "10.00");
    }

    #[test]
    fn an_overdraft_account_may_go_negative_and_others_may_not() {
        let mut accounts = book();
        let applied = apply_batch(
            &mut accounts,
            &[
                transfer("treasury", "bob", "100.00"),
                transfer("bob", "alice", "100.01"),
            ],
        );
        assert_eq!(applied.outcomes[0].1, Outcome::Posted);
        assert_eq!(
            applied.outcomes[1].1,
            Outcome::Failed(FailureCode::InsufficientFunds)
        );
        assert_eq!(accounts[&id("treasury")].balance.to_string(), "-100.00");
    }

    #[test]
    fn a_currency_mismatch_fails_without_entries() {
        let mut accounts = book();
        let eur = Currency::parse("EUR").expect("EUR");
        accounts.insert(
            id("euro"),
            LockedAccount {
                no: 0,
                currency: eur,
                balance: Decimal::ZERO,
                allow_overdraft: false,
                status: AccountStatus::Active,
            },
        );
        let applied = apply_batch(&mut accounts, &[transfer("alice", "euro", "1.00")]);
        assert_eq!(
            applied.outcomes[0].1,
            Outcome::Failed(FailureCode::CurrencyMismatch)
        );
        assert!(applied.entries.is_empty());
        assert!(applied.balance_deltas.is_empty());
    }

    #[test]
    fn frozen_and_closed_accounts_neither_pay_nor_receive() {
        let mut accounts = book();
        accounts.insert(id("frozen"), account("5.00", false));
        accounts.insert(id("closed"), account("0", false));
        if let Some(a) = accounts.get_mut(&id("frozen")) {
            a.status = AccountStatus::Frozen;
        }
        if let Some(a) = accounts.get_mut(&id("closed")) {
            a.status = AccountStatus::Closed;
        }
        let batch = [
            transfer("frozen", "bob", "1.00"),
            transfer("alice", "frozen", "1.00"),
            transfer("alice", "closed", "1.00"),
            transfer("closed", "frozen", "1.00"),
            transfer("alice", "bob", "1.00"),
        ];
        let applied = apply_batch(&mut accounts, &batch);
        let outcomes: Vec<_> = applied.outcomes.iter().map(|(_, o)| *o).collect();
        assert_eq!(
            outcomes,
            [
                Outcome::Failed(FailureCode::AccountFrozen),
                Outcome::Failed(FailureCode::AccountFrozen),
                Outcome::Failed(FailureCode::AccountClosed),
                Outcome::Failed(FailureCode::AccountClosed),
                Outcome::Posted,
            ]
        );
        assert_eq!(accounts[&id("frozen")].balance.to_string(), "5.00");
        assert_eq!(applied.entries.len(), 2);
    }

    #[test]
    fn an_account_id_in_another_ledger_is_not_found() {
        let mut accounts = book();
        let other = LedgerName::parse("other").expect("ledger");
        let mut stray = transfer("alice", "bob", "1.00");
        stray.to_account = AccountKey::new(other, AccountId::parse("bob").expect("id"));
        let applied = apply_batch(&mut accounts, &[stray]);
        assert_eq!(
            applied.outcomes[0].1,
            Outcome::Failed(FailureCode::AccountNotFound)
        );
        assert_eq!(accounts[&id("alice")].balance.to_string(), "10.00");
    }

    #[test]
    fn random_batches_conserve_money_and_never_overdraw() {
        let names = ["treasury", "alice", "bob", "carol", "dave"];
        let mut accounts = book();
        accounts.insert(id("carol"), account("0", false));
        accounts.insert(id("dave"), account("0", false));
        let mut seed = 0x9e37_79b9_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let batch: Vec<_> = (0..2000)
            .map(|_| {
                let from = names[(next() % 5) as usize];
                let mut to = names[(next() % 5) as usize];
                if to == from {
                    to = if from == "alice" { "bob" } else { "alice" };
                }
                transfer(from, to, &format!("{}.{:02}", next() % 50, 1 + next() % 99))
            })
            .collect();
        let applied = apply_batch(&mut accounts, &batch);
        let total: Decimal = accounts.values().map(|a| a.balance).sum();
        assert_eq!(total.to_string(), "10.00");
        for (name, acc) in &accounts {
            assert!(
                acc.allow_overdraft || acc.balance >= Decimal::ZERO,
                "{name}"
            );
        }
        let posted = applied
            .outcomes
            .iter()
            .filter(|(_, o)| *o == Outcome::Posted)
            .count();
        assert_eq!(applied.entries.len(), posted * 2);
        assert!(entries_balance(&applied.entries));
    }
}
