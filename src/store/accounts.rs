//! Accounts and their ledger entries, as the API reads and creates them.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::PgPool;

use crate::domain::{AccountId, Currency, Side};

/// A new account as accepted by the API.
#[derive(Debug, Clone)]
pub struct NewAccount {
    pub id: AccountId,
    pub currency: Currency,
    pub allow_overdraft: bool,
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// An account as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Account)]
pub struct AccountView {
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,64}$")]
    pub id: String,
    #[schema(pattern = "^[A-Z]{3}$", example = "USD")]
    pub currency: String,
    /// A decimal string with the currency's decimal places; negative only with overdraft.
    #[schema(pattern = r"^-?[0-9]+(\.[0-9]+)?$", example = "0.00")]
    pub balance: String,
    pub allow_overdraft: bool,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

/// One side of a posted transfer: debits are negative, credits positive.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Entry)]
pub struct EntryView {
    /// Opaque; entries are listed newest first by it.
    pub id: String,
    pub transfer_id: uuid::Uuid,
    /// `debit` or `credit`.
    #[schema(pattern = "^(debit|credit)$")]
    pub side: String,
    /// A decimal string: negative for a debit, positive for a credit.
    #[schema(pattern = r"^-?[0-9]+(\.[0-9]+)?$", example = "-12.30")]
    pub amount: String,
    #[schema(pattern = "^[A-Z]{3}$", example = "USD")]
    pub currency: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum CreateAccountError {
    #[error("account already exists")]
    AlreadyExists,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

pub async fn create(
    pool: &PgPool,
    account: &NewAccount,
) -> Result<AccountView, CreateAccountError> {
    let row = sqlx::query_as::<_, AccountRow>(
        "INSERT INTO accounts (id, currency, allow_overdraft, metadata) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (ledger, id) DO NOTHING \
         RETURNING id, currency, balance, allow_overdraft, metadata, created_at",
    )
    .bind(account.id.as_str())
    .bind(account.currency.code())
    .bind(account.allow_overdraft)
    .bind(serde_json::Value::Object(account.metadata.clone()))
    .fetch_optional(pool)
    .await?;
    match row {
        Some(row) => Ok(row.into()),
        None => Err(CreateAccountError::AlreadyExists),
    }
}

pub async fn get(pool: &PgPool, id: &AccountId) -> Result<Option<AccountView>, sqlx::Error> {
    let row = sqlx::query_as::<_, AccountRow>(
        "SELECT id, currency, balance, allow_overdraft, metadata, created_at \
         FROM accounts WHERE id = $1",
    )
    .bind(id.as_str())
    .fetch_optional(pool)
    .await?;
    Ok(row.map(AccountView::from))
}

/// One page of an account's entries, newest first, starting below `before_entry_id`.
pub async fn entries(
    pool: &PgPool,
    id: &AccountId,
    before_entry_id: Option<i64>,
    limit: i64,
) -> Result<Vec<EntryView>, sqlx::Error> {
    let rows = sqlx::query_as::<_, EntryRow>(
        "SELECT id, transfer_id, side, amount, currency, created_at FROM entries \
         WHERE account_id = $1 AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
    )
    .bind(id.as_str())
    .bind(before_entry_id)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(EntryView::from).collect())
}

/// An `accounts` row as the API reads it.
#[derive(sqlx::FromRow)]
struct AccountRow {
    id: String,
    currency: String,
    balance: Decimal,
    allow_overdraft: bool,
    metadata: serde_json::Value,
    created_at: DateTime<Utc>,
}

impl From<AccountRow> for AccountView {
    fn from(row: AccountRow) -> Self {
        Self {
            id: row.id,
            balance: format_amount(&row.currency, row.balance),
            currency: row.currency,
            allow_overdraft: row.allow_overdraft,
            metadata: row.metadata,
            created_at: row.created_at,
        }
    }
}

/// An `entries` row as the API reads it; `side` reads back strictly.
#[derive(sqlx::FromRow)]
struct EntryRow {
    id: i64,
    transfer_id: uuid::Uuid,
    #[sqlx(try_from = "String")]
    side: Side,
    amount: Decimal,
    currency: String,
    created_at: DateTime<Utc>,
}

impl From<EntryRow> for EntryView {
    fn from(row: EntryRow) -> Self {
        Self {
            id: row.id.to_string(),
            transfer_id: row.transfer_id,
            side: row.side.as_str().to_owned(),
            amount: format_amount(&row.currency, row.amount),
            currency: row.currency,
            created_at: row.created_at,
        }
    }
}

/// Shows a stored amount with its currency's decimal places (`"0.00"` for USD).
pub fn format_amount(currency: &str, value: Decimal) -> String {
    match Currency::parse(currency.trim()) {
        Ok(c) => c.format(value),
        Err(_) => value.to_string(),
    }
}
