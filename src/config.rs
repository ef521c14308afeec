//! Layered configuration: command-line flag, then `RCKB_*` environment variable, then the TOML file
//! (`--config`), then the default. Every setting has all three forms; bad values fail start-up with a
//! message that names the setting.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Deserialize;

use crate::ringcentral::SubscriptionId;
pub use crate::secret::Secret;

use crate::routing::{DEFAULT_TOPIC_PREFIX, FanoutLimits, RoutingError, RoutingTable, Topic};

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

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration like `2s` or `1h`: {e}"))
}

fn positive_usize(
    key: &'static str,
    value: Option<usize>,
    default: usize,
) -> Result<usize, ConfigError> {
    match value.unwrap_or(default) {
        0 => Err(ConfigError::Invalid {
            key,
            message: "must be greater than zero".into(),
        }),
        n => Ok(n),
    }
}

/// One `KEY=VALUE` librdkafka property. Errors name the key at most, never the text: a value may be
/// a password, and text without `=` may be a piece of one.
fn parse_property(s: &str) -> Result<(String, String), String> {
    let Some((key, value)) = s.split_once('=') else {
        return Err(
            "expected KEY=VALUE, found no `=` (the text is not shown: it may be a secret)".into(),
        );
    };
    let key = key.trim();
    if key.is_empty() {
        return Err("expected KEY=VALUE, found an empty key".into());
    }
    Ok((key.to_string(), value.trim().to_string()))
}

/// Parses `--kafka-property`. clap's own message for a rejected value repeats the value, which may
/// be a password; this parser's errors name the key at most.
#[derive(Clone)]
struct PropertyParser;

impl clap::builder::TypedValueParser for PropertyParser {
    type Value = (String, String);

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<Self::Value, clap::Error> {
        let refuse = |message: String| {
            clap::Error::raw(
                clap::error::ErrorKind::InvalidValue,
                format!("--kafka-property: {message}\n"),
            )
            .with_cmd(cmd)
        };
        let text = value
            .to_str()
            .ok_or_else(|| refuse("is not UTF-8 (not shown)".into()))?;
        parse_property(text).map_err(refuse)
    }
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
    /// After SIGTERM: the time for requests in flight and the relay, before exit [default: 10s].
    #[arg(long, env = "RCKB_SHUTDOWN_GRACE", value_parser = parse_duration)]
    pub shutdown_grace: Option<Duration>,
    /// human or json [default: human].
    #[arg(long, env = "RCKB_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// A librdkafka property, KEY=VALUE (the value whole, commas included); repeatable. Wins over
    /// the environment (RCKB_KAFKA_PROPERTY_<KEY>, then RCKB_KAFKA_PROPERTIES: KEY=VALUE,KEY=VALUE
    /// with `\,` for a comma in a value) and over [kafka.properties].
    #[arg(long = "kafka-property", value_name = "KEY=VALUE", value_parser = PropertyParser)]
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
    // Exposure: who may post, and what one notification may cost.
    /// Run with a real broker without a verification token: anyone who finds the address can publish
    /// into the topics. Only for a webhook that is not reachable from the internet.
    #[arg(long, env = "RCKB_ALLOW_UNVERIFIED_WEBHOOKS")]
    pub allow_unverified_webhooks: bool,
    /// Accept notifications only from this subscription id; repeatable. Others get 403. The keeper's
    /// own subscription is allowed automatically [default: any].
    #[arg(
        long = "allowed-subscription-id",
        env = "RCKB_ALLOWED_SUBSCRIPTION_IDS",
        value_delimiter = ','
    )]
    pub allowed_subscription_ids: Vec<String>,
    /// Most distinct hints in one extension's change [default: 64].
    #[arg(long, env = "RCKB_MAX_HINTS_PER_CHANGE")]
    pub max_hints_per_change: Option<usize>,
    /// Most changes (batched Extension List entries) in one notification [default: 4096].
    #[arg(long, env = "RCKB_MAX_CHANGES_PER_NOTIFICATION")]
    pub max_changes_per_notification: Option<usize>,
    /// Most Kafka messages planned from one notification [default: 8192].
    #[arg(long, env = "RCKB_MAX_MESSAGES_PER_NOTIFICATION")]
    pub max_messages_per_notification: Option<usize>,
    /// Most bytes planned from one notification (topics, keys, headers, values) [default: 16777216].
    #[arg(long, env = "RCKB_MAX_PLAN_BYTES")]
    pub max_plan_bytes: Option<usize>,
    #[command(flatten)]
    pub ringcentral: RingCentralArgs,
    // Secrets in Kafka properties (issue 10).
    /// librdkafka properties from the environment (`RCKB_KAFKA_PROPERTIES`, then each
    /// `RCKB_KAFKA_PROPERTY_<KEY>`), filled by [`Settings::load`]; the flags win over them.
    #[arg(skip)]
    pub kafka_properties_env: Vec<(String, String)>,
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
    pub subscription_id: Option<SubscriptionId>,
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
            subscription_id: args
                .rc_subscription_id
                .or(file.subscription_id)
                .map(|id| {
                    SubscriptionId::parse(id).map_err(|e| ConfigError::Invalid {
                        key: "ringcentral.subscription_id",
                        message: e.to_string(),
                    })
                })
                .transpose()?,
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
        crate::ringcentral::parse_server(&settings.server).map_err(|message| {
            ConfigError::Invalid {
                key: "ringcentral.server",
                message,
            }
        })?;
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
    // Exposure.
    allow_unverified_webhooks: Option<bool>,
    allowed_subscription_ids: Option<Vec<String>>,
    max_hints_per_change: Option<usize>,
    max_changes_per_notification: Option<usize>,
    max_messages_per_notification: Option<usize>,
    max_plan_bytes: Option<usize>,
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
    pub allow_unverified_webhooks: bool,
    pub allowed_subscription_ids: Vec<String>,
    // HTTP limits on both listeners.
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    /// `None`: the default, fitted to the descriptor limit at start-up.
    pub max_connections: Option<usize>,
    pub admin_max_connections: Option<usize>,
}

