//! Layered configuration: command-line flag, then `RCKB_*` environment variable, then the TOML file
//! (`--config`), then the default. Each setting is declared once, as a field of [`Settings`] that
//! carries all four; bad values fail start-up with a message that names the setting.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::num::{NonZeroU16, NonZeroU64, NonZeroUsize};

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, FromArgMatches, ValueEnum};
use serde::{Deserialize, Deserializer};

use crate::ringcentral::SubscriptionId;
pub use crate::secret::Secret;
use crate::spool::SpoolOptions;
use crate::state::fetch_table::{FetchTable, FetchTableError, StateFetchOverride};
use crate::state::request::StateRouting;

mod kafka_properties;
pub use kafka_properties::{
    KAFKA_PROPERTIES_VAR, KAFKA_PROPERTY_VAR_PREFIX, KafkaProperties, kafka_properties_from_env,
};
use kafka_properties::{OWNED_KAFKA_PROPERTIES, PropertyParser};

use crate::routing::cloudevents::CloudEvents;
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

/// Longest HTTP timeout or shutdown grace accepted: anything longer is a typo, and would hold a
/// connection (or a stopping process) for good.
const MAX_TIMEOUT: Duration = Duration::from_secs(86_400);

/// An HTTP timeout: more than zero (zero would refuse every client) and at most a day.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() || d > MAX_TIMEOUT => {
            Err("must be more than zero and at most 1 day".into())
        }
        d => Ok(d),
    }
}

/// A duration of at most `max`, which the error names as `limit`.
fn parse_duration_at_most(s: &str, max: Duration, limit: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d > max => Err(format!("must be at most {limit}")),
        d => Ok(d),
    }
}

fn parse_grace(s: &str) -> Result<Duration, String> {
    parse_duration_at_most(s, MAX_TIMEOUT, "1 day")
}

/// Longest `--spool-linger`: every answer waits for it, and RingCentral wants answers at once.
const MAX_LINGER: Duration = Duration::from_millis(100);

fn parse_linger(s: &str) -> Result<Duration, String> {
    parse_duration_at_most(s, MAX_LINGER, "100ms")
}

/// The largest request head: below 1 KiB ordinary requests (RingCentral's among them) would get 431.
fn parse_head_bytes(s: &str) -> Result<usize, String> {
    match s.parse::<usize>().map_err(|e| e.to_string())? {
        n if n < 1024 => Err("must be at least 1024".into()),
        n => Ok(n),
    }
}

