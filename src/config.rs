//! Layered configuration: command-line flag, then `RCKB_*` environment variable, then the TOML file
//! (`--config`), then the default. Every setting has all three forms; bad values fail start-up with a
//! message that names the setting.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Deserialize;

use crate::routing::{DEFAULT_TOPIC_PREFIX, RoutingError, RoutingTable, Topic};

/// How an accepted notification reaches Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryMode {
    /// Answer 200 once the notification is fsynced to the local spool; a relay publishes it.
    #[default]
    Spool,
    /// Answer 200 once Kafka acknowledged every message; 503 when that takes too long.
    Direct,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// A value that must never reach a log line.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration like `2s` or `1h`: {e}"))
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

/// The settings of `serve` (and of the commands that read the same configuration). Every field is
/// optional here: what is not given falls through to the file, then to the default.
#[derive(Debug, Clone, Default, Args)]
pub struct SettingsArgs {
    /// TOML configuration file.
    #[arg(long, env = "RCKB_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address of the webhook listener [default: 0.0.0.0:8080].
    #[arg(long, env = "RCKB_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Address of the admin listener (/metrics, /healthz, /readyz) [default: 0.0.0.0:9180].
    #[arg(long, env = "RCKB_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Kafka bootstrap servers. Without it the bridge runs on an embedded development broker.
    #[arg(long, env = "RCKB_BROKERS")]
    pub brokers: Option<String>,
    /// Prefix of every topic [default: ringcentral.].
    #[arg(long, env = "RCKB_TOPIC_PREFIX")]
    pub topic_prefix: Option<String>,
    /// The subscription's verification token; when set, notifications without it get 401.
    #[arg(long, env = "RCKB_VERIFICATION_TOKEN", hide_env_values = true)]
    pub verification_token: Option<Secret>,
    /// spool (answer once fsynced locally) or direct (answer once Kafka acknowledged) [default: spool].
    #[arg(long, env = "RCKB_DELIVERY", value_enum)]
    pub delivery: Option<DeliveryMode>,
    /// Directory of the durable spool [default: data].
    #[arg(long, env = "RCKB_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,
    /// Largest spool backlog, in bytes of pending messages, before answering 503 [default: 1073741824].
    #[arg(long, env = "RCKB_SPOOL_MAX_BYTES")]
    pub spool_max_bytes: Option<u64>,
    /// Largest accepted webhook body, in bytes [default: 65536].
    #[arg(long, env = "RCKB_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// In direct mode, how long to wait for Kafka before answering 503 [default: 2s].
    #[arg(long, env = "RCKB_DIRECT_TIMEOUT", value_parser = parse_duration)]
    pub direct_timeout: Option<Duration>,
    /// How long a notification uuid is remembered to drop redeliveries [default: 1h].
    #[arg(long, env = "RCKB_DEDUP_WINDOW", value_parser = parse_duration)]
    pub dedup_window: Option<Duration>,
    /// How many notification uuids are remembered at most [default: 100000].
    #[arg(long, env = "RCKB_DEDUP_CAPACITY")]
    pub dedup_capacity: Option<usize>,
    /// Topic for messages Kafka rejects for good [default: <prefix>dead-letter].
    #[arg(long, env = "RCKB_DEAD_LETTER_TOPIC")]
    pub dead_letter_topic: Option<String>,
    /// On SIGTERM, how long the relay may keep publishing before exit [default: 10s].
    #[arg(long, env = "RCKB_SHUTDOWN_GRACE", value_parser = parse_duration)]
    pub shutdown_grace: Option<Duration>,
    /// human or json [default: human].
    #[arg(long, env = "RCKB_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// A librdkafka property, KEY=VALUE; repeatable; wins over [kafka.properties].
    #[arg(long = "kafka-property", env = "RCKB_KAFKA_PROPERTIES", hide_env_values = true, value_delimiter = ',', value_parser = parse_property)]
    pub kafka_properties: Vec<(String, String)>,
    /// Create missing topics when `serve` starts.
    #[arg(long, env = "RCKB_ENSURE_TOPICS")]
    pub ensure_topics: bool,
    /// Partitions of topics the bridge creates [default: 6].
    #[arg(long, env = "RCKB_TOPIC_PARTITIONS")]
    pub partitions: Option<i32>,
    /// Replication factor of topics the bridge creates [default: 3].
    #[arg(long, env = "RCKB_TOPIC_REPLICATION_FACTOR")]
    pub replication_factor: Option<i32>,
    #[command(flatten)]
    pub ringcentral: RingCentralArgs,
    // HTTP limits on both listeners.
    /// Time a client has to send a request's head, from connecting or from its first byte after
    /// an idle keep-alive [default: 5s].
    #[arg(long, env = "RCKB_HEADER_TIMEOUT", value_parser = parse_duration)]
    pub header_timeout: Option<Duration>,
    /// Time a client has to send a whole request body (408 after it), and to take the response
    /// [default: 10s].
    #[arg(long, env = "RCKB_BODY_TIMEOUT", value_parser = parse_duration)]
    pub body_timeout: Option<Duration>,
    /// How long a keep-alive connection may wait for its next request [default: 75s].
    #[arg(long, env = "RCKB_IDLE_TIMEOUT", value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Largest request head (request line and headers), in bytes; larger gets 431 [default: 16384].
    #[arg(long, env = "RCKB_MAX_HEADER_BYTES")]
    pub max_header_bytes: Option<usize>,
    /// Most open webhook connections; more wait in the listen backlog [default: 1024, lowered to fit
    /// the descriptor limit].
    #[arg(long, env = "RCKB_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Most open admin connections; more wait in the listen backlog [default: 32].
    #[arg(long, env = "RCKB_ADMIN_MAX_CONNECTIONS")]
    pub admin_max_connections: Option<usize>,
}

