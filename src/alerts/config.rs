//! Alert sinks from the `[alerts]` section of the TOML file named by `FERRY_CONFIG`, validated
//! at start-up with the rest of the settings (`config.rs`).
//!
//! Values may reference the environment as `${VAR}`. Errors name the sink and the field but
//! never echo a value: URLs (Slack's is the credential), routing keys and secrets stay secret.

use std::time::Duration;

use base64::Engine;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use serde::Deserialize;

use crate::domain::Severity;

/// Request timeout when a sink does not set one (Standard Webhooks suggests 15–30 s).
pub const SINK_TIMEOUT_MS_DEFAULT: u64 = 15_000;
pub const PAGERDUTY_URL_DEFAULT: &str = "https://events.pagerduty.com/v2/enqueue";
/// Standard Webhooks: secrets are 24 to 64 bytes once base64-decoded.
const WEBHOOK_SECRET_BYTES_MIN: usize = 24;
const WEBHOOK_SECRET_BYTES_MAX: usize = 64;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("invalid alert configuration: {sink}: {field}: {reason}")]
pub struct AlertConfigError {
    pub sink: String,
    pub field: &'static str,
    pub reason: String,
}

/// Where alerts go. `Debug` shows names and kinds only.
pub struct Sink {
    pub name: String,
    pub kind: SinkKind,
    pub url: SecretString,
    pub min_severity: Severity,
    pub timeout: Duration,
}

pub enum SinkKind {
    Slack,
    PagerDuty { routing_key: SecretString },
    Webhook { key: SecretBox<Vec<u8>> },
}

impl SinkKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Slack => "slack",
            Self::PagerDuty { .. } => "pagerduty",
            Self::Webhook { .. } => "webhook",
        }
    }
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("name", &self.name)
            .field("kind", &self.kind.as_str())
            .field("min_severity", &self.min_severity)
            .finish_non_exhaustive()
    }
}

impl Sink {
    pub fn accepts(&self, severity: Severity) -> bool {
        severity >= self.min_severity
    }

    pub fn webhook_key(&self) -> Option<&[u8]> {
        match &self.kind {
            SinkKind::Webhook { key } => Some(key.expose_secret().as_slice()),
            _ => None,
        }
    }
}

/// `[alerts.breaker]`: when a sink's circuit opens and for how long (defaults for low-volume
/// destinations, from README, "Alerts").
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerSettings {
    /// Calls remembered per sink.
    pub window: usize,
    /// Calls seen before the ratio is judged.
    pub min_calls: usize,
    pub failure_ratio: f64,
    /// How long an open circuit rejects calls before a probe.
    #[serde(rename = "open_ms", with = "crate::serde_duration::millis")]
    pub open: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            // Half of the last 20 calls failing (once 10 were made) says the sink is down,
            // not unlucky; 30 s open spares it while it recovers.
            window: 20,
            min_calls: 10,
            failure_ratio: 0.5,
            open: Duration::from_secs(30),
        }
    }
}

impl BreakerSettings {
    fn validate(&self) -> Result<(), AlertConfigError> {
        let fail = |field: &'static str, reason: &str| AlertConfigError {
            sink: "alerts.breaker".into(),
            field,
            reason: reason.to_owned(),
        };
        if self.window == 0 || self.min_calls == 0 || self.open.is_zero() {
            return Err(fail("window/min_calls/open_ms", "must be above zero"));
        }
        if !(0.0..=1.0).contains(&self.failure_ratio) || self.failure_ratio == 0.0 {
            return Err(fail("failure_ratio", "must be in (0, 1]"));
        }
        Ok(())
    }
}

/// `[alerts]` as written in the file: sinks not yet checked, their `${VAR}`s not yet expanded
/// ([`AlertConfig::from_settings`] does both). No `Debug`: the sinks hold secrets.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertSettings {
    sinks: Vec<RawSink>,
    breaker: BreakerSettings,
}

/// Everything about alerting: the sinks and their breaker settings, checked.
#[derive(Debug, Default)]
pub struct AlertConfig {
    pub sinks: Vec<Sink>,
    pub breaker: BreakerSettings,
}

impl AlertConfig {
    pub fn sink(&self, name: &str) -> Option<&Sink> {
        self.sinks.iter().find(|s| s.name == name)
    }

    /// Parses TOML text holding only an `[alerts]` section (the whole `FERRY_CONFIG` file is
    /// read by `config.rs`); `env` resolves `${VAR}` references.
    pub fn parse(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, AlertConfigError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct AlertsOnly {
            #[serde(default)]
            alerts: AlertSettings,
        }
        let file: AlertsOnly = toml::from_str(text).map_err(|e| AlertConfigError {
            sink: "FERRY_CONFIG".into(),
            field: "toml",
            reason: e.message().to_owned(),
        })?;
        Self::from_settings(file.alerts, env)
    }

