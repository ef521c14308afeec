//! The index of the deduplication record: which notification uuids the spool accepted recently.
//!
//! The record itself is the `seen_order` table, (acceptance time, sequence number) -> uuid, whose
//! keys only grow: a commit appends to its last page and expiry takes from its first. Asking it
//! "was this uuid accepted?" needs an index by uuid. A table keyed by uuid (the `seen` table of
//! formats up to 3) puts every uuid at a random place of a B-tree: each notification then dirtied a
//! page of its own, and a page of another for the uuid expired, which each commit copied and wrote.
//! This index is in memory instead, built from `seen_order` when the spool opens.
//!
//! It maps a keyed hash of each uuid to its `seen_order` key: 24 bytes per uuid, whatever the uuid's
//! length. A hash says "maybe": a hit is confirmed by reading the uuid under that key, so two uuids
//! with the same hash never make a new notification a duplicate; the later one takes the slot, and
//! the earlier one is then only at risk of being delivered twice, never of being lost. The hash is
//! keyed at random per process (`RandomState`), so no client can aim for collisions.
//!
//! The uuids a commit accepts reach `seen_order` later, in batches (the journal holds them
//! meanwhile, and brings the table up to it after a crash): until then the index keeps them itself,
//! as "unrecorded", and answers for them from memory.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

use redb::{ReadableTable, StorageError};

/// A key of `seen_order`: (acceptance time in ms, sequence number).
pub(super) type SeenKey = (u64, u64);

pub(super) struct SeenIndex<S = RandomState> {
    hasher: S,
    latest: HashMap<u64, SeenKey>,
    /// Uuids accepted (their frames are in the journal) and not yet in `seen_order`, by key.
    unrecorded: HashMap<SeenKey, String>,
    /// The oldest key among them.
    oldest_unrecorded: Option<SeenKey>,
    /// How many uuids `seen_order` holds, and its oldest key: whether expiry is due is known
    /// without reading it.
    recorded: usize,
    oldest_recorded: Option<SeenKey>,
}

/// What a commit changes in the index, applied only once the commit is durable: a failed commit
/// leaves the index as the database is.
#[derive(Default)]
pub(super) struct SeenChanges {
    /// Uuids accepted, by hash, with their key.
    recorded: HashMap<u64, SeenKey>,
    /// The same uuids by key: unrecorded once the commit is applied.
    uuids: HashMap<SeenKey, String>,
    /// Records expired: the hash of their uuid, and their key.
    forgotten: Vec<(u64, SeenKey)>,
}

impl SeenIndex {
    pub(super) fn empty() -> SeenIndex {
        SeenIndex::with_hasher(RandomState::new())
    }

    /// The index of `seen_order` as it is.
    pub(super) fn load(seen_order: &impl SeenOrder) -> Result<SeenIndex, StorageError> {
        SeenIndex::with_hasher(RandomState::new()).loaded(seen_order)
    }
}

/// The `seen_order` table, in a read or a write transaction.
pub(super) trait SeenOrder: ReadableTable<SeenKey, &'static str> {}
impl<T: ReadableTable<SeenKey, &'static str>> SeenOrder for T {}

impl<S: BuildHasher> SeenIndex<S> {
    fn with_hasher(hasher: S) -> SeenIndex<S> {
        SeenIndex {
            hasher,
            latest: HashMap::new(),
            unrecorded: HashMap::new(),
            oldest_unrecorded: None,
            recorded: 0,
            oldest_recorded: None,
        }
    }

    fn loaded(mut self, seen_order: &impl SeenOrder) -> Result<SeenIndex<S>, StorageError> {
        // In key order: a uuid accepted again later ends up with its latest key.
        for item in seen_order.iter()? {
            let (key, uuid) = item?;
            let hash = self.hash(uuid.value());
            self.latest.insert(hash, key.value());
            self.oldest_recorded.get_or_insert(key.value());
            self.recorded += 1;
        }
        Ok(self)
    }

    pub(super) fn hash(&self, uuid: &str) -> u64 {
        self.hasher.hash_one(uuid)
    }

    /// Whether `uuid` (of hash `hash`) is in the record, counting what the commit making `changes`
    /// has accepted so far and what is unrecorded: `in_table` answers whether `seen_order` holds
    /// `uuid` under a key, asked only for a hit neither of those holds.
    pub(super) fn contains<E>(
        &self,
        uuid: &str,
        hash: u64,
        changes: &SeenChanges,
        in_table: impl FnOnce(SeenKey) -> Result<bool, E>,
    ) -> Result<bool, E> {
        let key = changes
            .recorded
            .get(&hash)
            .or_else(|| self.latest.get(&hash));
        let Some(&key) = key else {
            return Ok(false);
        };
        match changes
            .uuids
            .get(&key)
            .or_else(|| self.unrecorded.get(&key))
        {
            Some(held) => Ok(held == uuid),
            None => in_table(key),
        }
    }

