//! The durable spool: every accepted notification's route plan is on disk and fsynced before the
//! webhook is answered, and stays there until Kafka acknowledged every message planned from it.
//!
//! One writer thread owns every write: it takes whatever appends and releases are waiting and
//! commits them together, so concurrent requests share one `fdatasync` (group commit).
//!
//! Pending entries are in the journal (`journal`): files written in place, one write and one
//! `fdatasync` a commit, entries and releases as checksummed frames (a quarter of what a
//! copy-on-write tree costs a commit: bench/HISTORY.md, "The spool's storage per commit"). The rest
//! is in [`redb`], an embedded ACID store whose commits are crash safe (copy-on-write B-trees with
//! a checksummed commit slot):
//! - `seen_order`: (acceptance time, sequence) -> notification uuid: the deduplication record,
//!   expired by age and by count, and indexed by uuid in memory (`seen`). Committed without
//!   `fdatasync`, and made durable now and then and before a journal file is written over: after a
//!   crash it is brought up to the journal again.
//! - `dead`: messages Kafka rejected for good and the dead-letter topic refused too. They count towards
//!   `--spool-max-bytes` and may fill at most a tenth of it: beyond, the oldest is dropped (logged and
//!   counted), because refusing new notifications instead would lose fresh events and, with repeated
//!   503 answers, the subscription itself.
//! - `entries`: sequence number -> spooled plan (a binary record, compressed, `record`): the pending
//!   entries of a spool written by an earlier release, read before the journal's and removed as
//!   they are released.
//! - `meta`: the spool's identity, the same as in the `spool.id` file beside the database.
//!
//! # Failing loudly
//!
//! A spool that is gone must never look like a new one: that would throw away notifications already
//! answered 200 without a word. So the directory records that a spool exists: `spool.id` is written
//! when the spool is created, and the database holds the same identity. At start-up, an identity file
//! whose database is missing, empty or another spool's stops the bridge with a message naming the file;
//! so does a damaged database, including one that makes the storage engine panic. A directory with
//! neither file is a new spool; a database without an identity file (an earlier release, or an
//! interrupted creation) is adopted and the file written.

use std::cell::RefCell;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, oneshot};

use crate::in_flight::Reservation;
use crate::metrics::Metrics;
use crate::readiness::{Readiness, SpoolHealth};
use crate::routing::{HeaderName, OutboundMessage, RoutePlan};
use crate::sink::{Acceptance, Sink, SinkError, SinkFuture};

mod files;
mod handoff;
mod inspect;
mod journal;
mod record;
mod seen;
mod writer;
use files::*;
pub use files::{FILE_SIZE_FACTOR, SpoolIdentity, worst_case_file_bytes};
pub use handoff::Handed;
pub use inspect::{ExportCounts, SpoolSummary};
use journal::{Journal, Location, NewEntry};
pub use record::{Record, StoredEntry, StoredMessage, StoredRecord};
#[cfg(test)]
pub(crate) use record::{compress, encode};
use seen::{SeenChanges, SeenIndex, SeenKey};

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
/// The uuid index of formats up to 3, deleted on upgrade: the index is now in memory (`seen`).
const SEEN_BY_UUID: &str = "seen";
const SEEN_ORDER: TableDefinition<(u64, u64), &str> = TableDefinition::new("seen_order");
const DEAD: TableDefinition<u64, &[u8]> = TableDefinition::new("dead");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
/// The key of the identity in `meta`.
const IDENTITY_KEY: &str = "identity";
/// The key of the number of journal files made, in `meta`: files are never removed, so fewer is a
/// loss.
const JOURNAL_FILES_KEY: &str = "journal_files";

/// The database, inside the spool directory.
pub const DATABASE_FILE: &str = "spool.redb";
/// The identity file, inside the spool directory.
pub const IDENTITY_FILE: &str = "spool.id";
/// Where a new database is prepared, so that `spool.redb` only ever appears complete.
const NEW_DATABASE_FILE: &str = "spool.redb.new";
/// The spool's layout; a spool of a later format is refused rather than misread. 2: entries are
/// binary records (`record`); 3: binary records compressed; 4: no `seen` table, whose index an
/// earlier release would miss; 5: pending entries in the journal, which an earlier release would
/// not read. Spools of formats 1 (JSON entries) to 4 are still read: their entries stay in the
/// database until released.
const FORMAT: u32 = 5;

/// The dead-letter area may hold at most `--spool-max-bytes` divided by this.
pub const DEAD_LETTER_SHARE: u64 = 10;

/// The most operations one commit takes: bounds the latency of the requests that wait on it.
const MAX_GROUP: usize = 4096;
/// A group the writer stops lingering at: about what one commit carries at full load on two cores
/// (17 to 20 notifications), where lingering longer only held the answers back (bench/HISTORY.md,
/// "A longer `--spool-linger`").
const GROUP_ENOUGH: usize = 16;
/// How often an unwritable spool that nothing writes to tries again by itself: it answers 503 on
/// `/readyz` meanwhile, so a load balancer may send it no request to try again with.
#[cfg(not(test))]
const RETRY_UNWRITABLE: Duration = Duration::from_secs(1);
#[cfg(test)]
const RETRY_UNWRITABLE: Duration = Duration::from_millis(20);
/// Expired deduplication records removed per commit, so expiry never stalls a commit.
const MAX_EXPIRE_PER_COMMIT: usize = 1024;

/// What to do about the spool, ending every message about a spool that cannot be opened as it is.
// Files, not the directory: on Kubernetes the directory is a volume's mount point.
const START_EMPTY: &str =
    "to start an empty spool knowingly, move spool.redb, spool.id and the journal-* files out of";

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("cannot create spool directory {path}: {source}")]
    Directory {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open spool {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error("spool storage: {0}")]
    Storage(String),
    #[error(
        "{} is missing, but {} records that spool {id} was created here on {created_at}: the \
         notifications it held are not there. Restore the file from a backup, or, {START_EMPTY} {dir}",
        .dir.join(DATABASE_FILE).display(), .dir.join(IDENTITY_FILE).display()
    )]
    Missing {
        dir: PathBuf,
        id: String,
        created_at: String,
    },
    #[error(
        "{path} is missing, but the spool's database records {recorded} journal files: the \
         notifications they held are not there. Restore the files from a backup, or, {START_EMPTY} \
         {dir}"
    )]
    JournalMissing {
        path: PathBuf,
        recorded: u32,
        dir: PathBuf,
    },
    #[error(
        "{path} is empty (0 bytes), but a spool database never is: the notifications it held are gone. \
         Restore it from a backup, or, {START_EMPTY} {dir}"
    )]
    Emptied { path: PathBuf, dir: PathBuf },
    #[error(
        "{} is not this spool's database: {} names spool {expected}, the database {found}. Put \
         the right file back, or, {START_EMPTY} {dir}",
        .dir.join(DATABASE_FILE).display(), .dir.join(IDENTITY_FILE).display()
    )]
    Replaced {
        dir: PathBuf,
        expected: String,
        found: String,
    },
    #[error(
        "{path} is damaged: {message}; move it away (keep it: it may hold notifications worth \
         recovering) and restore a backup, or, {START_EMPTY} {dir}"
    )]
    Damaged {
        path: PathBuf,
        message: String,
        dir: PathBuf,
    },
    #[error(
        "{path} cannot be read: {message}. It records that a spool exists in {dir}: restore it, or \
         delete it to have the identity written again from the database"
    )]
    Identity {
        path: PathBuf,
        message: String,
        dir: PathBuf,
    },
    #[error(
        "{path} is of spool format {found}, written by a later release (this one reads format \
         {FORMAT}): run that release"
    )]
    NewerFormat { path: PathBuf, found: u32 },
    #[error(
        "{path}: the spool is in use by a running bridge (or another spool command); stop it first"
    )]
    InUse { path: PathBuf },
    #[error("no spool in {dir} ({DATABASE_FILE} does not exist): check --spool-dir")]
    NotFound { dir: PathBuf },
    #[error("cannot write: {0}")]
    Output(std::io::Error),
}

