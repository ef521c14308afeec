//! One reconciliation sweep: list every extension of the account, compare each record with the
//! state index, and repair what differs. A new or changed extension has its resources queued for
//! fetching and a `Reconciled` message on the hint topic; a gone one has tombstones queued and a
//! synthetic `Delete`. The index moves only once Kafka acknowledged what the sweep published for
//! an extension, so a sweep cut short (SIGKILL, shutdown) is redone for what it had not finished.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use serde_json::Value;

use super::fetch::{FetchOutcome, fetch};
use super::fetch_table::{Resource, ResourceKey};
use super::get_template::KeyScope;
use super::index::{self, Entry, SweepMark};
use super::limiter::RateLimiter;
use super::now;
use super::rate_limits::RateGroup;
use super::request::{Request, StateRouting};
use crate::kafka::{KafkaProducer, Publisher};
use crate::metrics::Metrics;
use crate::ringcentral::RingCentral;
use crate::routing::{OutboundMessage, Reconciled, RoutingTable, Topic};
use crate::shutdown::Shutdown;

/// List Extensions' page size: RingCentral's schema caps `perPage` at 1000; a server that pages
/// smaller is followed page by page all the same.
const PER_PAGE: u32 = 1000;
/// Extensions published per step: the fetch queue gets this many extensions' requests, then the
/// sweep waits for it to drain, so hints that arrive during a long snapshot wait behind at most
/// one step of it.
const STEP: usize = 20;
/// Fetch requests still queued below which the next step is published.
const QUEUE_LOW: i64 = 50;
/// Attempts at a list or account call that fails for another reason than rate limits.
const ATTEMPTS: u32 = 5;

/// Why a sweep runs: a bounded label for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// No sweep ran yet: the initial snapshot.
    Snapshot,
    Interval,
    /// SIGUSR1, or `state reconcile`.
    Requested,
    /// The keeper recreated the subscription (blacklisted, expired, gone): events were lost.
    SubscriptionGap,
    /// The last sweep was cut short (SIGKILL, a lost leadership): run again.
    Resumed,
}

impl Cause {
    pub fn from_label(label: &str) -> Option<Cause> {
        [
            Cause::Snapshot,
            Cause::Interval,
            Cause::Requested,
            Cause::SubscriptionGap,
            Cause::Resumed,
        ]
        .into_iter()
        .find(|c| c.label() == label)
    }

    pub fn label(self) -> &'static str {
        match self {
            Cause::Snapshot => "snapshot",
            Cause::Interval => "interval",
            Cause::Requested => "requested",
            Cause::SubscriptionGap => "subscription_gap",
            Cause::Resumed => "resumed",
        }
    }
}

/// What one sweep found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// No sweep had run: the initial snapshot.
    pub snapshot: bool,
    pub listed: usize,
    pub new: usize,
    pub changed: usize,
    pub gone: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("cannot read the state index: {0}")]
    Index(String),
    #[error("RingCentral: {0}")]
    RingCentral(String),
    #[error("stopped by the shutdown")]
    Stopped,
}

/// One extension's difference between the index and the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    New {
        id: String,
        digest: String,
    },
    Changed {
        id: String,
        digest: String,
    },
    /// Indexed, or holding state records, and no longer listed. `held`: the state topics that hold
    /// a record for it (none known: an index written before holdings were recorded).
    Gone {
        id: String,
        held: BTreeSet<String>,
    },
}

/// What differs between the index as read and `listed` (extension id to the digest of its listed
/// record), in extension id order; unchanged extensions are not in it.
pub fn differences(read: &index::Read, listed: &BTreeMap<String, String>) -> Vec<Difference> {
    let index = &read.index;
    let mut found = Vec::new();
    for (id, digest) in listed {
        match index.get(id) {
            None => found.push(Difference::New {
                id: id.clone(),
                digest: digest.clone(),
            }),
            Some(entry) if entry.digest != *digest => found.push(Difference::Changed {
                id: id.clone(),
                digest: digest.clone(),
            }),
            Some(_) => {}
        }
    }
    let known: BTreeSet<&String> = index.keys().chain(read.holdings.keys()).collect();
    for id in known.into_iter().filter(|id| !listed.contains_key(*id)) {
        found.push(Difference::Gone {
            id: id.clone(),
            held: read.holdings.get(id).cloned().unwrap_or_default(),
        });
    }
    found.sort_by(|a, b| a.id().cmp(b.id()));
    found
}

