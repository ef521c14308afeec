//! The relay: publishes spooled plans to Kafka in spool order and releases an entry only once Kafka
//! acknowledged every message planned from it.
//!
//! It works in rounds: take the oldest entries, enqueue all their messages (the idempotent producer
//! keeps each partition in order), await every acknowledgement, release the entries that are done.
//! An entry with a retriable failure stays, and the next round starts again from the oldest entry,
//! so order per extension holds and delivery is at-least-once. A message Kafka rejects for good goes
//! to the dead-letter topic, or to the spool's dead-letter area if that fails too, so it never blocks
//! the rest. A producer in a fatal state (for instance after the broker lost its producer ids) is
//! replaced by a new one.
//!
//! On shutdown the relay publishes until the grace deadline; a round still waiting on Kafka then is
//! cut: entries Kafka acknowledged whole are released, the rest stay in the spool for the next start.

use std::future::{Future, pending};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::kafka::{self, ErrorKind, KafkaProducer, ProducerFactory};
use crate::metrics::Metrics;
use crate::routing::{OutboundMessage, Topic};
use crate::spool::{DeadLetter, Spool, SpooledEntry};

/// Entries taken per round: large enough to keep the producer's batches full.
const ROUND_ENTRIES: usize = 2048;
/// And at most this many bytes of messages per round, so a backlog of large notifications does not
/// hold hundreds of megabytes in memory at once.
const ROUND_BYTES: usize = 4 << 20;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Consecutive failed rounds after which the producer is replaced even without a fatal error:
/// an idempotent producer whose broker lost its state can stall without ever reporting one.
const ROUNDS_BEFORE_NEW_PRODUCER: u32 = 2;

pub struct Relay {
    stop: watch::Sender<Option<Instant>>,
    task: JoinHandle<()>,
}

impl Relay {
    pub fn start(
        spool: Arc<Spool>,
        factory: ProducerFactory,
        dead_letter_topic: Topic,
        metrics: Metrics,
    ) -> Result<Relay, rdkafka::error::KafkaError> {
        let producer = factory.build()?;
        let (stop, stop_rx) = watch::channel(None);
        let worker = Worker {
            spool,
            factory,
            producer,
            dead_letter_topic,
            metrics,
            stop: stop_rx,
        };
        Ok(Relay {
            stop,
            task: tokio::spawn(worker.run()),
        })
    }

    /// Lets the relay publish what it can until `deadline`, then flushes and stops it.
    pub async fn stop(self, deadline: Instant) {
        let _ = self.stop.send(Some(deadline));
        let _ = self.task.await;
    }
}

struct Worker {
    spool: Arc<Spool>,
    factory: ProducerFactory,
    producer: KafkaProducer,
    dead_letter_topic: Topic,
    metrics: Metrics,
    stop: watch::Receiver<Option<Instant>>,
}

/// The outcome of one round.
#[derive(Default)]
struct Round {
    released: Vec<u64>,
    dead: Vec<DeadLetter>,
    retriable_failure: bool,
    fatal: bool,
    /// Shutdown's deadline passed while the round waited on Kafka.
    cut: bool,
}

/// Shutdown's deadline, for a round waiting on Kafka.
struct Cut {
    stop: watch::Receiver<Option<Instant>>,
    passed: bool,
}

impl Cut {
    /// `work`'s outcome, or `None` once the deadline has passed.
    async fn before<F: Future>(&mut self, work: F) -> Option<F::Output> {
        if self.passed {
            return None;
        }
        tokio::select! {
            biased;
            outcome = work => Some(outcome),
            () = deadline_passed(&mut self.stop) => {
                self.passed = true;
                None
            }
        }
    }
}

async fn deadline_passed(stop: &mut watch::Receiver<Option<Instant>>) {
    loop {
        let deadline = *stop.borrow_and_update();
        if let Some(deadline) = deadline {
            return tokio::time::sleep_until(deadline.into()).await;
        }
        if stop.changed().await.is_err() {
            // The relay was dropped without being stopped: no deadline will come.
            return pending().await;
        }
    }
}