    /// The uuids accepted and not yet in `seen_order`, with their keys.
    pub(super) fn unrecorded(&self) -> impl Iterator<Item = (SeenKey, &str)> {
        self.unrecorded
            .iter()
            .map(|(key, uuid)| (*key, uuid.as_str()))
    }

    pub(super) fn unrecorded_len(&self) -> usize {
        self.unrecorded.len()
    }

    /// Whether expiry is due: the record holds more than `capacity` uuids, or one accepted before
    /// `horizon` (ms).
    pub(super) fn expiry_due(&self, capacity: usize, horizon: u64) -> bool {
        let oldest = match (self.oldest_recorded, self.oldest_unrecorded) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.recorded + self.unrecorded.len() > capacity
            || oldest.is_some_and(|(at, _)| at < horizon)
    }

    /// `seen_order` took every unrecorded uuid, and now holds `recorded` uuids from key `oldest` on.
    pub(super) fn all_recorded(&mut self, recorded: usize, oldest: Option<SeenKey>) {
        self.unrecorded.clear();
        self.oldest_unrecorded = None;
        self.recorded = recorded;
        self.oldest_recorded = oldest;
    }

    /// Applies a durable commit's changes.
    pub(super) fn apply(&mut self, changes: SeenChanges) {
        for (hash, key) in changes.forgotten {
            // Only the record expired goes: the same uuid accepted later keeps its own.
            if self.latest.get(&hash) == Some(&key) {
                self.latest.remove(&hash);
            }
        }
        self.latest.extend(changes.recorded);
        for (key, uuid) in changes.uuids {
            self.oldest_unrecorded = Some(self.oldest_unrecorded.map_or(key, |o| o.min(key)));
            self.unrecorded.insert(key, uuid);
        }
    }
}

impl SeenChanges {
    pub(super) fn record(&mut self, hash: u64, key: SeenKey, uuid: &str) {
        self.recorded.insert(hash, key);
        self.uuids.insert(key, uuid.to_string());
    }

    pub(super) fn forget(&mut self, hash: u64, key: SeenKey) {
        // A uuid recorded by this very commit and expired by it too (a capacity of less than one
        // commit's appends) is forgotten as well.
        if self.recorded.get(&hash) == Some(&key) {
            self.recorded.remove(&hash);
        }
        self.forgotten.push((hash, key));
    }
}

#[cfg(test)]
mod tests {
    use std::hash::{BuildHasherDefault, Hasher};

    use redb::{Database, ReadableDatabase, ReadableTableMetadata, TableDefinition};

    use super::*;

    const SEEN_ORDER: TableDefinition<SeenKey, &str> = TableDefinition::new("seen_order");

    /// Every uuid has the same hash.
    #[derive(Default)]
    struct Colliding;
    impl Hasher for Colliding {
        fn finish(&self) -> u64 {
            7
        }
        fn write(&mut self, _: &[u8]) {}
    }
    type CollidingIndex = SeenIndex<BuildHasherDefault<Colliding>>;

    /// Whether `table` holds `uuid` under `key`.
    fn in_table(table: &impl SeenOrder, key: SeenKey, uuid: &str) -> Result<bool, StorageError> {
        Ok(table.get(key)?.is_some_and(|v| v.value() == uuid))
    }

