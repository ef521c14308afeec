//! Every Prometheus metric of the bridge, in one place. Names follow
//! `rckb_<name>_<unit>[_total]`; labels are bounded: route templates, status classes, event kinds,
//! topics of the routing table, hints of the table (or `unknown`), and error-kind enums.

use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

const NAMESPACE: &str = "rckb";

/// Every metric of the bridge, behind one `Arc`: cloned per request and per task, it costs one
/// reference count, not one per metric.
#[derive(Clone)]
pub struct Metrics(Arc<Collectors>);

impl std::ops::Deref for Metrics {
    type Target = Collectors;

    fn deref(&self) -> &Collectors {
        &self.0
    }
}

pub struct Collectors {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_request_duration: HistogramVec,
    pub notifications: IntCounterVec,
    pub validation_handshakes: IntCounter,
    pub verification_failures: IntCounterVec,
    pub messages_published: IntCounterVec,
    pub publish_errors: IntCounterVec,
    pub unknown_hints: IntCounter,
    pub dead_letters: IntCounterVec,
    pub spool_entries: IntGauge,
    pub spool_bytes: IntGauge,
    pub spool_oldest_entry_age: prometheus::Gauge,
    pub spool_commits: IntCounter,
    pub spool_commit_duration: Histogram,
    pub accept_to_ack: Histogram,
    pub kafka_brokers_up: IntGauge,
    pub kafka_producer_queue_messages: IntGauge,
    pub kafka_broker_rtt: prometheus::GaugeVec,
    pub kafka_broker_state: IntGaugeVec,
    pub build_info: IntGaugeVec,
    pub config_reloads: IntCounterVec,
    pub subscription_status: IntGaugeVec,
    pub subscription_expiry: prometheus::Gauge,
    pub subscription_renewals: IntCounter,
    pub subscription_recreations: IntCounterVec,
    pub ringcentral_api_errors: IntCounterVec,
    pub notifications_unrouted: IntCounterVec,
    // Keeper hardening (issue 10): reminders that name no subscription the keeper owns.
    pub subscription_reminders_ignored: IntCounterVec,
    // A spool that fails loudly: the dead-letter area.
    pub spool_dead_letters: IntGauge,
    pub spool_dead_letter_bytes: IntGauge,
    pub dead_letters_dropped: IntCounter,
    // Exposure: what requests in flight hold.
    pub plan_bytes_in_flight: IntGauge,
    // State topics.
    pub state_fetches: IntCounterVec,
    pub state_rate_limit_pauses: IntCounterVec,
    pub state_lag: Histogram,
    pub state_queue_requests: IntGauge,
    pub state_queue_oldest_age: prometheus::Gauge,
    pub state_fetcher_running: IntGauge,
    pub state_fetcher_partitions: IntGauge,
    pub state_dead_letters: IntCounterVec,
    pub state_sweeps: IntCounterVec,
    pub state_sweep_duration: Histogram,
    pub state_sweep_listed: IntGauge,
    pub state_sweep_differences: IntCounterVec,
    pub state_sweep_progress: prometheus::Gauge,
    pub state_sweep_last_success: prometheus::Gauge,
    pub state_sweeper: IntGauge,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(NAMESPACE)
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let latency_buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ];
        let m = Collectors {
            http_requests: IntCounterVec::new(
                opts("http_requests_total", "HTTP requests answered, by route template and status class."),
                &["route", "status"],
            )
            .unwrap(),
            http_request_duration: HistogramVec::new(
                HistogramOpts::new("http_request_duration_seconds", "Time to answer an HTTP request.")
                    .namespace(NAMESPACE)
                    .buckets(latency_buckets.clone()),
                &["route"],
            )
            .unwrap(),
            notifications: IntCounterVec::new(
                opts(
                    "notifications_total",
                    "Webhook notifications by event kind and outcome (accepted, duplicate, rejected_*, unavailable).",
                ),
                &["kind", "outcome"],
            )
            .unwrap(),
            validation_handshakes: IntCounter::with_opts(opts(
                "validation_handshakes_total",
                "Validation-Token handshakes answered.",
            ))
            .unwrap(),
            verification_failures: IntCounterVec::new(
                opts(
                    "verification_failures_total",
                    "Notifications refused with 401: Verification-Token missing or wrong.",
                ),
                &["reason"],
            )
            .unwrap(),
            messages_published: IntCounterVec::new(
                opts("messages_published_total", "Messages acknowledged by Kafka, by topic and hint."),
                &["topic", "hint"],
            )
            .unwrap(),
            publish_errors: IntCounterVec::new(
                opts("publish_errors_total", "Failed publish attempts, by error kind."),
                &["kind"],
            )
            .unwrap(),
            unknown_hints: IntCounter::with_opts(opts(
                "unknown_hints_total",
                "Hints not in the routing table, carried to the unrouted topic.",
            ))
            .unwrap(),
            dead_letters: IntCounterVec::new(
                opts(
                    "dead_letters_total",
                    "Messages Kafka rejected for good, by where they were kept (topic or spool).",
                ),
                &["destination"],
            )
            .unwrap(),
            spool_entries: IntGauge::with_opts(opts(
                "spool_entries",
                "Accepted notifications not yet fully acknowledged by Kafka.",
            ))
            .unwrap(),
            spool_bytes: IntGauge::with_opts(opts(
                "spool_bytes",
                "Bytes of messages waiting in the spool.",
            ))
            .unwrap(),
            spool_oldest_entry_age: prometheus::Gauge::with_opts(opts(
                "spool_oldest_entry_age_seconds",
                "Age of the oldest notification waiting in the spool (0 when empty).",
            ))
            .unwrap(),
            spool_commits: IntCounter::with_opts(opts(
                "spool_commits_total",
                "Commits of the spool's writer, each one fdatasync of the notifications and \
                 releases grouped in it (--spool-linger, --spool-linger-max).",
            ))
            .unwrap(),
            // Every answer in spool mode waits for a commit, so a slow disk shows here first: from
            // about 0.1 ms (a fast local disk) to seconds (a network volume in trouble).
            spool_commit_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "spool_commit_duration_seconds",
                    "Time the spool's writer took to write and fdatasync one commit, failed ones too.",
                )
                .namespace(NAMESPACE)
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5, 5.0,
                ]),
            )
            .unwrap(),
            accept_to_ack: Histogram::with_opts(
                HistogramOpts::new(
                    "accept_to_ack_seconds",
                    "Time from answering a notification to Kafka acknowledging all of its messages.",
                )
                .namespace(NAMESPACE)
                .buckets(vec![
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0,
                    3600.0,
                ]),
            )
            .unwrap(),
            kafka_brokers_up: IntGauge::with_opts(opts(
                "kafka_brokers_up",
                "Kafka brokers the producer is connected to (from librdkafka statistics).",
            ))
            .unwrap(),
            kafka_producer_queue_messages: IntGauge::with_opts(opts(
                "kafka_producer_queue_messages",
                "Messages in the producer's queue, waiting for or in transmission.",
            ))
            .unwrap(),
            kafka_broker_rtt: prometheus::GaugeVec::new(
                opts(
                    "kafka_broker_rtt_seconds",
                    "Average round-trip time to each broker over the last statistics window.",
                ),
                &["broker"],
            )
            .unwrap(),
            kafka_broker_state: IntGaugeVec::new(
                opts("kafka_broker_up", "1 when the producer's connection to the broker is up."),
                &["broker"],
            )
            .unwrap(),
            build_info: IntGaugeVec::new(
                opts("build_info", "Always 1; the version of the running bridge."),
                &["version"],
            )
            .unwrap(),
            config_reloads: IntCounterVec::new(
                opts(
                    "config_reloads_total",
                    "Routing reloads on SIGHUP, by outcome (success, rejected).",
                ),
                &["outcome"],
            )
            .unwrap(),
            subscription_status: IntGaugeVec::new(
                opts(
                    "subscription_status",
                    "1 for the kept subscription's status (Active, Blacklisted, Suspended, Missing, Unknown).",
                ),
                &["status"],
            )
            .unwrap(),
            subscription_expiry: prometheus::Gauge::with_opts(opts(
                "subscription_expiry_seconds",
                "Seconds until the kept subscription expires.",
            ))
            .unwrap(),
            subscription_renewals: IntCounter::with_opts(opts(
                "subscription_renewals_total",
                "Renewals of the kept subscription.",
            ))
            .unwrap(),
            subscription_recreations: IntCounterVec::new(
                opts(
                    "subscription_recreations_total",
                    "Subscriptions created anew, by reason (missing, gone, expired, blacklisted).",
                ),
                &["reason"],
            )
            .unwrap(),
            ringcentral_api_errors: IntCounterVec::new(
                opts(
                    "ringcentral_api_errors_total",
                    "Failed RingCentral API calls of the subscription keeper, by kind.",
                ),
                &["kind"],
            )
            .unwrap(),
            notifications_unrouted: IntCounterVec::new(
                opts(
                    "notifications_unrouted_total",
                    "Notifications carried once, raw, on the unrouted topic instead of being routed: over a fan-out cap or with an invalid id, by reason.",
                ),
                &["reason"],
            )
            .unwrap(),
            subscription_reminders_ignored: IntCounterVec::new(
                opts(
                    "subscription_reminders_ignored_total",
                    "Expiry reminders the keeper ignored, by reason (invalid_id, other_subscription, none_kept, recently_renewed).",
                ),
                &["reason"],
            )
            .unwrap(),
            spool_dead_letters: IntGauge::with_opts(opts(
                "spool_dead_letters",
                "Dead letters kept in the spool (rejected by their topic and by the dead-letter topic).",
            ))
            .unwrap(),
            spool_dead_letter_bytes: IntGauge::with_opts(opts(
                "spool_dead_letter_bytes",
                "Bytes of dead letters kept in the spool; at most a tenth of --spool-max-bytes.",
            ))
            .unwrap(),
            dead_letters_dropped: IntCounter::with_opts(opts(
                "dead_letters_dropped_total",
                "Dead letters dropped from the spool's full dead-letter area, oldest first.",
            ))
            .unwrap(),
            plan_bytes_in_flight: IntGauge::with_opts(opts(
                "plan_bytes_in_flight",
                "Bytes planned by webhook requests not yet kept; at most --max-plan-bytes-in-flight.",
            ))
            .unwrap(),
            registry,
            state_fetches: IntCounterVec::new(
                opts("state_fetches_total", "State fetches from RingCentral, by rate-limit group and outcome."),
                &["group", "outcome"],
            )
            .unwrap(),
            state_rate_limit_pauses: IntCounterVec::new(
                opts("state_rate_limit_pauses_total", "Pauses of a rate-limit group after a 429 or an exhausted budget."),
                &["group"],
            )
            .unwrap(),
            state_lag: Histogram::with_opts(
                HistogramOpts::new("state_lag_seconds", "Time from accepting a hint to publishing the state it caused.")
                    .namespace(NAMESPACE)
                    .buckets(vec![0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0]),
            )
            .unwrap(),
            state_queue_requests: IntGauge::with_opts(opts(
                "state_queue_requests",
                "State requests queued on the partitions this replica fetches for (not yet committed).",
            ))
            .unwrap(),
            state_queue_oldest_age: prometheus::Gauge::with_opts(opts(
                "state_queue_oldest_age_seconds",
                "Age of the oldest state request this replica holds and has not carried out (0 when none).",
            ))
            .unwrap(),
            state_fetcher_running: IntGauge::with_opts(opts(
                "state_fetcher_running",
                "1 while this replica's state fetcher runs.",
            ))
            .unwrap(),
            state_fetcher_partitions: IntGauge::with_opts(opts(
                "state_fetcher_partitions",
                "Partitions of the requests topic this replica fetches for.",
            ))
            .unwrap(),
            state_sweeps: IntCounterVec::new(
                opts("state_sweeps_total", "Reconciliation sweeps, by cause and outcome."),
                &["cause", "outcome"],
            )
            .unwrap(),
            state_sweep_duration: Histogram::with_opts(
                HistogramOpts::new("state_sweep_duration_seconds", "How long a reconciliation sweep took, listing and queueing its repairs.")
                    .namespace(NAMESPACE)
                    .buckets(vec![1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 14400.0]),
            )
            .unwrap(),
            state_sweep_listed: IntGauge::with_opts(opts(
                "state_sweep_listed_extensions",
                "Extensions the last sweep listed.",
            ))
            .unwrap(),
            state_sweep_differences: IntCounterVec::new(
                opts("state_sweep_differences_total", "Extensions a sweep found differing from the index: new, changed or gone."),
                &["kind"],
            )
            .unwrap(),
            state_sweep_progress: prometheus::Gauge::with_opts(opts(
                "state_sweep_progress_ratio",
                "Share of the running (or last) sweep's repairs queued: the initial snapshot's progress.",
            ))
            .unwrap(),
            state_sweep_last_success: prometheus::Gauge::with_opts(opts(
                "state_sweep_last_success_timestamp_seconds",
                "When the last sweep that completed on this replica ended (Unix time; 0 before any).",
            ))
            .unwrap(),
            state_sweeper: IntGauge::with_opts(opts(
                "state_sweeper",
                "1 on the one replica that runs the reconciliation sweeps.",
            ))
            .unwrap(),
            state_dead_letters: IntCounterVec::new(
                opts("state_dead_letters_total", "State records Kafka refused for good: sent to the dead-letter topic, or dropped when it refused too."),
                &["outcome"],
            )
            .unwrap(),
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.http_requests.clone()),
            Box::new(m.http_request_duration.clone()),
            Box::new(m.notifications.clone()),
            Box::new(m.validation_handshakes.clone()),
            Box::new(m.verification_failures.clone()),
            Box::new(m.messages_published.clone()),
            Box::new(m.publish_errors.clone()),
            Box::new(m.unknown_hints.clone()),
            Box::new(m.dead_letters.clone()),
            Box::new(m.spool_entries.clone()),
            Box::new(m.spool_bytes.clone()),
            Box::new(m.spool_oldest_entry_age.clone()),
            Box::new(m.spool_commits.clone()),
            Box::new(m.spool_commit_duration.clone()),
            Box::new(m.accept_to_ack.clone()),
            Box::new(m.kafka_brokers_up.clone()),
            Box::new(m.kafka_producer_queue_messages.clone()),
            Box::new(m.kafka_broker_rtt.clone()),
            Box::new(m.kafka_broker_state.clone()),
            Box::new(m.build_info.clone()),
            Box::new(m.config_reloads.clone()),
            Box::new(m.subscription_status.clone()),
            Box::new(m.subscription_expiry.clone()),
            Box::new(m.subscription_renewals.clone()),
            Box::new(m.subscription_recreations.clone()),
            Box::new(m.ringcentral_api_errors.clone()),
            Box::new(m.notifications_unrouted.clone()),
            Box::new(m.subscription_reminders_ignored.clone()),
            Box::new(m.spool_dead_letters.clone()),
            Box::new(m.spool_dead_letter_bytes.clone()),
            Box::new(m.dead_letters_dropped.clone()),
            Box::new(m.plan_bytes_in_flight.clone()),
            Box::new(m.state_fetches.clone()),
            Box::new(m.state_rate_limit_pauses.clone()),
            Box::new(m.state_lag.clone()),
            Box::new(m.state_queue_requests.clone()),
            Box::new(m.state_queue_oldest_age.clone()),
            Box::new(m.state_fetcher_running.clone()),
            Box::new(m.state_fetcher_partitions.clone()),
            Box::new(m.state_dead_letters.clone()),
            Box::new(m.state_sweeps.clone()),
            Box::new(m.state_sweep_duration.clone()),
            Box::new(m.state_sweep_listed.clone()),
            Box::new(m.state_sweep_differences.clone()),
            Box::new(m.state_sweep_progress.clone()),
            Box::new(m.state_sweep_last_success.clone()),
            Box::new(m.state_sweeper.clone()),
        ];
        for c in collectors {
            m.registry.register(c).expect("metric names are unique");
        }
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Metrics(Arc::new(m))
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding cannot fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
