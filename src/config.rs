//! Settings: one tree of sections, each defined with its defaults by the module that uses it,
//! merged from defaults ← the TOML file named by `FERRY_CONFIG` ← environment variables (env
//! wins), and validated once at start-up with messages that name the variable and file key at
//! fault (README, "Configuration").

use crate::webhooks::WebhookSettings;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::alerts::config::{AlertConfig, AlertSettings};
use crate::anomaly::settings::AnomalySettings;
use crate::app::ShutdownSettings;
use crate::db::DatabaseSettings;
use crate::failpoint::Failpoint;
use crate::intake::IntakeSettings;
use crate::intake::rate_limit::{RateLimit, RedisSettings};
use crate::intake::serve::HttpSettings;
use crate::jobs::WorkerSettings;
use crate::queue::ORPHAN_TIMEOUT_MAX;
use crate::queue::rescue::RESCUE_AFTER_MIN;
use crate::reconcile::ReconcileSettings;
use crate::reconcile::schedule::parse_schedule;

/// Which parts of ferry this process runs.
/// `roles = "worker,scheduler"` in the file reads the same list as the variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Roles {
    pub intake: bool,
    pub worker: bool,
    pub scheduler: bool,
}

impl Roles {
    pub const ALL: Roles = Roles {
        intake: true,
        worker: true,
        scheduler: true,
    };
    pub const NONE: Roles = Roles {
        intake: false,
        worker: false,
        scheduler: false,
    };
}

impl Default for Roles {
    fn default() -> Self {
        Self::ALL
    }
}

impl TryFrom<String> for Roles {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl FromStr for Roles {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut roles = Roles::NONE;
        for role in s.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            match role {
                "intake" => roles.intake = true,
                "worker" => roles.worker = true,
                "scheduler" => roles.scheduler = true,
                "all" => roles = Roles::ALL,
                other => {
                    return Err(format!(
                        "unknown role {other:?} (roles: intake, worker, scheduler, all)"
                    ));
                }
            }
        }
        if roles == Roles::NONE {
            return Err("at least one role is needed (intake, worker, scheduler, all)".into());
        }
        Ok(roles)
    }
}

/// Every setting of a process: a section per part, owned by that part's module.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Which parts run (`FERRY_ROLES`, or `serve --roles`).
    pub roles: Roles,
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub http: HttpSettings,
    pub intake: IntakeSettings,
    pub workers: WorkerSettings,
    /// Requests per second and burst per API key, kept in Redis; 0 disables.
    pub rate_limit: RateLimit,
    pub reconcile: ReconcileSettings,
    pub shutdown: ShutdownSettings,
    /// Alert sinks, checked, their `${VAR}`s expanded (none without a file).
    pub alerts: Arc<AlertConfig>,
    pub anomaly: AnomalySettings,
    pub webhooks: WebhookSettings,
    pub failpoint: Failpoint,
}

/// The file's shape: `Config`'s sections, with `[alerts]` as written (its sinks are checked
/// and their `${VAR}`s expanded once the environment is at hand). Every key may be left out;
/// an unknown one is an error naming it.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct File {
    roles: Roles,
    failpoint: Failpoint,
    database: DatabaseSettings,
    redis: RedisSettings,
    http: HttpSettings,
    intake: IntakeSettings,
    workers: WorkerSettings,
    rate_limit: RateLimit,
    reconcile: ReconcileSettings,
    shutdown: ShutdownSettings,
    alerts: AlertSettings,
    anomaly: AnomalySettings,
    webhooks: WebhookSettings,
}

/// Sets one setting from a variable's text.
type Setter = fn(&mut Config, &str) -> Result<(), String>;

/// `"VAR" => "file.key": parser(config.field)` rows, each becoming (variable, key, setter).
macro_rules! env_table {
    ($($variable:literal => $key:literal: $parse:ident($($field:ident).+),)*) => {
        &[$((
            $variable,
            $key,
            |c: &mut Config, v: &str| $parse(&mut c.$($field).+, v),
        ),)*]
    };
}