/// RingCentral API access and the subscription keeper (`[ringcentral]` in the file).
#[derive(Debug, Clone, Default, Args)]
pub struct RingCentralArgs {
    /// RingCentral API server [default: https://platform.ringcentral.com; sandbox:
    /// https://platform.devtest.ringcentral.com].
    #[arg(long, env = "RCKB_RC_SERVER")]
    pub rc_server: Option<String>,
    /// Client id of the RingCentral app (JWT auth flow).
    #[arg(long, env = "RCKB_RC_CLIENT_ID")]
    pub rc_client_id: Option<String>,
    /// Client secret of the RingCentral app.
    #[arg(long, env = "RCKB_RC_CLIENT_SECRET", hide_env_values = true)]
    pub rc_client_secret: Option<Secret>,
    /// JWT credential of the user the subscription belongs to.
    #[arg(long, env = "RCKB_RC_JWT", hide_env_values = true)]
    pub rc_jwt: Option<Secret>,
    /// Public HTTPS address of this bridge's /webhook, as RingCentral reaches it.
    #[arg(long, env = "RCKB_RC_WEBHOOK_ADDRESS")]
    pub rc_webhook_address: Option<String>,
    /// Event filter of created subscriptions; repeatable [default: the account's Extension List
    /// event and the expiry reminder].
    #[arg(
        long = "rc-event-filter",
        env = "RCKB_RC_EVENT_FILTERS",
        value_delimiter = ','
    )]
    pub rc_event_filters: Vec<String>,
    /// Lifetime requested for created subscriptions, in seconds [default: 315360000, the maximum].
    #[arg(long, env = "RCKB_RC_EXPIRES_IN")]
    pub rc_expires_in: Option<u64>,
    /// The subscription the keeper keeps [default: the one delivering to --rc-webhook-address].
    #[arg(long, env = "RCKB_RC_SUBSCRIPTION_ID")]
    pub rc_subscription_id: Option<String>,
    /// Let `serve` keep the subscription alive: renew, watch, recreate.
    #[arg(long, env = "RCKB_RC_KEEP_SUBSCRIPTION")]
    pub rc_keep_subscription: bool,
    /// How often the keeper checks the subscription [default: 10m].
    #[arg(long, env = "RCKB_RC_CHECK_INTERVAL", value_parser = parse_duration)]
    pub rc_check_interval: Option<Duration>,
    /// Renew when the subscription expires sooner than this [default: 1d].
    #[arg(long, env = "RCKB_RC_RENEW_BEFORE", value_parser = parse_duration)]
    pub rc_renew_before: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RingCentralFileConfig {
    server: Option<String>,
    client_id: Option<String>,
    client_secret: Option<Secret>,
    jwt: Option<Secret>,
    webhook_address: Option<String>,
    event_filters: Option<Vec<String>>,
    expires_in: Option<u64>,
    subscription_id: Option<String>,
    keep_subscription: Option<bool>,
    #[serde(default, with = "humantime_serde_opt")]
    check_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    renew_before: Option<Duration>,
}

