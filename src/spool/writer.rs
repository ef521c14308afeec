//! The writer thread: group commits of appends and releases, and the counters they move.

use std::sync::mpsc::{Receiver, RecvTimeoutError};

use super::*;

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

    /// An unwritable spool, unasked: reopens the database if it is not open, and commits nothing
    /// to learn whether the disk takes writes again. Without it, a spool left unwritable with
    /// nothing to write (an empty spool, or a relay that cannot read a database not reopened)
    /// would stay so, and unready, until someone restarted the bridge.
    fn try_again(&self, seen: &mut SeenIndex) {
        if self.database().is_err() {
            self.recover(seen);
        }
        let probe = self.database().and_then(|db| {
            let txn = db.begin_write().map_err(storage)?;
            txn.commit().map_err(storage)
        });
        match probe {
            Ok(()) => {
                tracing::info!("spool writable again");
                self.health.store(HEALTH_OK, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::debug!(error = %e, "spool still unwritable");
                self.recover(seen);
            }
        }
        #[cfg(test)]
        self.tried_again.notify_one();
    }

    /// Reopens the database after a failed commit and takes what it holds as the truth. A commit
    /// can fail after it reached the disk (redb writes its new header before the `fdatasync` that
    /// fails, and the kernel may still write it back): its entries are then in the database, its
    /// uuids in the deduplication record, and the next entry must come after them, or it would
    /// overwrite one answered 200 as a duplicate on redelivery.
    fn recover(&self, seen: &mut SeenIndex) {
        self.reopen();
        let Ok(db) = self.database() else {
            return;
        };
        if let Err(e) = self.resync(&db, seen) {
            tracing::warn!(error = %e, "cannot read the spool after reopening it");
        }
    }

    /// Sets the counters, the next sequence number and the deduplication index from `db`. The
    /// relay goes back to the database for what follows the hand-off.
    fn resync(&self, db: &Database, seen: &mut SeenIndex) -> Result<(), SpoolError> {
        let read = db.begin_read().map_err(storage)?;
        let counts = count(&read).map_err(storage)?;
        let last = read
            .open_table(ENTRIES)
            .map_err(storage)?
            .last()
            .map_err(storage)?
            .map(|(seq, _)| seq.value());
        drop(read);
        *seen = read_seen(db)?;
        self.entries.store(counts.entries, Ordering::Relaxed);
        self.bytes.store(counts.bytes, Ordering::Relaxed);
        self.dead_letters
            .store(counts.dead_letters, Ordering::Relaxed);
        self.dead_letter_bytes
            .store(counts.dead_letter_bytes, Ordering::Relaxed);
        self.handoff().resync(last.map_or(0, |seq| seq + 1));
        self.publish_gauges();
        Ok(())
    }

    pub(super) fn run_writer(&self, rx: Receiver<Command>, mut seen: SeenIndex) {
        loop {
            let first = if self.health.load(Ordering::Relaxed) == HEALTH_UNWRITABLE {
                match rx.recv_timeout(RETRY_UNWRITABLE) {
                    Ok(command) => command,
                    Err(RecvTimeoutError::Timeout) => {
                        self.try_again(&mut seen);
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
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(command) => group.push(command),
                    Err(_) => break,
                }
            }
            self.commit_group(group, &mut seen);
        }
    }

    pub(super) fn commit_group(&self, group: Vec<Command>, seen: &mut SeenIndex) {
        let mut appends = Vec::new();
        let mut releases = Vec::new();
        for command in group {
            match command {
                Command::Append(append) => appends.push(append),
                Command::Release(release) => releases.push(release),
            }
        }
        let mut outcomes: Vec<Result<Acceptance, SinkError>> = Vec::with_capacity(appends.len());
        let result = self.write(&appends, &releases, seen, &mut outcomes);
        match result {
            Ok(mut delta) => {
                seen.apply(std::mem::take(&mut delta.seen));
                let full_before = self.health.load(Ordering::Relaxed) == HEALTH_FULL;
                self.entries
                    .fetch_add(delta.added_entries, Ordering::Relaxed);
                self.entries
                    .fetch_sub(delta.removed_entries, Ordering::Relaxed);
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
                    handoff.push(StoredEntry::encoded(seq, record));
                }
                drop(handoff);
                if delta.added_entries > 0 {
                    self.appended.notify_one();
                }
                for release in releases {
                    let _ = release.reply.send(Ok(()));
                }
            }
            Err(e) => {
                // Nothing of this group counts as kept: every request in it gets 503, and the next
                // group tries again, so the spool recovers by itself when the disk does.
                tracing::error!(error = %e, "spool commit failed; answering 503 until it succeeds");
                self.health.store(HEALTH_UNWRITABLE, Ordering::Relaxed);
                self.recover(seen);
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
        appends: &[Append],
        releases: &[Release],
        index: &SeenIndex,
        outcomes: &mut Vec<Result<Acceptance, SinkError>>,
    ) -> Result<Delta, SpoolError> {
        let mut delta = Delta::default();
        let now = now_ms();
        let txn = self.database()?.begin_write().map_err(storage)?;
        {
            let mut entries = txn.open_table(ENTRIES).map_err(storage)?;
            let mut seen_order = txn.open_table(SEEN_ORDER).map_err(storage)?;
            let mut dead_table = txn.open_table(DEAD).map_err(storage)?;

            for release in releases {
                remove_entries(&mut entries, &release.seqs, &mut delta)?;
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

            let mut next_seq = self.handoff().end();
            // Pending entries and dead letters share --spool-max-bytes.
            let mut bytes = self.bytes.load(Ordering::Relaxed) - delta.removed_bytes + dead_bytes;
            for Append { uuid, record, .. } in appends {
                let hash = index.hash(uuid);
                if index
                    .contains(uuid, hash, &delta.seen, &seen_order)
                    .map_err(storage)?
                {
                    outcomes.push(Ok(Acceptance::Duplicate));
                    continue;
                }
                let stored = record::compress(record);
                if bytes + stored.len() as u64 > self.max_bytes {
                    outcomes.push(Err(SinkError::SpoolFull));
                    continue;
                }
                entries.insert(next_seq, &*stored).map_err(storage)?;
                seen_order
                    .insert((now, next_seq), uuid.as_str())
                    .map_err(storage)?;
                delta.seen.record(hash, (now, next_seq));
                bytes += stored.len() as u64;
                delta.added_entries += 1;
                delta.added_bytes += stored.len() as u64;
                delta.committed.push(next_seq);
                next_seq += 1;
                outcomes.push(Ok(Acceptance::Accepted));
            }

            // Forget uuids beyond the capacity, then those older than the window, a bounded number
            // at a time. Over the capacity the record is trimmed a little further
            // ([`dedup_slack`]): the commits after that add to its newest page only, rather than
            // every commit also rewriting its oldest.
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
                delta.seen.forget(hash, key);
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
                delta.seen.forget(hash, key);
                expired += 1;
            }
        }
        #[cfg(test)]
        if !releases.is_empty()
            && self
                .failing_releases
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(SpoolError::Storage("failed on purpose".into()));
        }
        txn.commit().map_err(storage)?;
        #[cfg(test)]
        if self
            .failing_after_commit
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(SpoolError::Storage(
                "failed on purpose, after the commit".into(),
            ));
        }
        Ok(delta)
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
