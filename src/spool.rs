//! The durable spool: every accepted notification's route plan is on disk and fsynced before the
//! webhook is answered, and stays there until Kafka acknowledged every message planned from it.
//!
//! Storage is [`redb`], an embedded ACID store whose commits are crash safe (copy-on-write B-trees
//! with a checksummed commit slot, fsynced with `Durability::Immediate`). One writer thread owns every
//! write: it takes whatever appends and releases are waiting and commits them in one transaction, so
//! concurrent requests share one fsync (group commit).
//!
//! Tables:
//! - `entries`: sequence number -> spooled plan, in acceptance order (the relay publishes in this order).
//! - `seen`: notification uuid -> acceptance time; `seen_order`: (time, sequence) -> uuid, to expire
//!   the deduplication record by age and by count.
//! - `dead`: messages Kafka rejected for good and the dead-letter topic refused too.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::ingress::{Readiness, SpoolHealth};
use crate::metrics::Metrics;
use crate::routing::{OutboundMessage, RoutePlan};
use crate::sink::{Acceptance, Sink, SinkError, SinkFuture};

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
const SEEN: TableDefinition<&str, u64> = TableDefinition::new("seen");
const SEEN_ORDER: TableDefinition<(u64, u64), &str> = TableDefinition::new("seen_order");
const DEAD: TableDefinition<u64, &[u8]> = TableDefinition::new("dead");

/// The most operations one commit takes: bounds the latency of the requests that wait on it.
const MAX_GROUP: usize = 4096;
/// Expired deduplication records removed per commit, so expiry never stalls a commit.
const MAX_EXPIRE_PER_COMMIT: usize = 1024;

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

/// What is written for a [`SpooledEntry`]: the same layout, borrowing the plan instead of copying it.
#[derive(Serialize)]
struct StoredEntry<'a> {
    accepted_at_ms: u64,
    plan: &'a RoutePlan,
}

impl SpooledEntry {
    /// How long ago the notification was answered.
    pub fn age(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.accepted_at_ms))
    }
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

struct Append {
    plan: RoutePlan,
    reply: oneshot::Sender<Result<Acceptance, SinkError>>,
}

struct Release {
    seqs: Vec<u64>,
    dead: Vec<DeadLetter>,
    reply: oneshot::Sender<Result<(), SpoolError>>,
}

const HEALTH_OK: u8 = 0;
const HEALTH_FULL: u8 = 1;
const HEALTH_UNWRITABLE: u8 = 2;

struct Shared {
    /// `None` while the database is being reopened after an I/O error.
    db: std::sync::RwLock<Option<Arc<Database>>>,
    path: PathBuf,
    max_bytes: u64,
    dedup_window: Duration,
    dedup_capacity: usize,
    entries: AtomicU64,
    bytes: AtomicU64,
    health: AtomicU8,
    appended: Notify,
    metrics: Metrics,
}

pub struct Spool {
    shared: Arc<Shared>,
    commands: Mutex<Option<mpsc::UnboundedSender<Command>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    closed: AtomicBool,
}

/// redb's page cache defaults to 1 GiB and grows with a backlog; the relay reads each entry about once,
/// so a small cache costs little speed and keeps memory bounded (measured: a 100k backlog drained at
/// about 50k messages/s with 64 MiB, peak RSS halved).
const CACHE_BYTES: usize = 64 << 20;

