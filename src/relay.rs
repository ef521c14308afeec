//! The relay: publishes spooled plans to Kafka in spool order and releases an entry only once Kafka
//! acknowledged every message planned from it.
//!
//! It works in rounds: take the oldest entries, enqueue all their messages (the idempotent producer
//! keeps each partition in order), await every acknowledgement, release the entries that are done.
//! When the relay is behind (a round is full and as much again waits), rounds overlap by one: once
//! such a round is enqueued, the next is enqueued behind it while Kafka answers the first, so the
//! producer is not idle between rounds; the two count as one larger round for order and release. An
//! entry with a retriable failure stays, and the rounds start again from the oldest entry, so order
//! per extension holds and delivery is at-least-once. A message Kafka rejects for good goes to the
//! dead-letter topic, or to the spool's dead-letter area if that fails too, so it never blocks the
//! rest. A producer in a fatal state (for instance after the broker lost its producer ids) is
//! replaced by a new one.
//!
//! The entries it takes come from the spool writer's hand-off, in memory, once it has caught up; it
//! reads the database at start-up, after a round that did not release everything it took, and when
//! the hand-off overflowed (see `spool::handoff`). Either way it holds them as stored records and
//! reads each in place (`spool::record`): a message's fields are borrowed from the record, so a
//! backlog costs its stored size in memory, not a `String` per header. A round frees its records
//! once their messages are enqueued, as librdkafka holds its own copy of each until Kafka
//! answers; a message Kafka refuses for good is read back from the spool (its entry is not
//! released yet) to be dead-lettered.
//!
//! It runs on a thread of its own, on a single-threaded runtime, so the webhook's answers never
//! wait behind a round being enqueued or its acknowledgements being served. When it falls behind,
//! the backlog is the spool's, on disk (bounded by `--spool-max-bytes`): in memory it holds no more
//! than the hand-off and its rounds, whose bounds are below.
//!
//! On shutdown the relay publishes until the grace deadline; a round still waiting on Kafka then is
//! cut: entries Kafka acknowledged whole are released, the rest stay in the spool for the next start.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rdkafka::error::KafkaError;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::kafka::{ErrorKind, Pending, Producer, ProducerFactory, Publisher, RelayProducer};
use crate::metrics::Metrics;
use crate::routing::{Outbound, Topic};
use crate::shutdown::{self, Shutdown, Trigger};
use crate::spool::{DeadLetter, Handed, Spool, SpoolError, StoredEntry, StoredMessage, age_since};

/// Entries taken per round: large enough to keep the producer's batches full.
const ROUND_ENTRIES: usize = 2048;
/// And at most this many bytes of records per round, counted uncompressed. The relay holds the
/// round being enqueued and the round read ahead, compressed, and one record read at a time;
/// librdkafka holds its copies of the messages of up to two rounds in flight. At max load, rounds
/// of 1 MiB two at a time published more than rounds of 2 MiB one at a time and peaked 5 to 10 MiB
/// lower; rounds of 512 KiB two at a time fell behind.
const ROUND_BYTES: usize = 1 << 20;
/// A large backlog's rounds take half as much again: what two rounds in flight carry per round
/// trip to Kafka, when Kafka is slow to answer. With 1 MiB rounds throughout, a broker whose answers
/// slowed as it grew (Tansu holding 10 GB) fell ever further behind over a 10-minute soak at max
/// load; with 2 MiB rounds the relay kept up, but librdkafka's copies of two of them put the peak
/// over 64 MiB once the webhook accepted more than such a broker took. A spool of this many entries
/// is a backlog of seconds, which a broker's hiccup does not leave.
const BACKLOG_ROUND_BYTES: usize = 3 * ROUND_BYTES / 2;
/// Entries in the spool from which its rounds take [`BACKLOG_ROUND_BYTES`].
const BACKLOG_ENTRIES: u64 = 16 * ROUND_ENTRIES as u64;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Consecutive failed rounds after which the producer is replaced even without a fatal error:
/// an idempotent producer whose broker lost its state can stall without ever reporting one.
const ROUNDS_BEFORE_NEW_PRODUCER: u32 = 2;

/// Builds a producer: at start, and again after a fatal error or repeated failed rounds.
pub type ProducerSource<P> = Box<dyn Fn() -> Result<P, KafkaError> + Send + Sync>;

pub struct Relay {
    stop: Trigger,
    /// Told when the relay's thread is done: its producer flushed and dropped.
    stopped: oneshot::Receiver<()>,
}

/// Why the relay did not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayStartError {
    #[error("Kafka client: {0}")]
    Kafka(#[from] KafkaError),
    #[error("cannot start the relay's thread: {0}")]
    Thread(#[from] std::io::Error),
}

impl Relay {
    pub fn start(
        spool: Arc<Spool>,
        factory: ProducerFactory,
        dead_letter_topic: Topic,
        metrics: Metrics,
    ) -> Result<Relay, RelayStartError> {
        let source: ProducerSource<RelayProducer> = Box::new(move || factory.build_relay());
        Relay::start_with(spool, source, dead_letter_topic, metrics)
    }

    /// [`Relay::start`] with any producer: what the unit tests use.
    pub fn start_with<P: Producer>(
        spool: Arc<Spool>,
        source: ProducerSource<P>,
        dead_letter_topic: Topic,
        metrics: Metrics,
    ) -> Result<Relay, RelayStartError> {
        let publisher = Publisher::new(source()?, metrics.clone());
        let (stop, shutdown) = shutdown::channel();
        let worker = Worker {
            spool,
            source,
            publisher,
            dead_letter_topic,
            metrics,
            shutdown,
        };
        // Its own thread rather than a task on the server's workers: on one worker, every
        // answer due while a round was enqueued waited for it (see bench/HISTORY.md, "The relay on
        // a thread of its own").
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (done, stopped) = oneshot::channel();
        std::thread::Builder::new()
            .name("relay".into())
            .spawn(move || {
                runtime.block_on(worker.run());
                // Its read-ahead on the blocking pool finished too.
                drop(runtime);
                let _ = done.send(());
            })?;
        Ok(Relay { stop, stopped })
    }

    /// Lets the relay publish what it can until `deadline`, then flushes and stops it.
    pub async fn stop(self, deadline: Instant) {
        self.stop.begin(deadline);
        // An error: the thread ended without saying so (it panicked), which is as stopped.
        let _ = self.stopped.await;
    }
}

struct Worker<P: Producer> {
    spool: Arc<Spool>,
    source: ProducerSource<P>,
    publisher: Publisher<P>,
    dead_letter_topic: Topic,
    metrics: Metrics,
    shutdown: Shutdown,
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
    /// An entry of the round could not be read: neither it nor those after it were published.
    unreadable: bool,
}

impl Round {
    fn failed(&mut self, kind: ErrorKind) {
        self.retriable_failure = true;
        self.fatal |= kind == ErrorKind::Fatal;
    }

    /// Keeps the entry `seq` in the spool after all, failed as `kind`.
    fn hold(&mut self, seq: u64, kind: ErrorKind) {
        self.released.retain(|released| *released != seq);
        self.failed(kind);
    }
}

/// Whether the rounds stop after a round that came to `outcome`.
fn stop(outcome: Outcome, succeeded: &mut bool) -> Option<Stop> {
    match outcome {
        Outcome::Whole => {
            *succeeded = true;
            None
        }
        // Its release failed (the spool cannot be written now): the next round publishes its
        // entries again, after a pause, or a failing disk would have them published over and over.
        Outcome::Partly => Some(Stop::ReleaseFailed {
            after_success: *succeeded,
        }),
        Outcome::Failed { fatal } => Some(Stop::Failed {
            fatal,
            after_success: *succeeded,
        }),
        Outcome::Cut => Some(Stop::Shutdown),
        Outcome::Unreadable => Some(Stop::Unreadable),
    }
}

/// `outcome`, or [`Outcome::Partly`] in its place if the round before it was not released whole
/// (its entries are published again).
fn worse(earlier_released: bool, outcome: Outcome) -> Outcome {
    match outcome {
        Outcome::Whole if !earlier_released => Outcome::Partly,
        outcome => outcome,
    }
}

/// Shutdown's deadline, for a round waiting on Kafka.
struct Cut {
    shutdown: Shutdown,
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
            () = self.shutdown.deadline_passed() => {
                self.passed = true;
                None
            }
        }
    }
}