/// Every setting of `serve` (and of the commands that read the same configuration), declared once:
/// each field carries its flag, `RCKB_*` variable, TOML key (the field's name), doc and default.
/// [`Settings::load`] layers them: the default, then the file, then the environment and flags.
#[derive(Debug, Clone, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address of the webhook listener.
    #[arg(long, env = "RCKB_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Address of the admin listener (/metrics, /healthz, /readyz).
    #[arg(long, env = "RCKB_ADMIN_LISTEN", default_value = "0.0.0.0:9180")]
    pub admin_listen: SocketAddr,
    /// Kafka bootstrap servers. Without it the bridge runs on an embedded development broker.
    #[arg(long, env = "RCKB_BROKERS")]
    pub brokers: Option<String>,
    /// Prefix of every topic.
    #[arg(long, env = "RCKB_TOPIC_PREFIX", default_value = DEFAULT_TOPIC_PREFIX)]
    pub topic_prefix: String,
    /// CloudEvents binary-mode headers (`ce_*`) on every message: true or false.
    #[arg(
        long,
        env = "RCKB_CLOUDEVENTS",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    pub cloudevents: bool,
    /// The subscription's verification token; when set, notifications without it get 401.
    #[arg(long, env = "RCKB_VERIFICATION_TOKEN", hide_env_values = true)]
    pub verification_token: Option<Secret>,
    /// spool (answer once fsynced locally) or direct (answer once Kafka acknowledged).
    #[arg(long, env = "RCKB_DELIVERY", value_enum, default_value_t)]
    pub delivery: DeliveryMode,
    /// Directory of the durable spool.
    #[arg(long, env = "RCKB_SPOOL_DIR", default_value = "data")]
    pub spool_dir: PathBuf,
    /// Largest spool backlog, in bytes of pending messages as stored (LZ4-compressed: about 1 KB for
    /// a notification of 7 hints), before answering 503.
    #[arg(long, env = "RCKB_SPOOL_MAX_BYTES", default_value = "1073741824")]
    pub spool_max_bytes: NonZeroU64,
    /// Memory for the spool database's page cache, in bytes: the deduplication record's and the
    /// dead letters' pages (pending notifications are in the journal, read through the kernel's
    /// page cache). Against 4 MiB, this default kept the peak at full load about 4 MiB lower
    /// (bench/HISTORY.md).
    #[arg(long, env = "RCKB_SPOOL_CACHE_BYTES", default_value = "2097152")]
    pub spool_cache_bytes: NonZeroUsize,
    /// How long the spool's writer waits, once a notification is waiting to be committed, for
    /// others to commit with it: one `fdatasync` then covers them all. 0 commits at once, at the
    /// cost of a commit for every few notifications under load (bench/HISTORY.md, "The spool's
    /// writer lingering"). At most 100ms.
    #[arg(long, env = "RCKB_SPOOL_LINGER", default_value = "200us", value_parser = parse_linger)]
    #[serde(deserialize_with = "linger")]
    pub spool_linger: Duration,
    /// How long the spool's writer may wait in all while notifications keep arriving: after each
    /// wait of `--spool-linger` that brought more, it waits again, until 16 wait or this has
    /// passed. At a moderate rate a commit then carries three times as many (bench/HISTORY.md,
    /// "The writer lingering while more arrive"). At most 100ms; at or below `--spool-linger`, one
    /// wait.
    #[arg(long, env = "RCKB_SPOOL_LINGER_MAX", default_value = "1ms", value_parser = parse_linger)]
    #[serde(deserialize_with = "linger")]
    pub spool_linger_max: Duration,
    /// Threads that serve HTTP. Default: one fewer than the CPUs available, at least one, which
    /// leaves a CPU to the threads of the relay, the spool's writer and librdkafka.
    #[arg(long, env = "RCKB_WORKER_THREADS")]
    pub worker_threads: Option<NonZeroUsize>,
    /// Largest accepted webhook body, in bytes.
    #[arg(long, env = "RCKB_MAX_BODY_BYTES", default_value = "65536")]
    pub max_body_bytes: NonZeroUsize,
    /// In direct mode, how long to wait for Kafka before answering 503.
    #[arg(long, env = "RCKB_DIRECT_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    #[serde(deserialize_with = "duration")]
    pub direct_timeout: Duration,
    /// How long a notification uuid is remembered to drop redeliveries.
    #[arg(long, env = "RCKB_DEDUP_WINDOW", default_value = "1h", value_parser = parse_duration)]
    #[serde(deserialize_with = "duration")]
    pub dedup_window: Duration,
    /// How many notification uuids are remembered at most (about 32 bytes of memory each).
    #[arg(long, env = "RCKB_DEDUP_CAPACITY", default_value = "100000")]
    pub dedup_capacity: NonZeroUsize,
    /// Topic for messages Kafka rejects for good [default: <prefix>dead-letter].
    #[arg(long, env = "RCKB_DEAD_LETTER_TOPIC")]
    pub dead_letter_topic: Option<Topic>,
    /// After SIGTERM: the time for requests in flight and the relay, before exit.
    #[arg(long, env = "RCKB_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_grace)]
    #[serde(deserialize_with = "grace")]
    pub shutdown_grace: Duration,
    /// human or json.
    #[arg(long, env = "RCKB_LOG_FORMAT", value_enum, default_value_t)]
    pub log_format: LogFormat,
    /// Export spans over OTLP/HTTP (JSON) to this collector, e.g. http://otel-collector:4318: the
    /// webhook request's and, per message, the relay's [default: no export].
    #[arg(long, env = "RCKB_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// A librdkafka property, KEY=VALUE (the value whole, commas included); repeatable. Wins over
    /// the environment (RCKB_KAFKA_PROPERTY_<KEY>, then RCKB_KAFKA_PROPERTIES: KEY=VALUE,KEY=VALUE
    /// with `\,` for a comma in a value) and over [kafka.properties].
    #[arg(long = "kafka-property", value_name = "KEY=VALUE", value_parser = PropertyParser)]
    #[serde(skip)]
    pub kafka_property: Vec<(String, String)>,
    /// Create missing topics when `serve` starts.
    #[arg(long, env = "RCKB_ENSURE_TOPICS")]
    pub ensure_topics: bool,
    /// Partitions of topics the bridge creates.
    #[arg(long, env = "RCKB_TOPIC_PARTITIONS", default_value = "6")]
    pub partitions: NonZeroU16,
    /// Replication factor of topics the bridge creates.
    #[arg(long, env = "RCKB_TOPIC_REPLICATION_FACTOR", default_value = "3")]
    pub replication_factor: NonZeroU16,
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
    pub allowed_subscription_ids: Vec<SubscriptionId>,
    /// Most distinct hints in one extension's change.
    #[arg(long, env = "RCKB_MAX_HINTS_PER_CHANGE", default_value = "64")]
    pub max_hints_per_change: NonZeroUsize,
    /// Most changes (batched Extension List entries) in one notification.
    #[arg(
        long,
        env = "RCKB_MAX_CHANGES_PER_NOTIFICATION",
        default_value = "4096"
    )]
    pub max_changes_per_notification: NonZeroUsize,
    /// Most Kafka messages planned from one notification.
    #[arg(
        long,
        env = "RCKB_MAX_MESSAGES_PER_NOTIFICATION",
        default_value = "8192"
    )]
    pub max_messages_per_notification: NonZeroUsize,
    /// Most bytes planned from one notification (topics, keys, headers, values).
    #[arg(long, env = "RCKB_MAX_PLAN_BYTES", default_value = "16777216")]
    pub max_plan_bytes: NonZeroUsize,
    /// Most bytes planned by all webhook requests in flight together (held until the spool keeps
    /// them, or Kafka acknowledged them in direct mode); a request beyond it gets 503. At least
    /// --max-plan-bytes and twice --max-body-bytes.
    #[arg(
        long,
        env = "RCKB_MAX_PLAN_BYTES_IN_FLIGHT",
        default_value = "67108864"
    )]
    pub max_plan_bytes_in_flight: NonZeroUsize,
    #[command(flatten)]
    pub ringcentral: RingCentralSettings,
    #[command(flatten)]
    pub state: StateSettings,
    // HTTP limits on both listeners.
    /// Time a client has to send a request's head, from connecting or from its first byte after
    /// an idle keep-alive.
    #[arg(long, env = "RCKB_HEADER_TIMEOUT", default_value = "5s", value_parser = parse_timeout)]
    #[serde(deserialize_with = "timeout")]
    pub header_timeout: Duration,
    /// Time a client has to send a whole request body (408 after it), and to take the response.
    #[arg(long, env = "RCKB_BODY_TIMEOUT", default_value = "10s", value_parser = parse_timeout)]
    #[serde(deserialize_with = "timeout")]
    pub body_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request.
    #[arg(long, env = "RCKB_IDLE_TIMEOUT", default_value = "75s", value_parser = parse_timeout)]
    #[serde(deserialize_with = "timeout")]
    pub idle_timeout: Duration,
    /// Largest request head (request line and headers), in bytes; larger gets 431.
    #[arg(long, env = "RCKB_MAX_HEADER_BYTES", default_value = "16384", value_parser = parse_head_bytes)]
    #[serde(deserialize_with = "head_bytes")]
    pub max_header_bytes: usize,
    /// Most open webhook connections; more wait in the listen backlog [default: 1024, lowered to fit
    /// the descriptor limit].
    #[arg(long, env = "RCKB_MAX_CONNECTIONS")]
    pub max_connections: Option<NonZeroUsize>,
    /// Most open admin connections; more wait in the listen backlog [default: 32].
    #[arg(long, env = "RCKB_ADMIN_MAX_CONNECTIONS")]
    pub admin_max_connections: Option<NonZeroUsize>,
    /// `[kafka.properties]`: librdkafka properties; the environment's and the flags' are merged over
    /// them by [`Settings::resolve`].
    #[arg(skip)]
    pub kafka: KafkaSection,
    /// `[hints]`, only in the file: hint -> target APIs, overriding a built-in hint or adding one.
    #[arg(skip)]
    pub hints: BTreeMap<String, Vec<String>>,
    /// Derived by [`Settings::resolve`] from the prefix, the hints and the caps.
    #[arg(skip = built_in_routing())]
    #[serde(skip)]
    pub routing: RoutingTable,
}

