//! The writer thread: group commits of appends and releases, and the counters they move.
//!
//! A commit's entries and releases are frames of the journal, written and `fdatasync`ed once. The
//! database gets the rest, in a transaction before the journal's frames and only when there is
//! something to keep: dead letters, and releases of entries a spool of an earlier release holds in
//! the database, durably before the frames that release their entries; and the deduplication
//! record. The uuids a commit accepts are in its frames, so the record takes them in batches
//! (the index answers for them meanwhile): durably every [`LAZY_COMMITS`] commits or
//! [`MAX_UNRECORDED`] uuids and before a journal file is written over, and without `fdatasync`
//! whenever expiry is due. After a crash the record is brought up to the journal (`resume`).

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Instant;

use redb::Durability;

use super::*;

/// Commits between two durable ones of the database. A crash loses nothing by them (the journal holds
/// every uuid since); what bounds them is the work of bringing the record up to the journal at the
/// next start.
const LAZY_COMMITS: u32 = 64;

/// Uuids accepted and not yet in the deduplication record, at most: they are held in memory.
const MAX_UNRECORDED: usize = 1024;

/// Bytes of frames moved out of an old journal file at most a commit.
const MOVE_PER_COMMIT: u64 = 1 << 20;

/// A commit that failed.
pub(super) struct Failure {
    error: SpoolError,
    /// Whether the database is reopened and the spool read back before the next commit: not after
    /// the journal's commit failed, whose state is as before it (the next commit writes over
    /// what this one wrote) and the database's transaction dropped.
    read_back: bool,
}

impl From<SpoolError> for Failure {
    fn from(error: SpoolError) -> Failure {
        Failure {
            error,
            read_back: true,
        }
    }
}

/// What the writer thread owns.
pub(super) struct Writer {
    pub(super) seen: SeenIndex,
    /// `None` while it cannot be read back after an I/O error.
    pub(super) journal: Option<Journal>,
    /// Commits since the database's last durable one.
    lazy_commits: u32,
}

impl Writer {
    pub(super) fn new(seen: SeenIndex, journal: Journal) -> Writer {
        Writer {
            seen,
            journal: Some(journal),
            lazy_commits: 0,
        }
    }
}

/// What one group commit changed, applied to the counters only once it is durable.
#[derive(Default)]
pub(super) struct Delta {
    added_entries: u64,
    added_bytes: u64,
    removed_entries: u64,
    removed_bytes: u64,
    added_dead_letters: u64,
    added_dead_letter_bytes: u64,
    removed_dead_letters: u64,
    removed_dead_letter_bytes: u64,
    /// Dead letters dropped to keep the area within its share: logged once the commit is durable.
    dropped: Vec<DeadLetter>,
    /// The sequence numbers of the appends committed, in order, for the hand-off.
    committed: Vec<u64>,
    seen: SeenChanges,
    /// Entries of a spool of an earlier release removed from the database.
    removed_legacy: u64,
    /// The journal's commit is durable but the database's failed: what the commit kept stands,
    /// and the database is read again (its deduplication record brought up to the journal).
    database_failed: Option<SpoolError>,
}

impl Shared {
    pub(super) fn dead_letter_max_bytes(&self) -> u64 {
        self.max_bytes / DEAD_LETTER_SHARE
    }