/// A read of the spool's database, running on a blocking thread.
type Read = JoinHandle<Result<Vec<StoredEntry>, SpoolError>>;

/// A read of the database started ahead of the round that needs it.
struct ReadAhead {
    from: u64,
    /// [`Spool::end`] before the read, as for any read of the database.
    end: u64,
    read: Read,
}

/// What a read found: `Err` when the spool cannot be read now, `None` when the runtime is shutting
/// down under the relay.
async fn read_batch(read: Read) -> Option<Result<Vec<StoredEntry>, ()>> {
    match read.await {
        Ok(Ok(batch)) => Some(Ok(batch)),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot read the spool");
            Some(Err(()))
        }
        Err(_) => None,
    }
}

/// An entry whose messages are enqueued: what its outcome needs once its record is freed.
/// librdkafka holds a copy of every message until Kafka answers, so a round that kept its records
/// too would hold them twice (up to two rounds in flight, of 1.5 MiB of records each in a backlog).
struct Enqueued<D> {
    seq: u64,
    uuid: Box<str>,
    accepted_at_ms: u64,
    messages: Vec<Pending<Sent, D>>,
}

/// What the relay keeps of an enqueued message.
struct Sent {
    /// Its place among its entry's messages: a message Kafka refuses for good is read back from
    /// the spool to be dead-lettered.
    index: usize,
    /// Its producer span, when traces are exported.
    span: Option<crate::otlp::Sending>,
}

/// Messages Kafka refused for good, of one entry being released: their places in its record.
struct Rejected {
    seq: u64,
    uuid: Box<str>,
    refused: Vec<(usize, ErrorKind)>,
}

/// Why [`Worker::publish_rounds`] returned.
enum Stop {
    /// Shutdown: its deadline passed, or the runtime is going away.
    Shutdown,
    /// A round failed; `after_success` if a round before it in this run of rounds did not.
    Failed { fatal: bool, after_success: bool },
    /// A round's release could not be committed; `after_success` as for [`Stop::Failed`].
    ReleaseFailed { after_success: bool },
    /// The spool cannot be read now.
    Unreadable,
}

/// A round being published. Once a round the relay is behind with is enqueued, the next round is
/// enqueued behind it while Kafka answers (pipelining), so the producer's batches keep flowing.
struct InFlight<'w> {
    progress: Progress<'w>,
    entries: usize,
    last: u64,
    /// When its first entry was accepted: the oldest in the spool once the rounds before it are
    /// released.
    first_accepted_at_ms: Option<u64>,
    /// The relay is behind: the round reached its cap and as much again waits after it, so the
    /// next round is published behind it.
    behind: bool,
    /// The release of the round before it, sent to the spool's writer: its commit runs while this
    /// round is enqueued, and what it came to is learnt when this round is finished.
    earlier: Option<Acknowledged>,
}

/// A round whose acknowledgements are all in, its release sent to the spool's writer.
struct Acknowledged {
    last: u64,
    /// Every entry of the round is to be released.
    whole: bool,
    failed: bool,
    fatal: bool,
    cut: bool,
    unreadable: bool,
    /// The commit of its release, when there was anything to release.
    release: Option<Commit>,
}

/// A release's commit, asked of the spool's writer.
type Commit = Pin<Box<dyn Future<Output = Result<(), SpoolError>> + Send>>;

impl Acknowledged {
    /// Comes to [`Outcome::Whole`] unless the commit of its release fails.
    fn whole_if_released(&self) -> bool {
        self.whole && !(self.failed || self.cut || self.unreadable)
    }

    /// What the round came to, once its release is committed; `next` moves past it if it was
    /// released whole.
    async fn outcome(self, next: &mut Option<u64>) -> Outcome {
        // Not released means published again later: a duplicate, never a loss.
        let released = match self.release {
            None => true,
            Some(release) => release
                .await
                .inspect_err(|e| tracing::error!(error = %e, "cannot release published entries"))
                .is_ok(),
        };
        if self.unreadable {
            *next = None;
            return Outcome::Unreadable;
        }
        *next = (self.whole && released).then_some(self.last + 1);
        if self.cut {
            tracing::warn!(
                "shutdown deadline reached while Kafka had not acknowledged everything; the rest stays in the spool"
            );
            Outcome::Cut
        } else if self.failed {
            Outcome::Failed { fatal: self.fatal }
        } else if self.whole && released {
            Outcome::Whole
        } else {
            Outcome::Partly
        }
    }
}

enum Progress<'w> {
    /// Awaiting Kafka's outcomes.
    Running(Pin<Box<dyn Future<Output = Round> + Send + 'w>>),
    /// Over already: what it came to.
    Done(Round),
}

/// What a round came to, once its release was committed.
enum Outcome {
    Whole,
    /// Not released whole (its release failed): its entries are published again.
    Partly,
    Failed {
        fatal: bool,
    },
    Cut,
    Unreadable,
}