/// Tokens shipped as placeholders in the deployment files: running with one is a mistake, never a choice.
const PLACEHOLDER_TOKENS: &[&str] = &[
    "REPLACE-WITH-THE-SUBSCRIPTION-VERIFICATION-TOKEN",
    "change-me",
];

/// Below this length a verification token is guessable enough to warn about.
const SHORT_TOKEN: usize = 16;

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

/// Whether a librdkafka property's value is a secret, going by its name (`sasl.password`,
/// `ssl.key.password`, `sasl.oauthbearer.client.secret`, `sasl.jaas.config`, ...).
fn is_secret_property(key: &str) -> bool {
    [
        "password",
        "secret",
        "key",
        "token",
        "jaas",
        "oauthbearer.config",
    ]
    .iter()
    .any(|s| key.contains(s))
}

impl fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                (
                    k,
                    if is_secret_property(k) {
                        "***"
                    } else {
                        v.as_str()
                    },
                )
            }))
            .finish()
    }
}

impl KafkaProperties {
    /// `text` (a librdkafka error) with every property value replaced by `<value of KEY>`, so that
    /// a message about a property names its key only. Values of four characters or more, and those
    /// of secret-looking keys, are masked wherever they appear; other short ones (`1`, `all`) only
    /// as whole words, so that the numbers and words of the message stay readable.
    pub fn redact(&self, text: &str) -> String {
        let is_word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        // Every occurrence is found in the original text, then overlapping ones are masked as one:
        // masking values one after another could leave a piece of a longer one in view.
        let mut spans: Vec<(usize, usize, &str)> = Vec::new();
        for (key, value) in self.0.iter().filter(|(_, v)| !v.is_empty()) {
            let anywhere = value.len() >= 4 || is_secret_property(key);
            for (at, _) in text.match_indices(value.as_str()) {
                let end = at + value.len();
                let whole_word = !is_word(text[..at].chars().next_back())
                    && !is_word(text[end..].chars().next());
                if anywhere || whole_word {
                    spans.push((at, end, key));
                }
            }
        }
        spans.sort_by_key(|&(at, end, _)| (at, std::cmp::Reverse(end)));
        let mut out = String::with_capacity(text.len());
        let mut copied = 0;
        let mut spans = spans.into_iter().peekable();
        while let Some((at, mut end, key)) = spans.next() {
            while let Some(&(_, next_end, _)) = spans.peek().filter(|(next, _, _)| *next < end) {
                end = end.max(next_end);
                spans.next();
            }
            out.push_str(&text[copied..at]);
            out.push_str(&format!("<value of {key}>"));
            copied = end;
        }
        out.push_str(&text[copied..]);
        out
    }