/// RingCentral API access and the subscription keeper: `--rc-*` flags, `[ringcentral]` in the file.
#[derive(Debug, Clone, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RingCentralSettings {
    /// RingCentral API server (sandbox: https://platform.devtest.ringcentral.com).
    #[arg(long = "rc-server", env = "RCKB_RC_SERVER", default_value = crate::ringcentral::PRODUCTION_SERVER)]
    pub server: String,
    /// Client id of the RingCentral app (JWT auth flow).
    #[arg(long = "rc-client-id", env = "RCKB_RC_CLIENT_ID")]
    pub client_id: Option<String>,
    /// Client secret of the RingCentral app.
    #[arg(
        long = "rc-client-secret",
        env = "RCKB_RC_CLIENT_SECRET",
        hide_env_values = true
    )]
    pub client_secret: Option<Secret>,
    /// JWT credential of the user the subscription belongs to.
    #[arg(long = "rc-jwt", env = "RCKB_RC_JWT", hide_env_values = true)]
    pub jwt: Option<Secret>,
    /// Public HTTPS address of this bridge's /webhook, as RingCentral reaches it.
    #[arg(long = "rc-webhook-address", env = "RCKB_RC_WEBHOOK_ADDRESS")]
    pub webhook_address: Option<String>,
    /// Event filter of created subscriptions; repeatable (by default the account's Extension List
    /// event and the expiry reminder).
    #[arg(
        long = "rc-event-filter",
        env = "RCKB_RC_EVENT_FILTERS",
        value_delimiter = ',',
        default_values = crate::ringcentral::DEFAULT_EVENT_FILTERS
    )]
    pub event_filters: Vec<String>,
    /// Lifetime requested for created subscriptions, in seconds (the default is the maximum).
    #[arg(long = "rc-expires-in", env = "RCKB_RC_EXPIRES_IN", default_value = "315360000",
          value_parser = clap::value_parser!(u64).range(1..=crate::ringcentral::MAX_EXPIRES_IN))]
    pub expires_in: u64,
    /// The subscription the keeper keeps [default: the one delivering to --rc-webhook-address].
    #[arg(long = "rc-subscription-id", env = "RCKB_RC_SUBSCRIPTION_ID")]
    pub subscription_id: Option<SubscriptionId>,
    /// Let `serve` keep the subscription alive: renew, watch, recreate.
    #[arg(long = "rc-keep-subscription", env = "RCKB_RC_KEEP_SUBSCRIPTION")]
    pub keep_subscription: bool,
    /// How often the keeper checks the subscription.
    #[arg(long = "rc-check-interval", env = "RCKB_RC_CHECK_INTERVAL", default_value = "10m",
          value_parser = parse_duration)]
    #[serde(deserialize_with = "duration")]
    pub check_interval: Duration,
    /// Renew when the subscription expires sooner than this.
    #[arg(long = "rc-renew-before", env = "RCKB_RC_RENEW_BEFORE", default_value = "1d",
          value_parser = parse_duration)]
    #[serde(deserialize_with = "duration")]
    pub renew_before: Duration,
}