/// Every environment variable (README, "Configuration"), the file key it overrides, and how
/// its text is read: `set` by the field's `FromStr`; `millis` and `secs` as whole numbers of
/// the unit its name ends in.
const ENV: &[(&str, &str, Setter)] = env_table! {
    "DATABASE_URL" => "database.url": set(database.url),
    "REDIS_URL" => "redis.url": set(redis.url),
    "FERRY_ROLES" => "roles": set(roles),
    "FERRY_FAILPOINT" => "failpoint": set(failpoint),
    "FERRY_DB_POOL_CONNECTIONS_MAX" => "database.pool_connections_max": set(database.pool_connections_max),
    "FERRY_DB_ACQUIRE_TIMEOUT_MS" => "database.acquire_timeout_ms": millis(database.acquire_timeout),
    "FERRY_HTTP_ADDR" => "http.addr": set(http.addr),
    "FERRY_HTTP_HEADER_READ_TIMEOUT_MS" => "http.header_read_timeout_ms": millis(http.header_read_timeout),
    "FERRY_HTTP_REQUEST_TIMEOUT_MS" => "http.request_timeout_ms": millis(http.request_timeout),
    "FERRY_HTTP_CONNECTIONS_MAX" => "http.connections_max": set(http.connections_max),
    "FERRY_INTAKE_COMMITTERS" => "intake.committers": set(intake.committers),
    "FERRY_INTAKE_DB_TIMEOUT_MS" => "intake.db_timeout_ms": millis(intake.db_timeout),
    "FERRY_INTAKE_GROUP_LINGER_MS" => "intake.group_linger_ms": millis(intake.group_linger),
    "FERRY_CONSOLE_REFRESH_MS" => "intake.console_refresh_ms": millis(intake.console_refresh),
    "FERRY_POSTING_WORKERS" => "workers.posting_workers": set(workers.posting_workers),
    "FERRY_POSTING_CONCURRENCY" => "workers.posting_concurrency": set(workers.posting_concurrency),
    "FERRY_JOB_FETCH_BATCH" => "workers.queue.fetch_batch": set(workers.queue.fetch_batch),
    "FERRY_WORKER_HEARTBEAT_MS" => "workers.queue.heartbeat_ms": millis(workers.queue.heartbeat),
    "FERRY_WORKER_MISSED_HEARTBEATS" => "workers.queue.missed_heartbeats": set(workers.queue.missed_heartbeats),
    "FERRY_JOB_RESCUE_AFTER_SECS" => "workers.queue.rescue_after_secs": secs(workers.queue.rescue_after),
    "FERRY_SHUTDOWN_GRACE_MS" => "shutdown.grace_ms": millis(shutdown.grace),
    "FERRY_RATE_LIMIT_PER_SEC" => "rate_limit.per_sec": set(rate_limit.per_sec),
    "FERRY_RATE_LIMIT_BURST" => "rate_limit.burst": set(rate_limit.burst),
    "FERRY_RECONCILE_CRON" => "reconcile.cron": set(reconcile.cron),
    "FERRY_STUCK_PENDING_SECS" => "reconcile.stuck_pending_secs": secs(reconcile.stuck_after),
    "FERRY_STALE_REVIEW_SECS" => "reconcile.stale_review_secs": secs(reconcile.stale_review_after),
    "FERRY_RECONCILE_FULL_SCAN_EVERY_SECS" => "reconcile.full_scan_every_secs": secs(reconcile.full_scan_every),
    "FERRY_JOB_RETENTION_DONE_SECS" => "reconcile.retention.done_secs": secs(reconcile.retention.done),
    "FERRY_JOB_RETENTION_DEAD_SECS" => "reconcile.retention.dead_secs": secs(reconcile.retention.dead),
    "FERRY_EVENTS_RETENTION_SECS" => "reconcile.retention.events_secs": secs(reconcile.retention.events),
    "FERRY_ANOMALY_ENABLED" => "anomaly.enabled": set(anomaly.enabled),
    "FERRY_WEBHOOKS_ALLOW_INSECURE" => "webhooks.allow_insecure": flag(webhooks.allow_insecure),
    "FERRY_WEBHOOKS_ALLOWED_NETWORKS" => "webhooks.allowed_networks": networks(webhooks.allowed_networks),
    "FERRY_WEBHOOKS_POLL_INTERVAL_MS" => "webhooks.poll_interval_ms": millis(webhooks.poll_interval),
    "FERRY_WEBHOOKS_RETRY_BASE_MS" => "webhooks.retry_base_ms": millis(webhooks.retry_base),
    "FERRY_WEBHOOKS_TIMEOUT_MS" => "webhooks.timeout_ms": millis(webhooks.timeout),
    "FERRY_WEBHOOKS_DISABLE_AFTER_SECS" => "webhooks.disable_after_secs": secs(webhooks.disable_after),
    "FERRY_WEBHOOKS_BREAKER_OPEN_MS" => "webhooks.breaker.open_ms": millis(webhooks.breaker.open),
};