    /// Asks librdkafka whether it accepts every property, as it would when a client is made; the
    /// error names the key only.
    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            key: "kafka.properties",
            message,
        };
        for (key, value) in &self.0 {
            if key.contains('\0') || value.contains('\0') {
                return Err(invalid(format!("`{key}`: contains a NUL character")));
            }
        }
        let config: rdkafka::ClientConfig = self.0.clone().into_iter().collect();
        match config.create_native_config() {
            Ok(_) => Ok(()),
            Err(rdkafka::error::KafkaError::ClientConfig(result, _, key, _)) => {
                use rdkafka::types::RDKafkaConfRes as R;
                let why = match result {
                    R::RD_KAFKA_CONF_UNKNOWN => "no such librdkafka property (check the spelling)",
                    _ => {
                        "librdkafka refuses this value (not shown: it may be a secret); see \
                         librdkafka's CONFIGURATION.md for the allowed values"
                    }
                };
                Err(invalid(format!("`{key}`: {why}")))
            }
            Err(e) => Err(invalid(self.redact(&e.to_string()))),
        }
    }
}

/// The variable that lists librdkafka properties: `KEY=VALUE,KEY=VALUE`.
pub const KAFKA_PROPERTIES_VAR: &str = "RCKB_KAFKA_PROPERTIES";
/// The prefix of one-property variables: `RCKB_KAFKA_PROPERTY_SASL_PASSWORD` sets `sasl.password`.
pub const KAFKA_PROPERTY_VAR_PREFIX: &str = "RCKB_KAFKA_PROPERTY_";

/// The librdkafka properties given in `vars` (the process environment): first the items of
/// `RCKB_KAFKA_PROPERTIES`, split on commas (`\,` is a comma inside a value, `\\` a backslash),
/// then one property per `RCKB_KAFKA_PROPERTY_<KEY>` variable, whose value is taken whole; for one
/// key, the latter wins. `<KEY>` is the property's name upper-cased with `.` as `_`. An empty
/// variable counts as not set. Errors name the variable, never a value.
pub fn kafka_properties_from_env(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut list = Vec::new();
    let mut single = BTreeMap::new();
    for (name, value) in vars {
        let Some(name) = name.to_str() else { continue };
        let is_list = name == KAFKA_PROPERTIES_VAR;
        let key = name.strip_prefix(KAFKA_PROPERTY_VAR_PREFIX);
        if !is_list && key.is_none() {
            continue;
        }
        let refuse = |message: &str| ConfigError::Environment {
            variable: name.to_string(),
            message: message.to_string(),
        };
        let value = value
            .into_string()
            .map_err(|_| refuse("is not UTF-8 (the value is not shown)"))?;
        if value.is_empty() {
            continue;
        }
        match key {
            None => {
                for (n, item) in split_escaped_list(&value).iter().enumerate() {
                    if item.trim().is_empty() {
                        continue;
                    }
                    let property = parse_property(item).map_err(|e| {
                        refuse(&format!(
                            "item {}: {e}; write a comma inside a value as `\\,`, or set the \
                             property alone with {KAFKA_PROPERTY_VAR_PREFIX}<KEY>",
                            n + 1
                        ))
                    })?;
                    list.push(property);
                }
            }
            Some(key) => {
                let valid =
                    !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !valid {
                    return Err(refuse(
                        "must be RCKB_KAFKA_PROPERTY_ followed by the property's name in capitals, \
                         with `_` for `.` (RCKB_KAFKA_PROPERTY_SASL_PASSWORD for sasl.password)",
                    ));
                }
                let property = key.to_ascii_lowercase().replace('_', ".");
                if let Some(other) = single.insert(property.clone(), (name.to_string(), value)) {
                    return Err(refuse(&format!(
                        "sets `{property}`, as {} does: keep one of them",
                        other.0
                    )));
                }
            }
        }
    }
    list.extend(single.into_iter().map(|(key, (_, value))| (key, value)));
    Ok(list)
}

