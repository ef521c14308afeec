//! `serve`: the bridge itself, until SIGTERM or SIGINT.

use std::time::Duration;

use super::{CommandError, serve_runtime};
use crate::app::{Application, StopSignals};
use crate::config::{Settings, SettingsArgs};
use crate::routing::{RoutingTable, Topic};
use crate::telemetry;

pub(super) fn serve(args: SettingsArgs) -> Result<(), CommandError> {
    let settings = Settings::load(&args)?;
    telemetry::init(settings.log_format);
    // Before the runtime: the exporter's HTTP client blocks.
    if let Some(endpoint) = &settings.otlp_endpoint {
        crate::otlp::install(endpoint).map_err(CommandError::Start)?;
        tracing::info!(endpoint = %endpoint, "exporting spans over OTLP");
    }
    let runtime = serve_runtime(settings.worker_threads())?;
    let served = runtime.block_on(run(settings, args));
    // A blocking call still waiting on Kafka (the topic check) must not hold the exit beyond the
    // grace period: dropping the runtime would wait for it.
    runtime.shutdown_timeout(Duration::from_millis(200));
    crate::otlp::shutdown();
    served
}

async fn run(settings: Settings, args: SettingsArgs) -> Result<(), CommandError> {
    let spool_dir = settings.spool_dir.clone();
    let mut app = Application::build(settings.clone())
        .await
        .map_err(|e| CommandError::start(&settings, e))?;
    // SIGHUP re-reads the configuration file (flags and environment as given at start); only
    // the routing (`[hints]`, the topic prefix) changes while running.
    // The fetcher keeps the state settings it started with: a reload may not move them.
    let state_at_start = state_topics(&settings.routing);
    app.reload_routing_with(Box::new(move || {
        let routing = Settings::load(&args).map_err(|e| e.to_string())?.routing;
        if state_topics(&routing) != state_at_start {
            return Err(
                "the state settings ([state], or the prefix with it) change only with a \
                        restart"
                    .into(),
            );
        }
        Ok(routing)
    }));
    // Before "listening": from then on a stop drains.
    let stop = StopSignals::install().map_err(|e| {
        CommandError::Start(format!(
            "cannot install the SIGTERM and SIGINT handlers: {e}"
        ))
    })?;
    tracing::info!(
        port = app.port(),
        admin_port = app.admin_port(),
        worker_threads = tokio::runtime::Handle::current().metrics().num_workers(),
        "listening"
    );
    if app.is_embedded() {
        tracing::warn!(
            bootstrap = app.bootstrap_servers(),
            "no --brokers: running on an embedded development broker that keeps nothing; \
             any Kafka client can read the topics at this bootstrap address"
        );
        println!("embedded Kafka broker: {}", app.bootstrap_servers());
        super::tail::record_embedded_broker(&spool_dir, app.bootstrap_servers());
    }
    let embedded = app.is_embedded();
    let stopped = app
        .run_until(stop.received())
        .await
        .map_err(CommandError::Serve);
    if embedded {
        super::tail::forget_embedded_broker(&spool_dir);
    }
    stopped
}

/// What of the routing the running fetcher depends on.
fn state_topics(routing: &RoutingTable) -> Option<(Topic, Vec<Topic>)> {
    routing
        .state()
        .map(|s| (s.requests_topic.clone(), routing.state_topics()))
}