    /// The hand-off, even after a panic elsewhere while it was held: every change to it leaves it
    /// whole (a run of entries and its end), and the relay falls back to the database anyway.
    pub(super) fn handoff(&self) -> std::sync::MutexGuard<'_, handoff::HandOff> {
        self.handoff
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Where the journal's pending entries are, even after a panic elsewhere while it was held:
    /// every change to it leaves it whole.
    pub(super) fn pending(&self) -> std::sync::MutexGuard<'_, journal::Index> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn database(&self) -> Result<Arc<Database>, SpoolError> {
        self.db.read().unwrap().clone().ok_or_else(|| {
            SpoolError::Storage("spool is closed, or reopening after an I/O error".into())
        })
    }

    /// After an I/O error redb refuses every later write until the database is opened again; the
    /// last durable commit is intact, so reopening is how the spool recovers once the disk does.
    pub(super) fn reopen(&self) {
        let mut slot = self.db.write().unwrap();
        // The old handle must be gone before the file can be opened again.
        drop(slot.take());
        // Open, never create: a file that vanished while serving must not come back empty.
        match catch_storage_panic(|| builder(self.cache_bytes).open(&self.path)) {
            Ok(Ok(db)) => {
                tracing::info!("spool reopened");
                *slot = Some(Arc::new(db));
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "spool cannot be reopened yet"),
            Err(panic) => {
                tracing::error!(error = %panic, "spool cannot be reopened: the storage engine failed on it")
            }
        }
    }

    /// An unwritable spool, unasked: reads the spool back if it could not be, and commits nothing
    /// to learn whether the disk takes writes again. Without it, a spool left unwritable with
    /// nothing to write (an empty spool, or a relay that cannot read a database not reopened)
    /// would stay so, and unready, until someone restarted the bridge.
    fn try_again(&self, writer: &mut Writer) {
        if self.database().is_err() || writer.journal.is_none() {
            self.recover(writer);
        }
        let probe = self.database().and_then(|db| {
            let txn = db.begin_write().map_err(storage)?;
            txn.commit().map_err(storage)
        });
        match probe {
            Ok(()) if writer.journal.is_some() => {
                tracing::info!("spool writable again");
                self.health.store(HEALTH_OK, Ordering::Relaxed);
            }
            Ok(()) => tracing::debug!("spool journal still unreadable"),
            Err(e) => {
                tracing::debug!(error = %e, "spool still unwritable");
                self.recover(writer);
            }
        }
        #[cfg(test)]
        self.tried_again.notify_one();
    }

    /// Reopens the database and reads the journal back after a failed commit, and takes what they
    /// hold as the truth. A commit can fail after it reached the disk (a write may land though its
    /// `fdatasync` failed): its entries are then in the journal, and the next entry must come after
    /// them, or it would overwrite one answered 200 as a duplicate on redelivery.
    pub(super) fn recover(&self, writer: &mut Writer) {
        self.reopen();
        writer.journal = None;
        writer.lazy_commits = 0;
        let Ok(db) = self.database() else {
            return;
        };
        let id = self.identity.as_ref().map_or("", |i| i.id.as_str());
        match resume(&db, &self.dir, id, self.segment_bytes) {
            Ok(resumed) => {
                self.entries
                    .store(resumed.counts.entries, Ordering::Relaxed);
                self.bytes.store(resumed.counts.bytes, Ordering::Relaxed);
                self.dead_letters
                    .store(resumed.counts.dead_letters, Ordering::Relaxed);
                self.dead_letter_bytes
                    .store(resumed.counts.dead_letter_bytes, Ordering::Relaxed);
                self.legacy_entries
                    .store(resumed.legacy_entries, Ordering::Relaxed);
                *self.files.write().unwrap() = resumed.journal.shared_files();
                *self.pending() = resumed.index;
                // The relay goes back to the spool for what follows the hand-off.
                self.handoff().resync(resumed.end);
                self.publish_gauges();
                writer.seen = resumed.seen;
                writer.journal = Some(resumed.journal);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the spool back after a failed commit")
            }
        }
    }

    pub(super) fn run_writer(&self, rx: Receiver<Command>, mut writer: Writer) {
        loop {
            let first = if self.health.load(Ordering::Relaxed) == HEALTH_UNWRITABLE {
                match rx.recv_timeout(RETRY_UNWRITABLE) {
                    Ok(command) => command,
                    Err(RecvTimeoutError::Timeout) => {
                        self.try_again(&mut writer);
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(command) => command,
                    Err(_) => break,
                }
            };
            let mut group = vec![first];
            take_waiting(&rx, &mut group);
            if !self.linger.is_zero() {
                self.linger_for_more(&rx, &mut group);
            }
            self.commit_group(group, &mut writer);
        }
        // The unrecorded uuids are in the journal anyway; recording them now spares the next
        // start bringing the record up to it.
        if writer.lazy_commits > 0
            && let Ok(db) = self.database()
        {
            let _ = Self::record_unrecorded(&db, &writer.seen);
        }
    }

    /// Waits for more commands to commit with `group`. More are on their way under load: one
    /// `fdatasync` then covers them too, instead of a commit for every few (bench/HISTORY.md, "The
    /// spool's writer lingering"). It waits `linger`, and again while each wait brings more, until
    /// [`GROUP_ENOUGH`] wait or `linger_max` has passed: at a moderate rate a commit then carries
    /// three times as many as after one wait, while an idle bridge still answers after one, and
    /// at full load, where one wait gathers nearly as many, little changes (bench/HISTORY.md, "The
    /// writer lingering while more arrive").
    fn linger_for_more(&self, rx: &Receiver<Command>, group: &mut Vec<Command>) {
        let mut waited = Duration::ZERO;
        while group.len() < MAX_GROUP {
            let before = group.len();
            self.wait_once();
            waited += self.linger;
            take_waiting(rx, group);
            if group.len() == before || group.len() >= GROUP_ENOUGH || waited >= self.linger_max {
                break;
            }
        }
    }

    /// One wait of `linger`; in tests that set [`WaitSteps`], until the test ends it.
    fn wait_once(&self) {
        #[cfg(test)]
        if let Some(steps) = &*self.wait_steps.lock().unwrap() {
            let _ = steps.entered.send(());
            let _ = steps.end.recv();
            return;
        }
        std::thread::sleep(self.linger);
    }

    /// Commits the unrecorded uuids to the record, durably.
    fn record_unrecorded(db: &Database, index: &SeenIndex) -> Result<(), SpoolError> {
        let txn = db.begin_write().map_err(storage)?;
        {
            let mut seen_order = txn.open_table(SEEN_ORDER).map_err(storage)?;
            for (key, uuid) in index.unrecorded() {
                seen_order.insert(key, uuid).map_err(storage)?;
            }
        }
        txn.commit().map_err(storage)
    }

    pub(super) fn commit_group(&self, group: Vec<Command>, writer: &mut Writer) {
        let mut appends = Vec::new();
        let mut releases = Vec::new();
        for command in group {
            match command {
                Command::Append(append) => appends.push(append),
                Command::Release(release) => releases.push(release),
            }
        }
        let mut outcomes: Vec<Result<Acceptance, SinkError>> = Vec::with_capacity(appends.len());
        let started = Instant::now();
        let result = self.write(writer, &appends, &releases, &mut outcomes);
        self.metrics
            .spool_commit_duration
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(mut delta) => {
                self.metrics.spool_commits.inc();
                let database_failed = delta.database_failed.take();
                writer.seen.apply(std::mem::take(&mut delta.seen));
                let full_before = self.health.load(Ordering::Relaxed) == HEALTH_FULL;
                self.entries
                    .fetch_add(delta.added_entries, Ordering::Relaxed);
                self.entries
                    .fetch_sub(delta.removed_entries, Ordering::Relaxed);
                self.legacy_entries
                    .fetch_sub(delta.removed_legacy, Ordering::Relaxed);
                self.bytes.fetch_add(delta.added_bytes, Ordering::Relaxed);
                self.bytes.fetch_sub(delta.removed_bytes, Ordering::Relaxed);
                self.dead_letters
                    .fetch_add(delta.added_dead_letters, Ordering::Relaxed);
                self.dead_letters
                    .fetch_sub(delta.removed_dead_letters, Ordering::Relaxed);
                self.dead_letter_bytes
                    .fetch_add(delta.added_dead_letter_bytes, Ordering::Relaxed);
                self.dead_letter_bytes
                    .fetch_sub(delta.removed_dead_letter_bytes, Ordering::Relaxed);
                for letter in &delta.dropped {
                    self.metrics.dead_letters_dropped.inc();
                    tracing::error!(
                        uuid = letter.message.header("rc-notification-uuid").unwrap_or_default(),
                        topic = %letter.message.topic,
                        reason = %letter.reason,
                        max_bytes = self.dead_letter_max_bytes(),
                        "the spool's dead-letter area is full: dropped its oldest dead letter"
                    );
                }
                let rejected_for_space = outcomes
                    .iter()
                    .any(|o| matches!(o, Err(SinkError::SpoolFull)));
                let freed = delta.removed_entries > 0 || delta.removed_dead_letters > 0;
                let health = if rejected_for_space || (full_before && !freed) {
                    HEALTH_FULL
                } else {
                    HEALTH_OK
                };
                self.health.store(health, Ordering::Relaxed);
                self.publish_gauges();
                let mut records = Vec::with_capacity(delta.committed.len());
                for (append, outcome) in appends.into_iter().zip(outcomes) {
                    let Append {
                        record,
                        reply,
                        held,
                        ..
                    } = append;
                    // The hand-off bounds the records it keeps on its own.
                    drop(held);
                    // Exactly the appends committed were accepted, in the same order.
                    if matches!(outcome, Ok(Acceptance::Accepted)) {
                        records.push(record);
                    }
                    let _ = reply.send(outcome);
                }
                let mut handoff = self.handoff();
                for (seq, record) in delta.committed.into_iter().zip(records) {
                    handoff.push(StoredEntry::new(seq, record));
                }
                drop(handoff);
                if delta.added_entries > 0 {
                    self.appended.notify_one();
                }
                for release in releases {
                    let _ = release.reply.send(Ok(()));
                }
                if let Some(e) = database_failed {
                    tracing::error!(error = %e, "spool database commit failed after the journal's; reading the spool back");
                    self.recover(writer);
                }
            }
            Err(Failure {
                error: e,
                read_back,
            }) => {
                // Nothing of this group counts as kept: every request in it gets 503, and the next
                // group tries again, so the spool recovers by itself when the disk does.
                tracing::error!(error = %e, "spool commit failed; answering 503 until it succeeds");
                self.health.store(HEALTH_UNWRITABLE, Ordering::Relaxed);
                if read_back {
                    self.recover(writer);
                }
                for Append { reply, held, .. } in appends {
                    drop(held);
                    let _ = reply.send(Err(SinkError::SpoolUnwritable));
                }
                for release in releases {
                    let _ = release.reply.send(Err(SpoolError::Storage(e.to_string())));
                }
            }
        }
    }

    pub(super) fn write(
        &self,
        writer: &mut Writer,
        appends: &[Append],
        releases: &[Release],
        outcomes: &mut Vec<Result<Acceptance, SinkError>>,
    ) -> Result<Delta, Failure> {
        let Writer {
            seen: index,
            journal,
            lazy_commits,
        } = writer;
        let journal = journal.as_mut().ok_or_else(|| {
            SpoolError::Storage("the spool's journal could not be read back".into())
        })?;
        let mut delta = Delta::default();
        let now = now_ms();
        let db = self.database()?;

        // What the releases name: entries in the journal, or in the database (a spool of an
        // earlier release); those in neither were released before.
        let mut released = Vec::new();
        let mut legacy = Vec::new();
        {
            let pending = self.pending();
            for seq in releases.iter().flat_map(|r| &r.seqs) {
                match pending.get(*seq) {
                    Some(at) => released.push((*seq, at)),
                    None => legacy.push(*seq),
                }
            }
        }
        if self.legacy_entries.load(Ordering::Relaxed) == 0 {
            legacy.clear();
        }
        let moving = self.pinned(journal)?;
        // An upper bound of the journal's frames, to tell whether this commit may write over a
        // file whose uuids the deduplication record must have kept durably first.
        let frames: u64 = appends
            .iter()
            .map(|a| Journal::entry_frame_bytes(a.uuid.len(), a.record.bytes().len()))
            .sum::<u64>()
            + journal.release_frame_bytes(released.len())
            + moving
                .iter()
                .map(|(m, _)| Journal::entry_frame_bytes(m.uuid.len(), m.record.len()))
                .sum::<u64>();
        let dead_letters = releases
            .iter()
            .any(|r| !r.dead.is_empty() || !r.forget.is_empty());
        let changed_first = dead_letters || !legacy.is_empty();
        let durable_first = changed_first
            || *lazy_commits >= LAZY_COMMITS
            || index.unrecorded_len() >= MAX_UNRECORDED
            || journal.may_reuse(frames);
        let horizon = now.saturating_sub(self.dedup_window.as_millis() as u64);
        let expiry_due = index.expiry_due(self.dedup_capacity, horizon);

        // Dead letters and the database's releases are durable before the journal's frames that
        // release their entries. The record takes the uuids of the commits before this one (never
        // this one's, which are not kept unless the journal's commit succeeds: a refused
        // notification is not a duplicate when it comes again), and forgets what expired before
        // this commit's appends are checked against it.
        let mut dead_bytes = self.dead_letter_bytes.load(Ordering::Relaxed);
        if durable_first || expiry_due {
            let mut txn = db.begin_write().map_err(storage)?;
            if !durable_first {
                txn.set_durability(Durability::None).map_err(storage)?;
            }
            let mut expired = SeenChanges::default();
            let recorded;
            {
                if changed_first {
                    let mut entries = txn.open_table(ENTRIES).map_err(storage)?;
                    remove_entries(&mut entries, &legacy, &mut delta)?;
                    // Only the database's entries are counted as removed so far.
                    delta.removed_legacy = delta.removed_entries;
                    let mut dead_table = txn.open_table(DEAD).map_err(storage)?;
                    dead_bytes = self.keep_dead_letters(&mut dead_table, releases, &mut delta)?;
                }
                let mut seen_order = txn.open_table(SEEN_ORDER).map_err(storage)?;
                for (key, uuid) in index.unrecorded() {
                    seen_order.insert(key, uuid).map_err(storage)?;
                }
                self.expire_seen(&mut seen_order, index, now, &mut expired)?;
                recorded = (
                    seen_order.len().map_err(storage)? as usize,
                    seen_order.first().map_err(storage)?.map(|(k, _)| k.value()),
                );
            }
            #[cfg(test)]
            self.fail_on_purpose(releases)?;
            txn.commit().map_err(storage)?;
            // Committed: the index follows the table at once, whatever becomes of the journal's
            // commit.
            index.apply(expired);
            index.all_recorded(recorded.0, recorded.1);
            if durable_first {
                *lazy_commits = 0;
            }
        } else {
            #[cfg(test)]
            self.fail_on_purpose(releases)?;
        }

        // The record's table is read only to confirm a hash that hits a recorded uuid.
        let mut recorded: Option<redb::ReadOnlyTable<SeenKey, &str>> = None;
        let mut in_table = |key: SeenKey, uuid: &str| -> Result<bool, SpoolError> {
            let table = match &mut recorded {
                Some(table) => table,
                None => {
                    let read = db.begin_read().map_err(storage)?;
                    recorded.insert(read.open_table(SEEN_ORDER).map_err(storage)?)
                }
            };
            Ok(table
                .get(key)
                .map_err(storage)?
                .is_some_and(|v| v.value() == uuid))
        };
        let mut kept = Vec::new();
        let next_seq = {
            let mut next_seq = self.handoff().end();
            // Pending entries and dead letters share --spool-max-bytes.
            let mut bytes = (self.bytes.load(Ordering::Relaxed) + dead_bytes)
                .saturating_sub(delta.removed_bytes)
                .saturating_sub(released.iter().map(|(_, at)| u64::from(at.len)).sum());
            for (n, Append { uuid, record, .. }) in appends.iter().enumerate() {
                let hash = index.hash(uuid);
                if index.contains(uuid, hash, &delta.seen, |key| in_table(key, uuid))? {
                    outcomes.push(Ok(Acceptance::Duplicate));
                    continue;
                }
                let frame = Journal::entry_frame_bytes(uuid.len(), record.bytes().len());
                if bytes + frame > self.max_bytes {
                    outcomes.push(Err(SinkError::SpoolFull));
                    continue;
                }
                delta.seen.record(hash, (now, next_seq), uuid);
                bytes += frame;
                delta.added_entries += 1;
                delta.added_bytes += frame;
                delta.committed.push(next_seq);
                kept.push((next_seq, n));
                next_seq += 1;
                outcomes.push(Ok(Acceptance::Accepted));
            }
            next_seq
        };

        let mut entries: Vec<NewEntry<'_>> = kept
            .iter()
            .map(|&(seq, n)| NewEntry {
                seq,
                accepted_at_ms: now,
                uuid: &appends[n].uuid,
                record: appends[n].record.bytes(),
            })
            .collect();
        let moved: Vec<Location> = moving.iter().map(|(_, from)| *from).collect();
        entries.extend(moving.iter().map(|(entry, _)| NewEntry {
            seq: entry.seq,
            accepted_at_ms: entry.accepted_at_ms,
            uuid: &entry.uuid,
            record: &entry.record,
        }));
        if !entries.is_empty() || !released.is_empty() {
            let journal_files_before = journal.files();
            let locations = journal
                .commit(&entries, &released, &moved, next_seq, || {
                    if durable_first {
                        Ok(())
                    } else {
                        Err(std::io::Error::other(
                            "a journal file would be written over before the deduplication \
                             record was made durable",
                        ))
                    }
                })
                .map_err(|e| {
                    // The commit's entries may have reached the disk in part: their sequence
                    // numbers are not given out again, so no frame of theirs is ever mistaken
                    // for a later entry's.
                    self.handoff().resync(next_seq);
                    Failure {
                        error: storage(e),
                        // The database's durable commit before it changed what the counters
                        // count.
                        read_back: changed_first,
                    }
                })?;
            // Files are never removed: the database records how many were made, so that one gone
            // missing stops start-up rather than losing what it held without a word.
            if journal.files() > journal_files_before
                && let Err(e) = record_journal_files(&db, journal.files())
            {
                delta.database_failed = Some(e);
            }
            let mut pending = self.pending();
            for (n, (entry, at)) in entries.iter().zip(locations).enumerate() {
                if n < kept.len() {
                    pending.push(entry.seq, at);
                } else {
                    pending.moved(entry.seq, at);
                }
            }
            for (seq, at) in &released {
                pending.remove(*seq);
                delta.removed_entries += 1;
                delta.removed_bytes += u64::from(at.len);
            }
        }
        #[cfg(test)]
        if self
            .failing_after_commit
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(SpoolError::Storage("failed on purpose, after the commit".into()).into());
        }
        *lazy_commits += 1;
        Ok(delta)
    }

    /// Entries to move out of the oldest journal file, with where they are: an entry left pending
    /// there (one the relay keeps trying to publish) keeps every file after it from being written
    /// over, and the journal grows meanwhile. Once it holds more files than a full spool needs,
    /// such entries are written again into the file written to, up to [`MOVE_PER_COMMIT`] a commit.
    fn pinned(&self, journal: &Journal) -> Result<Vec<(journal::ReadEntry, Location)>, SpoolError> {
        let needed = self.max_bytes.div_ceil(self.segment_bytes) + 2;
        let Some(file) = journal
            .oldest_pinned()
            .filter(|_| journal.files() as u64 > needed)
        else {
            return Ok(Vec::new());
        };
        let mut bytes = 0;
        let wanted: Vec<(u64, Location)> = self
            .pending()
            .in_file(file)
            .into_iter()
            .take_while(|(_, at)| {
                let first = bytes == 0;
                bytes += u64::from(at.len);
                first || bytes <= MOVE_PER_COMMIT
            })
            .collect();
        let files = self.files.read().unwrap().clone();
        let read = files.read(&wanted).map_err(storage)?;
        Ok(read
            .into_iter()
            .filter_map(|entry| {
                let at = wanted.iter().find(|(seq, _)| *seq == entry.seq)?.1;
                Some((entry, at))
            })
            .collect())
    }

    /// The next commits that release entries fail, for the relay's tests.
    #[cfg(test)]
    fn fail_on_purpose(&self, releases: &[Release]) -> Result<(), SpoolError> {
        if !releases.is_empty()
            && self
                .failing_releases
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(SpoolError::Storage("failed on purpose".into()));
        }
        Ok(())
    }

    /// Keeps the releases' dead letters and forgets those published after all; the oldest make
    /// room beyond the area's share. Returns the area's bytes.
    fn keep_dead_letters(
        &self,
        dead_table: &mut redb::Table<u64, &[u8]>,
        releases: &[Release],
        delta: &mut Delta,
    ) -> Result<u64, SpoolError> {
        for release in releases {
            for id in &release.forget {
                if let Some(old) = dead_table.remove(id).map_err(storage)? {
                    delta.removed_dead_letters += 1;
                    delta.removed_dead_letter_bytes += old.value().len() as u64;
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
                delta.added_dead_letters += 1;
                delta.added_dead_letter_bytes += bytes.len() as u64;
            }
        }
        // The dead-letter area keeps its share of the spool: the oldest letters make room.
        let mut dead_bytes = self.dead_letter_bytes.load(Ordering::Relaxed)
            + delta.added_dead_letter_bytes
            - delta.removed_dead_letter_bytes;
        while dead_bytes > self.dead_letter_max_bytes() {
            let Some(len) = dead_table.pop_first().map_err(storage)?.map(|(_, value)| {
                if let Ok(letter) = serde_json::from_slice(value.value()) {
                    delta.dropped.push(letter);
                }
                value.value().len() as u64
            }) else {
                break;
            };
            dead_bytes -= len;
            delta.removed_dead_letters += 1;
            delta.removed_dead_letter_bytes += len;
        }
        Ok(dead_bytes)
    }

    /// Forgets uuids beyond the capacity, then those older than the window, a bounded number at a
    /// time. Over the capacity the record is trimmed a little further ([`dedup_slack`]): the
    /// commits after that add to its newest page only, rather than every commit also rewriting its
    /// oldest.
    fn expire_seen(
        &self,
        seen_order: &mut redb::Table<(u64, u64), &str>,
        index: &SeenIndex,
        now: u64,
        changes: &mut SeenChanges,
    ) -> Result<(), SpoolError> {
        let len = seen_order.len().map_err(storage)? as usize;
        let over = match len.checked_sub(self.dedup_capacity) {
            Some(over) if over > 0 => over + dedup_slack(self.dedup_capacity),
            _ => 0,
        };
        let mut expired = 0;
        while expired < over.min(MAX_EXPIRE_PER_COMMIT) {
            let Some((key, hash)) = seen_order
                .pop_first()
                .map_err(storage)?
                .map(|(k, v)| (k.value(), index.hash(v.value())))
            else {
                break;
            };
            changes.forget(hash, key);
            expired += 1;
        }
        let horizon = now.saturating_sub(self.dedup_window.as_millis() as u64);
        while expired < MAX_EXPIRE_PER_COMMIT {
            let Some((key, hash)) = seen_order
                .first()
                .map_err(storage)?
                .map(|(k, v)| (k.value(), index.hash(v.value())))
            else {
                break;
            };
            if key.0 >= horizon {
                break;
            }
            seen_order.remove(key).map_err(storage)?;
            changes.forget(hash, key);
            expired += 1;
        }
        Ok(())
    }

    pub(super) fn publish_gauges(&self) {
        self.metrics
            .spool_entries
            .set(self.entries.load(Ordering::Relaxed) as i64);
        self.metrics
            .spool_bytes
            .set(self.bytes.load(Ordering::Relaxed) as i64);
        self.metrics
            .spool_dead_letters
            .set(self.dead_letters.load(Ordering::Relaxed) as i64);
        self.metrics
            .spool_dead_letter_bytes
            .set(self.dead_letter_bytes.load(Ordering::Relaxed) as i64);
    }
}