/// State topics: `--state`, `[state]` in the file.
#[derive(Debug, Clone, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateSettings {
    /// Fetch the current state of every changed resource once, with the --rc-* credentials, and
    /// publish it to compacted <prefix>state.* topics keyed by extension.
    #[arg(long = "state", env = "RCKB_STATE")]
    pub enabled: bool,
    /// How often a reconciliation sweep lists every extension and repairs what no notification
    /// said (0 turns the periodic sweeps off; the initial snapshot, SIGUSR1 and the sweep after a
    /// subscription gap still run).
    #[arg(
        long = "state-reconcile-interval",
        env = "RCKB_STATE_RECONCILE_INTERVAL",
        default_value = "6h",
        value_parser = parse_duration
    )]
    #[serde(deserialize_with = "duration")]
    pub reconcile_interval: Duration,
    /// `[state.fetch]`, only in the file: a hint's GET, rate-limit group and paging, overriding the
    /// built-in fetch table or adding a hint; a hint without `get` is not fetched.
    #[arg(skip)]
    pub fetch: BTreeMap<String, StateFetchOverride>,
}

impl Default for StateSettings {
    fn default() -> Self {
        declared_defaults()
    }
}

impl Default for Settings {
    fn default() -> Self {
        declared_defaults()
    }
}

impl Default for RingCentralSettings {
    fn default() -> Self {
        declared_defaults()
    }
}

/// The defaults a settings struct declares: its clap defaults, without reading the environment.
fn declared_defaults<T: Args + FromArgMatches>() -> T {
    let command = T::augment_args(clap::Command::new("defaults")).mut_args(|a| a.env(None));
    command
        .try_get_matches_from(["defaults"])
        .and_then(|matches| T::from_arg_matches(&matches))
        .expect("the declared defaults parse (tested)")
}

fn built_in_routing() -> RoutingTable {
    RoutingTable::new(DEFAULT_TOPIC_PREFIX, &BTreeMap::new()).expect("the built-in table is valid")
}

/// `[kafka]` in the file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSection {
    pub properties: KafkaProperties,
}