/// The effective RingCentral settings.
#[derive(Debug, Clone)]
pub struct RingCentralSettings {
    pub server: String,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    pub jwt: Option<Secret>,
    pub webhook_address: Option<String>,
    pub event_filters: Vec<String>,
    pub expires_in: u64,
    pub subscription_id: Option<String>,
    pub keep_subscription: bool,
    pub check_interval: Duration,
    pub renew_before: Duration,
}

impl RingCentralSettings {
    fn resolve(args: RingCentralArgs, file: RingCentralFileConfig) -> Result<Self, ConfigError> {
        let settings = RingCentralSettings {
            server: args
                .rc_server
                .or(file.server)
                .unwrap_or_else(|| crate::ringcentral::PRODUCTION_SERVER.to_string()),
            client_id: args.rc_client_id.or(file.client_id),
            client_secret: args.rc_client_secret.or(file.client_secret),
            jwt: args.rc_jwt.or(file.jwt),
            webhook_address: args.rc_webhook_address.or(file.webhook_address),
            event_filters: Some(args.rc_event_filters)
                .filter(|f| !f.is_empty())
                .or(file.event_filters)
                .unwrap_or_else(|| {
                    crate::ringcentral::DEFAULT_EVENT_FILTERS
                        .iter()
                        .map(|f| f.to_string())
                        .collect()
                }),
            expires_in: args
                .rc_expires_in
                .or(file.expires_in)
                .unwrap_or(crate::ringcentral::MAX_EXPIRES_IN),
            subscription_id: args.rc_subscription_id.or(file.subscription_id),
            keep_subscription: args.rc_keep_subscription || file.keep_subscription.unwrap_or(false),
            check_interval: args
                .rc_check_interval
                .or(file.check_interval)
                .unwrap_or(Duration::from_secs(600)),
            renew_before: args
                .rc_renew_before
                .or(file.renew_before)
                .unwrap_or(Duration::from_secs(86_400)),
        };
        if !settings.server.starts_with("https://") && !settings.server.starts_with("http://") {
            return Err(ConfigError::Invalid {
                key: "ringcentral.server",
                message: format!("`{}` is not an http(s) URL", settings.server),
            });
        }
        if settings.expires_in == 0 || settings.expires_in > crate::ringcentral::MAX_EXPIRES_IN {
            return Err(ConfigError::Invalid {
                key: "ringcentral.expires_in",
                message: format!(
                    "must be between 1 and {}",
                    crate::ringcentral::MAX_EXPIRES_IN
                ),
            });
        }
        if settings.keep_subscription {
            settings.credentials()?;
            settings.address()?;
        }
        Ok(settings)
    }

    /// The app's credentials, or which key is missing.
    pub fn credentials(&self) -> Result<crate::ringcentral::Credentials, ConfigError> {
        let missing = |key: &'static str| ConfigError::Invalid {
            key,
            message: "is required to call RingCentral's API".into(),
        };
        Ok(crate::ringcentral::Credentials {
            server: self.server.clone(),
            client_id: self
                .client_id
                .clone()
                .ok_or(missing("ringcentral.client_id"))?,
            client_secret: self
                .client_secret
                .clone()
                .ok_or(missing("ringcentral.client_secret"))?,
            jwt: self.jwt.clone().ok_or(missing("ringcentral.jwt"))?,
        })
    }

    /// The webhook address, or a message naming the key.
    pub fn address(&self) -> Result<&str, ConfigError> {
        self.webhook_address.as_deref().ok_or(ConfigError::Invalid {
            key: "ringcentral.webhook_address",
            message: "is required: the public address of this bridge's /webhook".into(),
        })
    }
}

