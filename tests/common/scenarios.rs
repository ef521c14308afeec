//! Scenarios both suites run, each against its own broker: a broker outage, and the bridge killed
//! repeatedly under load. Each suite says what an outage of its broker is ([`Outage`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::task::JoinHandle;

use super::app::{TestApp, http};
use super::kafka::missing_after_delivery;
use super::payloads::{extension_update, unique};
use super::polling::eventually;
use super::process::BridgeProcess;

/// A broker that a scenario can take away and give back.
pub trait Outage {
    fn begin(&self);
    fn end(&self);
}

/// While the broker is away, notifications are answered 200 within a second each, the bridge stays
/// ready (a Kafka outage must not take it out of a load balancer) and answers handshakes; once the
/// broker is back, every notification answered reaches Kafka.
pub async fn an_outage_costs_no_notification_and_no_slow_answer(
    app: &TestApp,
    broker: &impl Outage,
) {
    broker.begin();
    let mut uuids = Vec::new();
    for i in 0..50 {
        let uuid = format!("outage-{}-{i}", unique());
        let started = Instant::now();
        let response = app
            .post_webhook(extension_update(&uuid, "7", &["Limits"]).to_string())
            .await;
        assert_eq!(response.status(), 200);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "answered in {:?}",
            started.elapsed()
        );
        uuids.push(uuid);
    }
    let ready = app.get_admin("/readyz").await;
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["spool"], "ok", "{ready}");
    assert!(ready["kafka"]["brokersUp"].is_number(), "{ready}");
    let handshake = app.post_with("", &[("Validation-Token", "t")]).await;
    assert_eq!(handshake.status(), 200);

    broker.end();
    let missing = missing_after_delivery(&app.bootstrap, &uuids, Duration::from_secs(90)).await;
    assert!(missing.is_empty(), "lost {missing:?}");
}

/// Runs the real binary on `spool_dir` under load and SIGKILLs it three times in a row, then starts
/// it once more on the same spool; the broker is away from the second round's start to its end, so
/// a backlog is in the spool when the kill comes. Returns every uuid answered 200 and the last
/// bridge, still running.
pub async fn kill_repeatedly_under_load(
    bootstrap: &str,
    spool_dir: &std::path::Path,
    broker: &impl Outage,
) -> (Vec<String>, BridgeProcess) {
    let mut accepted = Vec::new();
    for round in 0..3 {
        let bridge = BridgeProcess::start(bootstrap, spool_dir, &[]).await;
        if round == 1 {
            broker.begin();
        }
        let load = Load::until_accepted(&bridge.address(), 4, 150).await;
        bridge.kill_hard();
        accepted.extend(load.finish().await);
        if round == 1 {
            broker.end();
        }
    }
    assert!(accepted.len() >= 450);
    let last = BridgeProcess::start(bootstrap, spool_dir, &[]).await;
    (accepted, last)
}

/// Concurrent load against a bridge: fresh uuids, five extensions, from several clients.
pub struct Load {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Vec<String>>,
}

impl Load {
    /// Starts `workers` clients and returns once `at_least` notifications were answered 200.
    pub async fn until_accepted(address: &str, workers: usize, at_least: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(load(
            address.to_string(),
            workers,
            stop.clone(),
            progress.clone(),
        ));
        eventually("load to be accepted", Duration::from_secs(30), async || {
            progress.load(Ordering::Relaxed) >= at_least
        })
        .await;
        Load { stop, task }
    }

    /// Stops the clients (a killed bridge stops them too); every uuid answered 200.
    pub async fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// Posts notifications with fresh uuids from `workers` concurrent clients until `stop` is set or
/// the bridge stops answering; returns every uuid answered 200.
async fn load(
    address: String,
    workers: usize,
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicUsize>,
) -> Vec<String> {
    let mut tasks = Vec::new();
    for worker in 0..workers {
        let address = address.to_string();
        let stop = stop.clone();
        let progress = progress.clone();
        tasks.push(tokio::spawn(async move {
            let client = http();
            let mut accepted = Vec::new();
            let mut i = 0;
            // Load, not a wait: each round trip is the pace.
            while !stop.load(Ordering::Relaxed) {
                let uuid = format!("load-{}-{worker}-{i}", unique());
                let ext = (i % 5).to_string();
                let body = extension_update(&uuid, &ext, &["Limits"]).to_string();
                match client
                    .post(format!("{address}/webhook"))
                    .header("content-type", "application/json")
                    .body(body)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => {
                        accepted.push(uuid);
                        progress.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
                i += 1;
            }
            accepted
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}