impl RingCentralSettings {
    fn check(&self) -> Result<(), ConfigError> {
        crate::ringcentral::parse_server(&self.server).map_err(|message| ConfigError::Invalid {
            key: "ringcentral.server",
            message,
        })?;
        if self.expires_in == 0 || self.expires_in > crate::ringcentral::MAX_EXPIRES_IN {
            return Err(ConfigError::Invalid {
                key: "ringcentral.expires_in",
                message: format!(
                    "must be between 1 and {}",
                    crate::ringcentral::MAX_EXPIRES_IN
                ),
            });
        }
        if self.keep_subscription {
            self.credentials()?;
            self.address()?;
        }
        Ok(())
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

/// A field of the file given as text and checked by the same parser as its flag.
fn from_text<'de, D: Deserializer<'de>, T>(
    d: D,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    from_text(d, parse_duration)
}

fn timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    from_text(d, parse_timeout)
}

fn grace<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    from_text(d, parse_grace)
}

fn linger<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    from_text(d, parse_linger)
}

fn head_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let bytes = usize::deserialize(d)?;
    parse_head_bytes(&bytes.to_string()).map_err(serde::de::Error::custom)
}

/// The command line and environment of one command, over the file named by `--config`.
#[derive(Debug, Clone, Default)]
pub struct SettingsArgs {
    /// TOML configuration file.
    pub config: Option<PathBuf>,
    /// What the command line and the environment gave, without clap's defaults: those fall
    /// through to the file, then to the declared defaults.
    given: ArgMatches,
}

impl SettingsArgs {
    /// Parses `args` (the program name first) as the settings alone: what tests and tools use.
    pub fn parse_from<I, T>(args: I) -> Result<SettingsArgs, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let matches =
            Self::augment_args(clap::Command::new("settings")).try_get_matches_from(args)?;
        Self::from_arg_matches(&matches)
    }
}

