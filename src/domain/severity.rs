//! How bad something is: the severity of reconciliation findings and of the alerts they
//! raise, routed to sinks by it.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Medium,
    Critical,
}

impl Severity {
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Info, Self::Medium, Self::Critical]
            .into_iter()
            .find(|s| s.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Medium => "medium",
            Self::Critical => "critical",
        }
    }
}

super::stored_as_text!(
    Severity,
    "severity",
    [Severity::Info, Severity::Medium, Severity::Critical]
);

/// A stored value of a closed set that ferry does not know: a bug or a newer ferry's row,
/// reported as an error rather than guessed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?}")]
pub struct UnknownValue {
    pub what: &'static str,
    pub value: String,
}

impl UnknownValue {
    pub fn new(what: &'static str, value: &str) -> Self {
        Self {
            what,
            value: value.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_stored_severity_is_an_error_not_a_default() {
        assert_eq!(
            Severity::try_from("medium".to_owned()),
            Ok(Severity::Medium)
        );
        let unknown = Severity::try_from("catastrophic".to_owned());
        assert_eq!(
            unknown.map_err(|e| e.to_string()),
            Err("unknown severity \"catastrophic\"".to_owned())
        );
    }
}
