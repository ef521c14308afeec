//! rc-kafka-bridge: RingCentral Extension Info webhooks in, one Kafka message per hint out.
//!
//! # Layout
//!
//! The data flows one way through modules that each own one thing:
//!
//! - [`ingress`]: HTTP. The `/webhook` endpoint (handshake, verification, status codes) and the admin
//!   endpoints (`/metrics`, `/healthz`, `/readyz`).
//! - [`notification`]: RingCentral's notification types and their lenient parsing.
//! - [`routing`]: the hint table, topic derivation and message planning; pure, no I/O.
//! - [`sink`]: the trait ingress hands a route plan to, and the `direct` delivery mode.
//! - `readiness`: whether the bridge can take notifications now (`/readyz`).
//! - [`spool`]: the durable local queue; a notification is answered once it is fsynced here.
//! - [`relay`]: publishes spooled plans to Kafka in order and releases them once acknowledged.
//! - [`kafka`]: the producer and the one publisher both delivery modes use, error classification,
//!   topic checks, the embedded development broker.
//! - [`ringcentral`]: RingCentral's REST API and the subscription keeper.
//! - [`state`]: with `--state`, the current state of each changed resource on compacted topics.
//! - [`config`]: layered settings (flags, `RCKB_*` environment, TOML file).
//! - `secret`: values that never reach a log line.
//! - [`metrics`]: every Prometheus metric; [`telemetry`]: logging.
//! - [`app`]: wiring, start-up and graceful shutdown; [`shutdown`]: the one signal every task
//!   watches (a deadline).
//! - [`cli`]: the commands of the binary, each with a typed error.
//! - `server`: the HTTP server both listeners run on, bounding what each client can cost
//!   (connection caps under the descriptor limit, header, body and idle deadlines).
//!
//! Modules are public only where the binary, the tests or the benchmarks need them.

pub mod app;
pub mod asyncapi;
pub mod cli;
pub mod config;
pub mod in_flight;
pub mod ingress;
pub mod kafka;
pub mod metrics;
pub mod notification;
pub mod otlp;
mod readiness;
pub mod relay;
pub mod ringcentral;
pub mod routing;
mod secret;
mod server;
pub mod shutdown;
pub mod sink;
pub mod spool;
pub mod state;
pub mod telemetry;
pub mod trace_context;