impl FromArgMatches for SettingsArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut given = matches.clone();
        let defaulted: Vec<String> = matches
            .ids()
            .filter(|id| matches.value_source(id.as_str()) == Some(ValueSource::DefaultValue))
            .map(|id| id.as_str().to_string())
            .collect();
        for id in defaulted {
            given.try_clear_id(&id).map_err(|e| {
                clap::Error::raw(clap::error::ErrorKind::InvalidValue, format!("{id}: {e}"))
            })?;
        }
        Ok(SettingsArgs {
            config: matches.get_one::<PathBuf>("config").cloned(),
            given,
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Args for SettingsArgs {
    fn augment_args(command: clap::Command) -> clap::Command {
        let config = clap::Arg::new("config")
            .long("config")
            .env("RCKB_CONFIG")
            .value_name("CONFIG")
            .value_parser(clap::value_parser!(PathBuf))
            .help("TOML configuration file");
        Settings::augment_args(command.arg(config))
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        Self::augment_args(command)
    }
}

/// Tokens shipped as placeholders in the deployment files: running with one is a mistake, never a choice.
const PLACEHOLDER_TOKENS: &[&str] = &[
    "REPLACE-WITH-THE-SUBSCRIPTION-VERIFICATION-TOKEN",
    "change-me",
];

/// Below this length a verification token is guessable enough to warn about.
const SHORT_TOKEN: usize = 16;

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
    #[error("{0}")]
    Arguments(String),
    #[error("state.fetch: {0}")]
    State(#[from] FetchTableError),
}

impl Settings {
    /// The settings of one command: the declared defaults, then the file named by `--config`, then
    /// the environment and the flags (clap merges those two), checked.
    pub fn load(args: &SettingsArgs) -> Result<Settings, ConfigError> {
        let mut settings = match &args.config {
            Some(path) => Settings::from_file(path)?,
            None => Settings::default(),
        };
        settings
            .update_from_arg_matches(&args.given)
            .map_err(|e| ConfigError::Arguments(e.to_string()))?;
        settings.resolve_with(kafka_properties_from_env(std::env::vars_os())?)
    }

    /// The runtime's worker threads: as set, or one fewer than the CPUs available (at least one).
    /// On two cores, with several hints per notification, one worker instead of two cut the peak
    /// memory at max load by 20-40% and the CPU per notification by about a tenth, for up to 9%
    /// fewer notifications/s at one hint each (bench/HISTORY.md): each worker is one more allocator
    /// heap and more wake-ups across threads, and the spool's writer and librdkafka's threads need
    /// a CPU too.
    pub fn worker_threads(&self) -> usize {
        self.worker_threads.map_or_else(
            || {
                std::thread::available_parallelism()
                    .map_or(1, |cpus| cpus.get().saturating_sub(1).max(1))
            },
            NonZeroUsize::get,
        )
    }

    /// How the spool is sized.
    pub fn spool_options(&self) -> SpoolOptions {
        SpoolOptions {
            max_bytes: self.spool_max_bytes.get(),
            cache_bytes: self.spool_cache_bytes.get(),
            linger: self.spool_linger,
            linger_max: self.spool_linger_max,
            dedup_window: self.dedup_window,
            dedup_capacity: self.dedup_capacity.get(),
        }
    }

    /// The file's settings over the declared defaults. Unknown keys are an error.
    pub fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Checks what the types cannot (librdkafka properties, the RingCentral server, hints) and
    /// derives the routing table. Call it after setting fields by hand, as tests do.
    pub fn resolve(self) -> Result<Settings, ConfigError> {
        self.resolve_with(Vec::new())
    }

    /// [`Settings::resolve`], with the librdkafka properties of the environment, which go between
    /// the file's and the flags'.
    fn resolve_with(mut self, environment: Vec<(String, String)>) -> Result<Settings, ConfigError> {
        let mut properties = std::mem::take(&mut self.kafka.properties).0;
        properties.extend(environment);
        properties.extend(std::mem::take(&mut self.kafka_property));
        if let Some((key, why)) = OWNED_KAFKA_PROPERTIES
            .iter()
            .find(|(key, _)| properties.contains_key(*key))
        {
            return Err(ConfigError::Invalid {
                key: "kafka.properties",
                message: format!("`{key}` cannot be set: {why}"),
            });
        }
        self.kafka.properties = KafkaProperties(properties);
        self.kafka.properties.check()?;
        // An empty variable (`RCKB_BROKERS=` in a compose file) means "not set".
        self.verification_token = self.verification_token.filter(|t| !t.expose().is_empty());
        self.brokers = self.brokers.filter(|b| !b.trim().is_empty());
        self.ringcentral.check()?;
        // An empty variable means "not set", as for the brokers.
        self.otlp_endpoint = self.otlp_endpoint.filter(|e| !e.trim().is_empty());
        if let Some(endpoint) = &self.otlp_endpoint {
            let scheme = reqwest::Url::parse(endpoint).map(|url| url.scheme().to_string());
            if !matches!(scheme.as_deref(), Ok("http" | "https")) {
                return Err(ConfigError::Invalid {
                    key: "otlp_endpoint",
                    message: format!("{endpoint} is not an http or https URL"),
                });
            }
        }
        // The largest plan one notification makes: up to its cap, or a notification over a cap
        // carried raw (its body, and its headers; see the routing's property tests).
        let largest_plan = self.max_plan_bytes.get().max(2 * self.max_body_bytes.get());
        if self.max_plan_bytes_in_flight.get() < largest_plan {
            return Err(ConfigError::Invalid {
                key: "max_plan_bytes_in_flight",
                message: format!(
                    "{} is below the largest plan one notification makes ({largest_plan}: \
                     max_plan_bytes, or twice max_body_bytes): such a notification could never be \
                     accepted",
                    self.max_plan_bytes_in_flight
                ),
            });
        }
        let limits = FanoutLimits {
            max_hints_per_change: self.max_hints_per_change.get(),
            max_changes: self.max_changes_per_notification.get(),
            max_messages: self.max_messages_per_notification.get(),
            max_plan_bytes: self.max_plan_bytes.get(),
        };
        let mut routing = RoutingTable::new(&self.topic_prefix, &self.hints)?.with_limits(limits);
        if let Some(topic) = &self.dead_letter_topic {
            routing = routing.with_dead_letter_topic(topic.clone());
        }
        if self.cloudevents {
            routing = routing.with_cloudevents(CloudEvents::new(&self.ringcentral.server));
        }
        if self.state.enabled {
            // The fetches need RingCentral's API: missing credentials stop start-up here.
            self.ringcentral.credentials()?;
            let fetches = FetchTable::new(&self.topic_prefix, &self.state.fetch)?;
            let state =
                StateRouting::new(&self.topic_prefix, fetches).map_err(RoutingError::Prefix)?;
            routing = routing.with_state(state);
        }
        self.routing = routing;
        Ok(self)
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_properties::{parse_property, split_escaped_list};

    fn from_toml(text: &str) -> Result<Settings, ConfigError> {
        let file: Settings = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "test.toml".into(),
            message: e.to_string(),
        })?;
        file.resolve()
    }

    /// `args` over `file`, as `load` layers them (without the process environment).
    fn layered(args: &[&str], file: &str) -> Result<Settings, ConfigError> {
        let args =
            SettingsArgs::parse_from(std::iter::once("settings").chain(args.iter().copied()))
                .map_err(|e| ConfigError::Arguments(e.to_string()))?;
        let mut settings: Settings = toml::from_str(file).map_err(|e| ConfigError::Parse {
            path: "test.toml".into(),
            message: e.to_string(),
        })?;
        settings
            .update_from_arg_matches(&args.given)
            .map_err(|e| ConfigError::Arguments(e.to_string()))?;
        settings.resolve()
    }

    #[test]
    fn the_shipped_example_config_parses() {
        let text = include_str!("../../config.example.toml");
        let settings = from_toml(text).expect("config.example.toml is valid");
        assert_eq!(settings.delivery, DeliveryMode::Spool);
    }

    #[test]
    fn flags_win_over_the_file_which_wins_over_defaults() {
        let file = "topic_prefix = \"file.\"\nlisten = \"127.0.0.1:1\"\nensure_topics = true\n\
                    dedup_capacity = 7\n[ringcentral]\ncheck_interval = \"1m\"\n";
        let s = layered(
            &["--listen", "127.0.0.1:2", "--rc-renew-before", "2h"],
            file,
        )
        .unwrap();
        assert_eq!(s.listen, "127.0.0.1:2".parse().unwrap());
        assert_eq!(s.topic_prefix, "file.");
        assert_eq!(s.routing.dead_letter_topic().as_str(), "file.dead-letter");
        assert_eq!(s.admin_listen, "0.0.0.0:9180".parse().unwrap());
        // A flag's default never hides the file's value, in a table or at the top.
        assert!(s.ensure_topics);
        assert_eq!(s.dedup_capacity.get(), 7);
        assert_eq!(s.ringcentral.check_interval, Duration::from_secs(60));
        assert_eq!(s.ringcentral.renew_before, Duration::from_secs(7200));
        let s = layered(&["--dead-letter-topic", "dlq"], file).unwrap();
        assert_eq!(s.routing.dead_letter_topic().as_str(), "dlq");
        assert!(
            s.routing
                .published_topics()
                .iter()
                .any(|t| t.as_str() == "dlq")
        );
    }

    #[test]
    fn plans_in_flight_hold_at_least_the_largest_plan_of_one_notification() {
        let at_cap = layered(&["--max-plan-bytes-in-flight", "16777216"], "").unwrap();
        assert_eq!(at_cap.max_plan_bytes_in_flight.get(), 16 << 20);
        let e = layered(&["--max-plan-bytes-in-flight", "16777215"], "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_plan_bytes_in_flight"), "{e}");
        // A notification over a cap is carried raw: up to twice its body.
        let e = layered(
            &[],
            "max_plan_bytes = 1048576\nmax_plan_bytes_in_flight = 1048576\nmax_body_bytes = 1048576\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("twice max_body_bytes"), "{e}");
    }

    #[test]
    fn worker_threads_is_a_positive_count_from_a_flag_or_the_file() {
        let three = layered(&["--worker-threads", "3"], "").unwrap();
        assert_eq!(three.worker_threads(), 3);
        assert_eq!(
            layered(&[], "worker_threads = 2\n")
                .unwrap()
                .worker_threads(),
            2
        );
        let e = layered(&["--worker-threads", "0"], "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("--worker-threads"), "{e}");
        let e = layered(&[], "worker_threads = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("worker_threads"), "{e}");
    }

    #[test]
    fn the_spool_s_linger_is_a_duration_up_to_100ms_and_0_turns_it_off() {
        let linger =
            |text: &str| from_toml(&format!("spool_linger = \"{text}\"")).map(|s| s.spool_linger);
        assert_eq!(linger("0").unwrap(), Duration::ZERO);
        assert_eq!(linger("1ms").unwrap(), Duration::from_millis(1));
        assert_eq!(linger("100ms").unwrap(), Duration::from_millis(100));
        assert!(linger("1s").is_err());
        let flag = layered(&["--spool-linger", "50us"], "").unwrap();
        assert_eq!(flag.spool_linger, Duration::from_micros(50));
        assert!(layered(&["--spool-linger", "soon"], "").is_err());
    }

    #[test]
    fn the_spool_s_longest_linger_is_a_duration_up_to_100ms() {
        let most = |text: &str| {
            from_toml(&format!("spool_linger_max = \"{text}\"")).map(|s| s.spool_linger_max)
        };
        assert_eq!(most("0").unwrap(), Duration::ZERO);
        assert_eq!(most("5ms").unwrap(), Duration::from_millis(5));
        assert!(most("101ms").is_err());
        let flag = layered(&["--spool-linger-max", "400us"], "").unwrap();
        assert_eq!(flag.spool_options().linger_max, Duration::from_micros(400));
        assert!(layered(&["--spool-linger-max", "later"], "").is_err());
    }

    #[test]
    fn the_declared_defaults_are_the_documented_ones() {
        let s = Settings::default().resolve().unwrap();
        assert_eq!(s.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(s.admin_listen, "0.0.0.0:9180".parse().unwrap());
        assert_eq!(s.topic_prefix, DEFAULT_TOPIC_PREFIX);
        assert_eq!(s.delivery, DeliveryMode::Spool);
        assert_eq!(s.spool_dir, PathBuf::from("data"));
        assert_eq!(s.spool_max_bytes.get(), 1 << 30);
        assert_eq!(s.spool_linger, Duration::from_micros(200));
        assert_eq!(s.spool_linger_max, Duration::from_millis(1));
        assert_eq!(s.max_body_bytes.get(), 64 * 1024);
        assert_eq!(s.direct_timeout, Duration::from_secs(2));
        assert_eq!(s.dedup_window, Duration::from_secs(3600));
        assert_eq!(s.dedup_capacity.get(), 100_000);
        assert_eq!(s.shutdown_grace, Duration::from_secs(10));
        assert_eq!((s.partitions.get(), s.replication_factor.get()), (6, 3));
        assert!(!s.ensure_topics && !s.allow_unverified_webhooks);
        assert!(s.brokers.is_none() && s.verification_token.is_none());
        assert_eq!(s.routing.limits(), FanoutLimits::default());
        assert_eq!(s.max_plan_bytes_in_flight.get(), 64 << 20);
        assert_eq!(
            s.routing.dead_letter_topic().as_str(),
            "ringcentral.dead-letter"
        );
        let rc = &s.ringcentral;
        assert_eq!(rc.server, crate::ringcentral::PRODUCTION_SERVER);
        assert_eq!(rc.event_filters, crate::ringcentral::DEFAULT_EVENT_FILTERS);
        assert_eq!(rc.expires_in, crate::ringcentral::MAX_EXPIRES_IN);
        assert_eq!(rc.check_interval, Duration::from_secs(600));
        assert_eq!(rc.renew_before, Duration::from_secs(86_400));
        assert!(!rc.keep_subscription);
    }

    /// Every value `config.example.toml` sets is the declared default, so the example cannot
    /// disagree with the code: each line alone parses to exactly the defaults.
    #[test]
    fn the_example_config_shows_the_defaults() {
        let defaults = format!("{:?}", Settings::default().resolve().unwrap());
        let mut table = String::new();
        let mut checked = 0;
        for line in include_str!("../../config.example.toml").lines() {
            let line = line.split(" #").next().unwrap_or_default().trim();
            if line.starts_with('[') {
                table = line.to_string();
            } else if !line.is_empty() && !line.starts_with('#') && table != "[kafka.properties]" {
                let s = from_toml(&format!("{table}\n{line}")).unwrap();
                assert_eq!(
                    format!("{s:?}"),
                    defaults,
                    "config.example.toml: {table} {line}"
                );
                checked += 1;
            }
        }
        assert!(checked > 20, "checked {checked} lines");
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
        let err = from_toml("spool_linger = \"101ms\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("spool_linger") && err.contains("100ms"),
            "{err}"
        );
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
        let mut file: Settings = toml::from_str(
            "[kafka.properties]\n\"linger.ms\" = \"1\"\n\"client.id\" = \"file\"\n\"client.rack\" = \"file\"",
        )
        .unwrap();
        file.kafka_property = vec![("linger.ms".into(), "3".into())];
        let environment = vec![
            ("linger.ms".into(), "2".into()),
            ("client.id".into(), "env".into()),
        ];
        let s = file.resolve_with(environment).unwrap();
        assert_eq!(s.kafka.properties["linger.ms"], "3");
        assert_eq!(s.kafka.properties["client.id"], "env");
        assert_eq!(s.kafka.properties["client.rack"], "file");
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
        assert!(err.contains("subscription_id = \"../x\""), "{err}");
        assert!(err.contains("not a RingCentral subscription id"), "{err}");
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
        let s = Settings::default();
        assert_eq!(s.header_timeout, Duration::from_secs(5));
        assert_eq!(s.body_timeout, Duration::from_secs(10));
        assert_eq!(s.idle_timeout, Duration::from_secs(75));
        assert_eq!(s.max_header_bytes, 16 * 1024);
        assert_eq!((s.max_connections, s.admin_max_connections), (None, None));
        let s = from_toml("header_timeout = \"2s\"\nmax_connections = 10").unwrap();
        assert_eq!(s.header_timeout, Duration::from_secs(2));
        assert_eq!(s.max_connections, NonZeroUsize::new(10));
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
            let flag = format!("--{}", key.replace('_', "-"));
            let value = text.split(" = ").nth(1).unwrap().trim_matches('"');
            let err = layered(&[&flag, value], "").unwrap_err().to_string();
            assert!(err.contains(&flag), "{flag} {value}: {err}");
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