impl Difference {
    pub fn id(&self) -> &str {
        match self {
            Difference::New { id, .. }
            | Difference::Changed { id, .. }
            | Difference::Gone { id, .. } => id,
        }
    }
}

impl Swept {
    fn failed(cause: Cause, error: SweepError) -> Swept {
        Swept {
            cause,
            outcome: Err(error),
        }
    }
}

/// What sweeps need; one sweep at a time.
pub struct Sweeper {
    pub client: Arc<RingCentral>,
    pub limiter: Arc<RateLimiter>,
    /// For the synthetic messages' topics.
    pub routing: RoutingTable,
    /// The routing's state part: the fetch table and the internal topics.
    pub state: StateRouting,
    pub publisher: Publisher<KafkaProducer>,
    /// For reading the index and the fetch queue's length.
    pub consumer_config: ClientConfig,
    pub metrics: Metrics,
    /// Whether to wait for the fetch queue between steps (hint-driven fetches first). Off for
    /// `state reconcile`, which runs while no fetcher may be running.
    pub pace: bool,
}

/// A sweep's outcome, and the cause it ran as: the initial snapshot when one was due, whatever the
/// sweep was asked for.
pub struct Swept {
    pub cause: Cause,
    pub outcome: Result<Report, SweepError>,
}

impl Sweeper {
    /// Runs one sweep.
    pub async fn sweep(&self, asked: Cause, shutdown: &Shutdown) -> Swept {
        let (config, topic) = (self.consumer_config.clone(), self.state.index_topic.clone());
        let read = match tokio::task::spawn_blocking(move || index::read(&config, &topic)).await {
            Ok(Ok(read)) => read,
            Ok(Err(e)) => return Swept::failed(asked, SweepError::Index(e.to_string())),
            Err(e) => return Swept::failed(asked, SweepError::Index(e.to_string())),
        };
        let cause = if read.snapshot_due() {
            Cause::Snapshot
        } else {
            asked
        };
        Swept {
            cause,
            outcome: self.sweep_with(read, cause, shutdown).await,
        }
    }

    /// Runs one sweep against the index as read.
    async fn sweep_with(
        &self,
        read: index::Read,
        cause: Cause,
        shutdown: &Shutdown,
    ) -> Result<Report, SweepError> {
        let state = &self.state;
        let started = Instant::now();
        let sweep_id = sweep_id();
        let resumed = read.interrupted().cloned();
        let snapshot = cause == Cause::Snapshot;
        tracing::info!(sweep = %sweep_id, cause = cause.label(), indexed = read.index.len(),
            resumes = resumed.as_ref().map(|m| m.sweep.as_str()), "reconciliation sweep started");
        let mark = |finished| SweepMark {
            sweep: sweep_id.clone(),
            cause: cause.label().to_string(),
            finished,
        };
        self.publish(&[mark(false).message(&state.index_topic)], shutdown)
            .await?;
        let account = self.account_id(shutdown).await?;
        let listed = self.list(shutdown).await?;
        let differences = differences(&read, &listed);
        let report = Report {
            snapshot,
            listed: listed.len(),
            ..count(&differences)
        };
        self.log_cost(&sweep_id, &report);
        self.metrics.state_sweep_listed.set(listed.len() as i64);
        for (n, step) in differences.chunks(STEP).enumerate() {
            if self.pace {
                self.wait_for_the_queue(shutdown).await?;
            }
            self.repair(step, snapshot, &sweep_id, &account, shutdown)
                .await?;
            let done = ((n + 1) * STEP).min(differences.len());
            let ratio = done as f64 / differences.len() as f64;
            let before = (n * STEP) as f64 / differences.len() as f64;
            if (ratio * 10.0).floor() > (before * 10.0).floor() {
                tracing::info!(sweep = %sweep_id, done, of = differences.len(),
                    "reconciliation: repairs queued");
            }
            self.metrics.state_sweep_progress.set(ratio);
        }
        self.publish(&[mark(true).message(&state.index_topic)], shutdown)
            .await?;
        self.metrics.state_sweep_progress.set(1.0);
        for (kind, n) in [
            ("new", report.new),
            ("changed", report.changed),
            ("gone", report.gone),
        ] {
            self.metrics
                .state_sweep_differences
                .with_label_values(&[kind])
                .inc_by(n as u64);
        }
        self.metrics
            .state_sweep_duration
            .observe(started.elapsed().as_secs_f64());
        tracing::info!(sweep = %sweep_id, cause = cause.label(), listed = report.listed,
            new = report.new, changed = report.changed, gone = report.gone,
            seconds = started.elapsed().as_secs(), "reconciliation sweep done");
        Ok(report)
    }

