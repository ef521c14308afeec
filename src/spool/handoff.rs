//! The hand-off: entries the writer has just committed, passed to the relay in memory as their
//! stored records so that it does not read back what was just written. It is a cache of the
//! database's tail, never the only copy: the relay reads the database at start-up, after a round
//! that did not release all it took, and whenever the hand-off cannot say what comes next.
//!
//! What it holds is always one contiguous run of sequence numbers ending at the last committed
//! entry. When it is full (the relay is behind: Kafka is slow or down), the writer drops what it
//! holds, which could no longer be handed over, stops adding to it and marks the gap; the relay then
//! reads the database until it has caught up with what is added afterwards.

use std::collections::VecDeque;

use super::StoredEntry;

/// The most bytes of records the hand-off holds, counted uncompressed as the relay's rounds count
/// them (it holds them compressed, as stored: about a sixth of that): two relay rounds' worth (one
/// of a large backlog's), many times what accumulates while a round awaits Kafka below max load.
/// (At max load on two cores the relay stays further behind than that and reads its rounds from
/// the database.)
#[cfg(not(test))]
pub(super) const MAX_BYTES: usize = 2 << 20;
/// Small in the unit tests, so that the relay's overflow path runs in them.
#[cfg(test)]
pub(super) const MAX_BYTES: usize = 4 << 10;

#[derive(Default)]
pub(super) struct HandOff {
    /// By sequence number.
    entries: VecDeque<StoredEntry>,
    bytes: usize,
    /// Entries were committed but not added: the run no longer reaches the last commit.
    gap: bool,
    /// The sequence number the next committed entry gets.
    end: u64,
}

/// What the hand-off can tell the relay that expects sequence number `next`.
#[derive(Debug)]
pub enum Handed {
    /// The entries from `next` on (possibly none: nothing was committed since).
    Entries(Vec<StoredEntry>),
    /// It does not hold `next`: read the database.
    Unknown,
}

impl HandOff {
    pub(super) fn new(end: u64) -> HandOff {
        HandOff {
            end,
            ..HandOff::default()
        }
    }

    pub(super) fn end(&self) -> u64 {
        self.end
    }

    /// Adds a committed entry (called in sequence order).
    pub(super) fn push(&mut self, entry: StoredEntry) {
        self.end = entry.seq + 1;
        if self.gap || self.bytes + entry.record_bytes() > MAX_BYTES {
            self.mark_gap();
            return;
        }
        self.bytes += entry.record_bytes();
        self.entries.push_back(entry);
    }

    /// After the database was reopened: the next entry gets `end` (what the database holds ends
    /// there) unless the run already ends later, and the relay reads the database for what follows
    /// what it was handed.
    pub(super) fn resync(&mut self, end: u64) {
        self.end = self.end.max(end);
        self.mark_gap();
    }

    /// The run no longer reaches the last commit: what it holds can never be handed over (the
    /// relay reads the database from wherever it is), so it goes at once rather than staying in
    /// memory for as long as the relay is behind.
    fn mark_gap(&mut self) {
        self.gap = true;
        self.entries.clear();
        self.bytes = 0;
    }

