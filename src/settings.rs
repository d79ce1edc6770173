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
    /// The layers could not be read or parsed, or a value has the wrong type.
    #[error("settings: {0}")]
    Load(#[from] config::ConfigError),
    /// A value that parsed but breaks a rule: a range, a URL scheme, a bound set by another key.
    #[error("settings: {key}: {message}")]
    Invalid {
        /// The key, e.g. `retry.jitter`.
        key: &'static str,
        /// What the rule requires.
        message: String,
    },
}

/// Every setting of the worker.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// Postgres: URL, pool and migrations (`[database]`).
    pub database: DatabaseSettings,
    /// RabbitMQ: URL, names, queues, message limits and reconnects (`[amqp]`).
    pub amqp: AmqpSettings,
    /// The health and metrics endpoints (`[http]`).
    pub http: HttpSettings,
    /// Usage ingestion: prefetch, batches and event bounds (`[usage]`).
    pub usage: UsageSettings,
    /// The billing pass: pace, notice, leases and batch sizes (`[scheduler]`).
    pub scheduler: SchedulerSettings,
    /// Backoff between retries of a failed debit (`[retry]`).
    pub retry: RetrySettings,
    /// Waiting for debit results (`[payments]`).
    pub payments: PaymentsSettings,
    /// The relay that publishes webhooks (`[outbox]`).
    pub outbox: OutboxSettings,
    /// The graceful stop (`[shutdown]`).
    pub shutdown: ShutdownSettings,
    /// Which broker users may act for which merchants (`[auth]`).
    pub auth: AuthSettings,
    /// Log format and filter (`[log]`).
    pub log: LogSettings,
    /// Fault injection (`[faults]`); off unless set.
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

impl AmqpSettings {
    /// The node URLs `url` lists, in order.
    pub fn urls(&self) -> impl Iterator<Item = &str> {
        self.url.expose_secret().split(',').map(str::trim)
    }
}

/// `[database]`: the Postgres URL, the connection pool and migrations.
#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    /// Postgres URL; may carry a password and `sslmode`, so it is kept secret.
    pub url: SecretString,
    /// Size of the one connection pool the roles share; at least 2 (default 16).
    pub max_connections: u32,
    /// How long to wait for a connection from the pool (default 10 s).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Apply pending migrations at start. Off when the worker's role may not
    /// change the schema (run `billing-worker migrate` as the owner instead).
    pub migrate_on_start: bool,
}

/// The type of every queue the worker declares (`amqp.queue_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// Replicated quorum queues (the default); they dead-letter a message redelivered 50 times.
    Quorum,
    /// Classic queues, without a delivery limit.
    Classic,
}

impl QueueType {
    /// The value of the `x-queue-type` queue argument: `quorum` or `classic`.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        }
    }
}

/// `[amqp]`: the broker connection, topology names, message limits and reconnects.
#[derive(Debug, Clone, Deserialize)]
pub struct AmqpSettings {
    /// AMQP URL (`amqp://` or `amqps://`), or the URLs of several nodes of
    /// one cluster separated by commas: the worker connects to the first
    /// that answers, in order, and to the next one when its node goes away.
    /// May carry a password, so it is kept secret.
    pub url: SecretString,
    /// Prepended to every exchange and queue name: `t1.` gives `t1.billing.usage`.
    pub prefix: String,
    /// Type of every queue the worker declares (default `quorum`).
    pub queue_type: QueueType,
    /// Declare the `billing.webhooks` queue, which keeps webhooks for a delivery service.
    pub webhook_queue: bool,
    /// Largest accepted message body in bytes, at most 128 MiB (default 1 MiB).
    pub max_message_bytes: usize,
    /// Unacknowledged commands (and debit results) the broker hands out at once (default 32).
    pub provisioning_prefetch: u16,
    /// `reply_to` must name a queue starting with this (or the direct
    /// reply-to pseudo queue `amq.rabbitmq.reply-to`).
    pub reply_prefix: String,
    /// First delay of the reconnect backoff, also used in database outages (default 500 ms).
    #[serde(with = "humantime_serde")]
    pub reconnect_initial: Duration,
    /// Longest delay of the reconnect backoff; at least `reconnect_initial` (default 30 s).
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
}

/// `[http]`: where the health and metrics endpoints listen.
#[derive(Debug, Clone, Deserialize)]
pub struct HttpSettings {
    /// Address of `/healthz`, `/readyz` and `/metrics` (default `127.0.0.1:9464`).
    pub listen: SocketAddr,
}

