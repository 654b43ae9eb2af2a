//! Which side of a transfer an entry is: the debit leaves `from_account`, the credit reaches
//! `to_account` (README, "How a transfer flows").

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
}

super::stored_as_text!(Side, "side", [Side::Debit, Side::Credit]);

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
