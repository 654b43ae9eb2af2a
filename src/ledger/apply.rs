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
    /// Reserved by holds on this account as their source.
    pub pending_debits: Decimal,
    /// Announced by holds on this account as their destination.
    pub pending_credits: Decimal,
    pub allow_overdraft: bool,
    pub status: AccountStatus,
}

impl LockedAccount {
    /// What the account can still pay: its balance less what holds reserve.
    pub fn available(&self) -> Decimal {
        self.balance - self.pending_debits
    }
}

/// What posting is to do with a transfer it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instruction {
    /// A pending transfer: move its amount.
    Transfer,
    /// A pending hold: reserve its amount on the source account.
    Hold,
    /// A held hold claimed for capture: release the reservation and move `amount` (at most the
    /// held amount).
    Capture { amount: Decimal },
    /// A held hold claimed for a void (requested, or on expiry): release the reservation.
    Void,
}

/// A transfer as read by the posting transaction, with what to do with it. Both accounts are
/// in the transfer's ledger: an id that exists only in another ledger is simply not found.
#[derive(Debug, Clone)]
pub struct PendingTransfer {
    pub id: Uuid,
    pub from_account: AccountKey,
    pub to_account: AccountKey,
    /// The transfer's amount (for a hold, the amount held).
    pub amount: Amount,
    /// When intake accepted it (ms since the epoch), for what reads the outcome afterwards.
    pub accepted_at_ms: i64,
    pub instruction: Instruction,
}

/// The fate of one transfer in this batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Money moved: a transfer, or a captured hold.
    Posted,
    /// A hold placed: the amount is reserved.
    Held,
    /// A hold released without moving money.
    Voided,
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
    /// The account's balance after this entry (balance history).
    pub balance_after: Decimal,
}

pub use crate::domain::Side;

/// Whether a hold line places a reservation or releases one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldLineKind {
    Reserve,
    Release,
}

impl HoldLineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reserve => "reserve",
            Self::Release => "release",
        }
    }
}

/// One line of reservation history: the source account's `pending_debits` after a hold was
/// placed or released (what `available` at an instant needs; the destination's
/// `pending_credits` has no history).
#[derive(Debug, Clone, PartialEq)]
pub struct HoldLine {
    pub transfer_id: Uuid,
    pub account: AccountKey,
    pub kind: HoldLineKind,
    pub pending_debits_after: Decimal,
}

/// The net change a batch makes to one account.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct AccountDelta {
    pub balance: Decimal,
    pub pending_debits: Decimal,
    pub pending_credits: Decimal,
}

/// What a batch does to the ledger.
#[derive(Debug, Default)]
pub struct Applied {
    pub outcomes: Vec<(Uuid, Outcome)>,
    pub entries: Vec<EntryLine>,
    pub hold_lines: Vec<HoldLine>,
    /// Net change per account touched by a posted transfer or a hold.
    pub deltas: HashMap<AccountKey, AccountDelta>,
}

/// Applies `transfers` in order against `accounts`, mutating their balances and reservations.
/// A transfer that cannot post fails alone with its code; the ones after it still see the
/// accounts as left by the ones before.
pub fn apply_batch(
    accounts: &mut HashMap<AccountKey, LockedAccount>,
    transfers: &[PendingTransfer],
) -> Applied {
    let mut applied = Applied::default();
    for transfer in transfers {
        let outcome = match transfer.instruction {
            Instruction::Transfer => {
                match check_payment(accounts, transfer, transfer.amount.value()) {
                    Ok(()) => {
                        move_money(accounts, &mut applied, transfer, transfer.amount.value());
                        Outcome::Posted
                    }
                    Err(code) => Outcome::Failed(code),
                }
            }
            Instruction::Hold => match check_payment(accounts, transfer, transfer.amount.value()) {
                Ok(()) => {
                    reserve(accounts, &mut applied, transfer, HoldLineKind::Reserve);
                    Outcome::Held
                }
                Err(code) => Outcome::Failed(code),
            },
            Instruction::Capture { amount } => {
                // The reservation goes whatever happens: the capture uses it or the hold ends.
                reserve(accounts, &mut applied, transfer, HoldLineKind::Release);
                match check_payment(accounts, transfer, amount) {
                    Ok(()) => {
                        move_money(accounts, &mut applied, transfer, amount);
                        Outcome::Posted
                    }
                    Err(code) => Outcome::Failed(code),
                }
            }
            Instruction::Void => {
                reserve(accounts, &mut applied, transfer, HoldLineKind::Release);
                Outcome::Voided
            }
        };
        applied.outcomes.push((transfer.id, outcome));
    }
    debug_assert!(entries_balance(&applied.entries));
    applied
}

