//! When sweeps run, and where: one replica at a time, elected by Kafka's group membership. Every
//! replica joins the sweepers' consumer group on the index topic, which has one partition; the
//! member that owns it runs the sweeps. It sweeps at once when no sweep ever ran (the initial
//! snapshot), every `--state-reconcile-interval`, on SIGUSR1, and after the keeper recreated the
//! subscription (the gap in which RingCentral sent nothing). One sweep at a time: a request that
//! arrives during a sweep runs one more sweep after it.

use std::pin::pin;
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::index;
use super::sweep::{Cause, Sweeper};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// The first wait before a failed sweep is tried again, and the longest (the wait doubles). A
/// failed sweep cost at most a few calls (the account, a list page), so trying again soon is cheap,
/// and a failed snapshot leaves the state topics empty until it succeeds.
const RETRY: Duration = Duration::from_secs(15);
const RETRY_MAX: Duration = Duration::from_secs(3600);
/// How long leadership must stay lost before a running sweep is given up: longer than the
/// sessions' timeout (10 s), so that a rebalance that hands the partition back does not cut it.
const LEADERSHIP_GRACE: Duration = Duration::from_secs(15);

/// The election's consumer context: whether this replica owns the index topic's partition.
pub struct Election {
    leader: watch::Sender<bool>,
    metrics: Metrics,
}

impl ClientContext for Election {}

impl ConsumerContext for Election {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, _: &Rebalance<'_>) {
        let owns = consumer.assignment().is_ok_and(|a| a.count() > 0);
        self.leader
            .send_if_modified(|leader| std::mem::replace(leader, owns) != owns);
        self.metrics.state_sweeper.set(i64::from(owns));
    }
}

/// Asks the running reconciler for a sweep.
#[derive(Clone)]
pub struct SweepRequests(mpsc::UnboundedSender<Cause>);

impl SweepRequests {
    pub fn request(&self, cause: Cause) {
        let _ = self.0.send(cause);
    }
}

pub struct Reconciler {
    sweeper: Sweeper,
    election: StreamConsumer<Election>,
    /// Whether this replica owns the index partition; changes when a rebalance says so.
    leader: watch::Receiver<bool>,
    interval: Option<Duration>,
    requests: mpsc::UnboundedReceiver<Cause>,
    /// Queues a request that arrived during a sweep.
    again: mpsc::UnboundedSender<Cause>,
    consumer_config: ClientConfig,
}

impl Reconciler {
    /// Joins the sweepers' group; [`Reconciler::run`] sweeps when this replica is elected.
    pub fn new(
        sweeper: Sweeper,
        interval: Duration,
        metrics: Metrics,
    ) -> Result<(Reconciler, SweepRequests), KafkaError> {
        let state = &sweeper.state;
        let (leader_tx, leader) = watch::channel(false);
        let consumer_config = sweeper.consumer_config.clone();
        let election: StreamConsumer<Election> =
            crate::kafka::group_member_config(&consumer_config, &state.sweeper_group)
                .set("auto.offset.reset", "latest")
                // Sticky and incremental: a replica joining or leaving does not take the partition
                // from the sweeper, so the sweeper keeps sweeping through scale-outs.
                .set("partition.assignment.strategy", "cooperative-sticky")
                .create_with_context(Election {
                    leader: leader_tx,
                    metrics,
                })?;
        election.subscribe(&[state.index_topic.as_str()])?;
        let (tx, requests) = mpsc::unbounded_channel();
        let reconciler = Reconciler {
            sweeper,
            election,
            leader,
            interval: (!interval.is_zero()).then_some(interval),
            requests,
            again: tx.clone(),
            consumer_config,
        };
        Ok((reconciler, SweepRequests(tx)))
    }

    fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// Sweeps when due, while elected, until the shutdown begins.
    pub async fn run(mut self, shutdown: Shutdown) {
        let mut stopping = shutdown.clone();
        let mut was_leader = false;
        let mut pending: Option<Cause> = None;
        let mut next_interval: Option<Instant> = None;
        let mut retry = RETRY / 2;
        // What the next timed sweep is: the interval's, or a failed one's again.
        let mut due = Cause::Interval;
        loop {
            let at = next_interval.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
            tokio::select! {
                // Polling serves the group's rebalances, which decide the leader.
                received = self.election.recv() => {
                    if let Some(cause) = forwarded(received) {
                        pending = pending.or(Some(cause));
                    }
                }
                Some(cause) = self.requests.recv() => pending = pending.or(Some(cause)),
                _ = tokio::time::sleep_until(at), if next_interval.is_some() => {
                    pending = pending.or(Some(due));
                    next_interval = None;
                }
                _ = self.leader.changed() => {}
                _ = stopping.begun() => break,
            }
            let leader = self.is_leader();
            if leader && !was_leader {
                tracing::info!("this replica runs the reconciliation sweeps");
                next_interval = self.interval.map(|i| Instant::now() + i);
                if self.sweep_is_due().await {
                    // The sweep itself tells a snapshot from a resumed sweep.
                    pending = Some(Cause::Resumed);
                }
            }
            if !leader && was_leader {
                tracing::info!("another replica runs the reconciliation sweeps now");
                next_interval = None;
            }
            was_leader = leader;
            let Some(cause) = pending.take() else {
                continue;
            };
            if !leader {
                // Forwarded through the index topic, which the sweeper reads from its end.
                tracing::info!(
                    cause = cause.label(),
                    "a sweep is due; asking the replica that runs the sweeps"
                );
                let state = &self.sweeper.state;
                let request = index::sweep_request(&state.index_topic, cause);
                if let Err(e) = self.sweeper.publish(&[request], &shutdown).await {
                    tracing::warn!(error = %e, "cannot ask for a sweep");
                }
                continue;
            }
            match self.sweep(cause, &shutdown).await {
                "stopped" => break,
                "failed" => {
                    // RingCentral or Kafka unreachable: try again soon, not an interval later (a
                    // failed snapshot would leave the state topics empty for hours).
                    retry = (retry * 2).clamp(RETRY, RETRY_MAX);
                    tracing::info!(after = ?retry, "the sweep is tried again");
                    next_interval = Some(Instant::now() + retry);
                    due = cause;
                }
                _ => {
                    retry = RETRY / 2;
                    next_interval = self.interval.map(|i| Instant::now() + i);
                    due = Cause::Interval;
                }
            }
        }
        if !crate::kafka::leave_group(self.election).await {
            tracing::warn!("the sweepers' group member did not close in time; stopping without it");
        }
        tracing::info!("reconciler stopped");
    }

    /// Whether a sweep is due at once: none ever ran (the initial snapshot), or the last was cut
    /// short (it is run again; a snapshot stays one).
    async fn sweep_is_due(&self) -> bool {
        let state = &self.sweeper.state;
        let (config, topic) = (self.consumer_config.clone(), state.index_topic.clone());
        let read = tokio::task::spawn_blocking(move || index::read(&config, &topic)).await;
        match read {
            Ok(Ok(read)) => read.never_swept() || read.interrupted().is_some(),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the state index; the next sweep reads it again");
                false
            }
            Err(_) => false,
        }
    }

    /// One sweep, while the election goes on being polled; cut short if leadership is lost.
    /// Returns its outcome's label.
    async fn sweep(&mut self, cause: Cause, shutdown: &Shutdown) -> &'static str {
        let metrics = self.sweeper.metrics.clone();
        let outcome = {
            let mut sweep = pin!(self.sweeper.sweep(cause, shutdown));
            // A rebalance may take the partition away for a moment and give it back: only a loss
            // that lasts is one.
            let mut lost_until: Option<Instant> = None;
            loop {
                let grace_over = lost_until.unwrap_or_else(Instant::now);
                tokio::select! {
                    outcome = &mut sweep => break Some(outcome),
                    received = self.election.recv() => {
                        // One more sweep after this one.
                        if let Some(cause) = forwarded(received) {
                            let _ = self.again.send(cause);
                        }
                    }
                    _ = self.leader.changed() => {
                        lost_until = match *self.leader.borrow() {
                            true => None,
                            false => lost_until.or(Some(Instant::now() + LEADERSHIP_GRACE)),
                        };
                    }
                    _ = tokio::time::sleep_until(grace_over), if lost_until.is_some() => {
                        tracing::warn!("leadership lost during a sweep: the new leader sweeps");
                        break None;
                    }
                }
            }
        };
        let (label, cause) = match &outcome {
            Some(swept) => match &swept.outcome {
                Ok(_) => ("ok", swept.cause),
                Err(super::sweep::SweepError::Stopped) => ("stopped", swept.cause),
                Err(e) => {
                    tracing::error!(cause = swept.cause.label(), error = %e,
                        "reconciliation sweep failed; it is tried again soon");
                    ("failed", swept.cause)
                }
            },
            None => ("leadership_lost", cause),
        };
        metrics
            .state_sweeps
            .with_label_values(&[cause.label(), label])
            .inc();
        if label == "ok" {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            metrics.state_sweep_last_success.set(now as f64);
        }
        label
    }
}

/// A sweep another replica asked for through the index topic.
fn forwarded(received: Result<rdkafka::message::BorrowedMessage<'_>, KafkaError>) -> Option<Cause> {
    use rdkafka::Message;
    let message = received.ok()?;
    if message.key() != Some(index::SWEEP_REQUEST_KEY.as_bytes()) {
        return None;
    }
    let label = std::str::from_utf8(message.payload()?).ok()?;
    Cause::from_label(label.trim_matches('"'))
}