impl Worker {
    async fn run(mut self) {
        let mut backoff = MIN_BACKOFF;
        let mut failed_rounds = 0u32;
        loop {
            let deadline = *self.stop.borrow();
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            let spool = self.spool.clone();
            let batch =
                match tokio::task::spawn_blocking(move || spool.oldest(ROUND_ENTRIES, ROUND_BYTES))
                    .await
                {
                    Ok(Ok(batch)) => batch,
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "cannot read the spool");
                        self.pause(MAX_BACKOFF).await;
                        continue;
                    }
                    Err(_) => break,
                };
            self.spool.observe_oldest(batch.first());
            if batch.is_empty() {
                if deadline.is_some() {
                    break;
                }
                tokio::select! {
                    _ = self.spool.appended() => {}
                    _ = self.stop.changed() => {}
                    // The age gauge and a missed wake-up are both covered by a periodic look.
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }

            let round = self.publish(&batch).await;
            let failed = round.retriable_failure;
            let fatal = round.fatal;
            let cut = round.cut;
            let something_done = !round.released.is_empty() || !round.dead.is_empty();
            if something_done && let Err(e) = self.spool.release(round.released, round.dead).await {
                // Not released means published again later: a duplicate, never a loss.
                tracing::error!(error = %e, "cannot release published entries");
            }
            if cut {
                tracing::warn!(
                    "shutdown deadline reached while Kafka had not acknowledged everything; the rest stays in the spool"
                );
                break;
            }
            if failed {
                failed_rounds += 1;
                if fatal || failed_rounds >= ROUNDS_BEFORE_NEW_PRODUCER {
                    self.renew_producer();
                    failed_rounds = 0;
                }
                self.pause(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            } else {
                failed_rounds = 0;
                backoff = MIN_BACKOFF;
            }
        }
        let remaining = self
            .stop
            .borrow()
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or_default();
        let _ = kafka::flush(&self.producer, remaining.max(Duration::from_millis(100)));
        tracing::info!(left_in_spool = self.spool.entries(), "relay stopped");
    }

    async fn pause(&mut self, duration: Duration) {
        let mut until = Instant::now() + duration;
        if let Some(deadline) = *self.stop.borrow() {
            until = until.min(deadline);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(until.into()) => {}
            _ = self.stop.changed() => {}
        }
    }

    fn renew_producer(&mut self) {
        match self.factory.build() {
            Ok(producer) => {
                tracing::warn!("replacing the Kafka producer after repeated failures");
                self.producer = producer;
            }
            Err(e) => tracing::error!(error = %e, "cannot build a new Kafka producer"),
        }
    }

    /// Publishes every message of `batch` and reports what can be released.
    async fn publish(&self, batch: &[SpooledEntry]) -> Round {
        let mut round = Round::default();
        let mut cut = Cut {
            stop: self.stop.clone(),
            passed: false,
        };
        let mut pending = Vec::with_capacity(batch.len());
        'enqueue: for entry in batch {
            let mut deliveries = Vec::with_capacity(entry.plan.messages.len());
            for message in &entry.plan.messages {
                match kafka::send(&self.producer, message) {
                    Ok(delivery) => deliveries.push((message, Ok(delivery))),
                    Err(e) if e.kind.is_permanent() => deliveries.push((message, Err(e))),
                    Err(e) => {
                        // Queue full or worse: publish what is queued; the rest waits for a later round.
                        self.metrics
                            .publish_errors
                            .with_label_values(&[e.kind.label()])
                            .inc();
                        round.retriable_failure = true;
                        round.fatal |= e.kind == ErrorKind::Fatal;
                        for (_, delivery) in deliveries {
                            if let Ok(delivery) = delivery {
                                let _ = cut.before(kafka::delivered(delivery)).await;
                            }
                        }
                        break 'enqueue;
                    }
                }
            }
            pending.push((entry, deliveries));
        }