/// Whether `transfer` may move `amount` now: both accounts exist, are open and in its
/// currency, and the source can pay it from what holds leave available (or may overdraw).
fn check_payment(
    accounts: &HashMap<AccountKey, LockedAccount>,
    transfer: &PendingTransfer,
    amount: Decimal,
) -> Result<(), FailureCode> {
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
    let available_after = from
        .available()
        .checked_sub(amount)
        .ok_or(FailureCode::InsufficientFunds)?;
    if available_after < Decimal::ZERO && !from.allow_overdraft {
        return Err(FailureCode::InsufficientFunds);
    }
    // Overflow needs ~10^13 maximal transfers into one account; refuse rather than wrap.
    to.balance
        .checked_add(amount)
        .and_then(|_| to.pending_credits.checked_add(amount))
        .ok_or(FailureCode::InsufficientFunds)?;
    Ok(())
}

/// Moves `amount` (checked by [`check_payment`]) and records its two entries.
fn move_money(
    accounts: &mut HashMap<AccountKey, LockedAccount>,
    applied: &mut Applied,
    transfer: &PendingTransfer,
    amount: Decimal,
) {
    let currency = transfer.amount.currency();
    for (account, side, signed) in [
        (&transfer.from_account, Side::Debit, -amount),
        (&transfer.to_account, Side::Credit, amount),
    ] {
        let Some(locked) = accounts.get_mut(account) else {
            continue;
        };
        locked.balance += signed;
        applied.entries.push(EntryLine {
            transfer_id: transfer.id,
            account: account.clone(),
            side,
            amount: signed,
            currency,
            balance_after: locked.balance,
        });
        applied.deltas.entry(account.clone()).or_default().balance += signed;
    }
}