fn storage(e: impl std::fmt::Display) -> SpoolError {
    SpoolError::Storage(e.to_string())
}

/// A notification waiting in the spool.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpooledEntry {
    #[serde(skip)]
    pub seq: u64,
    /// Milliseconds since the Unix epoch when the notification was answered.
    pub accepted_at_ms: u64,
    pub plan: RoutePlan,
}

impl SpooledEntry {
    /// How long ago the notification was answered.
    pub fn age(&self) -> Duration {
        age_since(self.accepted_at_ms)
    }
}

/// How long ago `accepted_at_ms` (milliseconds since the Unix epoch) was.
pub fn age_since(accepted_at_ms: u64) -> Duration {
    Duration::from_millis(now_ms().saturating_sub(accepted_at_ms))
}

/// A message kept in the spool because both its topic and the dead-letter topic refused it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeadLetter {
    pub reason: String,
    pub message: OutboundMessage,
}

enum Command {
    Append(Append),
    Release(Release),
}

/// A plan to keep, already encoded as its stored record.
struct Append {
    uuid: String,
    record: StoredRecord,
    reply: oneshot::Sender<Result<Acceptance, SinkError>>,
    /// The plan's bytes in flight, released once the writer is done with the append (before it
    /// answers).
    held: Reservation,
}

struct Release {
    seqs: Vec<u64>,
    dead: Vec<DeadLetter>,
    /// Dead letters (by id) that were published after all.
    forget: Vec<u64>,
    reply: oneshot::Sender<Result<(), SpoolError>>,
}

const HEALTH_OK: u8 = 0;
const HEALTH_FULL: u8 = 1;
const HEALTH_UNWRITABLE: u8 = 2;

struct Shared {
    /// `None` while the database is being reopened after an I/O error.
    db: std::sync::RwLock<Option<Arc<Database>>>,
    path: PathBuf,
    dir: PathBuf,
    /// How large the journal's files grow before the next one is started.
    segment_bytes: u64,
    /// Where the journal's pending entries are.
    pending: Mutex<journal::Index>,
    /// The journal's files, for reading; replaced when the journal is read again after an I/O
    /// error.
    files: std::sync::RwLock<Arc<journal::Files>>,
    /// Pending entries in the database: those a spool of an earlier release held.
    legacy_entries: AtomicU64,
    identity: Option<SpoolIdentity>,
    max_bytes: u64,
    /// For reopening the database.
    cache_bytes: usize,
    linger: Duration,
    linger_max: Duration,
    dedup_window: Duration,
    dedup_capacity: usize,
    entries: AtomicU64,
    bytes: AtomicU64,
    dead_letters: AtomicU64,
    dead_letter_bytes: AtomicU64,
    health: AtomicU8,
    appended: Notify,
    /// Committed entries on their way to the relay, and the sequence number of the next one.
    handoff: Mutex<handoff::HandOff>,
    metrics: Metrics,
    /// Releases whose commit fails on purpose, for the relay's tests.
    #[cfg(test)]
    failing_releases: AtomicU64,
    /// Commits reported failed once they are durable, as a failing `fdatasync` after redb wrote
    /// its header can make them.
    #[cfg(test)]
    failing_after_commit: AtomicU64,
    /// Counts down the reads of entries; the one that brings it to 0 fails.
    #[cfg(test)]
    reads_to_failure: AtomicU64,
    /// Told each time an unwritable spool has tried again by itself.
    #[cfg(test)]
    tried_again: Notify,
    /// When set, the writer's lingering waits are steps the test takes instead of sleeps.
    #[cfg(test)]
    wait_steps: Mutex<Option<writer::WaitSteps>>,
}

/// How a spool is sized, for `serve` and the `spool` commands alike.
#[derive(Clone, Copy, Debug)]
pub struct SpoolOptions {
    /// Largest backlog, in bytes of stored (compressed) entries, before new notifications are
    /// refused.
    pub max_bytes: u64,
    /// Bytes of the database's page cache.
    pub cache_bytes: usize,
    /// How long the writer waits for more commands before a commit (`--spool-linger`).
    pub linger: Duration,
    /// How long it may wait in all while more keep arriving (`--spool-linger-max`).
    pub linger_max: Duration,
    /// How long a notification uuid is remembered to drop redeliveries.
    pub dedup_window: Duration,
    /// How many notification uuids are remembered at most.
    pub dedup_capacity: usize,
}

pub struct Spool {
    shared: Arc<Shared>,
    commands: Mutex<Option<std::sync::mpsc::Sender<Command>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    closed: AtomicBool,
}

/// redb's page cache would default to 1 GiB and grow with a backlog; the relay reads each entry about
/// once, so a small cache costs little speed and keeps memory bounded (`--spool-cache-bytes`).
fn builder(cache_bytes: usize) -> redb::Builder {
    let mut builder = Database::builder();
    builder.set_cache_size(cache_bytes);
    builder
}

/// How large the journal's files grow: a thirty-second of the spool, within 1 to 32 MiB. Files are
/// taken up again once every entry in them is released, so smaller files are reused sooner, and
/// larger ones are started less often.
fn journal_segment_bytes(max_bytes: u64) -> u64 {
    (max_bytes / 32).clamp(1 << 20, 32 << 20)
}

/// Reads the journal's pending entries in order, a batch of frames at a time.
struct JournalReader<'a> {
    shared: &'a Shared,
    files: Arc<journal::Files>,
    /// The sequence number the next batch starts from.
    next: u64,
    batch: std::collections::VecDeque<journal::ReadEntry>,
    done: bool,
}

impl<'a> JournalReader<'a> {
    /// Frames read at once: a round reads no more than it takes, give or take a batch.
    const BATCH: usize = 64;

