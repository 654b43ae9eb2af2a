//! Cursor pagination shared by the list endpoints.

use serde::Deserialize;
use uuid::Uuid;

use super::error::ApiError;

/// `?limit=&cursor=` of the list endpoints whose cursor is an id.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    pub limit: Option<i64>,
    pub cursor: Option<Uuid>,
}

/// The page length a client asked for, or `default`; refused outside `1..=max`.
pub fn page_len(requested: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    let len = requested.unwrap_or(default);
    if !(1..=max).contains(&len) {
        return Err(ApiError::InvalidBody(format!(
            "limit must be between 1 and {max}"
        )));
    }
    Ok(len)
}

/// An `after` cursor (an id or a `seq`) as given: absent, or not negative.
pub fn after_cursor(after: Option<i64>) -> Result<Option<i64>, ApiError> {
    match after {
        Some(after) if after < 0 => Err(ApiError::InvalidBody("after must not be negative".into())),
        after => Ok(after),
    }
}

/// The cursor of the next page: the last item's, when the page came back full.
pub fn next_cursor<T, C>(items: &[T], len: i64, cursor: impl Fn(&T) -> C) -> Option<C> {
    (items.len() as i64 == len)
        .then(|| items.last().map(cursor))
        .flatten()
}