/// Places (or releases) the transfer's reservation: its amount on the source's
/// `pending_debits` and the destination's `pending_credits`.
fn reserve(
    accounts: &mut HashMap<AccountKey, LockedAccount>,
    applied: &mut Applied,
    transfer: &PendingTransfer,
    kind: HoldLineKind,
) {
    let signed = match kind {
        HoldLineKind::Reserve => transfer.amount.value(),
        HoldLineKind::Release => -transfer.amount.value(),
    };
    for (account, is_source) in [
        (&transfer.from_account, true),
        (&transfer.to_account, false),
    ] {
        let Some(locked) = accounts.get_mut(account) else {
            continue;
        };
        let delta = applied.deltas.entry(account.clone()).or_default();
        if is_source {
            locked.pending_debits += signed;
            delta.pending_debits += signed;
            applied.hold_lines.push(HoldLine {
                transfer_id: transfer.id,
                account: account.clone(),
                kind,
                pending_debits_after: locked.pending_debits,
            });
        } else {
            locked.pending_credits += signed;
            delta.pending_credits += signed;
        }
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
            pending_debits: Decimal::ZERO,
            pending_credits: Decimal::ZERO,
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
            instruction: Instruction::Transfer,
        }
    }

    fn hold(from: &str, to: &str, amount: &str) -> PendingTransfer {
        PendingTransfer {
            instruction: Instruction::Hold,
            ..transfer(from, to, amount)
        }
    }

    fn settle(held: &PendingTransfer, instruction: Instruction) -> PendingTransfer {
        PendingTransfer {
            instruction,
            ..held.clone()
        }
    }

    fn dec(text: &str) -> Decimal {
        text.parse().expect("decimal")
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
        assert_eq!(applied.deltas[&id("bob")].balance.to_string(), "10.00");
        let after: Vec<String> = applied
            .entries
            .iter()
            .map(|e| e.balance_after.to_string())
            .collect();
        assert_eq!(after, ["4.00", "6.00", "0.00", "10.00"]);
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
                pending_debits: Decimal::ZERO,
                pending_credits: Decimal::ZERO,
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
        assert!(applied.deltas.is_empty());
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
    fn a_hold_reserves_without_moving_money_and_blocks_what_it_reserves() {
        let mut accounts = book();
        let held = hold("alice", "bob", "7.00");
        let applied = apply_batch(
            &mut accounts,
            &[
                held.clone(),
                transfer("alice", "bob", "3.01"), // 3.00 available
                hold("alice", "bob", "3.01"),
                transfer("alice", "bob", "3.00"),
            ],
        );
        let outcomes: Vec<_> = applied.outcomes.iter().map(|(_, o)| *o).collect();
        assert_eq!(
            outcomes,
            [
                Outcome::Held,
                Outcome::Failed(FailureCode::InsufficientFunds),
                Outcome::Failed(FailureCode::InsufficientFunds),
                Outcome::Posted,
            ]
        );
        let alice = &accounts[&id("alice")];
        assert_eq!(
            (alice.balance, alice.pending_debits),
            (dec("7.00"), dec("7.00"))
        );
        assert_eq!(alice.available(), Decimal::ZERO);
        assert_eq!(accounts[&id("bob")].pending_credits, dec("7.00"));
        assert_eq!(
            applied.entries.len(),
            2,
            "only the plain transfer wrote entries"
        );
        assert_eq!(applied.hold_lines.len(), 1, "one line, on the source");
        assert_eq!(applied.deltas[&id("alice")].pending_debits, dec("7.00"));
    }

    #[test]
    fn a_partial_capture_moves_what_it_captures_and_releases_the_rest() {
        let mut accounts = book();
        let held = hold("alice", "bob", "7.00");
        apply_batch(&mut accounts, std::slice::from_ref(&held));
        let applied = apply_batch(
            &mut accounts,
            &[settle(
                &held,
                Instruction::Capture {
                    amount: dec("5.00"),
                },
            )],
        );
        assert_eq!(applied.outcomes[0].1, Outcome::Posted);
        let (alice, bob) = (&accounts[&id("alice")], &accounts[&id("bob")]);
        assert_eq!(
            (alice.balance, alice.pending_debits),
            (dec("5.00"), dec("0.00"))
        );
        assert_eq!(
            (bob.balance, bob.pending_credits),
            (dec("5.00"), dec("0.00"))
        );
        let amounts: Vec<Decimal> = applied.entries.iter().map(|e| e.amount).collect();
        assert_eq!(amounts, [dec("-5.00"), dec("5.00")]);
        assert!(
            applied
                .hold_lines
                .iter()
                .all(|l| l.kind == HoldLineKind::Release)
        );
    }

    #[test]
    fn a_void_releases_and_a_capture_on_a_frozen_account_fails_releasing_too() {
        let mut accounts = book();
        let first = hold("alice", "bob", "4.00");
        let second = hold("alice", "bob", "6.00");
        apply_batch(&mut accounts, &[first.clone(), second.clone()]);
        assert_eq!(accounts[&id("alice")].available(), Decimal::ZERO);
        if let Some(bob) = accounts.get_mut(&id("bob")) {
            bob.status = AccountStatus::Frozen;
        }
        let applied = apply_batch(
            &mut accounts,
            &[
                settle(&first, Instruction::Void),
                settle(
                    &second,
                    Instruction::Capture {
                        amount: dec("6.00"),
                    },
                ),
            ],
        );
        let outcomes: Vec<_> = applied.outcomes.iter().map(|(_, o)| *o).collect();
        assert_eq!(
            outcomes,
            [Outcome::Voided, Outcome::Failed(FailureCode::AccountFrozen)]
        );
        let alice = &accounts[&id("alice")];
        assert_eq!(
            (alice.balance, alice.pending_debits),
            (dec("10.00"), dec("0.00"))
        );
        assert_eq!(accounts[&id("bob")].pending_credits, dec("0.00"));
        assert!(applied.entries.is_empty());
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
                let amount = format!("{}.{:02}", next() % 50, 1 + next() % 99);
                if next() % 4 == 0 {
                    hold(from, to, &amount)
                } else {
                    transfer(from, to, &amount)
                }
            })
            .collect();
        let applied = apply_batch(&mut accounts, &batch);
        let total: Decimal = accounts.values().map(|a| a.balance).sum();
        assert_eq!(total.to_string(), "10.00");
        for (name, acc) in &accounts {
            assert!(
                acc.allow_overdraft || acc.available() >= Decimal::ZERO,
                "{name}"
            );
        }
        let held: Decimal = batch
            .iter()
            .zip(&applied.outcomes)
            .filter(|(_, (_, o))| *o == Outcome::Held)
            .map(|(t, _)| t.amount.value())
            .sum();
        let pending: Decimal = accounts.values().map(|a| a.pending_debits).sum();
        assert_eq!(pending, held);
        assert!(held > Decimal::ZERO);
        let posted = applied
            .outcomes
            .iter()
            .filter(|(_, o)| *o == Outcome::Posted)
            .count();
        assert_eq!(applied.entries.len(), posted * 2);
        assert!(entries_balance(&applied.entries));
    }
}