/// Splits on `,` except where escaped: `\,` is a comma, `\\` a backslash, any other `\` itself.
fn split_escaped_list(text: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut item = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some(&next @ (',' | '\\'))) => {
                item.push(next);
                chars.next();
            }
            (',', _) => items.push(std::mem::take(&mut item)),
            _ => item.push(c),
        }
    }
    items.push(item);
    items
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
    #[error("{variable}: {message}")]
    Environment { variable: String, message: String },
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
        let mut args = args.clone();
        args.kafka_properties_env = kafka_properties_from_env(std::env::vars_os())?;
        Settings::resolve(args, file)
    }

    pub fn resolve(args: SettingsArgs, file: FileConfig) -> Result<Settings, ConfigError> {
        let topic_prefix = args
            .topic_prefix
            .or(file.topic_prefix)
            .unwrap_or_else(|| DEFAULT_TOPIC_PREFIX.to_string());
        let limits = FanoutLimits {
            max_hints_per_change: positive_usize(
                "max_hints_per_change",
                args.max_hints_per_change.or(file.max_hints_per_change),
                FanoutLimits::default().max_hints_per_change,
            )?,
            max_changes: positive_usize(
                "max_changes_per_notification",
                args.max_changes_per_notification
                    .or(file.max_changes_per_notification),
                FanoutLimits::default().max_changes,
            )?,
            max_messages: positive_usize(
                "max_messages_per_notification",
                args.max_messages_per_notification
                    .or(file.max_messages_per_notification),
                FanoutLimits::default().max_messages,
            )?,
            max_plan_bytes: positive_usize(
                "max_plan_bytes",
                args.max_plan_bytes.or(file.max_plan_bytes),
                FanoutLimits::default().max_plan_bytes,
            )?,
        };
        let routing = RoutingTable::new(&topic_prefix, &file.hints)?.with_limits(limits);
        let allowed_subscription_ids = Some(args.allowed_subscription_ids)
            .filter(|ids| !ids.is_empty())
            .or(file.allowed_subscription_ids)
            .unwrap_or_default();
        if let Some(bad) = allowed_subscription_ids
            .iter()
            .find(|id| !crate::notification::is_resource_id(id))
        {
            return Err(ConfigError::Invalid {
                key: "allowed_subscription_ids",
                message: format!("`{bad}` is not a subscription id (letters, digits and `-`)"),
            });
        }
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
        kafka_properties.extend(args.kafka_properties_env);
        kafka_properties.extend(args.kafka_properties);
        for (key, why) in OWNED_KAFKA_PROPERTIES {
            if kafka_properties.contains_key(*key) {
                return Err(ConfigError::Invalid {
                    key: "kafka.properties",
                    message: format!("`{key}` cannot be set: {why}"),
                });
            }
        }
        let kafka_properties = KafkaProperties(kafka_properties);
        kafka_properties.check()?;

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
            kafka_properties,
            hints: file.hints,
            ringcentral: RingCentralSettings::resolve(args.ringcentral, file.ringcentral)?,
            routing,
            allow_unverified_webhooks: args.allow_unverified_webhooks
                || file.allow_unverified_webhooks.unwrap_or(false),
            allowed_subscription_ids,
            header_timeout,
            body_timeout,
            idle_timeout,
            max_header_bytes,
            max_connections,
            admin_max_connections,
        })
    }

    /// What `serve` needs beyond valid settings: a webhook that is authenticated unless the operator
    /// explicitly opted out. The embedded development broker keeps nothing and needs no token. Returns
    /// the warnings to log at start-up.
    pub fn check_webhook_auth(&self) -> Result<Vec<String>, ConfigError> {
        let mut warnings = Vec::new();
        match &self.verification_token {
            Some(token) if PLACEHOLDER_TOKENS.contains(&token.expose()) => {
                return Err(ConfigError::Invalid {
                    key: "verification_token",
                    message:
                        "is the placeholder shipped in the deployment files: set the token of \
                              the RingCentral subscription (`rc-kafka-bridge subscription create` \
                              prints one)"
                            .into(),
                });
            }
            Some(token) if token.expose().len() < SHORT_TOKEN => warnings.push(format!(
                "the verification token is shorter than {SHORT_TOKEN} characters: easy to guess"
            )),
            Some(_) => {}
            None if self.brokers.is_none() => {}
            None if self.allow_unverified_webhooks => warnings.push(
                "--allow-unverified-webhooks: notifications are accepted without a verification \
                 token; anyone who can reach the webhook can publish into the topics"
                    .into(),
            ),
            None => {
                return Err(ConfigError::Invalid {
                    key: "verification_token",
                    message: "is required with --brokers (RCKB_VERIFICATION_TOKEN, or \
                              `verification_token` in the file): without it anyone who finds the \
                              webhook can publish into the topics. Set the subscription's token, or \
                              pass --allow-unverified-webhooks (RCKB_ALLOW_UNVERIFIED_WEBHOOKS=true) \
                              for a webhook that is not reachable from the internet"
                        .into(),
                });
            }
        }
        Ok(warnings)
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

    fn env(vars: &[(&str, &str)]) -> Result<Vec<(String, String)>, ConfigError> {
        kafka_properties_from_env(
            vars.iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v))),
        )
    }

    #[test]
    fn kafka_properties_come_from_the_environment() {
        let got = env(&[
            ("PATH", "/bin"),
            ("RCKB_KAFKA_PROPERTY_SASL_PASSWORD", " pa,ss "),
            (
                "RCKB_KAFKA_PROPERTIES",
                r"linger.ms=7, client.id=a\,b , sasl.password=list,",
            ),
            ("RCKB_KAFKA_PROPERTY_SSL_KEY_PASSWORD", ""),
            ("RCKB_KAFKA_PROPERTY_CLIENT_RACK", r"c:\dir\\x"),
        ])
        .unwrap();
        assert_eq!(
            got,
            [
                ("linger.ms".to_string(), "7".to_string()),
                ("client.id".into(), "a,b".into()),
                ("sasl.password".into(), "list".into()),
                // One-property variables come last, so they win; taken whole, never split.
                ("client.rack".into(), r"c:\dir\\x".into()),
                ("sasl.password".into(), " pa,ss ".into()),
            ]
        );
        assert_eq!(
            split_escaped_list(r"a=1\,2,b=x\\,c=\y"),
            ["a=1,2", r"b=x\", r"c=\y"]
        );
    }

    #[test]
    fn environment_errors_name_the_variable_not_the_value() {
        for (vars, named) in [
            (
                vec![("RCKB_KAFKA_PROPERTIES", "sasl.password=hun,ter2")],
                "RCKB_KAFKA_PROPERTIES",
            ),
            (
                vec![("RCKB_KAFKA_PROPERTIES", "=hunter2")],
                "RCKB_KAFKA_PROPERTIES",
            ),
            (
                vec![("RCKB_KAFKA_PROPERTY_SASL.PASSWORD", "hunter2")],
                "RCKB_KAFKA_PROPERTY_SASL.PASSWORD",
            ),
            (
                vec![
                    ("RCKB_KAFKA_PROPERTY_SASL_PASSWORD", "hunter2"),
                    ("RCKB_KAFKA_PROPERTY_sasl_password", "hunter2"),
                ],
                "sasl.password",
            ),
        ] {
            let err = env(&vars).unwrap_err().to_string();
            assert!(err.contains(named), "{err}");
            assert!(!err.contains("hunter2") && !err.contains("ter2"), "{err}");
        }
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStringExt;
            let err = kafka_properties_from_env([(
                OsString::from("RCKB_KAFKA_PROPERTY_SASL_PASSWORD"),
                OsString::from_vec(vec![0xff, b'x']),
            )])
            .unwrap_err()
            .to_string();
            assert!(err.contains("RCKB_KAFKA_PROPERTY_SASL_PASSWORD"), "{err}");
        }
    }

    #[test]
    fn property_errors_name_the_key_not_the_value() {
        for text in ["hunter2", "=hunter2", "  =hunter2"] {
            let err = parse_property(text).unwrap_err();
            assert!(!err.contains("hunter2"), "{err}");
        }
        assert_eq!(
            parse_property(" sasl.password = a=b,c ").unwrap(),
            ("sasl.password".into(), "a=b,c".into())
        );
        for (toml, key) in [
            (
                "[kafka.properties]\n\"linger.ms\" = \"hunter2\"",
                "`linger.ms`",
            ),
            (
                "[kafka.properties]\n\"sasl.pasword\" = \"hunter2\"",
                "`sasl.pasword`",
            ),
            (
                "[kafka.properties]\n\"compression.type\" = \"hunter2\"",
                "`compression.type`",
            ),
        ] {
            let err = from_toml(toml).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn flags_win_over_the_environment_which_wins_over_the_file() {
        let file: FileConfig = toml::from_str(
            "[kafka.properties]\n\"linger.ms\" = \"1\"\n\"client.id\" = \"file\"\n\"client.rack\" = \"file\"",
        )
        .unwrap();
        let args = SettingsArgs {
            kafka_properties_env: vec![
                ("linger.ms".into(), "2".into()),
                ("client.id".into(), "env".into()),
            ],
            kafka_properties: vec![("linger.ms".into(), "3".into())],
            ..Default::default()
        };
        let s = Settings::resolve(args, file).unwrap();
        assert_eq!(s.kafka_properties["linger.ms"], "3");
        assert_eq!(s.kafka_properties["client.id"], "env");
        assert_eq!(s.kafka_properties["client.rack"], "file");
    }

    #[test]
    fn librdkafka_messages_are_redacted() {
        let properties = KafkaProperties(BTreeMap::from([
            ("sasl.mechanisms".to_string(), "HUNTER2".to_string()),
            ("sasl.password".to_string(), "pw".to_string()),
            ("linger.ms".to_string(), "5".to_string()),
            ("client.id".to_string(), "HUNTER2-long".to_string()),
        ]));
        let redacted = properties.redact(
            "Unsupported SASL mechanism: HUNTER2; pw=pwned; HUNTER2-long; \
             value 5 outside 1..500, not 15",
        );
        assert_eq!(
            redacted,
            "Unsupported SASL mechanism: <value of sasl.mechanisms>; <value of sasl.password>=\
             <value of sasl.password>ned; <value of client.id>; value <value of linger.ms> \
             outside 1..500, not 15"
        );
    }

    #[test]
    fn the_subscription_id_and_the_server_are_checked() {
        let err = from_toml("[ringcentral]\nsubscription_id = \"../x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ringcentral.subscription_id"), "{err}");
        let err = from_toml("[ringcentral]\nserver = \"http://platform.ringcentral.com\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ringcentral.server"), "{err}");
        assert!(err.contains("https://"), "{err}");
        let s = from_toml("[ringcentral]\nserver = \"http://127.0.0.1:9\"").unwrap();
        assert_eq!(s.ringcentral.server, "http://127.0.0.1:9");
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