/// Where settings come from; [`Config::load`] takes them from the process.
pub struct Sources<'a> {
    /// Text of the `FERRY_CONFIG` file, if one is named.
    pub file: Option<&'a str>,
    /// Reads an environment variable: the overrides, and `${VAR}` in alert sinks.
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// `serve --roles`, which beats both.
    pub roles: Option<Roles>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {variable}{}: {reason}", file_key_note(.variable))]
pub struct ConfigError {
    /// The variable at fault (`FERRY_CONFIG` for the file itself).
    pub variable: &'static str,
    pub reason: String,
}

/// Where the variable's setting lives in the file too, for a message about its value.
fn file_key_note(variable: &str) -> String {
    ENV.iter()
        .find(|(name, ..)| *name == variable)
        .map(|(_, key, _)| format!(" (`{key}` in FERRY_CONFIG)"))
        .unwrap_or_default()
}

impl Config {
    /// Reads the file named by `FERRY_CONFIG` and the environment, then validates; `roles`
    /// is `serve --roles`. The only place settings are read.
    pub fn load(roles: Option<Roles>) -> Result<Self, ConfigError> {
        // `std::env::var(..).ok()` below would read such a value as unset.
        let not_unicode =
            |name: &&str| matches!(std::env::var(name), Err(std::env::VarError::NotUnicode(_)));
        if let Some(variable) = ENV.iter().map(|(name, ..)| *name).find(not_unicode) {
            return Err(ConfigError {
                variable,
                reason: "not valid UTF-8".into(),
            });
        }
        let path = std::env::var_os("FERRY_CONFIG").filter(|p| !p.is_empty());
        let text = match path {
            Some(path) => Some(std::fs::read_to_string(&path).map_err(|e| ConfigError {
                variable: "FERRY_CONFIG",
                reason: format!("{}: {e}", std::path::Path::new(&path).display()),
            })?),
            None => None,
        };
        Self::from_sources(Sources {
            file: text.as_deref(),
            env: &|name| std::env::var(name).ok(),
            roles,
        })
    }

    /// Merges defaults ← file ← environment ← `roles`, then validates.
    pub fn from_sources(sources: Sources<'_>) -> Result<Self, ConfigError> {
        let config = Self::merge(sources)?;
        config.validate()?;
        Ok(config)
    }