    /// The account's id, for the synthetic messages and the resource paths.
    async fn account_id(&self, shutdown: &Shutdown) -> Result<String, SweepError> {
        let account = self
            .get("/restapi/v1.0/account/~", RateGroup::Light, false, shutdown)
            .await?;
        match &account["id"] {
            Value::Number(n) => Ok(n.to_string()),
            Value::String(s) => Ok(s.clone()),
            _ => Err(SweepError::RingCentral("the account has no id".into())),
        }
    }

    /// Every extension, all pages: id to the digest of its record.
    async fn list(&self, shutdown: &Shutdown) -> Result<BTreeMap<String, String>, SweepError> {
        let path = format!("/restapi/v1.0/account/~/extension?perPage={PER_PAGE}");
        let list = self.get(&path, RateGroup::Medium, true, shutdown).await?;
        let records = list["records"].as_array().cloned().unwrap_or_default();
        let mut listed = BTreeMap::new();
        for record in &records {
            let id = match &record["id"] {
                Value::Number(n) => n.to_string(),
                Value::String(s) => s.clone(),
                _ => continue,
            };
            if crate::notification::is_resource_id(&id) {
                listed.insert(id, index::digest(record));
            }
        }
        Ok(listed)
    }

    /// One GET (all pages) through the rate limiter: a 429 waits, other failures are retried a few
    /// times.
    async fn get(
        &self,
        path: &str,
        group: RateGroup,
        paged: bool,
        shutdown: &Shutdown,
    ) -> Result<Value, SweepError> {
        let resource = Resource {
            key: ResourceKey {
                topic: Topic::parse("sweep").expect("a valid topic name"),
                key: String::new(),
            },
            scope: KeyScope::Account,
            path: path.to_string(),
            group,
            paged,
        };
        let mut failures = 0;
        loop {
            let mut stopping = shutdown.clone();
            let outcome = tokio::select! {
                outcome = fetch(&self.client, &self.limiter, &resource) => outcome,
                _ = stopping.begun() => return Err(SweepError::Stopped),
            };
            let wait = match outcome {
                FetchOutcome::State(body) => {
                    return serde_json::from_slice(&body)
                        .map_err(|e| SweepError::RingCentral(format!("GET {path}: {e}")));
                }
                FetchOutcome::RateLimited(pause) => {
                    self.metrics
                        .state_rate_limit_pauses
                        .with_label_values(&[group.label()])
                        .inc();
                    pause
                }
                FetchOutcome::Unauthorized => {
                    return Err(SweepError::RingCentral(
                        "RingCentral refuses the bridge's credentials".into(),
                    ));
                }
                FetchOutcome::Gone => {
                    return Err(SweepError::RingCentral(format!("GET {path}: 404")));
                }
                FetchOutcome::Retry(e) if e.kind.is_refusal() => {
                    return Err(SweepError::RingCentral(format!(
                        "GET {path}: {}",
                        e.message
                    )));
                }
                FetchOutcome::Retry(e) => {
                    failures += 1;
                    if failures >= ATTEMPTS {
                        return Err(SweepError::RingCentral(e.message));
                    }
                    tracing::warn!(path, error = %e.message, "sweep: GET failed; retrying");
                    Duration::from_secs(1 << failures)
                }
            };
            let mut stopping = shutdown.clone();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stopping.begun() => return Err(SweepError::Stopped),
            }
        }
    }

    /// The API calls the differences will cost, and how long at the current budgets: logged before
    /// anything is queued.
    fn log_cost(&self, sweep_id: &str, report: &Report) {
        let state = &self.state;
        let fetched = report.new + report.changed;
        let mut calls: BTreeMap<RateGroup, usize> = BTreeMap::new();
        for topic in state.fetches.per_extension_topics() {
            if let Some(fetch) = state.fetches.by_topic(&topic) {
                *calls.entry(fetch.group).or_default() += fetched;
            }
        }
        let minutes = calls
            .iter()
            .map(|(group, n)| {
                let budget = self.limiter.budget(*group);
                *n as f64 / f64::from(budget.requests.max(1)) * budget.window.as_secs_f64() / 60.0
            })
            .fold(0.0, f64::max);
        let per_group: Vec<String> = calls
            .iter()
            .map(|(g, n)| format!("{}={n}", g.label()))
            .collect();
        tracing::info!(sweep = %sweep_id, listed = report.listed, differ = fetched + report.gone,
            calls = %per_group.join(" "), minutes = format!("{minutes:.1}").as_str(),
            "reconciliation: fetches to queue, and how long they take at the current budgets");
    }

    /// Publishes the repairs of `step` and then, once Kafka acknowledged them, their index entries.
    async fn repair(
        &self,
        step: &[Difference],
        snapshot: bool,
        sweep_id: &str,
        account: &str,
        shutdown: &Shutdown,
    ) -> Result<(), SweepError> {
        let state = &self.state;
        let at = now();
        let mut repairs = Vec::new();
        let mut entries = Vec::new();
        for difference in step {
            match difference {
                Difference::New { id, digest } | Difference::Changed { id, digest } => {
                    let cause = format!("{sweep_id}:{id}:Reconciled");
                    let mut seen = std::collections::HashSet::new();
                    for topic in state.fetches.per_extension_topics() {
                        let Some(fetch) = state.fetches.by_topic(&topic) else {
                            continue;
                        };
                        let Ok(resource) = fetch.resource(account, id) else {
                            continue;
                        };
                        if seen.insert(resource.key.clone()) {
                            let request = Request::fetch(&resource, cause.clone(), &at);
                            repairs.push(request.message(&state.requests_topic));
                        }
                    }
                    // The initial snapshot fills the state topics; nothing was missed yet.
                    if !snapshot {
                        repairs.push(self.routing.reconciled_message(
                            Reconciled::Changed,
                            sweep_id,
                            account,
                            id,
                            &at,
                        ));
                    }
                    let entry = Entry {
                        digest: digest.clone(),
                        sweep: sweep_id.to_string(),
                    };
                    entries.push(index::entry_message(&state.index_topic, id, Some(&entry)));
                }
                Difference::Gone { id, held } => {
                    let cause = format!("{sweep_id}:{id}:Delete");
                    // Tombstones where the extension has records; everywhere it could have, when
                    // the index does not say.
                    let topics: Vec<Topic> = if held.is_empty() {
                        state.fetches.per_extension_topics()
                    } else {
                        held.iter().filter_map(|t| Topic::parse(t).ok()).collect()
                    };
                    let request = Request::delete(id, &topics, cause, &at);
                    repairs.push(request.message(&state.requests_topic));
                    repairs.push(self.routing.reconciled_message(
                        Reconciled::Gone,
                        sweep_id,
                        account,
                        id,
                        &at,
                    ));
                    entries.push(index::entry_message(&state.index_topic, id, None));
                    entries.extend(
                        topics.iter().map(|topic| {
                            index::holding_message(&state.index_topic, id, topic, None)
                        }),
                    );
                }
            }
        }
        self.publish(&repairs, shutdown).await?;
        self.publish(&entries, shutdown).await
    }

    /// Publishes until Kafka acknowledged every message; a message refused for good is logged and
    /// skipped (its extension differs again at the next sweep only if its index entry was refused).
    pub async fn publish(
        &self,
        messages: &[OutboundMessage],
        shutdown: &Shutdown,
    ) -> Result<(), SweepError> {
        let mut unsent: Vec<&OutboundMessage> = messages.iter().collect();
        let mut backoff = Duration::from_millis(200);
        while !unsent.is_empty() {
            let mut failed = Vec::new();
            let mut pending = Vec::new();
            for &message in &unsent {
                match self.publisher.enqueue(message) {
                    Ok(p) => pending.push(p),
                    Err(_) => failed.push(message),
                }
            }
            for p in pending {
                let message = p.message;
                match self.publisher.acknowledged(p).await {
                    Ok(()) => {}
                    Err(e) if e.kind.is_permanent() => {
                        tracing::error!(topic = %message.topic, key = %message.key, error = %e,
                            "sweep: Kafka refused a message for good; skipped");
                    }
                    Err(_) => failed.push(message),
                }
            }
            unsent = failed;
            if unsent.is_empty() {
                break;
            }
            let mut stopping = shutdown.clone();
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stopping.begun() => return Err(SweepError::Stopped),
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        Ok(())
    }

    /// Waits until the fetch queue is short: hint-driven fetches go first.
    async fn wait_for_the_queue(&self, shutdown: &Shutdown) -> Result<(), SweepError> {
        let state = &self.state;
        loop {
            let (config, topic, group) = (
                self.consumer_config.clone(),
                state.requests_topic.clone(),
                state.fetcher_group.clone(),
            );
            let queued =
                tokio::task::spawn_blocking(move || super::queue::length(&config, &topic, &group))
                    .await
                    .ok()
                    .and_then(Result::ok);
            match queued {
                Some(n) if n >= QUEUE_LOW => {}
                // Unknown (Kafka slow to answer): go on; the fetchers take requests in order anyway.
                _ => return Ok(()),
            }
            let mut stopping = shutdown.clone();
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = stopping.begun() => return Err(SweepError::Stopped),
            }
        }
    }
}