        let mut rejected: Vec<(&SpooledEntry, &OutboundMessage, ErrorKind)> = Vec::new();
        'await_acks: for (entry, deliveries) in pending {
            let mut complete = true;
            for (message, delivery) in deliveries {
                let result = match delivery {
                    Ok(delivery) => match cut.before(kafka::delivered(delivery)).await {
                        Some(result) => result,
                        None => break 'await_acks,
                    },
                    Err(e) => Err(e),
                };
                match result {
                    Ok(()) => {
                        self.metrics
                            .messages_published
                            .with_label_values(&[&message.topic, &message.hint_label])
                            .inc();
                    }
                    Err(e) => {
                        self.metrics
                            .publish_errors
                            .with_label_values(&[e.kind.label()])
                            .inc();
                        if e.kind.is_permanent() {
                            rejected.push((entry, message, e.kind));
                        } else {
                            complete = false;
                            round.retriable_failure = true;
                            round.fatal |= e.kind == ErrorKind::Fatal;
                            tracing::warn!(uuid = %entry.plan.uuid, topic = %message.topic,
                                error = %e.error, "publish failed; will retry");
                        }
                    }
                }
            }
            if complete {
                round.released.push(entry.seq);
                self.metrics
                    .accept_to_ack
                    .observe(entry.age().as_secs_f64());
            }
        }

        // Only entries being released dead-letter their rejected messages; the others retry whole.
        for (entry, message, kind) in rejected {
            if !round.released.contains(&entry.seq) {
                continue;
            }
            round
                .dead
                .extend(self.dead_letter(entry, message, kind, &mut cut).await);
        }
        round.cut = cut.passed;
        round
    }

    /// Sends a rejected message to the dead-letter topic; returns it for the spool if that fails
    /// too, or if shutdown's deadline passes first.
    async fn dead_letter(
        &self,
        entry: &SpooledEntry,
        message: &OutboundMessage,
        kind: ErrorKind,
        cut: &mut Cut,
    ) -> Option<DeadLetter> {
        tracing::error!(uuid = %entry.plan.uuid, topic = %message.topic, reason = kind.label(),
            "Kafka rejected a message for good; dead-lettering it");
        let mut letter = message.clone();
        letter.topic = self.dead_letter_topic.to_string();
        letter
            .headers
            .push(("rc-original-topic".into(), message.topic.clone()));
        letter
            .headers
            .push(("rc-dead-letter-reason".into(), kind.label().into()));
        let sent = match kafka::send(&self.producer, &letter) {
            Ok(delivery) => cut.before(kafka::delivered(delivery)).await,
            Err(e) => Some(Err(e)),
        };
        let sent = match sent {
            Some(sent) => sent,
            None => {
                tracing::warn!(uuid = %entry.plan.uuid,
                    "shutting down before the dead-letter topic acknowledged; keeping the message in the spool");
                self.metrics
                    .dead_letters
                    .with_label_values(&["spool"])
                    .inc();
                return Some(DeadLetter {
                    reason: kind.label().into(),
                    message: message.clone(),
                });
            }
        };
        match sent {
            Ok(()) => {
                self.metrics
                    .dead_letters
                    .with_label_values(&["topic"])
                    .inc();
                None
            }
            Err(e) => {
                tracing::error!(uuid = %entry.plan.uuid, error = %e.error,
                    "dead-letter topic refused the message too; keeping it in the spool");
                self.metrics
                    .dead_letters
                    .with_label_values(&["spool"])
                    .inc();
                Some(DeadLetter {
                    reason: kind.label().into(),
                    message: message.clone(),
                })
            }
        }
    }
}

/// What [`replay_dead_letters`] did.
#[derive(Debug, Default)]
pub struct ReplayReport {
    /// Dead letters Kafka acknowledged on their original topic, now gone from the spool.
    pub replayed: u64,
    /// Those refused again, which stay in the spool: topic, notification uuid and error of each.
    pub failed: Vec<String>,
}

/// Publishes the spool's dead letters back to their original topics, as they were first sent, and
/// removes each from the spool once Kafka acknowledged it; a refused one stays for another try.
pub async fn replay_dead_letters(
    spool: &Spool,
    producer: &KafkaProducer,
) -> Result<ReplayReport, crate::spool::SpoolError> {
    const PAGE: usize = 256;
    let mut report = ReplayReport::default();
    let mut from = 0;
    loop {
        let page = spool.dead_letters_from(from, PAGE)?;
        let Some(&(last, _)) = page.last() else {
            break;
        };
        from = last + 1;
        let sent: Vec<_> = page
            .iter()
            .map(|(id, letter)| (*id, letter, kafka::send(producer, &letter.message)))
            .collect();
        let mut acknowledged = Vec::with_capacity(sent.len());
        for (id, letter, delivery) in sent {
            let result = match delivery {
                Ok(delivery) => kafka::delivered(delivery).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => acknowledged.push(id),
                Err(e) => report.failed.push(format!(
                    "{} (notification {}): {}",
                    letter.message.topic,
                    letter.message.header("rc-notification-uuid").unwrap_or("?"),
                    e
                )),
            }
        }
        report.replayed += acknowledged.len() as u64;
        if !acknowledged.is_empty() {
            spool.forget_dead_letters(acknowledged).await?;
        }
    }
    Ok(report)
}