    /// Checks the section's sinks and breaker; `env` resolves `${VAR}` references.
    pub fn from_settings(
        settings: AlertSettings,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, AlertConfigError> {
        let mut sinks = Vec::new();
        for (index, raw) in settings.sinks.into_iter().enumerate() {
            let sink = raw.validate(index, env)?;
            if sinks.iter().any(|s: &Sink| s.name == sink.name) {
                return Err(AlertConfigError {
                    sink: format!("alerts.sinks[{index}]"),
                    field: "name",
                    reason: format!("duplicate sink name {:?}", sink.name),
                });
            }
            sinks.push(sink);
        }
        settings.breaker.validate()?;
        Ok(Self {
            sinks,
            breaker: settings.breaker,
        })
    }
}

/// No `Debug`: it holds URLs, routing keys and secrets.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSink {
    kind: String,
    name: Option<String>,
    url: Option<String>,
    min_severity: Option<String>,
    routing_key: Option<String>,
    secret: Option<String>,
    timeout_ms: Option<u64>,
}

/// A sink's field being checked: its label for errors and the `${VAR}` lookup.
struct Checking<'a> {
    label: String,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Checking<'_> {
    fn fail(&self, field: &'static str, reason: &str) -> AlertConfigError {
        AlertConfigError {
            sink: self.label.clone(),
            field,
            reason: reason.to_owned(),
        }
    }

    /// `value` with its `${VAR}`s expanded; the error names the variable, never the value.
    fn expand(
        &self,
        field: &'static str,
        value: Option<String>,
    ) -> Result<Option<String>, AlertConfigError> {
        value
            .map(|v| {
                expand_env(&v, self.env).map_err(|var| {
                    self.fail(field, &format!("environment variable {var} is not set"))
                })
            })
            .transpose()
    }
}

impl RawSink {
    fn validate(
        mut self,
        index: usize,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Sink, AlertConfigError> {
        let check = Checking {
            label: format!("alerts.sinks[{index}] ({})", self.kind),
            env,
        };
        let min_severity = Severity::parse(self.min_severity.as_deref().unwrap_or("info"))
            .ok_or_else(|| check.fail("min_severity", "must be info, medium or critical"))?;
        let timeout_ms = self.timeout_ms.unwrap_or(SINK_TIMEOUT_MS_DEFAULT);
        if timeout_ms == 0 || timeout_ms > 60_000 {
            return Err(check.fail("timeout_ms", "must be between 1 and 60000"));
        }
        let name = self
            .name
            .take()
            .unwrap_or_else(|| format!("{}-{}", self.kind, index + 1));
        if name.is_empty() || name.len() > 64 || name.contains(char::is_whitespace) {
            return Err(check.fail("name", "must be 1-64 characters without spaces"));
        }
        let (kind, url) = self.kind_and_url(&check)?;
        check_url(&url).map_err(|reason| check.fail("url", &reason))?;
        Ok(Sink {
            name,
            kind,
            url: SecretString::from(url),
            min_severity,
            timeout: Duration::from_millis(timeout_ms),
        })
    }

    /// The sink's kind with its credential, and its URL (PagerDuty's has a default).
    fn kind_and_url(self, check: &Checking) -> Result<(SinkKind, String), AlertConfigError> {
        let url = check.expand("url", self.url)?;
        let required =
            |field, value: Option<String>| value.ok_or_else(|| check.fail(field, "is required"));
        match self.kind.as_str() {
            "slack" => Ok((SinkKind::Slack, required("url", url)?)),
            "pagerduty" => {
                let key = check
                    .expand("routing_key", self.routing_key)?
                    .filter(|k| !k.trim().is_empty());
                let routing_key = SecretString::from(required("routing_key", key)?);
                let url = url.unwrap_or_else(|| PAGERDUTY_URL_DEFAULT.to_owned());
                Ok((SinkKind::PagerDuty { routing_key }, url))
            }
            "webhook" => {
                let secret = required("secret", check.expand("secret", self.secret)?)?;
                let key = decode_webhook_secret(&secret)
                    .map_err(|reason| check.fail("secret", &reason))?;
                let key = SecretBox::new(Box::new(key));
                Ok((SinkKind::Webhook { key }, required("url", url)?))
            }
            _ => Err(check.fail("kind", "must be slack, pagerduty or webhook")),
        }
    }
}

/// HTTPS, except to loopback (local receivers, tests).
fn check_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|_| "is not a valid URL".to_owned())?;
    let loopback = matches!(parsed.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err("must be an https:// URL (http:// only for loopback)".into()),
    }
}