    fn merge(sources: Sources<'_>) -> Result<Self, ConfigError> {
        let file: File = match sources.file {
            Some(text) => toml::from_str(text).map_err(|e| file_error(text, &e))?,
            None => File::default(),
        };
        let alerts =
            AlertConfig::from_settings(file.alerts, sources.env).map_err(|e| ConfigError {
                variable: "FERRY_CONFIG",
                reason: e.to_string(),
            })?;
        let mut config = Self {
            roles: file.roles,
            database: file.database,
            redis: file.redis,
            http: file.http,
            intake: file.intake,
            workers: file.workers,
            rate_limit: file.rate_limit,
            reconcile: file.reconcile,
            shutdown: file.shutdown,
            alerts: Arc::new(alerts),
            anomaly: file.anomaly,
            webhooks: file.webhooks,
            failpoint: file.failpoint,
        };
        for (variable, _, set) in ENV {
            // An empty variable counts as unset, as a shell's `VAR=` means.
            let Some(value) = (sources.env)(variable).filter(|v| !v.trim().is_empty()) else {
                continue;
            };
            set(&mut config, &value).map_err(|reason| ConfigError { variable, reason })?;
        }
        if let Some(roles) = sources.roles {
            config.roles = roles;
        }
        // One setting, two users: the rescuer and re-drive must agree on when a job is lost.
        config.reconcile.job_rescue_after = config.workers.queue.rescue_after;
        Ok(config)
    }

    /// Refuses settings that would make ferry silently misbehave; the first rule broken is
    /// reported, naming its variable. Longer than our ~70-line guide on purpose: it is one
    /// table, a row per rule, and reads best whole (each row is tested in tests/api/config.rs).
    pub fn validate(&self) -> Result<(), ConfigError> {
        // `[anomaly]` names its own keys: most of its settings exist only in the file.
        self.anomaly.validate().map_err(|reason| ConfigError {
            variable: "FERRY_CONFIG",
            reason,
        })?;
        if let Err(reason) = parse_schedule(&self.reconcile.cron) {
            return Err(ConfigError {
                variable: "FERRY_RECONCILE_CRON",
                reason,
            });
        }
        let (workers, queue, http) = (&self.workers, &self.workers.queue, &self.http);
        let (intake, retention) = (&self.intake, &self.reconcile.retention);
        let ms = Duration::from_millis;
        // (broken, variable, why)
        let rules = [
            (
                self.database.pool_connections_max < 4,
                "FERRY_DB_POOL_CONNECTIONS_MAX",
                "must be at least 4",
            ),
            (
                intake.committers == 0,
                "FERRY_INTAKE_COMMITTERS",
                "must be at least 1",
            ),
            (
                intake.db_timeout < ms(100),
                "FERRY_INTAKE_DB_TIMEOUT_MS",
                "must be at least 100",
            ),
            (
                intake.group_linger > ms(100),
                "FERRY_INTAKE_GROUP_LINGER_MS",
                "must be at most 100",
            ),
            (
                intake.console_refresh < ms(200),
                "FERRY_CONSOLE_REFRESH_MS",
                "must be at least 200",
            ),
            (
                http.header_read_timeout < ms(100),
                "FERRY_HTTP_HEADER_READ_TIMEOUT_MS",
                "must be at least 100",
            ),
            // A request waiting on the database must get its `503` before the request
            // timeout turns it into a `408`.
            (
                // A single request may linger for company, then wait out the database.
                http.request_timeout <= intake.db_timeout + intake.group_linger,
                "FERRY_HTTP_REQUEST_TIMEOUT_MS",
                "must be longer than FERRY_INTAKE_DB_TIMEOUT_MS + FERRY_INTAKE_GROUP_LINGER_MS",
            ),
            (
                http.connections_max == 0,
                "FERRY_HTTP_CONNECTIONS_MAX",
                "must be at least 1",
            ),
            (
                workers.posting_workers == 0 && self.roles.worker,
                "FERRY_POSTING_WORKERS",
                "must be at least 1 for the worker role",
            ),
            (
                workers.posting_concurrency == 0,
                "FERRY_POSTING_CONCURRENCY",
                "must be at least 1",
            ),
            // Each worker fetches, acks and heartbeats; the poster holds one more connection.
            (
                workers.posting_workers * 2 + 2 >= self.database.pool_connections_max as usize,
                "FERRY_POSTING_WORKERS",
                "posting workers × 2 + 2 must stay below the pool size",
            ),
            (
                self.reconcile.stuck_after < Duration::from_secs(60),
                "FERRY_STUCK_PENDING_SECS",
                "must be at least 60",
            ),
            (
                self.reconcile.stale_review_after.is_zero(),
                "FERRY_STALE_REVIEW_SECS",
                "must be at least 1",
            ),
            (
                retention.done.is_zero() || retention.dead.is_zero(),
                "FERRY_JOB_RETENTION_DONE_SECS",
                "retention must be above zero",
            ),
            (
                retention.events < Duration::from_secs(3_600),
                "FERRY_EVENTS_RETENTION_SECS",
                "must be at least 3600 (producers catch up from their cursor)",
            ),
            (
                self.webhooks.poll_interval < ms(10),
                "FERRY_WEBHOOKS_POLL_INTERVAL_MS",
                "must be at least 10",
            ),
            (
                self.webhooks.retry_base.is_zero()
                    || self.webhooks.retry_cap < self.webhooks.retry_base,
                "FERRY_WEBHOOKS_RETRY_BASE_MS",
                "must be above zero and at most webhooks.retry_cap_secs",
            ),
            (
                self.webhooks.concurrency == 0
                    || self.webhooks.timeout.is_zero()
                    || self.webhooks.breaker.failures_to_open == 0
                    || self.webhooks.breaker.successes_to_close == 0,
                "FERRY_CONFIG",
                "webhooks.concurrency, timeout_ms, breaker.failures_to_open and \
                 breaker.successes_to_close must be at least 1",
            ),
            (
                self.webhooks.disable_after.is_zero() || self.webhooks.give_up_after.is_zero(),
                "FERRY_WEBHOOKS_DISABLE_AFTER_SECS",
                "webhooks.disable_after_secs and give_up_after_secs must be above zero",
            ),
            (
                queue.fetch_batch == 0,
                "FERRY_JOB_FETCH_BATCH",
                "must be at least 1",
            ),
            (
                queue.heartbeat < ms(100) || queue.missed_heartbeats < 2,
                "FERRY_WORKER_HEARTBEAT_MS",
                "heartbeat must be ≥ 100 ms and missed heartbeats ≥ 2",
            ),
            (
                queue.rescue_after < RESCUE_AFTER_MIN,
                "FERRY_JOB_RESCUE_AFTER_SECS",
                "must be at least 5 (posting jobs that run this long are taken back)",
            ),
            (
                queue.orphan_timeout() > ORPHAN_TIMEOUT_MAX,
                "FERRY_WORKER_HEARTBEAT_MS",
                "heartbeat × missed heartbeats must stay within 30 s so orphans recover quickly",
            ),
        ];
        match rules.into_iter().find(|(broken, ..)| *broken) {
            Some((_, variable, reason)) => Err(ConfigError {
                variable,
                reason: reason.to_owned(),
            }),
            None => Ok(()),
        }
    }
}