/// Records how many journal files were made, without `fdatasync`: the next durable commit makes
/// it durable, and a crash before then leaves the count a file short at worst.
fn record_journal_files(db: &Database, files: usize) -> Result<(), SpoolError> {
    let mut txn = db.begin_write().map_err(storage)?;
    txn.set_durability(Durability::None).map_err(storage)?;
    {
        let mut meta = txn.open_table(META).map_err(storage)?;
        meta.insert(JOURNAL_FILES_KEY, files.to_string().as_str())
            .map_err(storage)?;
    }
    txn.commit().map_err(storage)
}

/// How far below its capacity the deduplication record is trimmed once over it: a 64th, at most
/// 512 uuids (none for a capacity under 64, which is then exact).
fn dedup_slack(capacity: usize) -> usize {
    (capacity / 64).min(512)
}

/// The deduplication index of `db`'s record.
pub(super) fn read_seen(db: &Database) -> Result<SeenIndex, SpoolError> {
    let read = db.begin_read().map_err(storage)?;
    match read.open_table(SEEN_ORDER) {
        Ok(table) => SeenIndex::load(&table).map_err(storage),
        // Created by the first commit.
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(SeenIndex::empty()),
        Err(e) => Err(storage(e)),
    }
}

/// Removes released entries. The relay releases runs of consecutive sequence numbers (a round, less
/// the entries that failed), so one pass over the run's range costs much less than a removal from
/// the tree's root per entry; scattered ones are removed one by one.
fn remove_entries(
    entries: &mut redb::Table<u64, &[u8]>,
    seqs: &[u64],
    delta: &mut Delta,
) -> Result<(), SpoolError> {
    let mut seqs = seqs.to_vec();
    seqs.sort_unstable();
    let (Some(&first), Some(&last)) = (seqs.first(), seqs.last()) else {
        return Ok(());
    };
    if last - first >= 2 * seqs.len() as u64 {
        for seq in seqs {
            if let Some(old) = entries.remove(seq).map_err(storage)? {
                delta.removed_entries += 1;
                delta.removed_bytes += old.value().len() as u64;
            }
        }
        return Ok(());
    }
    entries
        .retain_in(first..=last, |seq, value| {
            let released = seqs.binary_search(&seq).is_ok();
            if released {
                delta.removed_entries += 1;
                delta.removed_bytes += value.len() as u64;
            }
            !released
        })
        .map_err(storage)
}

/// The writer's lingering waits as steps a test takes: the writer says when it has begun one, and
/// the wait lasts until the test ends it, so which wait a notification arrives in is the test's
/// choice, not a matter of timing.
#[cfg(test)]
pub(super) struct WaitSteps {
    pub(super) entered: tokio::sync::mpsc::UnboundedSender<()>,
    pub(super) end: Receiver<()>,
}

/// Adds the commands already waiting to `group`, up to [`MAX_GROUP`].
fn take_waiting(rx: &Receiver<Command>, group: &mut Vec<Command>) {
    while group.len() < MAX_GROUP {
        match rx.try_recv() {
            Ok(command) => group.push(command),
            Err(_) => break,
        }
    }
}
