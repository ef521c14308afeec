//! `state status`: the fetch queue as the fetchers' consumer group sees it, per partition of the
//! requests topic. `state reconcile`: one sweep for a stopped bridge.

use super::CommandError;
use crate::config::Settings;
use crate::kafka::ProducerFactory;
use crate::metrics::Metrics;

pub(super) fn status(settings: &Settings) -> Result<(), CommandError> {
    let Some(state) = settings.routing.state() else {
        return Err(CommandError::Usage("state status needs --state"));
    };
    let Some(brokers) = &settings.brokers else {
        return Err(CommandError::Usage("state status needs --brokers"));
    };
    let properties = &settings.kafka.properties;
    let kafka = |e: rdkafka::error::KafkaError| {
        CommandError::Kafka(format!(
            "cannot read the queue: {}",
            properties.redact(&e.to_string())
        ))
    };
    let config = ProducerFactory::new(brokers, properties, Metrics::new()).client_config();
    let queue =
        crate::state::queue::partitions(&config, &state.requests_topic, &state.fetcher_group)
            .map_err(kafka)?;
    println!(
        "{} (consumer group {})",
        state.requests_topic, state.fetcher_group
    );
    println!(
        "{:<10} {:>12} {:>12} {:>8}",
        "PARTITION", "FETCHED TO", "END", "QUEUED"
    );
    let mut total = 0;
    for partition in &queue {
        total += partition.queued();
        println!(
            "{:<10} {:>12} {:>12} {:>8}",
            partition.partition,
            partition.position,
            partition.end,
            partition.queued()
        );
    }
    println!("{total} requests queued");
    Ok(())
}

/// One sweep, for the bridge whose spool is `--spool-dir`, with a progress bar on stderr and a
/// summary on stdout. The spool is held meanwhile, so that bridge cannot start half-way; a running
/// bridge holds it, and is asked to sweep with SIGUSR1 instead.
pub(super) fn reconcile(settings: &Settings) -> Result<(), CommandError> {
    use std::sync::Arc;

    use crate::kafka::Publisher;
    use crate::ringcentral::RingCentral;
    use crate::spool::{Spool, SpoolError};
    use crate::state::limiter::RateLimiter;
    use crate::state::sweep::{Cause, Sweeper};

    let Some(state) = settings.routing.state() else {
        return Err(CommandError::Usage("state reconcile needs --state"));
    };
    let Some(brokers) = &settings.brokers else {
        return Err(CommandError::Usage("state reconcile needs --brokers"));
    };
    let metrics = Metrics::new();
    let _held = match Spool::open_existing(
        &settings.spool_dir,
        settings.spool_options(),
        metrics.clone(),
    ) {
        Err(SpoolError::InUse { .. }) => {
            return Err(CommandError::Sweep(format!(
                "a running bridge holds the spool {}: ask it for a sweep with `kill -USR1 <its pid>`",
                settings.spool_dir.display()
            )));
        }
        other => other?,
    };
    let properties = &settings.kafka.properties;
    let factory = ProducerFactory::new(brokers, properties, metrics.clone());
    let credentials = settings.ringcentral.credentials()?;
    let runtime = super::runtime()?;
    runtime.block_on(async {
        let sweeper = Sweeper {
            client: Arc::new(RingCentral::new(credentials)?),
            limiter: Arc::new(RateLimiter::new()),
            routing: settings.routing.clone(),
            state: state.clone(),
            publisher: Publisher::new(
                factory
                    .build_unobserved()
                    .map_err(|e| CommandError::Kafka(properties.redact(&e.to_string())))?,
                metrics.clone(),
            ),
            consumer_config: factory.client_config(),
            metrics: metrics.clone(),
            pace: false,
        };
        let (_trigger, shutdown) = crate::shutdown::channel();
        let progress = tokio::spawn(progress_bar(metrics.clone()));
        let report = sweeper.sweep(Cause::Requested, &shutdown).await.outcome;
        progress.abort();
        draw(&metrics);
        eprintln!();
        let report = report.map_err(|e| CommandError::Sweep(e.to_string()))?;
        println!(
            "{} extensions listed: {} new, {} changed, {} gone{}",
            report.listed,
            report.new,
            report.changed,
            report.gone,
            if report.snapshot {
                " (initial snapshot)"
            } else {
                ""
            }
        );
        println!(
            "their fetches are queued on {}: running bridges fetch them",
            settings
                .routing
                .state()
                .map_or_else(String::new, |s| s.requests_topic.to_string())
        );
        Ok(())
    })
}

/// A progress bar on stderr, from the sweep's progress gauge.
async fn progress_bar(metrics: Metrics) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
    loop {
        tick.tick().await;
        draw(&metrics);
    }
}

fn draw(metrics: &Metrics) {
    const WIDTH: usize = 30;
    let ratio = metrics.state_sweep_progress.get().clamp(0.0, 1.0);
    let listed = metrics.state_sweep_listed.get();
    let done = (ratio * WIDTH as f64).round() as usize;
    eprint!(
        "\r[{}{}] {:>3.0}%  {listed} extensions listed",
        "#".repeat(done),
        " ".repeat(WIDTH - done),
        ratio * 100.0
    );
}
