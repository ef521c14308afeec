//! Wiring: builds every part from [`Settings`], binds both listeners, runs until a shutdown signal,
//! then drains in order (unready, stop accepting, finish requests, let the relay publish, flush),
//! all within one grace period counted from the signal.

use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{DeliveryMode, Settings};
use crate::in_flight::PlansInFlight;
use crate::ingress::{self, AllowedSubscriptions, IngressState};
use crate::kafka::{self, EmbeddedBroker, Producer, ProducerFactory, Publisher};
use crate::metrics::Metrics;
use crate::readiness::{Readiness, SpoolHealth};
use crate::relay::Relay;
use crate::ringcentral::RingCentral;
use crate::ringcentral::keeper::{Keeper, KeeperSettings};
use crate::routing::{RoutingTable, Topic};
use crate::server::{self, ConnectionCaps, Limits};
use crate::shutdown::{self, Shutdown};
use crate::sink::{DirectSink, RecentUuids, Sink};
use crate::spool::Spool;
use crate::state::fetcher::Fetcher;
use crate::state::limiter::RateLimiter;
use crate::state::reconciler::{Reconciler, SweepRequests};
use crate::state::sweep::{Cause, Sweeper};

/// The subscription keeper, when `keep_subscription` is on.
fn keeper(settings: &Settings, metrics: &Metrics) -> Result<Option<Keeper>, StartError> {
    let rc = &settings.ringcentral;
    if !rc.keep_subscription {
        return Ok(None);
    }
    let invalid = invalid_config;
    let client = Arc::new(RingCentral::new(rc.credentials().map_err(invalid)?)?);
    let keeper_settings = KeeperSettings {
        address: rc.address().map_err(invalid)?.to_string(),
        event_filters: rc.event_filters.clone(),
        expires_in: rc.expires_in,
        verification_token: settings.verification_token.clone(),
        subscription_id: rc.subscription_id.clone(),
        check_interval: rc.check_interval,
        renew_before: rc.renew_before,
    };
    Ok(Some(Keeper::new(client, keeper_settings, metrics.clone())))
}