/// `whsec_` + base64 of 24–64 random bytes (Standard Webhooks).
pub fn decode_webhook_secret(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| "must be whsec_ followed by base64".to_owned())?;
    if !(WEBHOOK_SECRET_BYTES_MIN..=WEBHOOK_SECRET_BYTES_MAX).contains(&key.len()) {
        return Err(format!(
            "must decode to {WEBHOOK_SECRET_BYTES_MIN}-{WEBHOOK_SECRET_BYTES_MAX} bytes"
        ));
    }
    Ok(key)
}

/// Replaces `${VAR}` with the variable's value; returns the name of a missing variable.
fn expand_env(value: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let name = &after[..end];
        out.push_str(&env(name).ok_or_else(|| name.to_owned())?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

    fn parse(text: &str) -> Result<AlertConfig, AlertConfigError> {
        AlertConfig::parse(text, &|name| {
            (name == "PD_KEY").then(|| "pd-routing-key".to_owned())
        })
    }

    #[test]
    fn the_documented_example_parses_with_env_secrets() {
        let config = parse(&format!(
            r#"
            [[alerts.sinks]]
            kind = "slack"
            url = "https://hooks.slack.com/services/T000/B000/XXXX"
            min_severity = "medium"

            [[alerts.sinks]]
            kind = "pagerduty"
            routing_key = "${{PD_KEY}}"
            min_severity = "critical"

            [[alerts.sinks]]
            kind = "webhook"
            url = "https://ops.example.com/ferry"
            secret = "{SECRET}"
            "#
        ))
        .expect("valid");
        assert_eq!(config.sinks.len(), 3);
        assert_eq!(config.sinks[1].url.expose_secret(), PAGERDUTY_URL_DEFAULT);
        assert!(config.sinks[0].accepts(Severity::Critical));
        assert!(!config.sinks[0].accepts(Severity::Info));
        assert_eq!(config.sinks[2].name, "webhook-3");
    }

    #[test]
    fn errors_name_the_sink_and_field_but_never_the_secret() {
        let err = parse(
            r#"
            [[alerts.sinks]]
            kind = "webhook"
            url = "https://ops.example.com/ferry"
            secret = "whsec_c2hvcnQ="
            "#,
        )
        .expect_err("short secret");
        assert_eq!(err.sink, "alerts.sinks[0] (webhook)");
        assert_eq!(err.field, "secret");
        assert!(!err.to_string().contains("c2hvcnQ"));
        let err = parse("[[alerts.sinks]]\nkind = \"pagerduty\"\nrouting_key = \"${NOPE}\"\n")
            .expect_err("missing env");
        assert_eq!(err.field, "routing_key");
        assert!(err.reason.contains("NOPE"));
        let err =
            parse("[[alerts.sinks]]\nkind = \"slack\"\nurl = \"http://hooks.example.com/x\"\n")
                .expect_err("http");
        assert_eq!(err.field, "url");
        let err =
            parse("[[alerts.sinks]]\nkind = \"email\"\nurl = \"https://x\"\n").expect_err("kind");
        assert_eq!(err.field, "kind");
        let err = parse(
            "[[alerts.sinks]]\nkind = \"slack\"\nurl = \"https://x\"\nmin_severity = \"high\"\n",
        )
        .expect_err("severity");
        assert_eq!(err.field, "min_severity");
        assert!(
            parse("[[alerts.sinks]]\nkind = \"slack\"\nurl = \"https://x\"\ncolour = 1\n").is_err()
        );
    }

    #[test]
    fn debug_output_shows_no_secrets() {
        let config = parse(&format!(
            "[[alerts.sinks]]\nkind = \"webhook\"\nurl = \"https://ops.example.com/secret-path\"\nsecret = \"{SECRET}\"\n"
        ))
        .expect("valid");
        let shown = format!("{config:?}");
        assert!(!shown.contains("secret-path"), "{shown}");
        assert!(!shown.contains("C2FVsBQ"), "{shown}");
    }

    #[test]
    fn no_alerts_section_means_no_sinks() {
        assert!(parse("").expect("empty").sinks.is_empty());
        assert!(AlertConfig::default().sinks.is_empty());
    }

    #[test]
    fn the_breaker_reads_open_ms_as_a_duration_and_refuses_zero() {
        let config = parse("[alerts.breaker]\nopen_ms = 1500\n").expect("valid");
        assert_eq!(config.breaker.open, Duration::from_millis(1_500));
        assert_eq!(config.breaker.window, BreakerSettings::default().window);
        let err = parse("[alerts.breaker]\nopen_ms = 0\n").expect_err("zero");
        assert_eq!(err.field, "window/min_calls/open_ms");
        let err = parse("[alerts.breaker]\nfailure_ratio = 1.5\n").expect_err("ratio");
        assert_eq!(err.field, "failure_ratio");
    }
}