fn count(differences: &[Difference]) -> Report {
    let mut report = Report::default();
    for difference in differences {
        match difference {
            Difference::New { .. } => report.new += 1,
            Difference::Changed { .. } => report.changed += 1,
            Difference::Gone { .. } => report.gone += 1,
        }
    }
    report
}

/// A sweep's id: when it started, and a random suffix so that two sweeps in one second differ.
fn sweep_id() -> String {
    let mut random = [0u8; 4];
    let _ = getrandom::fill(&mut random);
    let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let at = time::OffsetDateTime::now_utc().unix_timestamp();
    format!("sweep-{at}-{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::index::Index;

    fn entry(digest: &str) -> Entry {
        Entry {
            digest: digest.into(),
            sweep: "s0".into(),
        }
    }

    #[test]
    fn differences_are_new_changed_and_gone_and_nothing_else() {
        let index: Index = [("1", "a"), ("2", "b"), ("3", "c")]
            .into_iter()
            .map(|(id, d)| (id.to_string(), entry(d)))
            .collect();
        let read = index::Read {
            index: index.clone(),
            ..Default::default()
        };
        let listed: BTreeMap<String, String> = [("1", "a"), ("2", "B"), ("4", "d")]
            .into_iter()
            .map(|(id, d)| (id.to_string(), d.to_string()))
            .collect();
        assert_eq!(
            differences(&read, &listed),
            vec![
                Difference::Changed {
                    id: "2".into(),
                    digest: "B".into()
                },
                Difference::Gone {
                    id: "3".into(),
                    held: BTreeSet::new()
                },
                Difference::New {
                    id: "4".into(),
                    digest: "d".into()
                },
            ]
        );
        let same: BTreeMap<String, String> = index
            .iter()
            .map(|(id, e)| (id.clone(), e.digest.clone()))
            .collect();
        assert!(differences(&read, &same).is_empty());
    }

    #[test]
    fn an_extension_gone_leaves_tombstones_where_it_holds_records() {
        let mut read = index::Read::default();
        read.index.insert("1".into(), entry("a"));
        read.holdings
            .insert("1".into(), BTreeSet::from(["t.a".to_string()]));
        // Records, but no entry (its extension record was never fetched): gone all the same.
        read.holdings
            .insert("2".into(), BTreeSet::from(["t.b".to_string()]));
        read.holdings
            .insert("3".into(), BTreeSet::from(["t.c".to_string()]));
        let listed: BTreeMap<String, String> = [("3".to_string(), "c".to_string())].into();
        assert_eq!(
            differences(&read, &listed),
            vec![
                Difference::Gone {
                    id: "1".into(),
                    held: BTreeSet::from(["t.a".to_string()])
                },
                Difference::Gone {
                    id: "2".into(),
                    held: BTreeSet::from(["t.b".to_string()])
                },
                Difference::New {
                    id: "3".into(),
                    digest: "c".into()
                },
            ]
        );
    }
}
