//! Which side of a transfer an entry is: the debit leaves `from_account`, the credit reaches
//! `to_account` (README, "How a transfer flows").

use super::severity::UnknownValue;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Debit,
    Credit,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Debit => "debit",
            Self::Credit => "credit",
        }
    }

    /// Parses a stored value; unknown text is an error, never a default.
    pub fn parse_known(text: &str) -> Result<Self, UnknownValue> {
        [Self::Debit, Self::Credit]
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| UnknownValue::new("side", text))
    }
}

impl TryFrom<String> for Side {
    type Error = UnknownValue;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::parse_known(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_stored_side_is_an_error_not_a_default() {
        assert_eq!(Side::try_from("credit".to_owned()), Ok(Side::Credit));
        assert_eq!(
            Side::try_from("both".to_owned()).map_err(|e| e.to_string()),
            Err("unknown side \"both\"".to_owned())
        );
    }
}