/// The TOML file. Unknown keys are an error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    brokers: Option<String>,
    topic_prefix: Option<String>,
    verification_token: Option<Secret>,
    delivery: Option<DeliveryMode>,
    spool_dir: Option<PathBuf>,
    spool_max_bytes: Option<u64>,
    max_body_bytes: Option<usize>,
    #[serde(default, with = "humantime_serde_opt")]
    direct_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    dedup_window: Option<Duration>,
    dedup_capacity: Option<usize>,
    dead_letter_topic: Option<String>,
    #[serde(default, with = "humantime_serde_opt")]
    shutdown_grace: Option<Duration>,
    log_format: Option<LogFormat>,
    ensure_topics: Option<bool>,
    partitions: Option<i32>,
    replication_factor: Option<i32>,
    #[serde(default)]
    kafka: KafkaFileConfig,
    /// Hint -> target APIs: overrides a built-in hint or adds one.
    #[serde(default)]
    hints: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    ringcentral: RingCentralFileConfig,
    // HTTP limits on both listeners.
    #[serde(default, with = "humantime_serde_opt")]
    header_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    body_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    idle_timeout: Option<Duration>,
    max_header_bytes: Option<usize>,
    max_connections: Option<usize>,
    admin_max_connections: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KafkaFileConfig {
    #[serde(default)]
    properties: BTreeMap<String, String>,
}

mod humantime_serde_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| super::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// The effective, validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub brokers: Option<String>,
    pub topic_prefix: String,
    pub verification_token: Option<Secret>,
    pub delivery: DeliveryMode,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub max_body_bytes: usize,
    pub direct_timeout: Duration,
    pub dedup_window: Duration,
    pub dedup_capacity: usize,
    pub dead_letter_topic: Topic,
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
    pub ensure_topics: bool,
    pub partitions: i32,
    pub replication_factor: i32,
    pub kafka_properties: KafkaProperties,
    pub hints: BTreeMap<String, Vec<String>>,
    pub routing: RoutingTable,
    pub ringcentral: RingCentralSettings,
    // HTTP limits on both listeners.
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    /// `None`: the default, fitted to the descriptor limit at start-up.
    pub max_connections: Option<usize>,
    pub admin_max_connections: Option<usize>,
}

/// librdkafka properties as given. Printing them hides every value whose key looks secret
/// (`sasl.password`, `ssl.key.password`, `sasl.oauthbearer.client.secret`, ...).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaProperties(pub BTreeMap<String, String>);

impl std::ops::Deref for KafkaProperties {
    type Target = BTreeMap<String, String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = |key: &str| {
            ["password", "secret", "key", "token"]
                .iter()
                .any(|s| key.contains(s))
        };
        f.debug_map()
            .entries(
                self.0
                    .iter()
                    .map(|(k, v)| (k, if secret(k) { "***" } else { v.as_str() })),
            )
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
    #[error("routing: {0}")]
    Routing(#[from] RoutingError),
}

/// Longest HTTP timeout accepted: anything longer is a typo, and would hold a connection for good.
const MAX_TIMEOUT: Duration = Duration::from_secs(86_400);

/// librdkafka properties the bridge owns: setting them would break its delivery guarantees or
/// duplicate a first-class setting.
const OWNED_KAFKA_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "use --brokers"),
    (
        "enable.idempotence",
        "the bridge always produces idempotently",
    ),
    ("acks", "the bridge always waits for acks=all"),
    (
        "request.required.acks",
        "the bridge always waits for acks=all",
    ),
];

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }
}

impl Settings {
    /// Resolves flags and environment (already merged by clap) over the file over the defaults.
    pub fn load(args: &SettingsArgs) -> Result<Settings, ConfigError> {
        let file = match &args.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        Settings::resolve(args.clone(), file)
    }