    fn database() -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("seen.redb")).unwrap();
        (dir, db)
    }

    /// Records `uuids` under keys (at, 0), (at, 1)... in one commit, as the writer does.
    fn record(db: &Database, index: &mut CollidingIndex, at: u64, uuids: &[&str]) {
        let txn = db.begin_write().unwrap();
        let mut changes = SeenChanges::default();
        {
            let mut table = txn.open_table(SEEN_ORDER).unwrap();
            for (seq, uuid) in (0..).zip(uuids) {
                let hash = index.hash(uuid);
                assert!(
                    !index
                        .contains(uuid, hash, &changes, |key| in_table(&table, key, uuid))
                        .unwrap()
                );
                table.insert((at, seq), *uuid).unwrap();
                changes.record(hash, (at, seq), uuid);
            }
        }
        txn.commit().unwrap();
        index.apply(changes);
        let read = db.begin_read().unwrap();
        let table = read.open_table(SEEN_ORDER).unwrap();
        let oldest = table.first().unwrap().map(|(k, _)| k.value());
        index.all_recorded(table.len().unwrap() as usize, oldest);
    }

    fn contains(db: &Database, index: &CollidingIndex, uuid: &str) -> bool {
        let read = db.begin_read().unwrap();
        let table = read.open_table(SEEN_ORDER).unwrap();
        let hash = index.hash(uuid);
        index
            .contains(uuid, hash, &SeenChanges::default(), |key| {
                in_table(&table, key, uuid)
            })
            .unwrap()
    }

    #[test]
    fn a_uuid_with_the_hash_of_a_recorded_one_is_not_a_duplicate() {
        let (_dir, db) = database();
        let mut index = CollidingIndex::with_hasher(Default::default());
        record(&db, &mut index, 1, &["a"]);
        assert!(contains(&db, &index, "a"));
        assert!(!contains(&db, &index, "b"), "same hash, another uuid");

        // "b" takes the slot: "a" is then no longer known (delivered twice at worst, never lost).
        record(&db, &mut index, 2, &["b"]);
        assert!(contains(&db, &index, "b"));
        assert!(!contains(&db, &index, "a"));
    }

    #[test]
    fn uuids_of_one_commit_are_told_apart_within_it() {
        let (_dir, db) = database();
        let index = CollidingIndex::with_hasher(Default::default());
        let txn = db.begin_write().unwrap();
        let mut table = txn.open_table(SEEN_ORDER).unwrap();
        let mut changes = SeenChanges::default();
        let hash = index.hash("a");
        table.insert((1, 0), "a").unwrap();
        changes.record(hash, (1, 0), "a");
        assert!(
            index
                .contains("a", hash, &changes, |key| in_table(&table, key, "a"))
                .unwrap()
        );
        assert!(
            !index
                .contains("b", hash, &changes, |key| in_table(&table, key, "b"))
                .unwrap()
        );
    }

    #[test]
    fn expiring_an_earlier_acceptance_keeps_the_later_one() {
        let (_dir, db) = database();
        let mut index = CollidingIndex::with_hasher(Default::default());
        record(&db, &mut index, 1, &["a"]);
        // Accepted again after its record expired from the index, then the old record goes.
        let hash = index.hash("a");
        let mut changes = SeenChanges::default();
        changes.record(hash, (5, 0), "a");
        changes.forget(hash, (1, 0));
        index.apply(changes);
        assert_eq!(index.latest.get(&hash), Some(&(5, 0)));

        let mut changes = SeenChanges::default();
        changes.forget(hash, (5, 0));
        index.apply(changes);
        assert!(index.latest.is_empty());
    }

    #[test]
    fn the_index_is_rebuilt_from_the_record() {
        let (_dir, db) = database();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(SEEN_ORDER).unwrap();
            for (seq, uuid) in (0..).zip(["a", "b", "a"]) {
                table.insert((seq, seq), uuid).unwrap();
            }
        }
        txn.commit().unwrap();
        let read = db.begin_read().unwrap();
        let table = read.open_table(SEEN_ORDER).unwrap();
        let loaded = SeenIndex::load(&table).unwrap();
        for uuid in ["a", "b"] {
            let hash = loaded.hash(uuid);
            assert!(
                loaded
                    .contains(uuid, hash, &SeenChanges::default(), |key| in_table(
                        &table, key, uuid
                    ))
                    .unwrap()
            );
        }
        // "a"'s latest acceptance, so that expiring the first keeps it.
        assert_eq!(loaded.latest.get(&loaded.hash("a")), Some(&(2, 2)));
        let hash = loaded.hash("c");
        assert!(
            !loaded
                .contains("c", hash, &SeenChanges::default(), |key| in_table(
                    &table, key, "c"
                ))
                .unwrap()
        );
    }

    #[test]
    fn unrecorded_uuids_are_answered_from_memory_until_recorded() {
        let (_dir, db) = database();
        let mut index = CollidingIndex::with_hasher(Default::default());
        let mut changes = SeenChanges::default();
        let hash = index.hash("a");
        changes.record(hash, (10, 0), "a");
        index.apply(changes);
        let unasked = |_| -> Result<bool, StorageError> { panic!("the table was asked") };
        assert!(
            index
                .contains("a", hash, &SeenChanges::default(), unasked)
                .unwrap()
        );
        assert!(
            !index
                .contains("b", hash, &SeenChanges::default(), unasked)
                .unwrap()
        );
        assert_eq!(index.unrecorded().collect::<Vec<_>>(), [((10, 0), "a")]);

        // Due by count (capacity 0) and by age (a horizon past its acceptance), not otherwise.
        assert!(index.expiry_due(0, 0));
        assert!(index.expiry_due(1, 11));
        assert!(!index.expiry_due(1, 10));

        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(SEEN_ORDER).unwrap();
            for (key, uuid) in index
                .unrecorded()
                .map(|(k, u)| (k, u.to_string()))
                .collect::<Vec<_>>()
            {
                table.insert(key, uuid.as_str()).unwrap();
            }
            let oldest = table.first().unwrap().map(|(k, _)| k.value());
            index.all_recorded(table.len().unwrap() as usize, oldest);
        }
        txn.commit().unwrap();
        assert_eq!(index.unrecorded_len(), 0);
        assert!(index.expiry_due(1, 11), "the table's oldest counts as well");
        assert!(!index.expiry_due(1, 10));
        assert!(contains(&db, &index, "a"));
    }
}
