//! Typed, validated settings: `config/default.toml`, then the optional
//! `config/{BILLING_ENV}.toml` overlay, then `BILLING__SECTION__KEY` variables.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// A setting that could not be loaded or failed validation; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("settings: {0}")]
    Load(#[from] config::ConfigError),
    #[error("settings: {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// Every setting of the worker.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub amqp: AmqpSettings,
    pub http: HttpSettings,
    pub usage: UsageSettings,
    pub scheduler: SchedulerSettings,
    pub retry: RetrySettings,
    pub payments: PaymentsSettings,
    pub outbox: OutboxSettings,
    pub shutdown: ShutdownSettings,
    pub auth: AuthSettings,
    pub log: LogSettings,
    #[serde(default)]
    pub faults: FaultSettings,
}

/// Fault injection for rehearsals and tests: off by default.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct FaultSettings {
    /// Work of this merchant makes the role handling it panic (a stand-in
    /// for a bug), to rehearse that roles survive their own bugs. Empty: off.
    #[serde(default)]
    pub panic_on_merchant: String,
}

impl FaultSettings {
    /// Panics when fault injection names `merchant_id`.
    pub(crate) fn check(&self, merchant_id: &str) {
        if !self.panic_on_merchant.is_empty() && self.panic_on_merchant == merchant_id {
            panic!("fault injection: faults.panic_on_merchant is {merchant_id}");
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    /// Postgres URL; may carry a password and `sslmode`, so it is kept secret.
    pub url: SecretString,
    pub max_connections: u32,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Apply pending migrations at start. Off when the worker's role may not
    /// change the schema (run `billing-worker migrate` as the owner instead).
    pub migrate_on_start: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    Quorum,
    Classic,
}

impl QueueType {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct AmqpSettings {
    /// AMQP URL (`amqp://` or `amqps://`); may carry a password, so it is kept secret.
    pub url: SecretString,
    pub prefix: String,
    pub queue_type: QueueType,
    pub webhook_queue: bool,
    pub max_message_bytes: usize,
    pub provisioning_prefetch: u16,
    /// `reply_to` must name a queue starting with this (or the direct
    /// reply-to pseudo queue `amq.rabbitmq.reply-to`).
    pub reply_prefix: String,
    #[serde(with = "humantime_serde")]
    pub reconnect_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HttpSettings {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
pub struct UsageSettings {
    pub prefetch: u16,
    pub batch_size: usize,
    /// A batch also closes once its message bodies reach this many bytes.
    pub batch_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub batch_timeout: Duration,
    pub max_events_per_message: usize,
    #[serde(with = "humantime_serde")]
    pub future_tolerance: Duration,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SchedulerSettings {
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
    #[serde(with = "humantime_serde")]
    pub pre_debit_notice: Duration,
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    pub batch_size: i64,
    /// How long an execution whose bill could not be made waits before
    /// billing tries it again (a change by its merchant retries at once).
    #[serde(with = "humantime_serde")]
    pub park_for: Duration,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RetrySettings {
    #[serde(with = "humantime_serde")]
    pub initial: Duration,
    pub multiplier: f64,
    #[serde(with = "humantime_serde")]
    pub max: Duration,
    pub jitter: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PaymentsSettings {
    #[serde(with = "humantime_serde")]
    pub result_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OutboxSettings {
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    pub batch_size: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ShutdownSettings {
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    pub enabled: bool,
    /// Broker user -> the merchants it may act for.
    #[serde(default)]
    pub users: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    pub format: LogFormat,
    pub filter: String,
}

/// The defaults of every setting, compiled in from `config/default.toml`.
pub(crate) const DEFAULTS: &str = include_str!("../config/default.toml");

impl Settings {
    /// Loads the compiled-in defaults, then `default.toml` in `config_dir`
    /// if there is one, the overlay named by `BILLING_ENV` if any, then the
    /// environment, and validates the result.
    pub fn load(config_dir: &Path) -> Result<Settings, SettingsError> {
        let environment = std::env::var("BILLING_ENV").ok();
        Self::load_with(config_dir, environment.as_deref(), std::env::vars())
    }

    /// Like [`Settings::load`], with the environment and its variables given.
    pub fn load_with(
        config_dir: &Path,
        environment: Option<&str>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, SettingsError> {
        // The defaults are compiled in, so the binary runs from any folder; a
        // `default.toml` beside it (in `config_dir`) overrides them.
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
            .add_source(config::File::from(config_dir.join("default.toml")).required(false));
        if let Some(env) = environment.filter(|e| !e.is_empty()) {
            builder = builder.add_source(config::File::from(config_dir.join(format!("{env}.toml"))).required(true));
        }
        let vars: config::Map<String, String> = vars.into_iter().filter(|(k, _)| k.starts_with("BILLING__")).collect();
        builder = builder.add_source(
            config::Environment::with_prefix("BILLING")
                .prefix_separator("__")
                .separator("__")
                .source(Some(vars)),
        );
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what types alone cannot: ranges, URL schemes, consistency.
    pub(crate) fn validate(&self) -> Result<(), SettingsError> {
        fn invalid(key: &'static str, message: impl Into<String>) -> Result<(), SettingsError> {
            Err(SettingsError::Invalid {
                key,
                message: message.into(),
            })
        }
        let db = self.database.url.expose_secret();
        if !(db.starts_with("postgres://") || db.starts_with("postgresql://")) {
            return invalid("database.url", "must start with postgres:// or postgresql://");
        }
        if self.database.max_connections < 2 {
            return invalid("database.max_connections", "must be at least 2");
        }
        let amqp = self.amqp.url.expose_secret();
        if !(amqp.starts_with("amqp://") || amqp.starts_with("amqps://")) {
            return invalid("amqp.url", "must start with amqp:// or amqps://");
        }
        if self.amqp.prefix.chars().any(|c| c.is_whitespace()) {
            return invalid("amqp.prefix", "must not contain white space");
        }
        if self.amqp.max_message_bytes == 0 || self.amqp.max_message_bytes > 128 * 1024 * 1024 {
            return invalid("amqp.max_message_bytes", "must be between 1 and 134217728");
        }
        if self.amqp.provisioning_prefetch == 0 {
            return invalid("amqp.provisioning_prefetch", "must be at least 1");
        }
        if self.amqp.reconnect_initial.is_zero() || self.amqp.reconnect_max < self.amqp.reconnect_initial {
            return invalid(
                "amqp.reconnect_max",
                "must be at least amqp.reconnect_initial, which must be positive",
            );
        }
        if self.usage.batch_size == 0 {
            return invalid("usage.batch_size", "must be at least 1");
        }
        if self.usage.batch_bytes == 0 {
            return invalid("usage.batch_bytes", "must be at least 1");
        }
        if self.amqp.reply_prefix.is_empty() {
            return invalid("amqp.reply_prefix", "must not be empty");
        }
        if self.usage.prefetch == 0 {
            return invalid("usage.prefetch", "must be at least 1");
        }
        if self.usage.max_events_per_message == 0 {
            return invalid("usage.max_events_per_message", "must be at least 1");
        }
        if self.scheduler.tick.is_zero() {
            return invalid("scheduler.tick", "must be positive");
        }
        if self.scheduler.lease.is_zero() {
            return invalid("scheduler.lease", "must be positive");
        }
        if self.scheduler.park_for.is_zero() {
            return invalid("scheduler.park_for", "must be positive");
        }
        if self.scheduler.batch_size < 1 {
            return invalid("scheduler.batch_size", "must be at least 1");
        }
        if self.retry.initial.is_zero() {
            return invalid("retry.initial", "must be positive");
        }
        if !(self.retry.multiplier >= 1.0 && self.retry.multiplier.is_finite()) {
            return invalid("retry.multiplier", "must be a number of at least 1.0");
        }
        if self.retry.max < self.retry.initial {
            return invalid("retry.max", "must be at least retry.initial");
        }
        if !(0.0..=1.0).contains(&self.retry.jitter) {
            return invalid("retry.jitter", "must be between 0.0 and 1.0");
        }
        if self.payments.result_timeout.is_zero() {
            return invalid("payments.result_timeout", "must be positive");
        }
        if self.outbox.poll_interval.is_zero() {
            return invalid("outbox.poll_interval", "must be positive");
        }
        if self.outbox.batch_size < 1 {
            return invalid("outbox.batch_size", "must be at least 1");
        }
        if self.auth.enabled && self.auth.users.is_empty() {
            return invalid("auth.users", "must list at least one user when auth.enabled is true");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        Settings::load_with(&dir, None, vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn defaults_load_and_validate() {
        let s = load(&[]).expect("defaults are valid");
        assert_eq!(s.amqp.queue_type, QueueType::Quorum);
        assert_eq!(s.scheduler.pre_debit_notice, Duration::from_secs(24 * 3600));
        assert_eq!(s.amqp.prefix, "");
    }

    #[test]
    fn defaults_are_compiled_in() {
        let nowhere = std::env::temp_dir().join(format!("no-config-{}", std::process::id()));
        let s = Settings::load_with(&nowhere, None, std::iter::empty()).expect("compiled-in defaults");
        assert_eq!(s.usage.batch_size, 1000);
        let s = Settings::load_with(
            &nowhere,
            None,
            [("BILLING__USAGE__BATCH_SIZE".to_string(), "7".to_string())],
        )
        .expect("overridden");
        assert_eq!(s.usage.batch_size, 7);
    }

    #[test]
    fn environment_overrides_each_key() {
        let s = load(&[
            ("BILLING__AMQP__PREFIX", "t1."),
            ("BILLING__SCHEDULER__TICK", "90s"),
            ("BILLING__RETRY__MULTIPLIER", "3"),
            ("BILLING__PAYMENTS__RESULT_TIMEOUT", "15m"),
            ("BILLING__HTTP__LISTEN", "0.0.0.0:9000"),
        ])
        .expect("valid");
        assert_eq!(s.amqp.prefix, "t1.");
        assert_eq!(s.scheduler.tick, Duration::from_secs(90));
        assert_eq!(s.retry.multiplier, 3.0);
        assert_eq!(s.http.listen.port(), 9000);
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = load(&[("BILLING__SCHEDULER__TICK", "soon")]).expect_err("bad duration");
        assert!(err.to_string().contains("scheduler.tick"), "{err}");
        let err = load(&[("BILLING__AMQP__QUEUE_TYPE", "stream")]).expect_err("bad enum");
        assert!(err.to_string().contains("amqp.queue_type"), "{err}");
        let err = load(&[("BILLING__RETRY__JITTER", "2")]).expect_err("out of range");
        assert!(err.to_string().contains("retry.jitter"), "{err}");
        let err = load(&[("BILLING__DATABASE__URL", "mysql://x")]).expect_err("scheme");
        assert!(err.to_string().contains("database.url"), "{err}");
    }

    #[test]
    fn secrets_never_print() {
        let s = load(&[("BILLING__AMQP__URL", "amqp://user:hunter2@host:5672/%2f")]).expect("valid");
        let printed = format!("{s:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
    }
}