/// `[usage]`: how usage messages are taken, batched and bounded.
#[derive(Debug, Clone, Deserialize)]
pub struct UsageSettings {
    /// Unacknowledged usage messages the broker hands out at once; at least 1 (default 2000).
    pub prefetch: u16,
    /// A batch closes when it holds this many events; at least 1 (default 1000).
    pub batch_size: usize,
    /// A batch also closes once its message bodies reach this many bytes.
    pub batch_bytes: usize,
    /// A batch also closes this long after its first message (default 20 ms).
    #[serde(with = "humantime_serde")]
    pub batch_timeout: Duration,
    /// Most events one `{"events": [...]}` message may carry; at least 1 (default 1000).
    pub max_events_per_message: usize,
    /// How far after its arrival an event's `timestamp` may be (default 5 min).
    #[serde(with = "humantime_serde")]
    pub future_tolerance: Duration,
    /// How long a counted event's body (ids, metric, value, timestamp) is
    /// kept after its timestamp; its key is kept forever. `0s` keeps bodies
    /// forever; else at least 1 h (default 400 days).
    #[serde(with = "humantime_serde")]
    pub event_retention: Duration,
    /// Usage queues: 1 (default) is the one queue `billing.usage`; more are
    /// `billing.usage.0` to `billing.usage.{n-1}` behind consistent-hash
    /// exchanges, each with a single active consumer; at most 64.
    pub shards: u16,
    /// The shards this worker subscribes to at once; the others it takes
    /// only `standby_after` later, and hands back every `standby_after`
    /// in which it counted from them, so that a waiting worker takes over.
    /// Empty (default): every shard. A list, or text such as `"0,2"`.
    #[serde(deserialize_with = "shard_list")]
    pub preferred_shards: Vec<u16>,
    /// How long a worker waits before standing by on a shard it does not
    /// prefer, and how often it hands such a shard back (default 30 s).
    #[serde(with = "humantime_serde")]
    pub standby_after: Duration,
}

impl UsageSettings {
    /// Whether this worker takes shard `i` at once (else it stands by).
    pub fn prefers(&self, shard: u16) -> bool {
        self.preferred_shards.is_empty() || self.preferred_shards.contains(&shard)
    }
}

/// A list of shard numbers, given as a list or as comma-separated text
/// (what an environment variable can hold).
fn shard_list<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<u16>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        List(Vec<u16>),
        Text(String),
    }
    match Given::deserialize(deserializer)? {
        Given::List(list) => Ok(list),
        Given::Text(text) => text
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| {
                t.parse()
                    .map_err(|_| serde::de::Error::custom(format!("'{t}' is not a shard number")))
            })
            .collect(),
    }
}

/// `[scheduler]`: the billing pass: its pace, notices, leases and batch sizes.
#[derive(Debug, Clone, Deserialize)]
pub struct SchedulerSettings {
    /// Time between two billing passes; positive (default 5 s).
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
    /// Time between the `BILLING_TXN_TO_BE_EXECUTED` webhook and the debit (default 24 h).
    #[serde(with = "humantime_serde")]
    pub pre_debit_notice: Duration,
    /// How long a claimed bill stays claimed before an abandoned claim is taken over (default 60 s).
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Rows each step of a pass takes per transaction, and `run_billing`'s default limit (500).
    pub batch_size: i64,
    /// How long an execution whose bill could not be made waits before
    /// billing tries it again (a change by its merchant retries at once).
    #[serde(with = "humantime_serde")]
    pub park_for: Duration,
}

/// `[retry]`: the backoff between retries of a failed debit.
#[derive(Debug, Clone, Deserialize)]
pub struct RetrySettings {
    /// Delay before the first retry; positive (default 1 h).
    #[serde(with = "humantime_serde")]
    pub initial: Duration,
    /// Growth of the delay from one retry to the next; at least 1.0 (default 2.0).
    pub multiplier: f64,
    /// The delay grows no further; at least `initial` (default 24 h).
    #[serde(with = "humantime_serde")]
    pub max: Duration,
    /// Each delay is spread at random by plus or minus this fraction: 0.0 to 1.0 (default 0.2).
    pub jitter: f64,
}

/// `[payments]`: how long a debit may wait for its result.
#[derive(Debug, Clone, Deserialize)]
pub struct PaymentsSettings {
    /// How long a debit waits for its result before the attempt counts as failed (default 15 min).
    #[serde(with = "humantime_serde")]
    pub result_timeout: Duration,
}