    /// Takes the entries from `next` on: at most `limit`, and no more than `max_bytes` (but at least
    /// one). Entries before `next` were published already and are dropped.
    pub(super) fn take(&mut self, next: u64, limit: usize, max_bytes: usize) -> Handed {
        if self.gap {
            self.gap = false;
            return Handed::Unknown;
        }
        while self.entries.front().is_some_and(|e| e.seq < next) {
            if let Some(entry) = self.entries.pop_front() {
                self.bytes -= entry.record_bytes();
            }
        }
        match self.entries.front() {
            None if next == self.end => Handed::Entries(Vec::new()),
            Some(first) if first.seq == next => {
                let mut out = Vec::new();
                let mut taken = 0;
                while let Some(entry) = self.entries.front() {
                    if out.len() == limit
                        || (taken + entry.record_bytes() > max_bytes && !out.is_empty())
                    {
                        break;
                    }
                    taken += entry.record_bytes();
                    if let Some(entry) = self.entries.pop_front() {
                        self.bytes -= entry.record_bytes();
                        out.push(entry);
                    }
                }
                Handed::Entries(out)
            }
            // Entries from `next` on are in the database only.
            _ => Handed::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry of `bytes` stored bytes (the hand-off reads only their number).
    fn entry(seq: u64, bytes: usize) -> StoredEntry {
        StoredEntry::new(seq, super::super::StoredRecord::weighing(bytes))
    }

    fn seqs(handed: Handed) -> Option<Vec<u64>> {
        match handed {
            Handed::Entries(entries) => Some(entries.iter().map(|e| e.seq).collect()),
            Handed::Unknown => None,
        }
    }

    #[test]
    fn hands_over_a_contiguous_run_and_knows_when_nothing_is_new() {
        let mut handoff = HandOff::new(5);
        assert_eq!(seqs(handoff.take(5, 10, 1 << 20)), Some(vec![]));
        for seq in 5..9 {
            handoff.push(entry(seq, 100));
        }
        assert_eq!(seqs(handoff.take(5, 3, 1 << 20)), Some(vec![5, 6, 7]));
        assert_eq!(seqs(handoff.take(8, 3, 150)), Some(vec![8]));
        assert_eq!(seqs(handoff.take(9, 3, 1 << 20)), Some(vec![]));
    }

    #[test]
    fn what_the_relay_already_published_is_dropped_and_what_it_lacks_is_unknown() {
        let mut handoff = HandOff::new(0);
        for seq in 0..4 {
            handoff.push(entry(seq, 100));
        }
        // The relay read 0 and 1 from the database (a round after a failure).
        assert_eq!(seqs(handoff.take(2, 10, 1 << 20)), Some(vec![2, 3]));
        // A relay that expects an entry older than the run must read the database.
        let mut handoff = HandOff::new(10);
        handoff.push(entry(10, 100));
        assert_eq!(seqs(handoff.take(7, 10, 1 << 20)), None);
        // So must one that expects an entry committed but not held.
        let mut handoff = HandOff::new(10);
        assert_eq!(seqs(handoff.take(7, 10, 1 << 20)), None);
    }

    #[test]
    fn a_full_hand_off_marks_the_gap_and_starts_again_after_it() {
        let mut handoff = HandOff::new(0);
        handoff.push(entry(0, MAX_BYTES - 10));
        handoff.push(entry(1, 100));
        // Held 0 but not 1: nothing can be handed over, and it empties at once.
        assert_eq!((handoff.entries.len(), handoff.bytes), (0, 0));
        handoff.push(entry(2, 1));
        assert_eq!((handoff.entries.len(), handoff.bytes), (0, 0));
        assert_eq!(seqs(handoff.take(0, 10, usize::MAX)), None);
        handoff.push(entry(3, 100));
        // The relay read 0 to 2 from the database; 3 came after the gap.
        assert_eq!(seqs(handoff.take(3, 10, 1 << 20)), Some(vec![3]));
        assert_eq!(handoff.end(), 4);
    }

    #[test]
    fn after_a_reopen_the_run_ends_where_the_database_does_and_the_relay_reads_it() {
        let mut handoff = HandOff::new(0);
        handoff.push(entry(0, 100));
        // A commit of 1 and 2 reported failed reached the disk.
        handoff.resync(3);
        assert_eq!(handoff.end(), 3);
        assert!(handoff.entries.is_empty());
        assert_eq!(seqs(handoff.take(0, 10, 1 << 20)), None);
        // Never backwards: a database that ends earlier leaves the run's end.
        handoff.resync(1);
        assert_eq!(handoff.end(), 3);
        handoff.push(entry(3, 100));
        assert_eq!(seqs(handoff.take(3, 10, 1 << 20)), None);
        assert_eq!(seqs(handoff.take(4, 10, 1 << 20)), Some(vec![]));
    }
}
