//! `serve`: the bridge itself, until SIGTERM or SIGINT.

use std::time::Duration;

use super::{CommandError, runtime};
use crate::app::Application;
use crate::config::{Settings, SettingsArgs};
use crate::kafka::{self, ProducerFactory};
use crate::metrics::Metrics;
use crate::routing::Topic;
use crate::telemetry;

pub(super) fn serve(args: SettingsArgs) -> Result<(), CommandError> {
    let settings = Settings::load(&args)?;
    telemetry::init(settings.log_format);
    let runtime = runtime()?;
    let served = runtime.block_on(run(settings, args));
    // A blocking call still waiting on Kafka (the topic check) must not hold the exit beyond the
    // grace period: dropping the runtime would wait for it.
    runtime.shutdown_timeout(Duration::from_millis(200));
    served
}

async fn run(settings: Settings, args: SettingsArgs) -> Result<(), CommandError> {
    let wanted = settings.routing.published_topics();
    let properties = settings.kafka.properties.clone();
    let ensure = settings.ensure_topics.then_some((
        settings.partitions.get().into(),
        settings.replication_factor.get().into(),
    ));
    let mut app = Application::build(settings.clone())
        .await
        .map_err(|e| CommandError::start(&settings, e))?;
    // SIGHUP re-reads the configuration file (flags and environment as given at start); only
    // the routing (`[hints]`, the topic prefix) changes while running.
    app.reload_routing_with(Box::new(move || {
        Settings::load(&args)
            .map(|s| s.routing)
            .map_err(|e| e.to_string())
    }));
    tracing::info!(
        port = app.port(),
        admin_port = app.admin_port(),
        "listening"
    );
    if app.is_embedded() {
        tracing::warn!(
            bootstrap = app.bootstrap_servers(),
            "no --brokers: running on an embedded development broker that keeps nothing; \
             any Kafka client can read the topics at this bootstrap address"
        );
        println!("embedded Kafka broker: {}", app.bootstrap_servers());
    } else {
        // In the background: the bridge serves (and spools) while Kafka is slow to answer.
        let factory = ProducerFactory::new(app.bootstrap_servers(), &properties, Metrics::new());
        tokio::spawn(async move {
            check_topics(&factory, &wanted, ensure).await;
        });
    }
    app.run_until_stopped().await.map_err(CommandError::Serve)
}

/// Reports (or creates) topics Kafka lacks. A failure here never stops the bridge: the spool keeps
/// notifications until the topics exist.
async fn check_topics(factory: &ProducerFactory, wanted: &[Topic], ensure: Option<(i32, i32)>) {
    let (probe, probed) = (factory.clone(), wanted.to_vec());
    let missing = tokio::task::spawn_blocking(move || {
        kafka::missing_topics(&probe, &probed, Duration::from_secs(10))
    })
    .await;
    let missing = match missing {
        Ok(Ok(missing)) if missing.is_empty() => {
            return tracing::info!("every routed topic exists");
        }
        Ok(Ok(missing)) => missing,
        Ok(Err(e)) => return tracing::warn!(error = %e, "cannot check topics: Kafka unreachable?"),
        Err(e) => return tracing::warn!(error = %e, "topic check failed"),
    };
    let names: Vec<String> = missing.iter().map(|t| t.to_string()).collect();
    let Some((partitions, replication_factor)) = ensure else {
        return tracing::warn!(
            topics = ?names,
            "topics missing in Kafka: messages for them wait in the spool until they exist \
             (create them, or run `rc-kafka-bridge topics ensure`)"
        );
    };
    match kafka::create_topics(factory, &missing, partitions, replication_factor).await {
        Ok(()) => tracing::info!(topics = ?names, "created missing topics"),
        Err(e) => tracing::error!(topics = ?names, error = %e, "cannot create missing topics"),
    }
}