    pub fn resolve(args: SettingsArgs, file: FileConfig) -> Result<Settings, ConfigError> {
        let topic_prefix = args
            .topic_prefix
            .or(file.topic_prefix)
            .unwrap_or_else(|| DEFAULT_TOPIC_PREFIX.to_string());
        let routing = RoutingTable::new(&topic_prefix, &file.hints)?;
        let dead_letter_topic = args
            .dead_letter_topic
            .or(file.dead_letter_topic)
            .unwrap_or_else(|| format!("{topic_prefix}dead-letter"));
        let dead_letter_topic =
            Topic::parse(dead_letter_topic).map_err(|e| ConfigError::Invalid {
                key: "dead_letter_topic",
                message: e.to_string(),
            })?;

        let mut kafka_properties = file.kafka.properties;
        kafka_properties.extend(args.kafka_properties);
        for (key, why) in OWNED_KAFKA_PROPERTIES {
            if kafka_properties.contains_key(*key) {
                return Err(ConfigError::Invalid {
                    key: "kafka.properties",
                    message: format!("`{key}` cannot be set: {why}"),
                });
            }
        }

        let positive = |key: &'static str, value: u64| {
            if value == 0 {
                Err(ConfigError::Invalid {
                    key,
                    message: "must be greater than zero".into(),
                })
            } else {
                Ok(value)
            }
        };
        let verification_token = args
            .verification_token
            .or(file.verification_token)
            .filter(|t| !t.expose().is_empty());
        let brokers = args
            .brokers
            .or(file.brokers)
            .filter(|b| !b.trim().is_empty());
        // HTTP limits on both listeners.
        let timeout = |key: &'static str, value: Option<Duration>, default: u64| {
            let value = value.unwrap_or(Duration::from_secs(default));
            if value.is_zero() || value > MAX_TIMEOUT {
                Err(ConfigError::Invalid {
                    key,
                    message: "must be more than zero and at most 1 day".into(),
                })
            } else {
                Ok(value)
            }
        };
        let header_timeout = timeout(
            "header_timeout",
            args.header_timeout.or(file.header_timeout),
            5,
        )?;
        let body_timeout = timeout("body_timeout", args.body_timeout.or(file.body_timeout), 10)?;
        let idle_timeout = timeout("idle_timeout", args.idle_timeout.or(file.idle_timeout), 75)?;
        let max_header_bytes = args
            .max_header_bytes
            .or(file.max_header_bytes)
            .unwrap_or(16 * 1024);
        if max_header_bytes < 1024 {
            return Err(ConfigError::Invalid {
                key: "max_header_bytes",
                message: "must be at least 1024".into(),
            });
        }
        let shutdown_grace = args
            .shutdown_grace
            .or(file.shutdown_grace)
            .unwrap_or(Duration::from_secs(10));
        if shutdown_grace > MAX_TIMEOUT {
            return Err(ConfigError::Invalid {
                key: "shutdown_grace",
                message: "must be at most 1 day".into(),
            });
        }
        let max_connections = args.max_connections.or(file.max_connections);
        let admin_max_connections = args.admin_max_connections.or(file.admin_max_connections);
        for (key, cap) in [
            ("max_connections", max_connections),
            ("admin_max_connections", admin_max_connections),
        ] {
            if let Some(cap) = cap {
                positive(key, cap as u64)?;
            }
        }
        Ok(Settings {
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| ([0, 0, 0, 0], 8080).into()),
            admin_listen: args
                .admin_listen
                .or(file.admin_listen)
                .unwrap_or_else(|| ([0, 0, 0, 0], 9180).into()),
            brokers,
            topic_prefix,
            verification_token,
            delivery: args.delivery.or(file.delivery).unwrap_or_default(),
            spool_dir: args
                .spool_dir
                .or(file.spool_dir)
                .unwrap_or_else(|| PathBuf::from("data")),
            spool_max_bytes: positive(
                "spool_max_bytes",
                args.spool_max_bytes
                    .or(file.spool_max_bytes)
                    .unwrap_or(1 << 30),
            )?,
            max_body_bytes: positive(
                "max_body_bytes",
                args.max_body_bytes
                    .or(file.max_body_bytes)
                    .unwrap_or(64 * 1024) as u64,
            )? as usize,
            direct_timeout: args
                .direct_timeout
                .or(file.direct_timeout)
                .unwrap_or(Duration::from_secs(2)),
            dedup_window: args
                .dedup_window
                .or(file.dedup_window)
                .unwrap_or(Duration::from_secs(3600)),
            dedup_capacity: positive(
                "dedup_capacity",
                args.dedup_capacity
                    .or(file.dedup_capacity)
                    .unwrap_or(100_000) as u64,
            )? as usize,
            dead_letter_topic,
            shutdown_grace,
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            ensure_topics: args.ensure_topics || file.ensure_topics.unwrap_or(false),
            partitions: positive(
                "partitions",
                args.partitions.or(file.partitions).unwrap_or(6).max(0) as u64,
            )? as i32,
            replication_factor: positive(
                "replication_factor",
                args.replication_factor
                    .or(file.replication_factor)
                    .unwrap_or(3)
                    .max(0) as u64,
            )? as i32,
            kafka_properties: KafkaProperties(kafka_properties),
            hints: file.hints,
            ringcentral: RingCentralSettings::resolve(args.ringcentral, file.ringcentral)?,
            routing,
            header_timeout,
            body_timeout,
            idle_timeout,
            max_header_bytes,
            max_connections,
            admin_max_connections,
        })
    }

    /// Defaults everywhere: the starting point of tests and of `routes` without a file.
    pub fn defaults() -> Settings {
        Settings::resolve(SettingsArgs::default(), FileConfig::default())
            .expect("the defaults are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_toml(text: &str) -> Result<Settings, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "test.toml".into(),
            message: e.to_string(),
        })?;
        Settings::resolve(SettingsArgs::default(), file)
    }

    #[test]
    fn the_shipped_example_config_parses() {
        let text = include_str!("../config.example.toml");
        let settings = from_toml(text).expect("config.example.toml is valid");
        assert_eq!(settings.delivery, DeliveryMode::Spool);
    }

    #[test]
    fn flags_win_over_the_file_which_wins_over_defaults() {
        let file: FileConfig =
            toml::from_str("topic_prefix = \"file.\"\nlisten = \"127.0.0.1:1\"\n").unwrap();
        let args = SettingsArgs {
            listen: Some("127.0.0.1:2".parse().unwrap()),
            ..Default::default()
        };
        let s = Settings::resolve(args, file).unwrap();
        assert_eq!(s.listen, "127.0.0.1:2".parse().unwrap());
        assert_eq!(s.topic_prefix, "file.");
        assert_eq!(s.dead_letter_topic.as_str(), "file.dead-letter");
        assert_eq!(s.admin_listen, "0.0.0.0:9180".parse().unwrap());
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let err = from_toml("listne = \"x\"").unwrap_err().to_string();
        assert!(err.contains("listne"), "{err}");
        let err = from_toml("dedup_window = \"soon\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("dedup_window"), "{err}");
        let err = from_toml("[kafka.properties]\nacks = \"1\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("acks"), "{err}");
        let err = from_toml("spool_max_bytes = 0").unwrap_err().to_string();
        assert!(err.contains("spool_max_bytes"), "{err}");
        let err = from_toml("[hints]\nBad = [\"a b\"]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("Bad"), "{err}");
    }

    #[test]
    fn http_limits_have_defaults_and_refuse_nonsense() {
        let s = Settings::defaults();
        assert_eq!(s.header_timeout, Duration::from_secs(5));
        assert_eq!(s.body_timeout, Duration::from_secs(10));
        assert_eq!(s.idle_timeout, Duration::from_secs(75));
        assert_eq!(s.max_header_bytes, 16 * 1024);
        assert_eq!((s.max_connections, s.admin_max_connections), (None, None));
        let s = from_toml("header_timeout = \"2s\"\nmax_connections = 10").unwrap();
        assert_eq!(s.header_timeout, Duration::from_secs(2));
        assert_eq!(s.max_connections, Some(10));
        for (text, key) in [
            ("header_timeout = \"0s\"", "header_timeout"),
            ("idle_timeout = \"400d\"", "idle_timeout"),
            ("body_timeout = \"soon\"", "body_timeout"),
            ("max_header_bytes = 100", "max_header_bytes"),
            ("max_connections = 0", "max_connections"),
            ("admin_max_connections = 0", "admin_max_connections"),
            ("shutdown_grace = \"400d\"", "shutdown_grace"),
        ] {
            let err = from_toml(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn secrets_do_not_print() {
        let s = from_toml(
            "verification_token = \"hunter2\"\n[kafka.properties]\n\"sasl.password\" = \"swordfish\"\n\"linger.ms\" = \"7\"",
        )
        .unwrap();
        let printed = format!("{s:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(!printed.contains("swordfish"), "{printed}");
        assert!(printed.contains("\"linger.ms\": \"7\""), "{printed}");
    }
}