/// `[outbox]`: the relay that publishes webhooks.
#[derive(Debug, Clone, Deserialize)]
pub struct OutboxSettings {
    /// How often the relay looks for unpublished webhooks; commits that write some wake it too.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Webhooks published per relay batch; at least 1 (default 500).
    pub batch_size: i64,
}

/// `[shutdown]`: the graceful stop.
#[derive(Debug, Clone, Deserialize)]
pub struct ShutdownSettings {
    /// How long a graceful stop may take (default 25 s).
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
}

/// `[auth]`: tenant authentication of inbound messages.
#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    /// Require each inbound message's broker `user_id` to be allowed for its `x-merchantid` (off).
    pub enabled: bool,
    /// Broker user -> the merchants it may act for.
    #[serde(default)]
    pub users: BTreeMap<String, Vec<String>>,
}

/// How log lines are written (`log.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable text lines (the default).
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`: the format and filter of the logs.
#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    /// `text` or `json` lines, on standard error (default `text`).
    pub format: LogFormat,
    /// `tracing` directives, e.g. `info,billing_worker=debug` (default `info`); `RUST_LOG` wins.
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
        if !self
            .amqp
            .urls()
            .all(|url| url.starts_with("amqp://") || url.starts_with("amqps://"))
        {
            return invalid(
                "amqp.url",
                "must start with amqp:// or amqps:// (each URL, when several)",
            );
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
        if !(1..=64).contains(&self.usage.shards) {
            return invalid("usage.shards", "must be between 1 and 64");
        }
        if let Some(shard) = self.usage.preferred_shards.iter().find(|&&s| s >= self.usage.shards) {
            return invalid(
                "usage.preferred_shards",
                format!(
                    "names shard {shard}, but usage.shards makes 0 to {}",
                    self.usage.shards - 1
                ),
            );
        }
        if self.usage.standby_after.is_zero() {
            return invalid("usage.standby_after", "must be positive");
        }
        if !self.usage.event_retention.is_zero() && self.usage.event_retention < Duration::from_secs(3600) {
            return invalid("usage.event_retention", "must be 0s (keep forever) or at least 1h");
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
    fn shards_and_preferred_shards_come_from_the_environment_as_text() {
        let s = load(&[]).expect("defaults");
        assert_eq!((s.usage.shards, s.usage.prefers(0)), (1, true));
        let s = load(&[
            ("BILLING__USAGE__SHARDS", "4"),
            ("BILLING__USAGE__PREFERRED_SHARDS", "1, 3"),
        ])
        .expect("valid");
        assert_eq!(s.usage.shards, 4);
        assert_eq!(s.usage.preferred_shards, vec![1, 3]);
        assert!(s.usage.prefers(3) && !s.usage.prefers(0));
        let err = load(&[("BILLING__USAGE__PREFERRED_SHARDS", "0,4")]).expect_err("no shard 4 of 1");
        assert!(err.to_string().contains("usage.preferred_shards"), "{err}");
        let err = load(&[("BILLING__USAGE__PREFERRED_SHARDS", "a")]).expect_err("not a number");
        assert!(err.to_string().contains("usage.preferred_shards"), "{err}");
        let err = load(&[("BILLING__USAGE__SHARDS", "65")]).expect_err("too many");
        assert!(err.to_string().contains("usage.shards"), "{err}");
        let err = load(&[("BILLING__USAGE__EVENT_RETENTION", "5m")]).expect_err("too short");
        assert!(err.to_string().contains("usage.event_retention"), "{err}");
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
        let err = load(&[("BILLING__AMQP__URL", "amqp://a:5672/%2f,http://b")]).expect_err("one bad node");
        assert!(err.to_string().contains("amqp.url"), "{err}");
    }

    #[test]
    fn amqp_url_may_list_the_nodes_of_a_cluster() {
        let s = load(&[(
            "BILLING__AMQP__URL",
            "amqp://a:5681/%2f, amqp://b:5682/%2f,amqps://c:5671/%2f",
        )])
        .expect("valid");
        let urls: Vec<&str> = s.amqp.urls().collect();
        assert_eq!(urls, ["amqp://a:5681/%2f", "amqp://b:5682/%2f", "amqps://c:5671/%2f"]);
    }

    #[test]
    fn secrets_never_print() {
        let s = load(&[("BILLING__AMQP__URL", "amqp://user:hunter2@host:5672/%2f")]).expect("valid");
        let printed = format!("{s:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
    }
}
