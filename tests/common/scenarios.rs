//! Scenarios both suites run, each against its own broker: the bridge killed repeatedly under load.
//! Each suite says what an outage of its broker is ([`Outage`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;

use super::app::http;
use super::payloads::{extension_update, unique};
use super::polling::eventually;
use super::process::BridgeProcess;

/// A broker that a scenario can take away and give back.
pub trait Outage {
    fn begin(&self);
    fn end(&self);
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
