//! The bridge end to end over real HTTP, with Kafka from librdkafka's in-process mock cluster; and
//! what the webhook router decides alone, in process.

/// The helpers of `tests/common`, one module per concern. Each suite declares the modules it uses
/// and no other: a helper no test of a suite calls would be dead code in that suite's binary, which
/// the lints refuse. A helper only this suite needs goes in a module the real-broker suite
/// (`tests/broker/main.rs`) does not declare.
#[path = "../common"]
mod common {
    pub mod app;
    pub mod cloudevents;
    pub mod contract;
    pub mod fake_extensions;
    pub mod fake_ringcentral;
    pub mod kafka;
    pub mod lifecycle;
    pub mod metrics;
    pub mod mock_kafka;
    pub mod payloads;
    pub mod polling;
    pub mod process;
    pub mod router;
    pub mod scenarios;
    pub mod schemas;
}

mod delivery;
mod docs;
mod exposure;
mod http_limits;
mod keeper_hardening;
mod operations;
mod otlp;
mod reconcile;
mod rejections;
mod spool;
mod state;
mod state_faults;
mod subscription;
mod tail;
mod webhook;