fn open_database(path: &Path) -> Result<Database, redb::DatabaseError> {
    Database::builder().set_cache_size(CACHE_BYTES).create(path)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

impl Spool {
    /// Opens (or creates) the spool in `dir` and resumes whatever an earlier run left in it.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        dedup_window: Duration,
        dedup_capacity: usize,
        metrics: Metrics,
    ) -> Result<Spool, SpoolError> {
        std::fs::create_dir_all(dir).map_err(|source| SpoolError::Directory {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join("spool.redb");
        let db = open_database(&path).map_err(|e| SpoolError::Open {
            path: path.clone(),
            message: e.to_string(),
        })?;
        // Create the tables, so readers never meet a missing one.
        let txn = db.begin_write().map_err(storage)?;
        for table in [ENTRIES, DEAD] {
            txn.open_table(table).map_err(storage)?;
        }
        txn.open_table(SEEN).map_err(storage)?;
        txn.open_table(SEEN_ORDER).map_err(storage)?;
        txn.commit().map_err(storage)?;

        let (entries, bytes) = {
            let read = db.begin_read().map_err(storage)?;
            let table = read.open_table(ENTRIES).map_err(storage)?;
            let mut bytes = 0u64;
            for item in table.iter().map_err(storage)? {
                let (_, value) = item.map_err(storage)?;
                bytes += value.value().len() as u64;
            }
            (table.len().map_err(storage)?, bytes)
        };
        if entries > 0 {
            tracing::info!(
                entries,
                bytes,
                "resuming spooled notifications from an earlier run"
            );
        }
        let shared = Arc::new(Shared {
            db: std::sync::RwLock::new(Some(Arc::new(db))),
            path,
            max_bytes,
            dedup_window,
            dedup_capacity,
            entries: AtomicU64::new(entries),
            bytes: AtomicU64::new(bytes),
            health: AtomicU8::new(HEALTH_OK),
            appended: Notify::new(),
            metrics,
        });
        shared.publish_gauges();
        let (tx, rx) = mpsc::unbounded_channel();
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer_shared.run_writer(rx))
            .map_err(|e| SpoolError::Storage(e.to_string()))?;
        Ok(Spool {
            shared,
            commands: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            closed: AtomicBool::new(false),
        })
    }

    /// The oldest entries, in acceptance order: at most `limit` of them, and no more than `max_bytes`
    /// of stored entries (but always at least one).
    pub fn oldest(&self, limit: usize, max_bytes: usize) -> Result<Vec<SpooledEntry>, SpoolError> {
        let read = self.shared.database()?.begin_read().map_err(storage)?;
        let table = read.open_table(ENTRIES).map_err(storage)?;
        let mut out = Vec::new();
        let mut bytes = 0;
        for item in table.iter().map_err(storage)?.take(limit) {
            let (seq, value) = item.map_err(storage)?;
            bytes += value.value().len();
            if bytes > max_bytes && !out.is_empty() {
                break;
            }
            let mut entry: SpooledEntry = serde_json::from_slice(value.value()).map_err(storage)?;
            entry.seq = seq.value();
            out.push(entry);
        }
        Ok(out)
    }

    /// Removes entries whose messages Kafka acknowledged (or that were dead-lettered), and keeps
    /// `dead` letters, in one durable commit.
    pub async fn release(&self, seqs: Vec<u64>, dead: Vec<DeadLetter>) -> Result<(), SpoolError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Release(Release { seqs, dead, reply }))
            .map_err(|_| SpoolError::Storage("spool is closed".into()))?;
        answer
            .await
            .unwrap_or_else(|_| Err(SpoolError::Storage("spool writer stopped".into())))
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

    /// Updates the age gauge of the oldest entry.
    pub fn observe_oldest(&self, oldest: Option<&SpooledEntry>) {
        let age = oldest.map(|e| e.age().as_secs_f64()).unwrap_or(0.0);
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
    fn accept(&self, plan: RoutePlan) -> SinkFuture<'_> {
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            self.send(Command::Append(Append { plan, reply }))
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

/// What one group commit changed, applied to the counters only once it is durable.
#[derive(Default)]
struct Delta {
    added_entries: u64,
    added_bytes: u64,
    removed_entries: u64,
    removed_bytes: u64,
}

impl Shared {
    fn database(&self) -> Result<Arc<Database>, SpoolError> {
        self.db.read().unwrap().clone().ok_or_else(|| {
            SpoolError::Storage("spool is closed, or reopening after an I/O error".into())
        })
    }

    /// After an I/O error redb refuses every later write until the database is opened again; the
    /// last durable commit is intact, so reopening is how the spool recovers once the disk does.
    fn reopen(&self) {
        let mut slot = self.db.write().unwrap();
        // The old handle must be gone before the file can be opened again.
        drop(slot.take());
        match open_database(&self.path) {
            Ok(db) => {
                tracing::info!("spool reopened");
                *slot = Some(Arc::new(db));
            }
            Err(e) => tracing::warn!(error = %e, "spool cannot be reopened yet"),
        }
    }

    fn run_writer(&self, mut rx: mpsc::UnboundedReceiver<Command>) {
        while let Some(first) = rx.blocking_recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(command) => group.push(command),
                    Err(_) => break,
                }
            }
            self.commit_group(group);
        }
    }

    fn commit_group(&self, group: Vec<Command>) {
        let mut appends = Vec::new();
        let mut releases = Vec::new();
        for command in group {
            match command {
                Command::Append(append) => appends.push(append),
                Command::Release(release) => releases.push(release),
            }
        }
        let mut outcomes: Vec<Result<Acceptance, SinkError>> = Vec::with_capacity(appends.len());
        let result = self.write(&appends, &releases, &mut outcomes);
        match result {
            Ok(delta) => {
                let full_before = self.health.load(Ordering::Relaxed) == HEALTH_FULL;
                self.entries
                    .fetch_add(delta.added_entries, Ordering::Relaxed);
                self.entries
                    .fetch_sub(delta.removed_entries, Ordering::Relaxed);
                self.bytes.fetch_add(delta.added_bytes, Ordering::Relaxed);
                self.bytes.fetch_sub(delta.removed_bytes, Ordering::Relaxed);
                let rejected_for_space = outcomes
                    .iter()
                    .any(|o| matches!(o, Err(SinkError::SpoolFull)));
                let health = if rejected_for_space || (full_before && delta.removed_entries == 0) {
                    HEALTH_FULL
                } else {
                    HEALTH_OK
                };
                self.health.store(health, Ordering::Relaxed);
                self.publish_gauges();
                if delta.added_entries > 0 {
                    self.appended.notify_one();
                }
                for (append, outcome) in appends.into_iter().zip(outcomes) {
                    let _ = append.reply.send(outcome);
                }
                for release in releases {
                    let _ = release.reply.send(Ok(()));
                }
            }
            Err(e) => {
                // Nothing of this group was kept: every request in it gets 503, and the next group
                // tries again, so the spool recovers by itself when the disk does.
                tracing::error!(error = %e, "spool commit failed; answering 503 until it succeeds");
                self.health.store(HEALTH_UNWRITABLE, Ordering::Relaxed);
                self.reopen();
                for append in appends {
                    let _ = append.reply.send(Err(SinkError::SpoolUnwritable));
                }
                for release in releases {
                    let _ = release.reply.send(Err(SpoolError::Storage(e.to_string())));
                }
            }
        }
    }

    fn write(
        &self,
        appends: &[Append],
        releases: &[Release],
        outcomes: &mut Vec<Result<Acceptance, SinkError>>,
    ) -> Result<Delta, SpoolError> {
        let mut delta = Delta::default();
        let now = now_ms();
        let txn = self.database()?.begin_write().map_err(storage)?;
        {
            let mut entries = txn.open_table(ENTRIES).map_err(storage)?;
            let mut seen = txn.open_table(SEEN).map_err(storage)?;
            let mut seen_order = txn.open_table(SEEN_ORDER).map_err(storage)?;
            let mut dead_table = txn.open_table(DEAD).map_err(storage)?;

            for release in releases {
                for seq in &release.seqs {
                    if let Some(old) = entries.remove(seq).map_err(storage)? {
                        delta.removed_entries += 1;
                        delta.removed_bytes += old.value().len() as u64;
                    }
                }
                let next_dead = dead_table
                    .last()
                    .map_err(storage)?
                    .map(|(k, _)| k.value() + 1)
                    .unwrap_or(0);
                for (key, letter) in (next_dead..).zip(&release.dead) {
                    let bytes = serde_json::to_vec(letter).map_err(storage)?;
                    dead_table.insert(key, bytes.as_slice()).map_err(storage)?;
                }
            }

            let mut next_seq = entries
                .last()
                .map_err(storage)?
                .map(|(k, _)| k.value() + 1)
                .unwrap_or(0);
            let mut bytes = self.bytes.load(Ordering::Relaxed) - delta.removed_bytes;
            for Append { plan, .. } in appends {
                if seen.get(plan.uuid.as_str()).map_err(storage)?.is_some() {
                    outcomes.push(Ok(Acceptance::Duplicate));
                    continue;
                }
                let entry = StoredEntry {
                    accepted_at_ms: now,
                    plan,
                };
                let value = serde_json::to_vec(&entry).map_err(storage)?;
                if bytes + value.len() as u64 > self.max_bytes {
                    outcomes.push(Err(SinkError::SpoolFull));
                    continue;
                }
                entries
                    .insert(next_seq, value.as_slice())
                    .map_err(storage)?;
                seen.insert(plan.uuid.as_str(), now).map_err(storage)?;
                seen_order
                    .insert((now, next_seq), plan.uuid.as_str())
                    .map_err(storage)?;
                bytes += value.len() as u64;
                delta.added_entries += 1;
                delta.added_bytes += value.len() as u64;
                next_seq += 1;
                outcomes.push(Ok(Acceptance::Accepted));
            }

            // Forget uuids older than the window, or beyond the capacity, a bounded number at a time.
            let horizon = now.saturating_sub(self.dedup_window.as_millis() as u64);
            let mut over =
                (seen_order.len().map_err(storage)? as usize).saturating_sub(self.dedup_capacity);
            for _ in 0..MAX_EXPIRE_PER_COMMIT {
                let Some(((at, seq), uuid)) = seen_order
                    .first()
                    .map_err(storage)?
                    .map(|(k, v)| (k.value(), v.value().to_string()))
                else {
                    break;
                };
                if at >= horizon && over == 0 {
                    break;
                }
                seen_order.remove((at, seq)).map_err(storage)?;
                // The same uuid may have been accepted again later; only its own record goes.
                if seen.get(uuid.as_str()).map_err(storage)?.map(|v| v.value()) == Some(at) {
                    seen.remove(uuid.as_str()).map_err(storage)?;
                }
                over = over.saturating_sub(1);
            }
        }
        txn.commit().map_err(storage)?;
        Ok(delta)
    }

    fn publish_gauges(&self) {
        self.metrics
            .spool_entries
            .set(self.entries.load(Ordering::Relaxed) as i64);
        self.metrics
            .spool_bytes
            .set(self.bytes.load(Ordering::Relaxed) as i64);
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
            }],
        }
    }

    fn open(dir: &Path, max_bytes: u64) -> Spool {
        Spool::open(
            dir,
            max_bytes,
            Duration::from_secs(3600),
            1000,
            Metrics::new(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn entries_survive_reopening_in_order_and_dedup_too() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = open(dir.path(), 1 << 20);
            for uuid in ["a", "b", "c"] {
                assert_eq!(
                    spool.accept(plan(uuid)).await.unwrap(),
                    Acceptance::Accepted
                );
            }
            assert_eq!(spool.entries(), 3);
        }
        let spool = open(dir.path(), 1 << 20);
        assert_eq!(spool.entries(), 3);
        let uuids: Vec<String> = spool
            .oldest(10, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|e| e.plan.uuid)
            .collect();
        assert_eq!(uuids, ["a", "b", "c"]);
        // A byte budget smaller than one entry still yields that entry; two entries' worth, two.
        assert_eq!(spool.oldest(10, 1).unwrap().len(), 1);
        let one = serde_json::to_vec(&spool.oldest(1, usize::MAX).unwrap()[0])
            .unwrap()
            .len();
        assert_eq!(spool.oldest(10, 2 * one + 20).unwrap().len(), 2);
        assert_eq!(
            spool.accept(plan("b")).await.unwrap(),
            Acceptance::Duplicate
        );
        assert_eq!(spool.entries(), 3);
    }

    #[tokio::test]
    async fn release_removes_and_keeps_dead_letters() {
        let dir = tempfile::tempdir().unwrap();
        let spool = open(dir.path(), 1 << 20);
        spool.accept(plan("a")).await.unwrap();
        spool.accept(plan("b")).await.unwrap();
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
            spool.accept(plan("a")).await.unwrap(),
            Acceptance::Duplicate
        );
    }

    #[tokio::test]
    async fn a_full_spool_refuses_and_recovers_when_drained() {
        let dir = tempfile::tempdir().unwrap();
        let spool = open(dir.path(), 400);
        let mut accepted = 0;
        let mut refused = None;
        for i in 0..20 {
            match spool.accept(plan(&format!("n{i}"))).await {
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
            spool.accept(plan("later")).await.unwrap(),
            Acceptance::Accepted
        );
    }

    #[tokio::test]
    async fn concurrent_appends_are_all_kept() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(open(dir.path(), 1 << 30));
        let mut tasks = Vec::new();
        for i in 0..200 {
            let spool = spool.clone();
            tasks.push(tokio::spawn(async move {
                spool.accept(plan(&format!("c{i}"))).await
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
            1 << 20,
            Duration::from_secs(3600),
            2,
            Metrics::new(),
        )
        .unwrap();
        for uuid in ["a", "b", "c", "d"] {
            spool.accept(plan(uuid)).await.unwrap();
        }
        // Only the two most recent uuids are remembered.
        assert_eq!(
            spool.accept(plan("d")).await.unwrap(),
            Acceptance::Duplicate
        );
        assert_eq!(spool.accept(plan("a")).await.unwrap(), Acceptance::Accepted);
    }
}