/// A file that does not parse: the message names the key, the line locates it. The text is
/// not echoed, since lines may hold secrets.
fn file_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let line = e
        .span()
        .and_then(|span| text.get(..span.start))
        .map_or(String::new(), |before| {
            format!("line {}: ", before.matches('\n').count() + 1)
        });
    ConfigError {
        variable: "FERRY_CONFIG",
        reason: format!("{line}{}", e.message()),
    }
}

fn set<T: FromStr>(slot: &mut T, text: &str) -> Result<(), String>
where
    T::Err: std::fmt::Display,
{
    *slot = text
        .trim()
        .parse()
        .map_err(|e: T::Err| format!("{text:?}: {e}"))?;
    Ok(())
}

/// `1`/`0` as well as `true`/`false`.
fn flag(slot: &mut bool, text: &str) -> Result<(), String> {
    *slot = match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" => true,
        "0" | "false" | "no" => false,
        _ => return Err(format!("{text:?}: expected 1 or 0 (true or false)")),
    };
    Ok(())
}

/// Comma-separated CIDRs.
fn networks(slot: &mut Vec<ipnet::IpNet>, text: &str) -> Result<(), String> {
    *slot = text
        .split(',')
        .filter(|t| !t.trim().is_empty())
        .map(crate::webhooks::parse_network)
        .collect::<Result<_, _>>()?;
    Ok(())
}