fn invalid_config(e: crate::config::ConfigError) -> StartError {
    StartError::Config(e.to_string())
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("Kafka client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("spool: {0}")]
    Spool(Box<crate::spool::SpoolError>),
    #[error("cannot start the relay's thread: {0}")]
    RelayThread(std::io::Error),
    #[error("{0}")]
    RingCentral(#[from] crate::ringcentral::ApiError),
}

impl From<crate::relay::RelayStartError> for StartError {
    fn from(e: crate::relay::RelayStartError) -> Self {
        match e {
            crate::relay::RelayStartError::Kafka(e) => StartError::Kafka(e),
            crate::relay::RelayStartError::Thread(e) => StartError::RelayThread(e),
        }
    }
}

impl From<crate::spool::SpoolError> for StartError {
    fn from(e: crate::spool::SpoolError) -> Self {
        // Boxed: the spool's errors carry paths and ids, and would make every `Result` here large.
        StartError::Spool(Box::new(e))
    }
}

/// Both listeners, bound before anything else is built: the keeper needs the webhook's address,
/// and a test that binds port 0 learns it here.
pub struct Listeners {
    webhook: TcpListener,
    admin: TcpListener,
}

impl Listeners {
    pub async fn bind(settings: &Settings) -> Result<Listeners, StartError> {
        Ok(Listeners {
            webhook: bind(settings.listen).await?,
            admin: bind(settings.admin_listen).await?,
        })
    }

    pub fn port(&self) -> u16 {
        port(&self.webhook)
    }

    pub fn admin_port(&self) -> u16 {
        port(&self.admin)
    }
}

fn port(listener: &TcpListener) -> u16 {
    // A bound TCP listener always has a local address.
    listener.local_addr().map_or(0, |a| a.port())
}

/// A running bridge: both listeners bound, Kafka connected (or connecting), the relay started.
pub struct Application {
    listeners: Listeners,
    webhook: axum::Router,
    admin: axum::Router,
    bootstrap_servers: String,
    routing: Arc<ArcSwap<RoutingTable>>,
    delivery: Delivery,
    shutdown_grace: Duration,
    webhook_limits: Limits,
    admin_limits: Limits,
    lifecycle: Arc<Lifecycle>,
    metrics: Metrics,
    /// What SIGHUP runs, with the handler installed when it was set.
    reload: Option<(Reload, Signal)>,
    keeper: Option<(Keeper, mpsc::UnboundedReceiver<String>)>,
    topic_check: Option<TopicCheck>,
    fetcher: Option<Fetcher>,
    reconciler: Option<(Reconciler, SweepRequests)>,
    /// The SIGUSR1 handler, installed with the reconciler.
    usr1: Option<Signal>,
    // Dropped last: the embedded broker must outlive the producer.
    _embedded: Option<EmbeddedBroker>,
}

/// Builds a new routing table from the configuration as it is now (for SIGHUP).
pub type Reload = Box<dyn Fn() -> Result<RoutingTable, String> + Send + Sync>;

enum Delivery {
    Direct(Arc<DirectSink>),
    Spooled { spool: Arc<Spool>, relay: Relay },
}

struct DirectReadiness;

impl Readiness for DirectReadiness {
    fn spool_health(&self) -> SpoolHealth {
        SpoolHealth::Absent
    }
}

/// What `/readyz` reports: the delivery's health, and unready from the moment shutdown begins.
struct Lifecycle {
    delivery: Arc<dyn Readiness>,
    shutting_down: AtomicBool,
    state_enabled: bool,
}

impl Readiness for Lifecycle {
    fn spool_health(&self) -> SpoolHealth {
        self.delivery.spool_health()
    }

    fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    fn state_enabled(&self) -> bool {
        self.state_enabled
    }
}

/// Both listeners' limits: the timeouts as set, the caps fitted under the descriptor limit (raised
/// to the hard limit first).
fn http_limits(settings: &Settings) -> (Limits, Limits) {
    let descriptor_limit = server::raise_descriptor_limit();
    let (caps, clamped) = ConnectionCaps::fit(
        descriptor_limit,
        settings.max_connections.map(NonZeroUsize::get),
        settings.admin_max_connections.map(NonZeroUsize::get),
    );
    for clamp in clamped {
        tracing::warn!(
            setting = clamp.setting,
            requested = clamp.requested,
            allowed = clamp.allowed,
            descriptor_limit,
            "connection cap lowered to fit the descriptor limit"
        );
    }
    tracing::info!(
        descriptor_limit,
        reserved = caps.reserved,
        webhook_connections = caps.webhook,
        admin_connections = caps.admin,
        "connection caps"
    );
    let limits = |max_connections| Limits {
        header_timeout: settings.header_timeout,
        body_timeout: settings.body_timeout,
        idle_timeout: settings.idle_timeout,
        max_header_bytes: settings.max_header_bytes,
        max_connections,
    };
    (limits(caps.webhook), limits(caps.admin))
}

impl Application {
    /// Binds both listeners, then builds the bridge on them.
    pub async fn build(settings: Settings) -> Result<Application, StartError> {
        let listeners = Listeners::bind(&settings).await?;
        Application::build_on(listeners, settings).await
    }

    /// Builds the bridge on listeners already bound.
    pub async fn build_on(
        listeners: Listeners,
        settings: Settings,
    ) -> Result<Application, StartError> {
        let warnings = settings
            .check_webhook_auth()
            .map_err(|e| StartError::Config(e.to_string()))?;
        for warning in warnings {
            tracing::warn!("{warning}");
        }
        // First, before Kafka and the spool take their descriptors.
        let (webhook_limits, admin_limits) = http_limits(&settings);
        let metrics = Metrics::new();
        let embedded = match &settings.brokers {
            Some(_) => None,
            None => {
                let topics = settings.routing.published_topics();
                Some(EmbeddedBroker::start(&topics)?)
            }
        };
        let bootstrap_servers = match (&settings.brokers, &embedded) {
            (Some(brokers), _) => brokers.clone(),
            (None, Some(broker)) => broker.bootstrap_servers().to_string(),
            (None, None) => unreachable!("an embedded broker is started without --brokers"),
        };
        let factory = ProducerFactory::new(
            &bootstrap_servers,
            &settings.kafka.properties,
            metrics.clone(),
        );

        let (sink, readiness, delivery): (Arc<dyn Sink>, Arc<dyn Readiness>, Delivery) =
            match settings.delivery {
                DeliveryMode::Direct => {
                    let sink = Arc::new(DirectSink::new(
                        factory.build()?,
                        settings.direct_timeout,
                        RecentUuids::new(settings.dedup_window, settings.dedup_capacity.get()),
                        metrics.clone(),
                    ));
                    (
                        sink.clone(),
                        Arc::new(DirectReadiness),
                        Delivery::Direct(sink),
                    )
                }
                DeliveryMode::Spool => {
                    let spool = Arc::new(Spool::open(
                        &settings.spool_dir,
                        settings.spool_options(),
                        metrics.clone(),
                    )?);
                    let relay = Relay::start(
                        spool.clone(),
                        factory.clone(),
                        settings.routing.dead_letter_topic().clone(),
                        metrics.clone(),
                    )?;
                    (
                        spool.clone(),
                        spool.clone(),
                        Delivery::Spooled { spool, relay },
                    )
                }
            };

        let (mut keeper, reminders) = match keeper(&settings, &metrics)? {
            Some(keeper) => {
                let (tx, rx) = mpsc::unbounded_channel();
                (Some((keeper, rx)), Some(tx))
            }
            None => (None, None),
        };
        let routing = Arc::new(ArcSwap::from_pointee(settings.routing.clone()));
        let state = IngressState {
            routing: routing.clone(),
            sink,
            verification_token: settings.verification_token.clone(),
            metrics: metrics.clone(),
            reminders,
            allowed: Arc::new(AllowedSubscriptions::new(
                settings.allowed_subscription_ids.clone(),
                keeper.as_ref().map(|(keeper, _)| keeper.subscription_id()),
            )),
            plans_in_flight: PlansInFlight::new(
                settings.max_plan_bytes_in_flight.get(),
                metrics.plan_bytes_in_flight.clone(),
            ),
        };
        let topic_check = settings.brokers.is_some().then(|| TopicCheck {
            factory: factory.clone(),
            wanted: settings.routing.published_topics(),
            kinds: kafka::TopicKinds::of(&settings.routing),
            ensure: settings.ensure_topics.then_some((
                settings.partitions.get().into(),
                settings.replication_factor.get().into(),
            )),
        });
        let lifecycle = Arc::new(Lifecycle {
            delivery: readiness,
            shutting_down: AtomicBool::new(false),
            state_enabled: settings.routing.state().is_some(),
        });
        let (fetcher, reconciler) = match settings.routing.state() {
            Some(state) => {
                let client = Arc::new(RingCentral::new(
                    settings.ringcentral.credentials().map_err(invalid_config)?,
                )?);
                // RingCentral's budgets are per app and user: fetches and sweeps share them.
                let limiter = Arc::new(RateLimiter::new());
                let fetcher = Fetcher::new(
                    &factory.client_config(),
                    &settings.routing,
                    state,
                    factory.clone(),
                    client.clone(),
                    limiter.clone(),
                    metrics.clone(),
                )?;
                let sweeper = Sweeper {
                    client,
                    limiter,
                    routing: settings.routing.clone(),
                    state: state.clone(),
                    publisher: Publisher::new(factory.build_unobserved()?, metrics.clone()),
                    consumer_config: factory.client_config(),
                    metrics: metrics.clone(),
                    pace: true,
                };
                let reconciler =
                    Reconciler::new(sweeper, settings.state.reconcile_interval, metrics.clone())?;
                (Some(fetcher), Some(reconciler))
            }
            None => (None, None),
        };
        // Installed now, not when the bridge runs: a signal sent as soon as it says it is
        // listening must not get the default action, which ends the process.
        let usr1 = reconciler.as_ref().and_then(|_| {
            installed(
                SignalKind::user_defined1(),
                "SIGUSR1",
                "sweeps run on their schedule only",
            )
        });
        if let (Some((keeper, _)), Some((_, sweeps))) = (&mut keeper, &reconciler) {
            // Whatever changed while the subscription was blacklisted or expired was never sent.
            keeper.after_recreation(sweeps.clone());
        }
        Ok(Application {
            listeners,
            webhook: ingress::router(state, settings.max_body_bytes.get()),
            admin: ingress::admin_router(metrics.clone(), lifecycle.clone()),
            bootstrap_servers,
            routing,
            delivery,
            shutdown_grace: settings.shutdown_grace,
            webhook_limits,
            admin_limits,
            lifecycle,
            metrics,
            reload: None,
            keeper,
            topic_check,
            fetcher,
            reconciler,
            usr1,
            _embedded: embedded,
        })
    }

    pub fn port(&self) -> u16 {
        self.listeners.port()
    }

    pub fn admin_port(&self) -> u16 {
        self.listeners.admin_port()
    }

    /// Where Kafka is: the configured brokers or the embedded broker.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap_servers
    }

    pub fn is_embedded(&self) -> bool {
        self._embedded.is_some()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The live routing table; replacing it takes effect for the next notification.
    pub fn routing(&self) -> Arc<ArcSwap<RoutingTable>> {
        self.routing.clone()
    }

    /// On SIGHUP, replace the routing table with what `reload` builds; a failed reload keeps the old
    /// table serving and says why in the log. The handler is installed here, before the bridge runs.
    pub fn reload_routing_with(&mut self, reload: Reload) {
        self.reload = installed(SignalKind::hangup(), "SIGHUP", "reloading is off")
            .map(|hangup| (reload, hangup));
    }

    /// Serves until `shutdown` completes, then drains within the grace period: `/readyz` answers
    /// 503, the webhook listener stops accepting and finishes requests in flight, the relay
    /// publishes, the producer flushes; at the deadline whatever is still in flight is cut.
    /// Whatever is left stays in the spool for the next start.
    pub async fn run_until(
        self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        // Two phases: the webhook and the delivery drain first (by the deadline `drain` carries); the
        // background tasks and the admin listener stop after them, so that `/readyz` and
        // `/metrics` tell how the drain goes.
        let (drain, draining) = shutdown::channel();
        let (stop, stopping) = shutdown::channel();
        let mut background = Vec::new();
        if let Some((keeper, reminders)) = self.keeper {
            background.push(tokio::spawn(keeper.run(reminders, stopping.clone())));
        }
        if let Some((reload, hangup)) = self.reload {
            let routing = self.routing.clone();
            let reloading = reload_on_hangup(
                reload,
                hangup,
                routing,
                self.metrics.clone(),
                stopping.clone(),
            );
            background.push(tokio::spawn(reloading));
        }
        if let Some(fetcher) = self.fetcher {
            background.push(tokio::spawn(fetcher.run(stopping.clone())));
        }
        if let Some((reconciler, sweeps)) = self.reconciler {
            background.push(tokio::spawn(reconciler.run(stopping.clone())));
            if let Some(usr1) = self.usr1 {
                background.push(tokio::spawn(sweep_on_usr1(usr1, sweeps, stopping.clone())));
            }
        }
        if let Some(check) = self.topic_check {
            background.push(tokio::spawn(check.run(stopping.clone())));
        }
        let mut admin_stopping = stopping;
        let admin = tokio::spawn(server::serve(
            "admin",
            self.listeners.admin,
            self.admin,
            self.admin_limits,
            async move { admin_stopping.begun().await },
        ));
        let lifecycle = self.lifecycle.clone();
        let grace = self.shutdown_grace;
        server::serve(
            "webhook",
            self.listeners.webhook,
            self.webhook,
            self.webhook_limits,
            async move {
                signal.await;
                lifecycle.shutting_down.store(true, Ordering::Relaxed);
                tracing::info!(grace = ?grace, "shutting down: no new requests");
                let deadline = Instant::now() + grace;
                drain.begin(deadline);
                deadline
            },
        )
        .await;
        let deadline = draining.deadline().unwrap_or_else(Instant::now);
        match self.delivery {
            Delivery::Direct(sink) => {
                let left = deadline.saturating_duration_since(Instant::now());
                sink.producer().flush(left);
            }
            Delivery::Spooled { spool, relay } => {
                relay.stop(deadline).await;
                spool.close();
            }
        }
        stop.begin(deadline);
        // Each task stops at the signal, but one may be inside a call to RingCentral or Kafka: the
        // grace period bounds the wait, and what is still running then is cut.
        for mut task in background {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
            }
        }
        let _ = admin.await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// A handler for `kind`, or none and an error logged saying what goes without it.
fn installed(kind: SignalKind, name: &str, without: &str) -> Option<Signal> {
    signal(kind)
        .inspect_err(|e| tracing::error!(error = %e, "cannot install a {name} handler: {without}"))
        .ok()
}

/// SIGUSR1 asks for a reconciliation sweep.
async fn sweep_on_usr1(mut usr1: Signal, sweeps: SweepRequests, mut shutdown: Shutdown) {
    loop {
        tokio::select! {
            _ = usr1.recv() => {
                tracing::info!("SIGUSR1: reconciliation sweep requested");
                sweeps.request(Cause::Requested);
            }
            _ = shutdown.begun() => return,
        }
    }
}

async fn reload_on_hangup(
    reload: Reload,
    mut hangup: Signal,
    routing: Arc<ArcSwap<RoutingTable>>,
    metrics: Metrics,
    mut shutdown: Shutdown,
) {
    loop {
        tokio::select! {
            _ = hangup.recv() => {}
            _ = shutdown.begun() => return,
        }
        match reload() {
            Ok(table) => {
                let topics = table.topics().len();
                routing.store(Arc::new(table));
                metrics.config_reloads.with_label_values(&["success"]).inc();
                tracing::info!(topics, "SIGHUP: routing reloaded");
            }
            Err(e) => {
                metrics
                    .config_reloads
                    .with_label_values(&["rejected"])
                    .inc();
                tracing::error!(error = %e, "SIGHUP: new configuration rejected; the previous routing keeps serving");
            }
        }
    }
}

/// Reports (or creates) the topics Kafka lacks, once, in the background: the bridge serves (and
/// spools) while Kafka is slow to answer, and a failure here never stops it.
struct TopicCheck {
    factory: ProducerFactory,
    wanted: Vec<Topic>,
    /// The state topics among them, and those of one partition.
    kinds: kafka::TopicKinds,
    /// Partitions and replication factor, when missing topics are to be created.
    ensure: Option<(i32, i32)>,
}

impl TopicCheck {
    async fn run(self, mut shutdown: Shutdown) {
        tokio::select! {
            _ = self.check() => {}
            // The metadata request blocks a thread for up to its timeout; the runtime's own
            // shutdown timeout bounds it.
            _ = shutdown.begun() => {}
        }
    }

    async fn check(&self) {
        self.check_present().await;
        self.check_compacted().await;
    }

    /// Warns about a state topic that exists without compaction: consumers reading it from the
    /// beginning would miss every extension whose last record the retention deleted.
    async fn check_compacted(&self) {
        match kafka::not_compacted(&self.factory, &self.kinds.compacted).await {
            Ok(topics) if topics.is_empty() => {}
            Ok(topics) => {
                let names: Vec<String> = topics.iter().map(Topic::to_string).collect();
                tracing::warn!(
                    topics = ?names,
                    "state topics without cleanup.policy=compact: retention deletes the state of \
                     extensions that did not change recently (set cleanup.policy=compact on them)"
                );
            }
            // Missing topics were reported already; a broker without the admin API is no reason
            // to stop.
            Err(e) => tracing::debug!(error = %e, "cannot check the state topics' cleanup policy"),
        }
    }

    async fn check_present(&self) {
        let (factory, wanted) = (self.factory.clone(), self.wanted.clone());
        let missing = tokio::task::spawn_blocking(move || {
            kafka::missing_topics(&factory, &wanted, Duration::from_secs(10))
        })
        .await;
        let missing = match missing {
            Ok(Ok(missing)) if missing.is_empty() => {
                return tracing::info!("every routed topic exists");
            }
            Ok(Ok(missing)) => missing,
            Ok(Err(e)) => {
                return tracing::warn!(error = %e, "cannot check topics: Kafka unreachable?");
            }
            Err(e) => return tracing::warn!(error = %e, "topic check failed"),
        };
        let names: Vec<String> = missing.iter().map(|t| t.to_string()).collect();
        let Some((partitions, replication_factor)) = self.ensure else {
            return tracing::warn!(
                topics = ?names,
                "topics missing in Kafka: messages for them wait in the spool until they exist \
                 (create them, or run `rc-kafka-bridge topics ensure`)"
            );
        };
        let created = kafka::create_topics(
            &self.factory,
            &missing,
            &self.kinds,
            partitions,
            replication_factor,
        );
        match created.await {
            Ok(()) => tracing::info!(topics = ?names, "created missing topics"),
            Err(e) => tracing::error!(topics = ?names, error = %e, "cannot create missing topics"),
        }
    }
}

async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// SIGTERM and SIGINT, caught from the moment this is installed: install it before the bridge says
/// it is listening, so that a stop sent right then drains instead of ending the process.
pub struct StopSignals {
    term: Signal,
    int: Signal,
}

impl StopSignals {
    pub fn install() -> std::io::Result<StopSignals> {
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Completes on the first of them.
    pub async fn received(mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM received"),
            _ = self.int.recv() => tracing::info!("SIGINT received"),
        }
    }
}