    fn new(shared: &'a Shared, from: u64) -> JournalReader<'a> {
        JournalReader {
            shared,
            files: shared.files.read().unwrap().clone(),
            next: from,
            batch: Default::default(),
            done: false,
        }
    }

    fn peek(&mut self) -> Result<Option<&journal::ReadEntry>, SpoolError> {
        while self.batch.is_empty() && !self.done {
            let wanted = self.shared.pending().from(self.next, Self::BATCH);
            let Some(&(last, _)) = wanted.last() else {
                self.done = true;
                break;
            };
            self.next = last + 1;
            // An entry released meanwhile is not read back: its frame no longer checks out.
            self.batch
                .extend(self.files.read(&wanted).map_err(storage)?);
        }
        Ok(self.batch.front())
    }

    /// The entry [`JournalReader::peek`] returned, as (sequence number, stored record).
    fn next(&mut self) -> Option<(u64, Vec<u8>)> {
        self.batch
            .pop_front()
            .map(|entry| (entry.seq, entry.record))
    }
}

/// What the spool's files hold, read back as the writer and the readers keep it.
struct Resumed {
    journal: Journal,
    index: journal::Index,
    seen: SeenIndex,
    counts: Counts,
    legacy_entries: u64,
    /// The sequence number of the next entry.
    end: u64,
}

/// How many journal files the database records were made.
fn journal_files(db: &Database) -> Result<u32, SpoolError> {
    let read = db.begin_read().map_err(storage)?;
    let meta = read.open_table(META).map_err(storage)?;
    let recorded = meta.get(JOURNAL_FILES_KEY).map_err(storage)?;
    Ok(recorded
        .and_then(|value| value.value().parse().ok())
        .unwrap_or(0))
}

/// Reads the journal of spool `id` back and brings the database's deduplication record up to it:
/// the record is made durable only now and then (and always before a journal file is written
/// over), so after a crash the journal holds uuids the record lost.
fn resume(db: &Database, dir: &Path, id: &str, segment_bytes: u64) -> Result<Resumed, SpoolError> {
    let (journal, recovered) = Journal::open(dir, id, segment_bytes).map_err(|e| match e {
        journal::JournalError::Io { path, source } => SpoolError::Open {
            path,
            message: source.to_string(),
        },
        journal::JournalError::Foreign { path, message } => SpoolError::Damaged {
            path,
            message,
            dir: dir.to_path_buf(),
        },
    })?;
    let recorded = journal_files(db)?;
    if (journal.files() as u32) < recorded {
        return Err(SpoolError::JournalMissing {
            path: dir.join(journal::file_name(journal.files() as u32)),
            recorded,
            dir: dir.to_path_buf(),
        });
    }
    if !recovered.seen.is_empty() {
        let txn = db.begin_write().map_err(storage)?;
        {
            let mut seen_order = txn.open_table(SEEN_ORDER).map_err(storage)?;
            for (accepted_at_ms, seq, uuid) in &recovered.seen {
                let key = (*accepted_at_ms, *seq);
                if seen_order.get(key).map_err(storage)?.is_none() {
                    seen_order.insert(key, uuid.as_str()).map_err(storage)?;
                }
            }
        }
        txn.commit().map_err(storage)?;
    }
    let read = db.begin_read().map_err(storage)?;
    let mut counts = count(&read).map_err(storage)?;
    let legacy_end = read
        .open_table(ENTRIES)
        .map_err(storage)?
        .last()
        .map_err(storage)?
        .map_or(0, |(seq, _)| seq.value() + 1);
    drop(read);
    let index = journal::Index::recovered(&recovered.pending);
    let legacy_entries = counts.entries;
    counts.entries += index.entries();
    counts.bytes += index.bytes();
    Ok(Resumed {
        seen: writer::read_seen(db)?,
        index,
        journal,
        counts,
        legacy_entries,
        end: recovered.end.max(legacy_end),
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

fn rfc3339(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

impl Spool {
    /// Opens (or creates) the spool in `dir` and resumes whatever an earlier run left in it. A spool
    /// that was lost or damaged is an error, never a new empty spool.
    pub fn open(dir: &Path, options: SpoolOptions, metrics: Metrics) -> Result<Spool, SpoolError> {
        let opened = open_files(dir, Access::Serve, options.cache_bytes)?;
        warn_if_disk_is_small(dir, &dir.join(DATABASE_FILE), options.max_bytes);
        let counts = &opened.counts;
        if counts.entries > 0 || counts.dead_letters > 0 {
            tracing::info!(
                entries = counts.entries,
                bytes = counts.bytes,
                dead_letters = counts.dead_letters,
                "resuming spooled notifications from an earlier run"
            );
        }
        Self::start(dir, opened, options, metrics)
    }

    /// Opens the spool in `dir` as it is, for the `spool` commands: it must exist, and nothing is
    /// created, adopted or tightened to open it.
    pub fn open_existing(
        dir: &Path,
        options: SpoolOptions,
        metrics: Metrics,
    ) -> Result<Spool, SpoolError> {
        let opened = open_files(dir, Access::Existing, options.cache_bytes)?;
        Self::start(dir, opened, options, metrics)
    }

    fn start(
        dir: &Path,
        opened: Opened,
        options: SpoolOptions,
        metrics: Metrics,
    ) -> Result<Spool, SpoolError> {
        let Opened { db, identity, .. } = opened;
        let segment_bytes = journal_segment_bytes(options.max_bytes);
        let id = identity
            .as_ref()
            .map_or("", |identity| identity.id.as_str());
        let resumed = resume(&db, dir, id, segment_bytes)?;
        let shared = Arc::new(Shared {
            db: std::sync::RwLock::new(Some(Arc::new(db))),
            path: dir.join(DATABASE_FILE),
            dir: dir.to_path_buf(),
            segment_bytes,
            pending: Mutex::new(resumed.index),
            files: std::sync::RwLock::new(resumed.journal.shared_files()),
            legacy_entries: AtomicU64::new(resumed.legacy_entries),
            identity,
            max_bytes: options.max_bytes,
            cache_bytes: options.cache_bytes,
            linger: options.linger,
            linger_max: options.linger_max,
            dedup_window: options.dedup_window,
            dedup_capacity: options.dedup_capacity,
            entries: AtomicU64::new(resumed.counts.entries),
            bytes: AtomicU64::new(resumed.counts.bytes),
            dead_letters: AtomicU64::new(resumed.counts.dead_letters),
            dead_letter_bytes: AtomicU64::new(resumed.counts.dead_letter_bytes),
            health: AtomicU8::new(HEALTH_OK),
            appended: Notify::new(),
            // Sequence numbers only grow while the process runs (the hand-off relies on it), also
            // across moments when every entry has been released.
            handoff: Mutex::new(handoff::HandOff::new(resumed.end)),
            metrics,
            #[cfg(test)]
            failing_releases: AtomicU64::new(0),
            #[cfg(test)]
            failing_after_commit: AtomicU64::new(0),
            #[cfg(test)]
            reads_to_failure: AtomicU64::new(0),
            #[cfg(test)]
            tried_again: Notify::new(),
            #[cfg(test)]
            wait_steps: Mutex::new(None),
        });
        let seen = resumed.seen;
        let journal = resumed.journal;
        shared.publish_gauges();
        let (tx, rx) = std::sync::mpsc::channel();
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer_shared.run_writer(rx, writer::Writer::new(seen, journal)))
            .map_err(|e| SpoolError::Storage(e.to_string()))?;
        Ok(Spool {
            shared,
            commands: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            closed: AtomicBool::new(false),
        })
    }

    /// The oldest entries, in acceptance order: at most `limit` of them, and no more than `max_bytes`
    /// of records, uncompressed (but always at least one).
    pub fn oldest(&self, limit: usize, max_bytes: usize) -> Result<Vec<SpooledEntry>, SpoolError> {
        self.entries_from(0, limit, max_bytes)
    }

    /// Pending entries from sequence number `from` on, as the relay publishes them (read in place,
    /// see [`StoredEntry`]): at most `limit`, no more than `max_bytes` of records, uncompressed (but
    /// always at least one).
    pub fn stored_from(
        &self,
        from: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredEntry>, SpoolError> {
        #[cfg(test)]
        if self
            .shared
            .reads_to_failure
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            == Ok(1)
        {
            return Err(SpoolError::Storage("failed on purpose".into()));
        }
        let mut legacy = if self.shared.legacy_entries.load(Ordering::Relaxed) > 0 {
            self.legacy_from(from, limit)?
        } else {
            Vec::new()
        }
        .into_iter()
        .peekable();
        let mut journal = JournalReader::new(&self.shared, from);
        let mut out = Vec::new();
        let mut bytes = 0;
        while out.len() < limit {
            // The earlier of the two: the database's entries came before the journal's.
            let (seq, record) = match (legacy.peek(), journal.peek()?) {
                (Some((seq, _)), Some(entry)) if entry.seq > *seq => legacy.next().expect("peeked"),
                (_, Some(_)) => journal.next().expect("peeked"),
                (Some(_), None) => legacy.next().expect("peeked"),
                (None, None) => break,
            };
            let entry = StoredEntry::from_database(seq, record).map_err(storage)?;
            // Counted uncompressed: what publishing the round holds (librdkafka's copies).
            bytes += entry.record_bytes();
            if bytes > max_bytes && !out.is_empty() {
                break;
            }
            out.push(entry);
        }
        Ok(out)
    }

    /// Up to `limit` entries the database holds from sequence number `from` on, as stored.
    fn legacy_from(&self, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, SpoolError> {
        let read = self.shared.database()?.begin_read().map_err(storage)?;
        let table = read.open_table(ENTRIES).map_err(storage)?;
        let mut out = Vec::new();
        for item in table.range(from..).map_err(storage)?.take(limit) {
            let (seq, value) = item.map_err(storage)?;
            out.push((seq.value(), value.value().to_vec()));
        }
        Ok(out)
    }

    /// Pending entries from sequence number `from` on, as [`Spool::oldest`] reads them: a page of
    /// `spool export`.
    pub fn entries_from(
        &self,
        from: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<SpooledEntry>, SpoolError> {
        self.stored_from(from, limit, max_bytes)?
            .iter()
            .map(|stored| stored.decode().map_err(storage))
            .collect()
    }

    /// The entries from sequence number `next` on, as the writer handed them over after committing
    /// them: at most `limit`, no more than `max_bytes` of records (but at least one).
    /// [`Handed::Unknown`] when they must be read from the database ([`Spool::oldest`]).
    pub fn handed_off(&self, next: u64, limit: usize, max_bytes: usize) -> Handed {
        self.shared.handoff().take(next, limit, max_bytes)
    }

    /// The sequence number the next committed entry gets: read before [`Spool::oldest`], it is
    /// where a relay that found the database empty goes on from.
    pub fn end(&self) -> u64 {
        self.shared.handoff().end()
    }

    /// Removes entries whose messages Kafka acknowledged (or that were dead-lettered), and keeps
    /// `dead` letters, in one durable commit. The writer has it from the call on: the returned
    /// future only waits for the commit, so the caller may go on meanwhile.
    pub fn release(
        &self,
        seqs: Vec<u64>,
        dead: Vec<DeadLetter>,
    ) -> impl Future<Output = Result<(), SpoolError>> + Send + use<> {
        self.commit_release(seqs, dead, Vec::new())
    }

    /// Removes dead letters (by the ids of [`Spool::dead_letters_from`]) that reached Kafka after all.
    pub async fn forget_dead_letters(&self, ids: Vec<u64>) -> Result<(), SpoolError> {
        self.commit_release(Vec::new(), Vec::new(), ids).await
    }

    fn commit_release(
        &self,
        seqs: Vec<u64>,
        dead: Vec<DeadLetter>,
        forget: Vec<u64>,
    ) -> impl Future<Output = Result<(), SpoolError>> + Send + use<> {
        let (reply, answer) = oneshot::channel();
        let sent = self.send(Command::Release(Release {
            seqs,
            dead,
            forget,
            reply,
        }));
        async move {
            sent.map_err(|_| SpoolError::Storage("spool is closed".into()))?;
            answer
                .await
                .unwrap_or_else(|_| Err(SpoolError::Storage("spool writer stopped".into())))
        }
    }

    /// The next `n` commits that release entries fail, as a full disk would make them.
    #[cfg(test)]
    pub(crate) fn fail_releases(&self, n: u64) {
        self.shared.failing_releases.store(n, Ordering::SeqCst);
    }

    /// The read of entries after the next `ok` fails, as a disk that cannot be read would make it.
    #[cfg(test)]
    pub(crate) fn fail_read_after(&self, ok: u64) {
        self.shared.reads_to_failure.store(ok + 1, Ordering::SeqCst);
    }

    /// Writes entries into the database of the spool in `dir` (closed) as an earlier release left
    /// them: `(seq, uuid, record as stored)`.
    #[cfg(test)]
    pub(crate) fn leave_legacy_entries(dir: &Path, entries: &[(u64, &str, &[u8])]) {
        let db = Database::open(dir.join(DATABASE_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(ENTRIES).unwrap();
            let mut seen_order = txn.open_table(SEEN_ORDER).unwrap();
            for &(seq, uuid, stored) in entries {
                table.insert(seq, stored).unwrap();
                seen_order.insert((now_ms(), seq), uuid).unwrap();
            }
        }
        txn.commit().unwrap();
    }

    /// Completes when something was appended since the last call.
    pub async fn appended(&self) {
        self.shared.appended.notified().await
    }

    pub fn entries(&self) -> u64 {
        self.shared.entries.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> u64 {
        self.shared.bytes.load(Ordering::Relaxed)
    }

    /// Messages kept in the spool's dead-letter area.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, SpoolError> {
        let read = self.shared.database()?.begin_read().map_err(storage)?;
        let table = read.open_table(DEAD).map_err(storage)?;
        let mut out = Vec::new();
        for item in table.iter().map_err(storage)? {
            let (_, value) = item.map_err(storage)?;
            out.push(serde_json::from_slice(value.value()).map_err(storage)?);
        }
        Ok(out)
    }

    /// Dead letters from id `from` on, in the order they were kept: at most `limit` of them.
    pub fn dead_letters_from(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, DeadLetter)>, SpoolError> {
        let read = self.shared.database()?.begin_read().map_err(storage)?;
        let table = read.open_table(DEAD).map_err(storage)?;
        let mut out = Vec::new();
        for item in table.range(from..).map_err(storage)?.take(limit) {
            let (id, value) = item.map_err(storage)?;
            out.push((
                id.value(),
                serde_json::from_slice(value.value()).map_err(storage)?,
            ));
        }
        Ok(out)
    }

    /// Bytes of dead letters kept in the spool.
    pub fn dead_letter_bytes(&self) -> u64 {
        self.shared.dead_letter_bytes.load(Ordering::Relaxed)
    }

    /// Updates the age gauge of the oldest entry, given when it was accepted (ms since the epoch).
    pub fn observe_oldest(&self, accepted_at_ms: Option<u64>) {
        let age = accepted_at_ms.map_or(0.0, |at| age_since(at).as_secs_f64());
        self.shared.metrics.spool_oldest_entry_age.set(age);
    }

    /// Stops the writer after the commands already queued; later appends answer 503.
    pub fn close(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        drop(self.commands.lock().unwrap().take());
        if let Some(writer) = self.writer.lock().unwrap().take() {
            let _ = writer.join();
        }
        // Release the file now, not whenever the last handle to the spool goes: a restart in the same
        // process (or a tool reading the spool) must be able to open it.
        drop(self.shared.db.write().unwrap().take());
    }

    fn send(&self, command: Command) -> Result<(), ()> {
        match &*self.commands.lock().unwrap() {
            Some(tx) => tx.send(command).map_err(|_| ()),
            None => Err(()),
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.close();
    }
}

impl Sink for Spool {
    fn accept(&self, plan: RoutePlan, held: Reservation) -> SinkFuture<'_> {
        Box::pin(async move {
            // Encoded and compressed here, on the thread that planned it, rather than on the
            // writer's: the plan's many small allocations and the uncompressed record are freed
            // where they were made (cheaper for the allocator than a free from another thread),
            // and the writer, which every request waits for, only writes. The record is what the
            // writer commits and hands to the relay.
            let record = StoredRecord::new(now_ms(), &plan).map_err(|e| {
                tracing::error!(error = %e, uuid = %plan.uuid, "a plan could not be encoded for the spool");
                SinkError::SpoolUnwritable
            })?;
            // Only the record waits for the writer: the plan's messages go now.
            let uuid = plan.uuid;
            drop(plan.messages);
            let (reply, answer) = oneshot::channel();
            self.send(Command::Append(Append {
                uuid,
                record,
                reply,
                held,
            }))
            .map_err(|_| SinkError::ShuttingDown)?;
            answer.await.unwrap_or(Err(SinkError::ShuttingDown))
        })
    }
}

impl Readiness for Spool {
    fn spool_health(&self) -> SpoolHealth {
        match self.shared.health.load(Ordering::Relaxed) {
            HEALTH_FULL => SpoolHealth::Full,
            HEALTH_UNWRITABLE => SpoolHealth::Unwritable,
            _ => SpoolHealth::Ok,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(uuid: &str) -> RoutePlan {
        RoutePlan {
            unrouted_reason: None,
            uuid: uuid.into(),
            kind: "extension_info".into(),
            messages: vec![OutboundMessage {
                topic: "t".into(),
                key: "1".into(),
                headers: vec![],
                value: "{}".into(),
                hint_label: "none".into(),
                tombstone: false,
            }],
        }
    }

    /// The uuids of `entries`, in order.
    fn uuids(entries: Vec<SpooledEntry>) -> Vec<String> {
        entries.into_iter().map(|e| e.plan.uuid).collect()
    }

    /// The tests' spool: 1 MiB, an hour's and a thousand uuids' deduplication, a writer that
    /// commits at once. Each test changes what it is about.
    fn options() -> SpoolOptions {
        SpoolOptions {
            max_bytes: 1 << 20,
            dedup_window: Duration::from_secs(3600),
            dedup_capacity: 1000,
            cache_bytes: 1 << 20,
            linger: Duration::ZERO,
            linger_max: Duration::ZERO,
        }
    }

    fn open(dir: &Path, max_bytes: u64) -> Spool {
        Spool::open(
            dir,
            SpoolOptions {
                max_bytes,
                ..options()
            },
            Metrics::new(),
        )
        .unwrap()
    }

    /// A plan whose value LZ4 cannot shrink much: `bytes` of it.
    fn noisy_plan(uuid: &str, bytes: usize) -> RoutePlan {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ bytes as u64 ^ uuid.len() as u64;
        let mut plan = plan(uuid);
        plan.messages[0].value = format!(
            "\"{}\"",
            (0..bytes)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    char::from(b'a' + (state % 26) as u8)
                })
                .collect::<String>()
        );
        plan
    }

    fn journal_files(dir: &Path) -> usize {
        fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("journal-")
            })
            .count()
    }

    #[tokio::test]
    async fn an_entry_left_pending_is_moved_on_rather_than_keeping_the_journal_growing() {
        let dir = tempfile::tempdir().unwrap();
        // Files of 1 MiB; a full spool needs 4 of them.
        let spool = open(dir.path(), 4 << 20);
        spool
            .accept(noisy_plan("pinned", 2000), Reservation::unbudgeted())
            .await
            .unwrap();
        // 24 MiB go through while the first entry stays (the relay keeps trying to publish it).
        for round in 0..60 {
            for n in 0..40 {
                let uuid = format!("r{round}-{n}");
                spool
                    .accept(noisy_plan(&uuid, 10_000), Reservation::unbudgeted())
                    .await
                    .unwrap();
            }
            let seqs: Vec<u64> = spool
                .stored_from(1, usize::MAX, usize::MAX)
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect();
            spool.release(seqs, vec![]).await.unwrap();
        }
        assert!(
            journal_files(dir.path()) <= 8,
            "{} files",
            journal_files(dir.path())
        );
        assert_eq!(uuids(spool.oldest(10, usize::MAX).unwrap()), ["pinned"]);
        spool.close();
        drop(spool);
        let spool = open(dir.path(), 4 << 20);
        assert_eq!(spool.entries(), 1);
        assert_eq!(uuids(spool.oldest(10, usize::MAX).unwrap()), ["pinned"]);
        assert_eq!(
            spool
                .accept(noisy_plan("r59-39", 10_000), Reservation::unbudgeted())
                .await
                .unwrap(),
            Acceptance::Duplicate,
            "the deduplication record holds the latest that went through"
        );
    }

    #[tokio::test]
    async fn a_page_cache_far_smaller_than_the_backlog_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let small_cache = SpoolOptions {
            max_bytes: 1 << 30,
            dedup_capacity: 10_000,
            cache_bytes: 4096,
            ..options()
        };
        let accepted: Vec<String> = (0..200).map(|n| format!("u{n:04}")).collect();
        {
            let spool = Spool::open(dir.path(), small_cache, Metrics::new()).unwrap();
            // Values LZ4 cannot shrink much, so that the stored records outgrow the cache.
            let mut state = 0x9e37_79b9_7f4a_7c15_u64;
            let mut noise = || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                char::from(b'a' + (state % 26) as u8)
            };
            for uuid in &accepted {
                let mut plan = plan(uuid);
                plan.messages[0].value =
                    format!("\"{}\"", (0..2000).map(|_| noise()).collect::<String>());
                spool.accept(plan, Reservation::unbudgeted()).await.unwrap();
            }
            assert!(spool.bytes() > 16 * 4096, "the backlog outgrows the cache");
        }
        let spool = Spool::open(dir.path(), small_cache, Metrics::new()).unwrap();
        let read = uuids(spool.entries_from(0, usize::MAX, usize::MAX).unwrap());
        assert_eq!(read, accepted);
    }

    #[tokio::test]
    async fn entries_an_earlier_release_left_in_the_database_come_first_and_go_when_released() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path(), 1 << 20));
        // What a spool of format 4 holds: an entry in the database, its uuid in the record.
        {
            let db = Database::open(dir.path().join(DATABASE_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let record = record::encode(now_ms(), &plan("old")).unwrap();
                let mut entries = txn.open_table(ENTRIES).unwrap();
                entries.insert(0, &*record::compress(&record)).unwrap();
                let mut seen_order = txn.open_table(SEEN_ORDER).unwrap();
                seen_order.insert((now_ms(), 0), "old").unwrap();
            }
            txn.commit().unwrap();
        }
        let spool = open(dir.path(), 1 << 20);
        assert_eq!(spool.shared.legacy_entries.load(Ordering::SeqCst), 1);
        spool
            .accept(plan("new"), Reservation::unbudgeted())
            .await
            .unwrap();
        let pending = spool.stored_from(0, 10, usize::MAX).unwrap();
        let seqs: Vec<u64> = pending.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [0, 1], "the database's entry, then the journal's");
        assert_eq!(uuids(spool.oldest(10, usize::MAX).unwrap()), ["old", "new"]);
        assert_eq!(
            spool
                .accept(plan("old"), Reservation::unbudgeted())
                .await
                .unwrap(),
            Acceptance::Duplicate
        );
        spool.release(vec![0], vec![]).await.unwrap();
        assert_eq!(spool.shared.legacy_entries.load(Ordering::SeqCst), 0);
        assert_eq!(spool.entries(), 1);
        assert_eq!(uuids(spool.oldest(10, usize::MAX).unwrap()), ["new"]);
    }

    #[tokio::test]
    async fn entries_survive_reopening_in_order_and_dedup_too() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = open(dir.path(), 1 << 20);
            for uuid in ["a", "b", "c"] {
                assert_eq!(
                    spool
                        .accept(plan(uuid), Reservation::unbudgeted())
                        .await
                        .unwrap(),
                    Acceptance::Accepted
                );
            }
            assert_eq!(spool.entries(), 3);
        }
        let spool = open(dir.path(), 1 << 20);
        assert_eq!(spool.entries(), 3);
        let pending = uuids(spool.oldest(10, usize::MAX).unwrap());
        assert_eq!(pending, ["a", "b", "c"]);
        // A byte budget smaller than one entry still yields that entry; two entries' worth, two.
        assert_eq!(spool.oldest(10, 1).unwrap().len(), 1);
        let oldest = &spool.oldest(1, usize::MAX).unwrap()[0];
        let one = record::encode(0, &oldest.plan).unwrap().len();
        assert_eq!(spool.oldest(10, 2 * one + 20).unwrap().len(), 2);
        // From a sequence number on: what follows a round not released yet.
        let after = uuids(spool.entries_from(oldest.seq + 1, 10, usize::MAX).unwrap());
        assert_eq!(after, ["b", "c"]);
        assert_eq!(
            spool
                .accept(plan("b"), Reservation::unbudgeted())
                .await
                .unwrap(),
            Acceptance::Duplicate
        );
        assert_eq!(spool.entries(), 3);
    }

    #[tokio::test]
    async fn a_commit_reported_failed_after_reaching_the_disk_is_kept_and_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let spool = open(dir.path(), 1 << 20);
        spool.shared.failing_after_commit.store(1, Ordering::SeqCst);
        assert!(matches!(
            spool.accept(plan("a"), Reservation::unbudgeted()).await,
            Err(SinkError::SpoolUnwritable)
        ));
        // "a" is on disk all the same: the next notification comes after it...
        assert_eq!(
            spool
                .accept(plan("b"), Reservation::unbudgeted())
                .await
                .unwrap(),
            Acceptance::Accepted
        );
        // ...and RingCentral's redelivery of "a" finds it kept.
        assert_eq!(
            spool
                .accept(plan("a"), Reservation::unbudgeted())
                .await
                .unwrap(),
            Acceptance::Duplicate
        );
        let pending = uuids(spool.oldest(10, usize::MAX).unwrap());
        assert_eq!(pending, ["a", "b"]);
        let (entries, bytes) = (spool.entries(), spool.bytes());
        assert_eq!(entries, 2);
        drop(spool);
        // The counters are what the database holds.
        let reopened = open(dir.path(), 1 << 20);
        assert_eq!((reopened.entries(), reopened.bytes()), (entries, bytes));
    }

    /// Waits, try after try of the writer's, until the spool reports `health`, for at most 5 s.
    async fn until_health(spool: &Spool, health: SpoolHealth) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while spool.spool_health() != health {
            let tried = spool.shared.tried_again.notified();
            if tokio::time::timeout_at(deadline, tried).await.is_err() {
                return false;
            }
        }
        true
    }

    #[tokio::test]
    async fn an_unwritable_spool_that_nothing_writes_to_recovers_by_itself() {
        let dir = tempfile::tempdir().unwrap();
        let spool = open(dir.path(), 1 << 20);
        spool
            .accept(plan("a"), Reservation::unbudgeted())
            .await
            .unwrap();
        let seq = spool.oldest(1, usize::MAX).unwrap()[0].seq;
        spool.fail_releases(1);
        assert!(spool.release(vec![seq], vec![]).await.is_err());
        assert_eq!(spool.spool_health(), SpoolHealth::Unwritable);
        // Nothing more is asked of it (a load balancer sends an unready replica nothing).
        assert!(until_health(&spool, SpoolHealth::Ok).await);
        assert_eq!(spool.entries(), 1, "the release did not happen");
    }

    #[tokio::test]
    async fn a_database_that_could_not_be_reopened_is_reopened_later_unasked() {
        let dir = tempfile::tempdir().unwrap();
        let spool = open(dir.path(), 1 << 20);
        spool
            .accept(plan("a"), Reservation::unbudgeted())
            .await
            .unwrap();
        let seq = spool.oldest(1, usize::MAX).unwrap()[0].seq;
        // A read in progress elsewhere (the relay's) keeps the database open: reopening it fails.
        let reading = spool.shared.database().unwrap();
        spool.fail_releases(1);
        assert!(spool.release(vec![seq], vec![]).await.is_err());
        assert!(spool.shared.database().is_err(), "not reopened yet");
        drop(reading);
        assert!(until_health(&spool, SpoolHealth::Ok).await);
        let pending = uuids(spool.oldest(10, usize::MAX).unwrap());
        assert_eq!(pending, ["a"]);
    }

    #[tokio::test]
    async fn release_removes_and_keeps_dead_letters() {
        let dir = tempfile::tempdir().unwrap();
        let spool = open(dir.path(), 1 << 20);
        spool
            .accept(plan("a"), Reservation::unbudgeted())
            .await
            .unwrap();
        spool
            .accept(plan("b"), Reservation::unbudgeted())
            .await
            .unwrap();
        let first = spool.oldest(1, usize::MAX).unwrap().remove(0);
        let letter = DeadLetter {
            reason: "too_large".into(),
            message: first.plan.messages[0].clone(),
        };
        spool
            .release(vec![first.seq], vec![letter.clone()])
            .await
            .unwrap();
        assert_eq!(spool.entries(), 1);
        assert_eq!(spool.oldest(10, usize::MAX).unwrap()[0].plan.uuid, "b");
        assert_eq!(spool.dead_letters().unwrap(), vec![letter]);
        // Released notifications are still remembered as seen.
        assert_eq!(
            spool
                .accept(plan("a"), Reservation::unbudgeted())
                .await
                .unwrap(),
            Acceptance::Duplicate
        );
    }

    #[tokio::test]
    async fn released_runs_with_gaps_and_scattered_entries_leave_exactly_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let spool = open(dir.path(), 1 << 20);
        for n in 0..40 {
            spool
                .accept(plan(&format!("u{n:02}")), Reservation::unbudgeted())
                .await
                .unwrap();
        }
        let all = spool.oldest(100, usize::MAX).unwrap();
        let seq = |n: usize| all[n].seq;
        let one = spool.bytes() / 40;
        // A round's run less two failed entries (one pass over the range), given out of order...
        let run: Vec<u64> = (0..20)
            .filter(|n| ![3, 7].contains(n))
            .map(seq)
            .rev()
            .collect();
        spool.release(run, Vec::new()).await.unwrap();
        // ...then entries far apart (removed one by one), and one already gone.
        spool
            .release(vec![seq(25), seq(39), seq(0)], Vec::new())
            .await
            .unwrap();
        let left = uuids(spool.oldest(100, usize::MAX).unwrap());
        let expected: Vec<String> = [3, 7]
            .into_iter()
            .chain((20..39).filter(|n| *n != 25))
            .map(|n| format!("u{n:02}"))
            .collect();
        assert_eq!(left, expected);
        assert_eq!(spool.entries(), expected.len() as u64);
        assert_eq!(
            spool.bytes(),
            one * expected.len() as u64,
            "bytes counted once"
        );
    }

    #[tokio::test]
    async fn a_full_spool_refuses_and_recovers_when_drained() {
        let dir = tempfile::tempdir().unwrap();
        let spool = open(dir.path(), 400);
        let mut accepted = 0;
        let mut refused = None;
        for i in 0..20 {
            match spool
                .accept(plan(&format!("n{i}")), Reservation::unbudgeted())
                .await
            {
                Ok(_) => accepted += 1,
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        assert!(matches!(refused, Some(SinkError::SpoolFull)), "{refused:?}");
        assert!(accepted > 0);
        assert_eq!(spool.spool_health(), SpoolHealth::Full);
        let bytes_when_full = spool.bytes();
        assert!(bytes_when_full <= 400);
        let all: Vec<u64> = spool
            .oldest(100, usize::MAX)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        spool.release(all, vec![]).await.unwrap();
        assert_eq!(spool.spool_health(), SpoolHealth::Ok);
        assert_eq!(spool.bytes(), 0);
        assert_eq!(
            spool
                .accept(plan("later"), Reservation::unbudgeted())
                .await
                .unwrap(),
            Acceptance::Accepted
        );
    }

    #[tokio::test]
    async fn a_plans_bytes_in_flight_are_released_before_the_writer_answers() {
        let dir = tempfile::tempdir().unwrap();
        let spool = open(dir.path(), 1 << 20);
        let budget = crate::in_flight::PlansInFlight::new(
            1000,
            prometheus::IntGauge::new("held", "held").unwrap(),
        );
        let answers = [
            spool.accept(plan("a"), budget.reserve(600).unwrap()).await,
            spool.accept(plan("a"), budget.reserve(600).unwrap()).await,
        ];
        assert_eq!(
            answers.map(Result::unwrap),
            [Acceptance::Accepted, Acceptance::Duplicate]
        );
        assert_eq!(budget.held(), 0);
        // Refused for want of space: released all the same.
        let small = tempfile::tempdir().unwrap();
        let full = open(small.path(), 1);
        let refused = full.accept(plan("b"), budget.reserve(600).unwrap()).await;
        assert!(matches!(refused, Err(SinkError::SpoolFull)));
        assert_eq!(budget.held(), 0);
    }

    /// A spool whose writer lingers for `linger`, and again while more arrive up to `linger_max`,
    /// with its metrics (the directory goes with it).
    fn lingering(linger: Duration, linger_max: Duration) -> (Spool, Metrics, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let spool = Spool::open(
            dir.path(),
            SpoolOptions {
                max_bytes: 1 << 30,
                linger,
                linger_max,
                ..options()
            },
            metrics.clone(),
        )
        .unwrap();
        (spool, metrics, dir)
    }

    /// Polls `accept` once: its command is then with the writer, its answer still to come.
    async fn hand_over(accept: &mut SinkFuture<'_>) {
        std::future::poll_fn(|cx| {
            assert!(accept.as_mut().poll(cx).is_pending(), "answered at once");
            std::task::Poll::Ready(())
        })
        .await;
    }

    #[tokio::test]
    async fn a_notification_arriving_while_the_writer_lingers_shares_the_commit() {
        // One wait, as with `--spool-linger-max` at or below `--spool-linger`.
        let (spool, metrics, _dir, mut steps) = stepped(1);
        let mut accepts = hand_over_many(&spool, "a", 1).await;
        accepts.extend(steps.arrive_in_a_wait(&spool, "b", 1).await);
        all_accepted(accepts).await;
        assert_eq!(spool.entries(), 2);
        assert_eq!(metrics.spool_commits.get(), 1);
    }

    /// Hands `count` notifications to the writer, uuids `prefix0`, `prefix1`...; their answers to come.
    async fn hand_over_many<'a>(
        spool: &'a Spool,
        prefix: &str,
        count: usize,
    ) -> Vec<SinkFuture<'a>> {
        let mut accepts = Vec::new();
        for i in 0..count {
            let mut accept = spool.accept(plan(&format!("{prefix}{i}")), Reservation::unbudgeted());
            hand_over(&mut accept).await;
            accepts.push(accept);
        }
        accepts
    }

    /// Awaits every answer: all must be `Accepted`, and come without another wait of the writer's.
    async fn all_accepted(accepts: Vec<SinkFuture<'_>>) {
        for accept in accepts {
            let answer = tokio::time::timeout(Duration::from_secs(10), accept).await;
            assert_eq!(
                answer.expect("answered without another wait").unwrap(),
                Acceptance::Accepted
            );
        }
    }

    /// The test's end of a writer's [`writer::WaitSteps`].
    struct Steps {
        entered: tokio::sync::mpsc::UnboundedReceiver<()>,
        end: std::sync::mpsc::Sender<()>,
    }

    impl Steps {
        /// Until the writer has begun a wait.
        async fn begun(&mut self) {
            let entered = tokio::time::timeout(Duration::from_secs(10), self.entered.recv()).await;
            entered.expect("the writer waits").unwrap();
        }

        /// Ends the wait the writer is in.
        fn end(&self) {
            self.end.send(()).unwrap();
        }

        /// Hands `count` notifications to the writer in its next wait, then ends the wait.
        async fn arrive_in_a_wait<'a>(
            &mut self,
            spool: &'a Spool,
            prefix: &str,
            count: usize,
        ) -> Vec<SinkFuture<'a>> {
            self.begun().await;
            let accepts = hand_over_many(spool, prefix, count).await;
            self.end();
            accepts
        }

        /// Lets the writer's next wait pass with nothing arriving.
        async fn pass_a_wait(&mut self) {
            self.begun().await;
            self.end();
        }
    }

    /// A spool whose writer lingers at most `waits` waits, each a step the test takes.
    fn stepped(waits: u32) -> (Spool, Metrics, tempfile::TempDir, Steps) {
        let linger = Duration::from_secs(1);
        let (spool, metrics, dir) = lingering(linger, linger * waits);
        let (entered_tx, entered) = tokio::sync::mpsc::unbounded_channel();
        let (end, end_rx) = std::sync::mpsc::channel();
        *spool.shared.wait_steps.lock().unwrap() = Some(writer::WaitSteps {
            entered: entered_tx,
            end: end_rx,
        });
        (spool, metrics, dir, Steps { entered, end })
    }

    #[tokio::test]
    async fn notifications_that_keep_arriving_share_one_commit_across_several_waits() {
        let (spool, metrics, _dir, mut steps) = stepped(10);
        let mut accepts = hand_over_many(&spool, "a", 1).await;
        accepts.extend(steps.arrive_in_a_wait(&spool, "b", 1).await);
        // The first wait brought `b`, so the writer waits again.
        accepts.extend(steps.arrive_in_a_wait(&spool, "c", 1).await);
        steps.pass_a_wait().await;
        all_accepted(accepts).await;
        assert_eq!(spool.entries(), 3);
        assert_eq!(metrics.spool_commits.get(), 1);
    }

    #[tokio::test]
    async fn a_lone_notification_is_committed_after_one_wait() {
        let (spool, metrics, _dir, mut steps) = stepped(30);
        let accepts = hand_over_many(&spool, "a", 1).await;
        // A wait that brought nothing ends the lingering: not `linger_max` later.
        steps.pass_a_wait().await;
        all_accepted(accepts).await;
        assert_eq!(metrics.spool_commits.get(), 1);
    }

    #[tokio::test]
    async fn the_writer_stops_lingering_once_enough_wait() {
        let (spool, metrics, _dir, mut steps) = stepped(10);
        let mut accepts = hand_over_many(&spool, "a", 1).await;
        accepts.extend(steps.arrive_in_a_wait(&spool, "b", GROUP_ENOUGH - 1).await);
        all_accepted(accepts).await;
        // After the commit of the first group: a commit of its own.
        let late = hand_over_many(&spool, "c", 1).await;
        steps.pass_a_wait().await;
        all_accepted(late).await;
        assert_eq!(spool.entries(), GROUP_ENOUGH as u64 + 1);
        assert_eq!(metrics.spool_commits.get(), 2);
    }

    #[tokio::test]
    async fn the_writer_lingers_at_most_linger_max() {
        let (spool, metrics, _dir, mut steps) = stepped(2);
        let mut accepts = hand_over_many(&spool, "a", 1).await;
        accepts.extend(steps.arrive_in_a_wait(&spool, "b", 1).await);
        // Each wait brought more, but after two `linger_max` has passed.
        accepts.extend(steps.arrive_in_a_wait(&spool, "c", 1).await);
        all_accepted(accepts).await;
        let late = hand_over_many(&spool, "d", 1).await;
        steps.pass_a_wait().await;
        all_accepted(late).await;
        assert_eq!(spool.entries(), 4);
        assert_eq!(metrics.spool_commits.get(), 2);
    }

    #[tokio::test]
    async fn a_writer_that_does_not_linger_commits_each_at_once() {
        let (spool, metrics, _dir) = lingering(Duration::ZERO, Duration::from_secs(1));
        // Answered alone: nothing else ever arrives to share its commit.
        let first = spool.accept(plan("a"), Reservation::unbudgeted()).await;
        assert_eq!(first.unwrap(), Acceptance::Accepted);
        assert_eq!(metrics.spool_commits.get(), 1);
        let second = spool.accept(plan("b"), Reservation::unbudgeted()).await;
        assert_eq!(second.unwrap(), Acceptance::Accepted);
        assert_eq!(spool.entries(), 2);
        assert_eq!(metrics.spool_commits.get(), 2);
    }

    #[tokio::test]
    async fn every_commit_s_duration_is_observed_failed_ones_too() {
        let (spool, metrics, _dir) = lingering(Duration::ZERO, Duration::ZERO);
        let accepted = spool.accept(plan("a"), Reservation::unbudgeted()).await;
        assert_eq!(accepted.unwrap(), Acceptance::Accepted);
        assert_eq!(metrics.spool_commit_duration.get_sample_count(), 1);
        // A write and an `fdatasync` take time, however fast the disk.
        assert!(metrics.spool_commit_duration.get_sample_sum() > 0.0);
        spool.shared.failing_after_commit.store(1, Ordering::SeqCst);
        let failed = spool.accept(plan("b"), Reservation::unbudgeted()).await;
        assert!(matches!(failed, Err(SinkError::SpoolUnwritable)));
        assert_eq!(metrics.spool_commits.get(), 1);
        assert_eq!(metrics.spool_commit_duration.get_sample_count(), 2);
    }

    #[tokio::test]
    async fn concurrent_appends_are_all_kept() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(open(dir.path(), 1 << 30));
        let mut tasks = Vec::new();
        for i in 0..200 {
            let spool = spool.clone();
            tasks.push(tokio::spawn(async move {
                spool
                    .accept(plan(&format!("c{i}")), Reservation::unbudgeted())
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), Acceptance::Accepted);
        }
        assert_eq!(spool.entries(), 200);
    }

    #[tokio::test]
    async fn dedup_record_expires_by_count() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(
            dir.path(),
            SpoolOptions {
                dedup_capacity: 2,
                ..options()
            },
            Metrics::new(),
        )
        .unwrap();
        for uuid in ["a", "b", "c", "d"] {
            spool
                .accept(plan(uuid), Reservation::unbudgeted())
                .await
                .unwrap();
        }
        // Only the two most recent uuids are remembered.
        assert_eq!(
            spool
                .accept(plan("d"), Reservation::unbudgeted())
                .await
                .unwrap(),
            Acceptance::Duplicate
        );
        assert_eq!(
            spool
                .accept(plan("a"), Reservation::unbudgeted())
                .await
                .unwrap(),
            Acceptance::Accepted
        );
    }

    /// The uuids the record's table holds.
    fn recorded(spool: &Spool) -> Vec<String> {
        let db = spool.shared.database().unwrap();
        let read = db.begin_read().unwrap();
        let table = read.open_table(SEEN_ORDER).unwrap();
        table
            .iter()
            .unwrap()
            .map(|item| item.unwrap().1.value().to_string())
            .collect()
    }

    #[tokio::test]
    async fn accepted_uuids_reach_the_record_in_batches_and_are_duplicates_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let spool = open(dir.path(), 1 << 20);
        for uuid in ["a", "b", "c"] {
            let accepted = spool.accept(plan(uuid), Reservation::unbudgeted());
            assert_eq!(accepted.await.unwrap(), Acceptance::Accepted);
        }
        assert!(
            recorded(&spool).is_empty(),
            "one commit each, none recorded yet"
        );
        for uuid in ["a", "b", "c"] {
            let again = spool.accept(plan(uuid), Reservation::unbudgeted());
            assert_eq!(again.await.unwrap(), Acceptance::Duplicate, "{uuid}");
        }
        // A dead letter makes the database's commit durable, and the record takes them with it.
        let entries = spool.oldest(1, usize::MAX).unwrap();
        let letter = DeadLetter {
            reason: "too large".into(),
            message: entries[0].plan.messages[0].clone(),
        };
        spool
            .release(vec![entries[0].seq], vec![letter])
            .await
            .unwrap();
        assert_eq!(recorded(&spool), ["a", "b", "c"]);
        spool.close();

        // What the last commits accepted is recorded on the way out, and a duplicate after.
        let spool = open(dir.path(), 1 << 20);
        spool
            .accept(plan("d"), Reservation::unbudgeted())
            .await
            .unwrap();
        spool.close();
        {
            let db = Database::open(dir.path().join(DATABASE_FILE)).unwrap();
            let read = db.begin_read().unwrap();
            let table = read.open_table(SEEN_ORDER).unwrap();
            assert_eq!(table.len().unwrap(), 4, "before the journal is read again");
        }
        let spool = open(dir.path(), 1 << 20);
        let again = spool.accept(plan("d"), Reservation::unbudgeted());
        assert_eq!(again.await.unwrap(), Acceptance::Duplicate);
    }

    #[tokio::test]
    async fn dedup_record_expires_by_age_unrecorded_uuids_too() {
        let dir = tempfile::tempdir().unwrap();
        let window = Duration::from_millis(20);
        let spool = Spool::open(
            dir.path(),
            SpoolOptions {
                dedup_window: window,
                ..options()
            },
            Metrics::new(),
        )
        .unwrap();
        let accepted_at = now_ms();
        spool
            .accept(plan("a"), Reservation::unbudgeted())
            .await
            .unwrap();
        assert!(recorded(&spool).is_empty());
        // Past the window by the clock the record's keys are taken from.
        while now_ms() <= accepted_at + window.as_millis() as u64 + 1 {
            std::thread::yield_now();
        }
        let again = spool.accept(plan("a"), Reservation::unbudgeted());
        assert_eq!(again.await.unwrap(), Acceptance::Accepted);
        let again = spool.accept(plan("a"), Reservation::unbudgeted());
        assert_eq!(again.await.unwrap(), Acceptance::Duplicate);
        assert!(
            recorded(&spool).is_empty(),
            "recorded, then expired: {:?}",
            recorded(&spool)
        );
    }

    #[tokio::test]
    async fn dedup_record_over_its_capacity_is_trimmed_below_it_by_its_slack() {
        let dir = tempfile::tempdir().unwrap();
        let capacity = 128; // a slack of 2
        let spool = Spool::open(
            dir.path(),
            SpoolOptions {
                dedup_capacity: capacity,
                ..options()
            },
            Metrics::new(),
        )
        .unwrap();
        for i in 0..capacity {
            spool
                .accept(plan(&format!("u{i}")), Reservation::unbudgeted())
                .await
                .unwrap();
        }
        // At the capacity nothing is forgotten yet.
        assert_eq!(
            spool
                .accept(plan("u0"), Reservation::unbudgeted())
                .await
                .unwrap(),
            Acceptance::Duplicate
        );
        // One more: the oldest one over the capacity and the slack's two more are forgotten.
        spool
            .accept(plan(&format!("u{capacity}")), Reservation::unbudgeted())
            .await
            .unwrap();
        for i in 3..=capacity {
            assert_eq!(
                spool
                    .accept(plan(&format!("u{i}")), Reservation::unbudgeted())
                    .await
                    .unwrap(),
                Acceptance::Duplicate,
                "u{i}"
            );
        }
        assert_eq!(
            spool
                .accept(plan("u2"), Reservation::unbudgeted())
                .await
                .unwrap(),
            Acceptance::Accepted
        );
        // That one went into the slack: the record is below its capacity still, forgetting nothing.
        assert_eq!(
            spool
                .accept(plan("u3"), Reservation::unbudgeted())
                .await
                .unwrap(),
            Acceptance::Duplicate
        );
        for i in 0..2 {
            assert_eq!(
                spool
                    .accept(plan(&format!("u{i}")), Reservation::unbudgeted())
                    .await
                    .unwrap(),
                Acceptance::Accepted,
                "u{i}"
            );
        }
        // The second filled it past the capacity: the three oldest went.
        for i in 3..6 {
            assert_eq!(
                spool
                    .accept(plan(&format!("u{i}")), Reservation::unbudgeted())
                    .await
                    .unwrap(),
                Acceptance::Accepted,
                "u{i}"
            );
        }
    }

    #[test]
    fn a_panic_inside_the_storage_engine_becomes_a_message() {
        let caught = catch_storage_panic(|| -> u32 { panic!("page checksum mismatch") });
        let message = caught.unwrap_err();
        assert!(message.contains("page checksum mismatch"), "{message}");
        assert!(message.contains("src/spool/"), "names where: {message}");
        assert_eq!(catch_storage_panic(|| 7), Ok(7));
    }

    fn letter(uuid: &str, bytes: usize) -> DeadLetter {
        let mut message = plan(uuid).messages.remove(0);
        message.headers = vec![("rc-notification-uuid".into(), uuid.into())];
        message.value = "x".repeat(bytes);
        DeadLetter {
            reason: "too_large".into(),
            message,
        }
    }

    #[tokio::test]
    async fn dead_letters_count_towards_the_spool_and_are_bounded_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let spool = Spool::open(
            dir.path(),
            SpoolOptions {
                max_bytes: 10_000,
                ..options()
            },
            metrics.clone(),
        )
        .unwrap();
        // The area holds a tenth of the spool (1,000 bytes): room for one such letter at a time.
        for uuid in ["first", "second", "third"] {
            spool
                .release(vec![], vec![letter(uuid, 600)])
                .await
                .unwrap();
        }
        let held = spool.dead_letters().unwrap();
        assert_eq!(held, vec![letter("third", 600)]);
        assert!(spool.dead_letter_bytes() <= 1000);
        assert_eq!(metrics.dead_letters_dropped.get(), 2);
        assert_eq!(metrics.spool_dead_letters.get(), 1);
        assert_eq!(
            metrics.spool_dead_letter_bytes.get() as u64,
            spool.dead_letter_bytes()
        );

        // Pending entries get what the dead letters leave.
        let mut n = 0;
        while spool
            .accept(plan(&format!("p{n}")), Reservation::unbudgeted())
            .await
            .is_ok()
        {
            n += 1;
        }
        assert!(spool.bytes() + spool.dead_letter_bytes() <= 10_000);
        // Refused only once the next entry, as its journal frame, no longer fitted.
        let refused = plan(&format!("p{n}"));
        let stored = record::compress(&record::encode(now_ms(), &refused).unwrap()).len();
        let entry = Journal::entry_frame_bytes(refused.uuid.len(), stored);
        assert!(spool.bytes() + spool.dead_letter_bytes() + entry > 10_000);

        // A dead letter published after all leaves the spool.
        let (id, _) = spool.dead_letters_from(0, 10).unwrap().remove(0);
        spool.forget_dead_letters(vec![id]).await.unwrap();
        assert!(spool.dead_letters().unwrap().is_empty());
        assert_eq!(spool.dead_letter_bytes(), 0);
    }
}