impl<P: Producer> Worker<P> {
    async fn run(mut self) {
        let mut backoff = MIN_BACKOFF;
        let mut failed_rounds = 0u32;
        // The sequence number of the next entry to publish, while every entry before it has been
        // released: the hand-off can then say what follows. `None`: read the database.
        let mut next: Option<u64> = None;
        // The database's entries after the rounds being published, read meanwhile: a backlog
        // then drains without a pause for the database between rounds.
        let mut ahead: Option<ReadAhead> = None;
        loop {
            match self.publish_rounds(&mut next, &mut ahead).await {
                Stop::Shutdown => break,
                Stop::Unreadable => self.pause(MAX_BACKOFF).await,
                Stop::ReleaseFailed { after_success } => {
                    if after_success {
                        backoff = MIN_BACKOFF;
                    }
                    self.pause(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Stop::Failed {
                    fatal,
                    after_success,
                } => {
                    if after_success {
                        failed_rounds = 0;
                        backoff = MIN_BACKOFF;
                    }
                    failed_rounds += 1;
                    if fatal || failed_rounds >= ROUNDS_BEFORE_NEW_PRODUCER {
                        self.renew_producer();
                        failed_rounds = 0;
                    }
                    self.pause(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            if self
                .shutdown
                .deadline()
                .is_some_and(|d| Instant::now() >= d)
            {
                break;
            }
        }
        let remaining = self
            .shutdown
            .deadline()
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or_default();
        self.publisher
            .producer()
            .flush(remaining.max(Duration::from_millis(100)));
        tracing::info!(left_in_spool = self.spool.entries(), "relay stopped");
    }

    /// Publishes round after round until shutdown or a round that failed; the round after a full
    /// one is enqueued while the full one awaits Kafka. Two rounds in flight are one larger round
    /// as far as order goes: the idempotent producer keeps each partition in order across both, and
    /// entries not released are published again from the oldest.
    async fn publish_rounds(&self, next: &mut Option<u64>, ahead: &mut Option<ReadAhead>) -> Stop {
        let mut in_flight: Option<InFlight<'_>> = None;
        let mut succeeded = false;
        loop {
            let deadline = self.shutdown.deadline();
            if deadline.is_some_and(|d| Instant::now() >= d) {
                if let Some(round) = in_flight.take() {
                    self.complete(round, None, next).await;
                }
                return Stop::Shutdown;
            }
            // Only a round the relay is behind with has the next published behind it. Otherwise
            // the relay keeps up, and awaiting the round first lets the next gather what arrives
            // meanwhile (fewer, fuller rounds, fewer releases).
            if let Some(round) = in_flight.take_if(|f| !f.behind) {
                let (outcome, _) = self.complete(round, None, next).await;
                if let Some(stop) = stop(outcome, &mut succeeded) {
                    return stop;
                }
                continue;
            }
            // Behind a round in flight: the entries after it, which it is expected to release.
            let from = in_flight.as_ref().map_or(*next, |f| Some(f.last + 1));
            let handed = from.map(|n| self.spool.handed_off(n, ROUND_ENTRIES, self.round_bytes()));
            let from_database = !matches!(handed, Some(Handed::Entries(_)));
            let batch = match handed {
                Some(Handed::Entries(batch)) => batch,
                Some(Handed::Unknown) | None => {
                    let (end, read) = match ahead.take().filter(|a| Some(a.from) == from) {
                        Some(ahead) => (ahead.end, ahead.read),
                        // Read before the database: what is committed after it is handed off.
                        // Alone, a round starts at the oldest entry; behind another, after it.
                        None => (
                            self.spool.end(),
                            self.start_read(in_flight.as_ref().map_or(0, |f| f.last + 1)),
                        ),
                    };
                    let read = read_batch(read).await;
                    if !matches!(read, Some(Ok(_)))
                        && let Some(round) = in_flight.take()
                    {
                        self.complete(round, None, next).await;
                    }
                    match read {
                        None => return Stop::Shutdown,
                        Some(Err(())) => {
                            *next = None;
                            return Stop::Unreadable;
                        }
                        Some(Ok(batch)) => {
                            if batch.is_empty() && in_flight.is_none() {
                                *next = Some(end);
                            }
                            batch
                        }
                    }
                }
            };
            let Some(last) = batch.last().map(|e| e.seq) else {
                // Nothing behind the round in flight: see it through.
                if let Some(round) = in_flight.take() {
                    let (outcome, _) = self.complete(round, None, next).await;
                    if let Some(stop) = stop(outcome, &mut succeeded) {
                        return stop;
                    }
                    continue;
                }
                self.spool.observe_oldest(None);
                if deadline.is_some() {
                    return Stop::Shutdown;
                }
                self.wait_for_work().await;
                continue;
            };
            let taken = batch.len() + in_flight.as_ref().map_or(0, |f| f.entries);
            if from_database && self.spool.entries() > taken as u64 {
                *ahead = Some(self.read_ahead(last + 1));
            }
            let round = self.start_round(batch, in_flight.is_none()).await;
            let Some(before) = in_flight.take() else {
                in_flight = Some(round);
                continue;
            };
            let (outcome, behind) = self.complete(before, Some(round), next).await;
            in_flight = behind;
            if let Some(stop) = stop(outcome, &mut succeeded) {
                return stop;
            }
        }
    }

    /// Starts publishing `batch` and returns once its messages are all enqueued (or the round is
    /// over). `oldest`: the batch starts at the spool's oldest entry, for the age gauge.
    async fn start_round<'w>(&'w self, batch: Vec<StoredEntry>, oldest: bool) -> InFlight<'w> {
        let (entries, last) = (batch.len(), batch.last().map_or(0, |e| e.seq));
        // Full: its cap on entries reached, or no room left for another entry as large as its
        // largest (the taking stops before an entry that would pass the cap on bytes; a backlog's
        // larger rounds are full too). A round short of its cap took all there was: the relay
        // keeps up.
        let (bytes, largest) = batch
            .iter()
            .map(StoredEntry::record_bytes)
            .fold((0, 0), |(sum, max), b| (sum + b, max.max(b)));
        let full = entries >= ROUND_ENTRIES || bytes + largest > ROUND_BYTES;
        // Full, and at least as much again waits after it. Below max load a round often fills up
        // with what arrived while the one before it awaited Kafka: publishing the next straight
        // behind it, with little in it, raised the p99 of the answers at half load.
        let behind = full && self.spool.entries() >= 2 * entries as u64;
        let first_accepted_at_ms = batch.first().and_then(StoredEntry::accepted_at_ms);
        if oldest {
            self.spool.observe_oldest(first_accepted_at_ms);
        }
        let (enqueued, all_enqueued) = oneshot::channel();
        let mut round: Pin<Box<dyn Future<Output = Round> + Send + 'w>> =
            Box::pin(self.publish(batch, enqueued));
        let progress = tokio::select! {
            biased;
            round = &mut round => Progress::Done(round),
            _ = all_enqueued => Progress::Running(round),
        };
        InFlight {
            progress,
            entries,
            last,
            first_accepted_at_ms,
            behind,
            earlier: None,
        }
    }

    /// Sees `round` through and releases what it published; `next` moves past it if it was
    /// released whole. If it was not, the round `behind` it is seen through too, and the next
    /// round starts again from the oldest entry; otherwise `behind` is returned, still in flight,
    /// and the commit of `round`'s release runs while the round after `behind` is enqueued.
    async fn complete<'w>(
        &'w self,
        round: InFlight<'w>,
        behind: Option<InFlight<'w>>,
        next: &mut Option<u64>,
    ) -> (Outcome, Option<InFlight<'w>>) {
        let Some(mut behind) = behind else {
            return (self.finish(round, next).await, None);
        };
        let (earlier_released, acknowledged) = self.acknowledge(round, next).await;
        if earlier_released && acknowledged.whole_if_released() {
            self.spool.observe_oldest(behind.first_accepted_at_ms);
            behind.earlier = Some(acknowledged);
            return (Outcome::Whole, Some(behind));
        }
        let outcome = worse(earlier_released, acknowledged.outcome(next).await);
        self.finish(behind, next).await;
        *next = None;
        (outcome, None)
    }

    async fn finish(&self, round: InFlight<'_>, next: &mut Option<u64>) -> Outcome {
        let (earlier_released, acknowledged) = self.acknowledge(round, next).await;
        let outcome = worse(earlier_released, acknowledged.outcome(next).await);
        if !earlier_released {
            *next = None;
        }
        outcome
    }

    /// Awaits Kafka's outcomes for `round` and sends its release to the spool's writer, without
    /// waiting for the commit. First learns whether the release of the round before it, if any,
    /// was committed whole.
    async fn acknowledge(
        &self,
        round: InFlight<'_>,
        next: &mut Option<u64>,
    ) -> (bool, Acknowledged) {
        let InFlight {
            progress,
            entries,
            last,
            earlier,
            ..
        } = round;
        let earlier_released = match earlier {
            Some(earlier) => matches!(earlier.outcome(next).await, Outcome::Whole),
            None => true,
        };
        let round = match progress {
            Progress::Running(round) => round.await,
            Progress::Done(round) => round,
        };
        let whole = round.released.len() == entries;
        let nothing = round.released.is_empty() && round.dead.is_empty();
        let release =
            (!nothing).then(|| Box::pin(self.spool.release(round.released, round.dead)) as Commit);
        let acknowledged = Acknowledged {
            last,
            whole,
            failed: round.retriable_failure,
            fatal: round.fatal,
            cut: round.cut,
            unreadable: round.unreadable,
            release,
        };
        (earlier_released, acknowledged)
    }

    /// The cap on a round's bytes: [`BACKLOG_ROUND_BYTES`] while the spool holds a large backlog.
    fn round_bytes(&self) -> usize {
        if self.spool.entries() >= BACKLOG_ENTRIES {
            BACKLOG_ROUND_BYTES
        } else {
            ROUND_BYTES
        }
    }

    /// Starts reading the oldest entries from sequence number `from` on (0: the oldest of all).
    fn start_read(&self, from: u64) -> Read {
        let spool = self.spool.clone();
        let max_bytes = self.round_bytes();
        tokio::task::spawn_blocking(move || spool.stored_from(from, ROUND_ENTRIES, max_bytes))
    }

    /// Starts reading the entries from `from` on, while the round before them is published.
    fn read_ahead(&self, from: u64) -> ReadAhead {
        let end = self.spool.end();
        ReadAhead {
            from,
            end,
            read: self.start_read(from),
        }
    }

    /// Waits for a new entry or the shutdown; a periodic look covers the age gauge and a missed
    /// wake-up.
    async fn wait_for_work(&self) {
        // Idle, nothing else serves the producer's statistics and errors.
        self.publisher.producer().serve();
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            _ = self.spool.appended() => {}
            _ = shutdown.begun() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }

    async fn pause(&mut self, duration: Duration) {
        self.publisher.producer().serve();
        let mut until = Instant::now() + duration;
        if let Some(deadline) = self.shutdown.deadline() {
            until = until.min(deadline);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            _ = self.shutdown.begun(), if self.shutdown.deadline().is_none() => {}
        }
    }

    fn renew_producer(&mut self) {
        match (self.source)() {
            Ok(producer) => {
                tracing::warn!("replacing the Kafka producer after repeated failures");
                self.publisher = Publisher::new(producer, self.metrics.clone());
            }
            Err(e) => tracing::error!(error = %e, "cannot build a new Kafka producer"),
        }
    }

    /// Publishes every message of `batch` and reports what can be released; `enqueued` is told
    /// once they are all enqueued. The records are freed then: librdkafka has its own copies.
    async fn publish(&self, batch: Vec<StoredEntry>, enqueued: oneshot::Sender<()>) -> Round {
        let mut round = Round::default();
        let mut cut = Cut {
            shutdown: self.shutdown.clone(),
            passed: false,
        };
        let started = SystemTime::now();
        let pending = self.enqueue(&batch, started, &mut round, &mut cut).await;
        drop(batch);
        let _ = enqueued.send(());
        let rejected = self
            .await_acknowledgements(pending, &mut round, &mut cut)
            .await;
        self.dead_letter_rejected(rejected, &mut round, &mut cut)
            .await;
        round.cut = cut.passed;
        round
    }

    /// Hands the batch's messages to the producer, entry by entry, until it refuses one for a
    /// retriable reason (queue full or worse): the entry it belongs to waits for a later round. An
    /// entry is read (decompressed) only as its turn comes, so that a round holds one record read
    /// at a time beside the stored ones; an entry that cannot be read ends the round there.
    async fn enqueue(
        &self,
        batch: &[StoredEntry],
        started: SystemTime,
        round: &mut Round,
        cut: &mut Cut,
    ) -> Vec<Enqueued<P::Delivery>> {
        let spans = crate::otlp::spans();
        let mut enqueued = Vec::with_capacity(batch.len());
        let mut scratch = Vec::new();
        for stored in batch {
            let record = match stored.read(&mut scratch) {
                Ok(record) => record,
                Err(e) => {
                    tracing::error!(error = %e, seq = stored.seq, "cannot read a spooled entry");
                    round.unreadable = true;
                    return enqueued;
                }
            };
            let mut messages = Vec::with_capacity(record.messages.len());
            for (index, message) in record.messages.iter().enumerate() {
                let sent = Sent {
                    index,
                    span: spans.and_then(|spans| spans.sending(message, started)),
                };
                match self.publisher.enqueue_keeping(message, sent) {
                    Ok(pending) => messages.push(pending),
                    Err(e) => {
                        round.failed(e.kind);
                        // The entry is published again whole: settle its part without counting it.
                        for pending in messages {
                            let _ = cut.before(pending.settle()).await;
                        }
                        return enqueued;
                    }
                }
            }
            enqueued.push(Enqueued {
                seq: stored.seq,
                uuid: record.uuid.into(),
                accepted_at_ms: record.accepted_at_ms,
                messages,
            });
        }
        enqueued
    }

    /// Awaits Kafka's outcome for every enqueued message, in order. An entry whose messages were
    /// all acknowledged (or refused for good) is released; the refused messages of released
    /// entries are returned for the dead-letter topic.
    async fn await_acknowledgements(
        &self,
        enqueued: Vec<Enqueued<P::Delivery>>,
        round: &mut Round,
        cut: &mut Cut,
    ) -> Vec<Rejected> {
        let mut rejected = Vec::new();
        for entry in enqueued {
            let mut complete = true;
            let mut refused = Vec::new();
            for pending in entry.messages {
                let Some((sent, outcome)) = cut.before(self.publisher.outcome(pending)).await
                else {
                    return rejected;
                };
                match outcome {
                    Ok(()) => {
                        if let (Some(spans), Some(span)) = (crate::otlp::spans(), sent.span) {
                            spans.published(span);
                        }
                    }
                    Err(e) if e.kind.is_permanent() => refused.push((sent.index, e.kind)),
                    Err(e) => {
                        if complete {
                            tracing::warn!(uuid = %entry.uuid, error = %e.error,
                                "publish failed; will retry");
                        }
                        complete = false;
                        round.failed(e.kind);
                    }
                }
            }
            if complete {
                round.released.push(entry.seq);
                // An entry with refused messages is released only once they are dead-lettered:
                // counted then (see `dead_letter_rejected`), or a held entry would count twice.
                // Only entries being released dead-letter their refused messages; the others
                // are published again whole.
                if refused.is_empty() {
                    self.observe_released(age_since(entry.accepted_at_ms));
                } else {
                    rejected.push(Rejected {
                        seq: entry.seq,
                        uuid: entry.uuid,
                        refused,
                    });
                }
            }
        }
        rejected
    }

    /// Dead-letters the refused messages of the entries being released, read back from the
    /// spool (they are not released yet). An entry whose message the dead-letter topic refuses as
    /// unknown is not released after all: its entries wait in the spool and are published again,
    /// as on any failure of Kafka's (see [`DeadLettered`]); so is an entry that cannot be read back.
    async fn dead_letter_rejected(
        &self,
        rejected: Vec<Rejected>,
        round: &mut Round,
        cut: &mut Cut,
    ) {
        for entry in rejected {
            // Not read back: a failure like Kafka's, so the entry is published again later.
            let Some(stored) = self.read_back(&entry).await else {
                round.hold(entry.seq, ErrorKind::Other);
                continue;
            };
            let mut scratch = Vec::new();
            let record = match stored.read(&mut scratch) {
                Ok(record) => record,
                Err(e) => {
                    tracing::error!(uuid = %entry.uuid, error = %e, "cannot read a spooled entry again");
                    round.hold(entry.seq, ErrorKind::Other);
                    continue;
                }
            };
            let mut kept: Vec<DeadLetter> = Vec::new();
            let mut held = false;
            for &(index, kind) in &entry.refused {
                let Some(message) = record.messages.get(index) else {
                    continue;
                };
                match self.dead_letter(&entry.uuid, message, kind, cut).await {
                    DeadLettered::Published => {}
                    DeadLettered::Kept(letter) => kept.push(letter),
                    DeadLettered::NoTopic => {
                        held = true;
                        round.hold(entry.seq, ErrorKind::Topic);
                        break;
                    }
                }
            }
            if !held {
                round.dead.append(&mut kept);
                self.observe_released(record.age());
            }
        }
    }

    /// The entry `rejected` belongs to, read back from the spool; `None` (logged) if it cannot be.
    async fn read_back(&self, rejected: &Rejected) -> Option<StoredEntry> {
        let spool = self.spool.clone();
        let seq = rejected.seq;
        let read = tokio::task::spawn_blocking(move || spool.stored_from(seq, 1, usize::MAX)).await;
        match read {
            Ok(Ok(entries)) => {
                let found = entries.into_iter().next().filter(|e| e.seq == seq);
                if found.is_none() {
                    tracing::error!(uuid = %rejected.uuid, seq, "a spooled entry being published is gone from the spool");
                }
                found
            }
            Ok(Err(e)) => {
                tracing::error!(uuid = %rejected.uuid, error = %e, "cannot read a spooled entry again to dead-letter its refused messages");
                None
            }
            Err(_) => None,
        }
    }

    /// Counts an entry in `rckb_accept_to_ack_seconds` once it is to be released.
    fn observe_released(&self, age: Duration) {
        self.metrics.accept_to_ack.observe(age.as_secs_f64());
    }

    /// Sends a rejected message to the dead-letter topic.
    async fn dead_letter(
        &self,
        uuid: &str,
        message: &StoredMessage<'_>,
        kind: ErrorKind,
        cut: &mut Cut,
    ) -> DeadLettered {
        tracing::error!(uuid = %uuid, topic = %message.topic(), reason = kind.label(),
            "Kafka rejected a message for good; dead-lettering it");
        let message = message.to_outbound();
        let letter = message.dead_letter(&self.dead_letter_topic, kind.label());
        // Counted as a dead letter, not as a published message.
        let sent = match self.publisher.producer().send(&letter) {
            Ok(delivery) => cut.before(delivery).await,
            Err(e) => Some(Err(e)),
        };
        let kept = DeadLetter {
            reason: kind.label().into(),
            message,
        };
        match sent {
            Some(Ok(())) => {
                self.metrics
                    .dead_letters
                    .with_label_values(&["topic"])
                    .inc();
                return DeadLettered::Published;
            }
            Some(Err(e)) if kind == ErrorKind::Topic && e.kind == ErrorKind::Topic => {
                tracing::error!(uuid = %uuid, topic = %kept.message.topic,
                    dead_letter_topic = %self.dead_letter_topic, error = %e.error,
                    "neither the topic nor the dead-letter topic exists (a cluster that lost its \
                     topics?): the notification stays in the spool and is published again");
                return DeadLettered::NoTopic;
            }
            None => tracing::warn!(uuid = %uuid,
                "shutting down before the dead-letter topic acknowledged; keeping the message in the spool"),
            Some(Err(e)) => tracing::error!(uuid = %uuid, error = %e.error,
                "dead-letter topic refused the message too; keeping it in the spool"),
        }
        self.metrics
            .dead_letters
            .with_label_values(&["spool"])
            .inc();
        DeadLettered::Kept(kept)
    }
}

/// What became of a message Kafka refused for good.
enum DeadLettered {
    /// The dead-letter topic has it.
    Published,
    /// For the spool's dead-letter area: the dead-letter topic refused it too, or shutdown's
    /// deadline passed first.
    Kept(DeadLetter),
    /// Its topic and the dead-letter topic are both unknown to Kafka: a cluster that lost its
    /// topics (restarted without its state), or one whose topics are not created yet. The spool's
    /// dead-letter area holds a tenth of the spool and drops its oldest: a backlog sent there
    /// would be lost. So its entry stays pending instead, and the spool holds it until the topics
    /// exist, answering 503 once full.
    NoTopic,
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
    producer: &impl Producer,
) -> Result<ReplayReport, SpoolError> {
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
            .map(|(id, letter)| (*id, letter, producer.send(&letter.message)))
            .collect();
        let mut acknowledged = Vec::with_capacity(sent.len());
        for (id, letter, delivery) in sent {
            let result = match delivery {
                Ok(delivery) => delivery.await,
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

#[cfg(test)]
mod tests {
    //! The relay's round against a producer double: what Kafka answers is scripted per message.

    use std::path::Path;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use rdkafka::types::RDKafkaErrorCode;

    use super::*;
    use crate::in_flight::Reservation;
    use crate::kafka::PublishError;
    use crate::routing::{OutboundMessage, RoutePlan};
    use crate::sink::Sink;
    use crate::spool::SpoolOptions;

    /// What the double answers for one message.
    #[derive(Clone, Copy, Debug)]
    enum Answer {
        Ack,
        /// Refused when enqueued (queue full, fatal producer).
        RefuseEnqueue(ErrorKind),
        /// Enqueued, then failed by "Kafka".
        Fail(ErrorKind),
        /// Acknowledged once a message with this key has been sent.
        AckOnceSent(&'static str),
    }

    /// The answer to a message given its earlier attempts and the number of the producer (1, 2, ...).
    type Script = dyn Fn(&OutboundMessage, usize, usize) -> Answer + Send + Sync;

    /// Every message sent, with the number of the producer that sent it; `sends` counts them.
    #[derive(Clone)]
    struct Log(
        Arc<Mutex<Vec<(usize, OutboundMessage)>>>,
        Arc<tokio::sync::watch::Sender<usize>>,
    );

    impl Default for Log {
        fn default() -> Self {
            Log(Arc::default(), Arc::new(tokio::sync::watch::channel(0).0))
        }
    }

    impl Log {
        /// Once a message with `key` has been sent.
        async fn sent_key(self, key: &str) {
            let mut sends = self.1.subscribe();
            let _ = sends
                .wait_for(|_| self.sent().iter().any(|(_, m)| m.key == key))
                .await;
        }

        fn sent(&self) -> Vec<(usize, OutboundMessage)> {
            self.0.lock().unwrap().clone()
        }

        fn count(&self, topic: &str) -> usize {
            self.sent().iter().filter(|(_, m)| m.topic == topic).count()
        }
    }

    struct Double {
        number: usize,
        script: Arc<Script>,
        log: Log,
    }

    fn error(kind: ErrorKind) -> PublishError {
        PublishError {
            kind,
            error: KafkaError::MessageProduction(RDKafkaErrorCode::Fail),
        }
    }

    impl Producer for Double {
        type Delivery = Pin<Box<dyn Future<Output = Result<(), PublishError>> + Send>>;

        fn send(&self, message: &impl Outbound) -> Result<Self::Delivery, PublishError> {
            let message = &message.to_outbound();
            let mut log = self.log.0.lock().unwrap();
            let attempt = log.iter().filter(|(_, m)| m == message).count();
            let answer = (self.script)(message, attempt, self.number);
            if let Answer::RefuseEnqueue(kind) = answer {
                return Err(error(kind));
            }
            log.push((self.number, message.clone()));
            drop(log);
            self.log.1.send_modify(|sends| *sends += 1);
            Ok(match answer {
                Answer::Fail(kind) => Box::pin(std::future::ready(Err(error(kind)))),
                Answer::AckOnceSent(key) => {
                    let log = self.log.clone();
                    Box::pin(async move {
                        log.sent_key(key).await;
                        Ok(())
                    })
                }
                _ => Box::pin(std::future::ready(Ok(()))),
            })
        }

        fn flush(&self, _: Duration) {}
    }

    struct Bench {
        spool: Arc<Spool>,
        relay: Option<Relay>,
        log: Log,
        builds: Arc<AtomicUsize>,
        metrics: Metrics,
        _dir: tempfile::TempDir,
    }

    fn message(topic: &str, key: &str) -> OutboundMessage {
        OutboundMessage {
            topic: topic.into(),
            key: key.into(),
            headers: vec![("rc-notification-uuid".into(), key.into())],
            value: "{}".into(),
            hint_label: "ExtensionInfo".into(),
            tombstone: false,
        }
    }

    fn plan(uuid: &str, topics: &[&str]) -> RoutePlan {
        RoutePlan {
            uuid: uuid.into(),
            kind: "extension_info".into(),
            messages: topics.iter().map(|t| message(t, uuid)).collect(),
            unrouted_reason: None,
        }
    }

    fn open(dir: &Path, metrics: &Metrics) -> Arc<Spool> {
        Arc::new(
            Spool::open(
                dir,
                SpoolOptions {
                    max_bytes: 1 << 20,
                    dedup_window: Duration::from_secs(60),
                    dedup_capacity: 100,
                    cache_bytes: 1 << 20,
                    linger: std::time::Duration::ZERO,
                    linger_max: std::time::Duration::ZERO,
                },
                metrics.clone(),
            )
            .unwrap(),
        )
    }

    /// Accepts `plans` in their order, all at once: each is handed to the spool's writer on its
    /// first poll, in turn, so the writer commits them in groups.
    async fn accept_in_order(spool: &Spool, plans: Vec<RoutePlan>) {
        let mut accepts: Vec<_> = plans
            .into_iter()
            .map(|plan| spool.accept(plan, Reservation::unbudgeted()))
            .collect();
        let mut early = Vec::with_capacity(accepts.len());
        std::future::poll_fn(|cx| {
            early.extend(accepts.iter_mut().map(|accept| accept.as_mut().poll(cx)));
            std::task::Poll::Ready(())
        })
        .await;
        for (accept, early) in accepts.into_iter().zip(early) {
            let outcome = match early {
                std::task::Poll::Ready(outcome) => outcome,
                std::task::Poll::Pending => accept.await,
            };
            outcome.unwrap();
        }
    }

    /// A spool holding `plans`, and a relay publishing it through doubles that follow `script`.
    async fn bench(
        plans: Vec<RoutePlan>,
        script: impl Fn(&OutboundMessage, usize, usize) -> Answer + Send + Sync + 'static,
    ) -> Bench {
        bench_with(plans, script, |_| {}).await
    }

    /// [`bench`], with `prepare` applied to the spool before the relay starts.
    async fn bench_with(
        plans: Vec<RoutePlan>,
        script: impl Fn(&OutboundMessage, usize, usize) -> Answer + Send + Sync + 'static,
        prepare: impl FnOnce(&Spool),
    ) -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let spool = open(dir.path(), &metrics);
        accept_in_order(&spool, plans).await;
        prepare(&spool);
        let (log, builds, script): (Log, Arc<AtomicUsize>, Arc<Script>) =
            (Log::default(), Arc::default(), Arc::new(script));
        let source: ProducerSource<Double> = {
            let (log, builds) = (log.clone(), builds.clone());
            Box::new(move || {
                Ok(Double {
                    number: builds.fetch_add(1, Ordering::SeqCst) + 1,
                    script: script.clone(),
                    log: log.clone(),
                })
            })
        };
        let dead_letters = Topic::parse("dlq").unwrap();
        let relay =
            Relay::start_with(spool.clone(), source, dead_letters, metrics.clone()).unwrap();
        Bench {
            spool,
            relay: Some(relay),
            log,
            builds,
            metrics,
            _dir: dir,
        }
    }

    impl Bench {
        /// Stops the relay the way shutdown does: it publishes until the spool is empty, within a
        /// deadline that only a stuck relay reaches, and the spool must then be empty.
        async fn drain(&mut self) {
            if let Some(relay) = self.relay.take() {
                relay.stop(Instant::now() + Duration::from_secs(10)).await;
            }
            assert_eq!(self.spool.entries(), 0, "the relay drained the spool");
        }

        fn counted(&self, metric: &prometheus::IntCounterVec, labels: &[&str]) -> u64 {
            metric.with_label_values(labels).get()
        }
    }

    #[tokio::test]
    async fn acknowledged_entries_are_published_in_order_and_released() {
        let mut bench = bench(
            vec![plan("a", &["t1", "t2"]), plan("b", &["t1"])],
            |_, _, _| Answer::Ack,
        )
        .await;
        bench.drain().await;
        let sent: Vec<(String, String)> = bench
            .log
            .sent()
            .into_iter()
            .map(|(_, m)| (m.key, m.topic))
            .collect();
        assert_eq!(
            sent,
            [("a", "t1"), ("a", "t2"), ("b", "t1")].map(|(k, t)| (k.to_string(), t.to_string()))
        );
        let published = &bench.metrics.messages_published;
        assert_eq!(bench.counted(published, &["t1", "ExtensionInfo"]), 2);
        assert_eq!(bench.counted(published, &["t2", "ExtensionInfo"]), 1);
    }

    #[tokio::test]
    async fn a_backlog_s_next_round_is_enqueued_while_kafka_answers_the_one_before() {
        // A backlog of entries too large to share a round. Kafka answers the first one's message
        // only once the second one's was sent: a relay awaiting each round before enqueueing the
        // next would wait for good (until the drain's deadline).
        let keys: Vec<String> = (0..4).map(|n| format!("k{n}")).collect();
        let plans = keys
            .iter()
            .map(|key| {
                let mut plan = plan(key, &["t1"]);
                plan.messages[0].value = format!("\"{}\"", "x".repeat(ROUND_BYTES * 3 / 5));
                plan
            })
            .collect();
        let mut bench = bench(plans, |message, _, _| match message.key.as_str() {
            "k0" => Answer::AckOnceSent("k1"),
            _ => Answer::Ack,
        })
        .await;
        bench.drain().await;
        let sent: Vec<String> = bench.log.sent().into_iter().map(|(_, m)| m.key).collect();
        assert_eq!(sent, keys, "each once, in order");
    }

    #[tokio::test]
    async fn entries_accepted_while_the_relay_runs_are_all_published_in_order() {
        // One message fails twice, so that a round does not release everything and the entries
        // accepted meanwhile overflow the hand-off; every entry still reaches Kafka, in order.
        let mut bench = bench(Vec::new(), |m, attempt, _| {
            match (m.key.as_str(), attempt) {
                ("e010", 0 | 1) => Answer::Fail(ErrorKind::Timeout),
                _ => Answer::Ack,
            }
        })
        .await;
        let keys: Vec<String> = (0..200).map(|n| format!("e{n:03}")).collect();
        for key in &keys {
            bench
                .spool
                .accept(plan(key, &["t1"]), Reservation::unbudgeted())
                .await
                .unwrap();
        }
        bench.drain().await;
        let mut first_acks = Vec::new();
        let mut attempts = std::collections::HashMap::new();
        for (_, message) in bench.log.sent() {
            let attempt = attempts.entry(message.key.clone()).or_insert(0);
            *attempt += 1;
            let failed = message.key == "e010" && *attempt <= 2;
            if !failed && !first_acks.contains(&message.key) {
                first_acks.push(message.key);
            }
        }
        let mut expected: Vec<String> = keys.iter().filter(|k| *k != "e010").cloned().collect();
        let retried = first_acks.iter().position(|k| k == "e010").unwrap();
        first_acks.remove(retried);
        assert_eq!(first_acks, expected, "every entry, in acceptance order");
        expected.push("e010".into());
        assert_eq!(attempts.len(), expected.len());
    }

    #[tokio::test]
    async fn a_backlog_of_several_rounds_is_published_once_and_in_order() {
        // Over two rounds' worth: each round is read from the database while the one before it
        // is published. One message of the second round fails once, so that round does not
        // release everything and what was read ahead of the third must not be used.
        let keys: Vec<String> = (0..2 * ROUND_ENTRIES + 100)
            .map(|n| format!("k{n:05}"))
            .collect();
        let failing = keys[ROUND_ENTRIES + 10].clone();
        let plans = keys.iter().map(|key| plan(key, &["t1"])).collect();
        let mut bench = bench(plans, {
            let failing = failing.clone();
            move |m, attempt, _| match (m.key == failing, attempt) {
                (true, 0) => Answer::Fail(ErrorKind::Timeout),
                _ => Answer::Ack,
            }
        })
        .await;
        bench.drain().await;
        let sent: Vec<String> = bench.log.sent().into_iter().map(|(_, m)| m.key).collect();
        assert_eq!(sent.len(), keys.len() + 1, "one retry, no other duplicate");
        let first_failed = sent.iter().position(|k| *k == failing).unwrap();
        let mut acknowledged = sent.clone();
        acknowledged.remove(first_failed);
        let retried = acknowledged.iter().position(|k| *k == failing).unwrap();
        acknowledged.remove(retried);
        let others: Vec<String> = keys.iter().filter(|k| **k != failing).cloned().collect();
        assert_eq!(
            acknowledged, others,
            "every other entry once, in acceptance order"
        );
    }

    #[tokio::test]
    async fn a_release_failing_while_the_next_rounds_are_published_is_published_again() {
        // A backlog of three full rounds: the first round's release is committed while the second
        // is in flight and the third is enqueued, and that commit fails, as on a full disk. Its
        // entries stay in the spool and are published again (duplicates, never a loss), and
        // nothing is left behind.
        let keys: Vec<String> = (0..3 * ROUND_ENTRIES).map(|n| format!("k{n:05}")).collect();
        let plans = keys.iter().map(|key| plan(key, &["t1"])).collect();
        let mut bench =
            bench_with(plans, |_, _, _| Answer::Ack, |spool| spool.fail_releases(1)).await;
        bench.drain().await;
        let sent: Vec<String> = bench.log.sent().into_iter().map(|(_, m)| m.key).collect();
        for (n, key) in keys.iter().enumerate() {
            let times = sent.iter().filter(|k| *k == key).count();
            let expected = if n < ROUND_ENTRIES { 2 } else { 1 };
            assert_eq!(times, expected, "{key} sent {times} times");
        }
    }

    #[tokio::test]
    async fn releases_failing_again_and_again_are_retried_after_growing_pauses() {
        // Three releases fail, as on a disk that keeps failing: each retry publishes the entry
        // again, but only after a pause that doubles (100, 200, 400 ms), not over and over.
        let started = Instant::now();
        let mut bench = bench_with(
            vec![plan("a", &["t1"])],
            |_, _, _| Answer::Ack,
            |spool| spool.fail_releases(3),
        )
        .await;
        bench.drain().await;
        let sent = bench.log.count("t1");
        assert_eq!(
            sent, 4,
            "published once, then again after each failed release"
        );
        let paused = MIN_BACKOFF + 2 * MIN_BACKOFF + 4 * MIN_BACKOFF;
        assert!(
            started.elapsed() >= paused,
            "{:?} < {paused:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_retriable_failure_keeps_the_entry_until_kafka_acknowledges_it() {
        // The first two attempts at `a`'s second message time out.
        let mut bench = bench(vec![plan("a", &["t1", "t2"])], |m, attempt, _| {
            match (m.topic.as_str(), attempt) {
                ("t2", 0 | 1) => Answer::Fail(ErrorKind::Timeout),
                _ => Answer::Ack,
            }
        })
        .await;
        bench.drain().await;
        // Published again whole each round: t1 as often as t2, nothing dead-lettered.
        assert_eq!(bench.log.count("t1"), 3);
        assert_eq!(bench.log.count("dlq"), 0);
        assert_eq!(
            bench.counted(&bench.metrics.publish_errors, &["timeout"]),
            2
        );
    }

    #[tokio::test]
    async fn a_message_refused_for_good_goes_to_the_dead_letter_topic_and_the_entry_is_released() {
        let mut bench = bench(vec![plan("a", &["big", "t1"])], |m, _, _| {
            match m.topic.as_str() {
                "big" => Answer::Fail(ErrorKind::TooLarge),
                _ => Answer::Ack,
            }
        })
        .await;
        bench.drain().await;
        let letters: Vec<OutboundMessage> = bench
            .log
            .sent()
            .into_iter()
            .map(|(_, m)| m)
            .filter(|m| m.topic == "dlq")
            .collect();
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].header("rc-original-topic"), Some("big"));
        assert_eq!(
            letters[0].header("rc-dead-letter-reason"),
            Some("too_large")
        );
        assert_eq!(bench.counted(&bench.metrics.dead_letters, &["topic"]), 1);
        assert!(bench.spool.dead_letters().unwrap().is_empty());
        assert_eq!(bench.metrics.accept_to_ack.get_sample_count(), 1);
    }

    #[tokio::test]
    async fn refused_messages_are_read_back_from_the_spool_and_dead_lettered_as_they_were_sent() {
        // The round frees its records once enqueued: what is dead-lettered is read back.
        let mut bench = bench(
            vec![plan("a", &["t1", "big"]), plan("b", &["big", "t2", "big"])],
            |m, _, _| match m.topic.as_str() {
                "big" => Answer::Fail(ErrorKind::TooLarge),
                _ => Answer::Ack,
            },
        )
        .await;
        bench.drain().await;
        let sent: Vec<OutboundMessage> = bench.log.sent().into_iter().map(|(_, m)| m).collect();
        let letters: Vec<&OutboundMessage> = sent.iter().filter(|m| m.topic == "dlq").collect();
        let refused: Vec<&OutboundMessage> = sent.iter().filter(|m| m.topic == "big").collect();
        assert_eq!(letters.len(), 3);
        for (letter, original) in letters.iter().zip(&refused) {
            assert_eq!(
                **letter,
                original.dead_letter(&Topic::parse("dlq").unwrap(), "too_large")
            );
        }
        assert_eq!(
            letters.iter().map(|l| l.key.as_str()).collect::<Vec<_>>(),
            ["a", "b", "b"]
        );
        assert_eq!(bench.metrics.accept_to_ack.get_sample_count(), 2);
    }

    #[tokio::test]
    async fn an_entry_whose_refused_message_cannot_be_read_back_is_published_again() {
        // The round's read succeeds; reading the entry back for its dead letter fails once.
        let mut bench = bench_with(
            vec![plan("a", &["big", "t1"])],
            |m, _, _| match m.topic.as_str() {
                "big" => Answer::Fail(ErrorKind::TooLarge),
                _ => Answer::Ack,
            },
            |spool| spool.fail_read_after(1),
        )
        .await;
        bench.drain().await;
        assert_eq!(bench.log.count("t1"), 2, "published again whole");
        assert_eq!(
            bench.log.count("dlq"),
            1,
            "dead-lettered once, when read back"
        );
        assert_eq!(bench.counted(&bench.metrics.dead_letters, &["topic"]), 1);
        assert_eq!(bench.metrics.accept_to_ack.get_sample_count(), 1);
    }

    #[tokio::test]
    async fn a_cluster_without_the_topic_nor_the_dead_letter_topic_keeps_the_entry_until_they_exist()
     {
        // "gone" and the dead-letter topic are unknown twice, then created.
        let mut bench = bench(vec![plan("a", &["gone", "t1"])], |m, attempt, _| {
            match (m.topic.as_str(), attempt) {
                ("gone" | "dlq", 0 | 1) => Answer::Fail(ErrorKind::Topic),
                _ => Answer::Ack,
            }
        })
        .await;
        bench.drain().await;
        assert_eq!(
            bench.log.count("gone"),
            3,
            "published again until it exists"
        );
        assert!(bench.spool.dead_letters().unwrap().is_empty());
        assert_eq!(bench.counted(&bench.metrics.dead_letters, &["spool"]), 0);
        assert_eq!(
            bench.metrics.accept_to_ack.get_sample_count(),
            1,
            "counted once, when released"
        );
    }

    #[tokio::test]
    async fn a_dead_letter_the_topic_refuses_too_stays_in_the_spool() {
        let mut bench = bench(vec![plan("a", &["big"])], |m, _, _| {
            match m.topic.as_str() {
                "big" => Answer::Fail(ErrorKind::TooLarge),
                _ => Answer::Fail(ErrorKind::Authorization),
            }
        })
        .await;
        bench.drain().await;
        let kept = bench.spool.dead_letters().unwrap();
        assert_eq!(kept.len(), 1, "kept in the spool's dead-letter area");
        assert_eq!(kept[0].message.topic, "big");
        assert_eq!(kept[0].reason, "too_large");
        assert_eq!(bench.counted(&bench.metrics.dead_letters, &["spool"]), 1);
    }

    #[tokio::test]
    async fn a_fatal_producer_is_replaced_and_the_entry_published_by_the_new_one() {
        // The first producer is fatally broken; the second works.
        let mut bench = bench(vec![plan("a", &["t1"])], |_, _, producer| match producer {
            1 => Answer::RefuseEnqueue(ErrorKind::Fatal),
            _ => Answer::Ack,
        })
        .await;
        bench.drain().await;
        assert_eq!(
            bench.builds.load(Ordering::SeqCst),
            2,
            "a new producer was built"
        );
        assert_eq!(
            bench
                .log
                .sent()
                .iter()
                .map(|(n, m)| (*n, m.topic.as_str()))
                .collect::<Vec<_>>(),
            [(2, "t1")]
        );
        assert_eq!(bench.counted(&bench.metrics.publish_errors, &["fatal"]), 1);
    }

    #[tokio::test]
    async fn an_entry_that_cannot_be_read_holds_back_itself_and_what_follows_it_only() {
        // Cut short past its first fields: it is taken into a round, but cannot be read there.
        let cut_short = crate::spool::encode(1, &plan("cut", &["t1"])).unwrap();
        unreadable_entry_holds_back_itself_and_what_follows(&cut_short[..cut_short.len() - 3])
            .await;
    }

    #[tokio::test]
    async fn a_compressed_entry_of_a_later_version_holds_back_itself_and_what_follows_it_only() {
        // Its header is sound, so it is weighed and taken into a round; what it holds is read
        // only there.
        let mut later = crate::spool::encode(1, &plan("later", &["t1"])).unwrap();
        later[0] = 3;
        let stored = crate::spool::compress(&later);
        assert_ne!(&stored[..], &later[..], "stored compressed");
        unreadable_entry_holds_back_itself_and_what_follows(&stored).await;
    }

    /// Entries in the database as an earlier release kept them, one whole and then `unreadable`,
    /// and one accepted after them: the whole one is published and released, the other two kept.
    async fn unreadable_entry_holds_back_itself_and_what_follows(unreadable: &[u8]) {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        drop(open(dir.path(), &metrics));
        let whole = crate::spool::encode(1, &plan("whole", &["t1"])).unwrap();
        Spool::leave_legacy_entries(dir.path(), &[(0, "whole", &whole), (1, "bad", unreadable)]);
        let spool = open(dir.path(), &metrics);
        accept_in_order(&spool, vec![plan("after", &["t1"])]).await;
        let log = Log::default();
        let source: ProducerSource<Double> = {
            let log = log.clone();
            Box::new(move || {
                Ok(Double {
                    number: 1,
                    script: Arc::new(|_: &OutboundMessage, _, _| Answer::Ack),
                    log: log.clone(),
                })
            })
        };
        let relay = Relay::start_with(
            spool.clone(),
            source,
            Topic::parse("dlq").unwrap(),
            metrics.clone(),
        )
        .unwrap();
        log.clone().sent_key("whole").await;
        relay
            .stop(Instant::now() + Duration::from_millis(200))
            .await;
        let keys: Vec<String> = log.sent().into_iter().map(|(_, m)| m.key).collect();
        assert_eq!(
            keys,
            ["whole"],
            "nothing after the entry that cannot be read"
        );
        let left: Vec<u64> = spool
            .stored_from(0, 10, usize::MAX)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(
            left,
            [1, 2],
            "the entry before it released, it and the one after it kept"
        );
    }

    #[tokio::test]
    async fn a_round_being_enqueued_never_holds_the_servers_thread() {
        // The producer stops inside `send` until this test, on a single-threaded runtime like the
        // server's on one worker, lets it go. A relay on this runtime's thread would stop the test
        // with it, and its wait would run out.
        let (entered, entered_here) = oneshot::channel::<()>();
        let (go, go_here) = std::sync::mpsc::channel::<()>();
        let (entered, go_here) = (Mutex::new(Some(entered)), Mutex::new(go_here));
        let let_go = Arc::new(AtomicBool::new(false));
        let mut bench = bench(vec![plan("a", &["t1", "t2"])], {
            let let_go = let_go.clone();
            move |_, _, _| {
                if let Some(entered) = entered.lock().unwrap().take() {
                    let _ = entered.send(());
                    let waited = go_here
                        .lock()
                        .unwrap()
                        .recv_timeout(Duration::from_secs(10));
                    let_go.store(waited.is_ok(), Ordering::SeqCst);
                }
                Answer::Ack
            }
        })
        .await;
        entered_here.await.unwrap();
        go.send(()).unwrap();
        bench.drain().await;
        assert!(
            let_go.load(Ordering::SeqCst),
            "the test ran while the relay was inside `send`"
        );
        assert_eq!(bench.log.sent().len(), 2, "both messages sent");
    }
}
