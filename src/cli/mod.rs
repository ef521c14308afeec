//! The command line: one module per command group, each returning a typed [`CommandError`]. The
//! binary only parses, runs and prints the error.

use clap::{Parser, Subcommand};

use crate::app::StartError;
use crate::config::{ConfigError, Settings, SettingsArgs};
use crate::ringcentral::{ApiError, SubscriptionId};
use crate::spool::SpoolError;

mod configuration;
mod serve;
mod spool;
mod state;
mod subscription;
mod tail;
mod topics;

/// RingCentral Extension Info webhooks in, one Kafka message per hint out.
#[derive(Parser)]
#[command(name = "rc-kafka-bridge", version)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the bridge. Without --brokers it runs on an embedded development broker.
    Serve {
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Print the effective hint -> topics table.
    Routes {
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Validate the configuration and exit.
    CheckConfig {
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Topic administration.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Manage the RingCentral webhook subscription (needs the app's client id, secret and JWT).
    Subscription {
        #[command(subcommand)]
        command: SubscriptionCommand,
    },
    /// Look into the spool of a stopped bridge (same --spool-dir and settings as serve).
    Spool {
        #[command(subcommand)]
        command: SpoolCommand,
    },
    /// State topics (--state).
    State {
        #[command(subcommand)]
        command: StateCommand,
    },
    /// Print the AsyncAPI 3.0 document of this configuration's topics and messages.
    Asyncapi {
        /// yaml or json.
        #[arg(long, value_enum, default_value_t = DocumentFormat::Yaml)]
        format: DocumentFormat,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Print the messages of topics: partition, offset, key, headers and value. Reads by partition
    /// assignment (no consumer group). Without --brokers, reads the embedded broker of the bridge
    /// running with the same --spool-dir.
    Tail {
        /// The topics to read.
        #[arg(required = true, value_name = "TOPIC")]
        topics: Vec<String>,
        /// Every message of each partition, not only its last ones.
        #[arg(long)]
        from_beginning: bool,
        /// Messages printed per partition before its end (without --from-beginning).
        #[arg(long, short = 'n', value_name = "N", default_value_t = 10)]
        lines: u32,
        /// Keep printing messages as they arrive, until interrupted.
        #[arg(long, short = 'f')]
        follow: bool,
        /// One JSON object per message and line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        settings: SettingsArgs,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DocumentFormat {
    Yaml,
    Json,
}

#[derive(Subcommand)]
enum StateCommand {
    /// Print the fetch queue: per partition of the requests topic, how far the fetchers got.
    Status {
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Run one reconciliation sweep for a stopped bridge (its --spool-dir): list every extension,
    /// queue fetches for what changed without a notification, tombstone what is gone. A running
    /// bridge sweeps on SIGUSR1 instead.
    Reconcile {
        #[command(flatten)]
        settings: SettingsArgs,
    },
}

#[derive(Subcommand)]
enum SpoolCommand {
    /// Print what the spool holds: pending notifications, bytes, oldest age, dead letters.
    Inspect {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Print every pending message and dead letter as JSON lines (topic, key, headers, value).
    Export {
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Publish the dead letters back to their original topics; each one Kafka acknowledges leaves
    /// the spool (needs --brokers).
    ReplayDeadLetters {
        #[command(flatten)]
        settings: SettingsArgs,
    },
}

#[derive(Subcommand)]
enum SubscriptionCommand {
    /// Subscribe this bridge. RingCentral validates the address with a handshake first, so the
    /// bridge must be running and reachable there.
    Create {
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// List the app's subscriptions for this user.
    List {
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Show one subscription.
    Show {
        id: SubscriptionId,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Renew one subscription.
    Renew {
        id: SubscriptionId,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Delete one subscription.
    Delete {
        id: SubscriptionId,
        #[command(flatten)]
        settings: SettingsArgs,
    },
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Create every topic of the routing table (and the dead-letter topic) that Kafka lacks.
    Ensure {
        #[command(flatten)]
        settings: SettingsArgs,
    },
}

/// Why a command failed: printed as `error: ...`, exit status 1. Kafka's messages are redacted of
/// property values before they get here.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("{0}")]
    Start(String),
    #[error("{0}")]
    Serve(std::io::Error),
    #[error("{0}")]
    Kafka(String),
    #[error(transparent)]
    RingCentral(#[from] ApiError),
    #[error("spool: {0}")]
    Spool(Box<SpoolError>),
    #[error("{0}")]
    Usage(&'static str),
    #[error("reconciliation: {0}")]
    Sweep(String),
    #[error("cannot print: {0}")]
    Print(#[from] serde_json::Error),
    #[error("{} dead letters were refused again and stay in the spool:\n  {}", .0.len(), .0.join("\n  "))]
    DeadLettersRefused(Vec<String>),
}

impl From<SpoolError> for CommandError {
    fn from(e: SpoolError) -> Self {
        // Boxed: the spool's errors carry paths and ids, and would make every `Result` here large.
        CommandError::Spool(Box::new(e))
    }
}

impl CommandError {
    /// A failure to start, with the values of librdkafka properties masked.
    fn start(settings: &Settings, e: StartError) -> Self {
        CommandError::Start(settings.kafka.properties.redact(&e.to_string()))
    }
}

/// Runs one command line.
pub fn run(cli: Cli) -> Result<(), CommandError> {
    match cli.command {
        Command::Serve { settings } => serve::serve(settings),
        Command::Routes { settings } => configuration::routes(&Settings::load(&settings)?),
        Command::CheckConfig { settings } => {
            configuration::check_config(&Settings::load(&settings)?)
        }
        Command::Topics {
            command: TopicsCommand::Ensure { settings },
        } => topics::ensure(&Settings::load(&settings)?),
        Command::Subscription { command } => subscription::run(command),
        Command::Spool { command } => spool::run(command),
        Command::State {
            command: StateCommand::Status { settings },
        } => state::status(&Settings::load(&settings)?),
        Command::State {
            command: StateCommand::Reconcile { settings },
        } => state::reconcile(&Settings::load(&settings)?),
        Command::Asyncapi { format, settings } => {
            let document = crate::asyncapi::document(&Settings::load(&settings)?);
            match format {
                DocumentFormat::Yaml => print!("{}", crate::asyncapi::to_yaml(&document)),
                DocumentFormat::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&document).expect("JSON always serialises")
                ),
            }
            Ok(())
        }
        Command::Tail {
            topics,
            from_beginning,
            lines,
            follow,
            json,
            settings,
        } => tail::tail(
            &Settings::load(&settings)?,
            &tail::Tail {
                topics,
                from_beginning,
                lines: i64::from(lines),
                follow,
                json,
            },
        ),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CommandError> {
    tokio::runtime::Runtime::new().map_err(CommandError::Runtime)
}

/// The runtime of `serve`, with `workers` worker threads (`--worker-threads`).
fn serve_runtime(workers: usize) -> Result<tokio::runtime::Runtime, CommandError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .map_err(CommandError::Runtime)
}
