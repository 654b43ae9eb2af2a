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