fn millis(slot: &mut Duration, text: &str) -> Result<(), String> {
    let mut ms = 0u64;
    set(&mut ms, text)?;
    *slot = Duration::from_millis(ms);
    Ok(())
}

fn secs(slot: &mut Duration, text: &str) -> Result<(), String> {
    let mut secs = 0u64;
    set(&mut secs, text)?;
    *slot = Duration::from_secs(secs);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_from_a_comma_list() {
        assert_eq!(
            "intake"
                .parse::<Roles>()
                .map(|r| (r.intake, r.worker, r.scheduler)),
            Ok((true, false, false))
        );
        assert_eq!("worker, intake,scheduler".parse::<Roles>(), Ok(Roles::ALL));
        assert_eq!("all".parse::<Roles>(), Ok(Roles::ALL));
        assert!("".parse::<Roles>().is_err());
        assert!("scheduler2".parse::<Roles>().is_err());
    }

    /// A value each variable accepts, as the variable's text and as a TOML value.
    fn sample(variable: &str) -> (&'static str, &'static str) {
        match variable {
            "DATABASE_URL" | "REDIS_URL" => ("x://sample", "\"x://sample\""),
            "FERRY_ROLES" => ("worker", "\"worker\""),
            "FERRY_FAILPOINT" => ("crash_after_commit", "\"crash_after_commit\""),
            "FERRY_HTTP_ADDR" => ("127.0.0.1:9", "\"127.0.0.1:9\""),
            "FERRY_RECONCILE_CRON" => ("0 0 * * * *", "\"0 0 * * * *\""),
            // On by default: the sample turns it off.
            "FERRY_ANOMALY_ENABLED" => ("false", "false"),
            // Off by default: the sample turns it on.
            "FERRY_WEBHOOKS_ALLOW_INSECURE" => ("1", "true"),
            "FERRY_WEBHOOKS_ALLOWED_NETWORKS" => ("10.0.0.0/8", "[\"10.0.0.0/8\"]"),
            _ => ("4242", "4242"),
        }
    }

    /// The file text setting `key` (`section.sub.field`) to `value`.
    fn file_setting(key: &str, value: &str) -> String {
        match key.rsplit_once('.') {
            Some((section, field)) => format!("[{section}]\n{field} = {value}\n"),
            None => format!("{key} = {value}\n"),
        }
    }

    #[test]
    fn each_variable_and_its_file_key_set_the_same_setting() {
        let defaults = format!("{:?}", Config::default());
        for (variable, key, _) in ENV {
            let (text, toml) = sample(variable);
            let from_env = Config::merge(Sources {
                file: None,
                env: &|name| (name == *variable).then(|| text.to_owned()),
                roles: None,
            })
            .map(|c| format!("{c:?}"))
            .expect(variable);
            let file = file_setting(key, toml);
            let from_file = Config::merge(Sources {
                file: Some(&file),
                env: &|_| None,
                roles: None,
            })
            .map(|c| format!("{c:?}"))
            .expect(key);
            assert_ne!(from_env, defaults, "{variable} changed nothing");
            assert_eq!(from_env, from_file, "{variable} and {key}");
        }
    }

    #[test]
    fn the_readme_lists_each_variable_with_its_file_key() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
            .expect("README.md");
        for (variable, key, _) in ENV {
            let listed = readme
                .lines()
                .filter(|line| line.starts_with('|'))
                .any(|row| {
                    row.contains(&format!("`{variable}`")) && row.contains(&format!("`{key}`"))
                });
            assert!(
                listed,
                "README's Configuration table lacks {variable} with `{key}`"
            );
        }
    }
}
