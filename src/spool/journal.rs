//! The journal: the spool's pending entries in files made once at their full size and written in
//! place. A commit is one write and one `fdatasync`, which then writes the commit's pages and
//! nothing else: no file size (the files never grow), no tree of pages (see bench/HISTORY.md,
//! "The spool's storage per commit": a quarter of redb's CPU per commit).
//!
//! # Files
//!
//! `journal-NNNN`, each `segment_bytes` long, filled with zeros when made. Each starts with a header
//! page: a magic number, the spool's id, the file's generation (one more each time a file is
//! started) and the sequence number of the next entry when it was started. Frames follow, one after
//! another: `length u32 | crc32 u32 | body`, the checksum taken over the file's generation and then
//! the body, so that a frame left from an earlier use of the file never checks out in this one.
//! A body is an entry (sequence number, acceptance time, uuid, stored record) or a release (the
//! sequence numbers of entries Kafka acknowledged).
//!
//! # Files in rounds
//!
//! Files are written one after another and taken up again oldest first: a file is free once every
//! entry in it is released *and* every file started before it is free. The releases it holds then
//! only name entries of files already free, so writing over it forgets nothing still pending. An
//! entry left pending in an old file keeps the files after it from being reused, and the journal
//! grows by new files meanwhile: the spool moves such entries elsewhere once the journal holds more
//! than its share ([`Journal::oldest_pinned`]). Before a file is written over, the caller makes
//! durable whatever it derived from the entries in it (the deduplication record): `before_reuse`.
//!
//! # Reading back
//!
//! After a crash: every file's header, then its frames in order until the first that does not check
//! out (a torn write, zeros, or a frame of an earlier use). A commit is answered only after its
//! `fdatasync`, and the next commit starts where it ended, so every answered commit reads back whole.
//! A commit that failed is written over by the next one, from where it started in the file written
//! to: what it left beyond the next one's end (if it was longer, or in the file before if it went
//! on into a new one) may read back. That only publishes again notifications that were answered
//! 503 (at-least-once), as long as the caller never gives their sequence numbers out again.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// The header page of every file.
pub(super) const HEADER_BYTES: u64 = 4096;
const MAGIC: &[u8; 8] = b"RCKBJNL1";
/// Length and checksum, before every frame's body.
const FRAME_HEAD: usize = 8;
const ENTRY: u8 = 1;
const RELEASE: u8 = 2;
/// The last frame of every file but the one written to: a file that lacks it was damaged.
const CLOSE: u8 = 3;
const CLOSE_FRAME: u64 = FRAME_HEAD as u64 + 1;
/// The longest spool id a header holds.
const MAX_ID_BYTES: usize = 64;

/// Where an entry's frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Location {
    pub(super) file: u32,
    pub(super) offset: u64,
    /// Of the whole frame, head included.
    pub(super) len: u32,
}

/// An entry to write.
pub(super) struct NewEntry<'a> {
    pub(super) seq: u64,
    pub(super) accepted_at_ms: u64,
    pub(super) uuid: &'a str,
    /// The stored record (compressed), as the relay reads it.
    pub(super) record: &'a [u8],
}

/// An entry read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ReadEntry {
    pub(super) seq: u64,
    pub(super) accepted_at_ms: u64,
    pub(super) uuid: String,
    pub(super) record: Vec<u8>,
}

/// A pending entry, as recovered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Pending {
    pub(super) at: Location,
    pub(super) accepted_at_ms: u64,
    /// Bytes of its stored record.
    pub(super) record_bytes: u64,
}

/// What the files held when the journal was opened.
#[derive(Debug, Default)]
pub(super) struct Recovered {
    /// Entries not released, by sequence number.
    pub(super) pending: BTreeMap<u64, Pending>,
    /// Every entry the files hold, released or not, as (acceptance time, sequence number, uuid):
    /// for the deduplication record, which may have lost its latest commits.
    pub(super) seen: Vec<(u64, u64, String)>,
    /// The sequence number the next entry gets.
    pub(super) end: u64,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum JournalError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is not a journal file of this spool: {message}")]
    Foreign { path: PathBuf, message: String },
}

/// A commit on its way.
struct CommitState {
    /// Where it started in the file written to: where the next commit writes if it fails.
    started_at: u64,
    /// Files written to, for `fdatasync`.
    touched: Vec<u32>,
}

/// A file as its readers see it.
pub(super) struct SegmentFile {
    file: File,
    /// Of the use the file is in: frames of another use never check out.
    generation: AtomicU64,
}

/// The journal's files, shared with its readers (the relay, the `spool` commands): the writer adds
/// files and starts them again, readers read the frames of pending entries.
#[derive(Default)]
pub(super) struct Files {
    segments: RwLock<Vec<Arc<SegmentFile>>>,
}

/// Bytes of frames gathered before they are written, at most (and one frame more).
const MAX_BUFFER: usize = 256 << 10;

/// Frames read together at most, when they follow one another in a file.
const READ_SPAN: u64 = 256 << 10;

impl Files {
    /// Files made so far.
    pub(super) fn count(&self) -> usize {
        self.segments
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    fn segment(&self, number: u32) -> Option<Arc<SegmentFile>> {
        self.segments
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(number as usize)
            .cloned()
    }

    /// The entries at `wanted` (sequence number and location, in order) whose frames still check
    /// out as those entries: once an entry is released, its file may be written over. Frames that
    /// follow one another in a file are read together.
    pub(super) fn read(&self, wanted: &[(u64, Location)]) -> io::Result<Vec<ReadEntry>> {
        let mut out = Vec::with_capacity(wanted.len());
        let mut span = Vec::new();
        let mut rest = wanted;
        while let Some(&(_, first)) = rest.first() {
            // The run of frames from `first` on that lie end to end in its file.
            let mut end = first.offset + u64::from(first.len);
            let mut run = 1;
            while let Some(&(_, next)) = rest.get(run) {
                if next.file != first.file
                    || next.offset != end
                    || end + u64::from(next.len) - first.offset > READ_SPAN
                {
                    break;
                }
                end += u64::from(next.len);
                run += 1;
            }
            let (now, later) = rest.split_at(run);
            rest = later;
            let Some(segment) = self.segment(first.file) else {
                continue;
            };
            let generation = segment.generation.load(Ordering::Acquire);
            span.resize((end - first.offset) as usize, 0);
            match segment.file.read_exact_at(&mut span, first.offset) {
                Ok(()) => {}
                // A frame beyond the file's end was never written there.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => continue,
                Err(e) => return Err(e),
            }
            for &(seq, at) in now {
                let start = (at.offset - first.offset) as usize;
                let frame = &span[start..start + at.len as usize];
                if let Some(entry) = check(frame, generation)
                    .and_then(parse_entry)
                    .filter(|entry| entry.seq == seq)
                {
                    out.push(entry);
                }
            }
        }
        Ok(out)
    }
}

/// Where each pending entry's frame is, by sequence number. Entries come in sequence order and
/// mostly go oldest first, so this is a run from the oldest pending one, with a hole wherever one
/// went out of order: 24 bytes an entry, where a tree would take twice that.
#[derive(Debug, Default)]
pub(super) struct Index {
    /// The sequence number of `slots[0]`.
    first: u64,
    slots: VecDeque<Option<Location>>,
    entries: u64,
    /// Of their frames.
    bytes: u64,
}

impl Index {
    pub(super) fn recovered(pending: &BTreeMap<u64, Pending>) -> Index {
        let mut index = Index::default();
        for (&seq, entry) in pending {
            index.push(seq, entry.at);
        }
        index
    }

    pub(super) fn entries(&self) -> u64 {
        self.entries
    }

    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Adds entry `seq`, later than any so far.
    pub(super) fn push(&mut self, seq: u64, at: Location) {
        if self.slots.is_empty() {
            self.first = seq;
        }
        let slot = (seq - self.first) as usize;
        debug_assert!(slot >= self.slots.len(), "entries come in sequence order");
        self.slots.resize(slot, None);
        self.slots.push_back(Some(at));
        self.entries += 1;
        self.bytes += u64::from(at.len);
    }

    fn slot(&self, seq: u64) -> Option<usize> {
        let slot = usize::try_from(seq.checked_sub(self.first)?).ok()?;
        (slot < self.slots.len()).then_some(slot)
    }

    pub(super) fn get(&self, seq: u64) -> Option<Location> {
        self.slot(seq).and_then(|slot| self.slots[slot])
    }

    /// Entry `seq` is now at `at` (moved to a later file).
    pub(super) fn moved(&mut self, seq: u64, at: Location) {
        if let Some(slot) = self.slot(seq)
            && let Some(old) = self.slots[slot].replace(at)
        {
            self.bytes = self.bytes - u64::from(old.len) + u64::from(at.len);
        }
    }

    pub(super) fn remove(&mut self, seq: u64) -> Option<Location> {
        let at = self.slot(seq).and_then(|slot| self.slots[slot].take())?;
        self.entries -= 1;
        self.bytes -= u64::from(at.len);
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.first += 1;
        }
        while let Some(None) = self.slots.back() {
            self.slots.pop_back();
        }
        Some(at)
    }

    /// At most `limit` entries from sequence number `from` on, in order.
    pub(super) fn from(&self, from: u64, limit: usize) -> Vec<(u64, Location)> {
        let start = from.saturating_sub(self.first).min(self.slots.len() as u64) as usize;
        (self.first + start as u64..)
            .zip(self.slots.range(start..))
            .filter_map(|(seq, at)| at.map(|at| (seq, at)))
            .take(limit)
            .collect()
    }

    /// The entries in file `file`, in order.
    pub(super) fn in_file(&self, file: u32) -> Vec<(u64, Location)> {
        (self.first..)
            .zip(&self.slots)
            .filter_map(|(seq, at)| at.filter(|at| at.file == file).map(|at| (seq, at)))
            .collect()
    }
}

/// A file as the writer sees it.
struct Segment {
    shared: Arc<SegmentFile>,
    path: PathBuf,
    /// Entries in it not released.
    pending: u64,
}

impl Segment {
    fn file(&self) -> &File {
        &self.shared.file
    }

    fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }
}

/// The journal, owned by the spool's writer.
pub(super) struct Journal {
    dir: PathBuf,
    id: String,
    segment_bytes: u64,
    /// By file number.
    segments: Vec<Segment>,
    files: Arc<Files>,
    /// Files in use, oldest first; the last one is written to.
    active: VecDeque<u32>,
    /// Files free to be written over.
    free: Vec<u32>,
    /// Where the next frame goes in the file written to.
    offset: u64,
    next_generation: u64,
    buffer: Vec<u8>,
}

fn io_at(path: &Path) -> impl Fn(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(super) fn file_name(number: u32) -> String {
    format!("journal-{number:04}")
}

/// The checksum of a frame's body in a file of `generation`.
fn checksum(generation: u64, body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&generation.to_le_bytes());
    hasher.update(body);
    hasher.finalize()
}

/// A file's header: magic, generation, the next sequence number, the spool id, and a checksum of
/// all of it.
fn header(id: &str, generation: u64, base_seq: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES as usize);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&base_seq.to_le_bytes());
    out.push(id.len() as u8);
    out.extend_from_slice(id.as_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out.resize(HEADER_BYTES as usize, 0);
    out
}

/// (generation, next sequence number) of a header that checks out and names spool `id`.
fn read_header(page: &[u8], id: &str) -> Result<(u64, u64), String> {
    if &page[..8] != MAGIC {
        return Err("no journal header".into());
    }
    let generation = u64::from_le_bytes(page[8..16].try_into().expect("8 bytes"));
    let base_seq = u64::from_le_bytes(page[16..24].try_into().expect("8 bytes"));
    let id_len = usize::from(page[24]);
    if id_len > MAX_ID_BYTES {
        return Err("damaged header".into());
    }
    let end = 25 + id_len;
    let crc = u32::from_le_bytes(page[end..end + 4].try_into().expect("4 bytes"));
    if crc != crc32fast::hash(&page[..end]) {
        return Err("damaged header".into());
    }
    let found = String::from_utf8_lossy(&page[25..end]);
    if found != id {
        return Err(format!("it belongs to spool {found}, not {id}"));
    }
    Ok((generation, base_seq))
}

fn entry_body(out: &mut Vec<u8>, entry: &NewEntry<'_>) {
    out.push(ENTRY);
    out.extend_from_slice(&entry.seq.to_le_bytes());
    out.extend_from_slice(&entry.accepted_at_ms.to_le_bytes());
    out.extend_from_slice(&(entry.uuid.len() as u16).to_le_bytes());
    out.extend_from_slice(entry.uuid.as_bytes());
    out.extend_from_slice(entry.record);
}

fn parse_entry(body: &[u8]) -> Option<ReadEntry> {
    let (&kind, rest) = body.split_first()?;
    if kind != ENTRY || rest.len() < 18 {
        return None;
    }
    let seq = u64::from_le_bytes(rest[..8].try_into().ok()?);
    let accepted_at_ms = u64::from_le_bytes(rest[8..16].try_into().ok()?);
    let uuid_len = usize::from(u16::from_le_bytes(rest[16..18].try_into().ok()?));
    let uuid = rest.get(18..18 + uuid_len)?;
    Some(ReadEntry {
        seq,
        accepted_at_ms,
        uuid: String::from_utf8(uuid.to_vec()).ok()?,
        record: rest[18 + uuid_len..].to_vec(),
    })
}

impl Journal {
    /// The bytes of an entry's frame.
    pub(super) fn frame_bytes(entry: &NewEntry<'_>) -> u64 {
        Self::entry_frame_bytes(entry.uuid.len(), entry.record.len())
    }

    /// The bytes of the frame of an entry of a `uuid_len`-byte uuid and a `record_len`-byte record.
    pub(super) fn entry_frame_bytes(uuid_len: usize, record_len: usize) -> u64 {
        (FRAME_HEAD + 1 + 8 + 8 + 2 + uuid_len + record_len) as u64
    }

    /// The bytes of the frames releasing `entries` entries, at most.
    pub(super) fn release_frame_bytes(&self, entries: usize) -> u64 {
        let per_frame = ((self.segment_bytes - HEADER_BYTES) as usize - FRAME_HEAD - 1) / 8;
        (entries.div_ceil(per_frame) * (FRAME_HEAD + 1) + 8 * entries) as u64
    }

    /// Opens the journal of spool `id` in `dir`, reading back what its files hold. Files are made
    /// as they are needed and grow to about `segment_bytes` (a larger entry has a file of its own);
    /// once released they are written over in place.
    pub(super) fn open(
        dir: &Path,
        id: &str,
        segment_bytes: u64,
    ) -> Result<(Journal, Recovered), JournalError> {
        assert!(id.len() <= MAX_ID_BYTES && segment_bytes > 2 * HEADER_BYTES);
        let mut numbers = Vec::new();
        for item in std::fs::read_dir(dir).map_err(io_at(dir))? {
            let name = item.map_err(io_at(dir))?.file_name();
            let Some(number) = name
                .to_str()
                .and_then(|n| n.strip_prefix("journal-"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            numbers.push(number);
        }
        numbers.sort_unstable();
        // Each file with its length, and its header's (generation, next sequence number) unless it
        // was made but never started.
        let mut segments = Vec::new();
        for (expected, &number) in numbers.iter().enumerate() {
            let path = dir.join(file_name(number));
            if number as usize != expected {
                // Files are numbered as they are made, from 0: one before this one is gone.
                return Err(JournalError::Foreign {
                    message: format!("{} is missing", file_name(expected as u32)),
                    path,
                });
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io_at(&path))?;
            let len = file.metadata().map_err(io_at(&path))?.len();
            let mut page = vec![0; HEADER_BYTES as usize];
            if len >= HEADER_BYTES {
                file.read_exact_at(&mut page, 0).map_err(io_at(&path))?;
            }
            // Made, but the crash came before its header was whole: it never held a frame.
            let header = if page.iter().all(|&b| b == 0) {
                None
            } else {
                Some(
                    read_header(&page, id).map_err(|message| JournalError::Foreign {
                        path: path.clone(),
                        message,
                    })?,
                )
            };
            let generation = header.map_or(0, |(generation, _)| generation);
            segments.push((
                Segment {
                    shared: Arc::new(SegmentFile {
                        file,
                        generation: AtomicU64::new(generation),
                    }),
                    path,
                    pending: 0,
                },
                len,
                header,
            ));
        }
        // Read in the order they were started: an entry written again later (moved out of an old
        // file) is where its last frame is.
        let mut order: Vec<u32> = (0..segments.len() as u32)
            .filter(|&n| segments[n as usize].2.is_some())
            .collect();
        order.sort_by_key(|&n| segments[n as usize].0.generation());
        let mut recovered = Recovered::default();
        let mut released = Vec::new();
        let mut ends = vec![HEADER_BYTES; segments.len()];
        for (nth, &number) in order.iter().enumerate() {
            let (segment, len, header) = &segments[number as usize];
            let base_seq = header.map_or(0, |(_, base_seq)| base_seq);
            recovered.end = recovered.end.max(base_seq);
            let (end, closed) = scan(segment, *len, number, |at, body| match body.first() {
                Some(&ENTRY) => {
                    if let Some(entry) = parse_entry(body) {
                        recovered.end = recovered.end.max(entry.seq + 1);
                        recovered.pending.insert(
                            entry.seq,
                            Pending {
                                at,
                                accepted_at_ms: entry.accepted_at_ms,
                                record_bytes: entry.record.len() as u64,
                            },
                        );
                        recovered
                            .seen
                            .push((entry.accepted_at_ms, entry.seq, entry.uuid));
                    }
                }
                Some(&RELEASE) => released.extend(
                    body[1..]
                        .chunks_exact(8)
                        .map(|seq| u64::from_le_bytes(seq.try_into().expect("8 bytes"))),
                ),
                _ => {}
            })
            .map_err(io_at(&segment.path))?;
            // Only the newest file may end in a torn commit: the others were closed, durably,
            // before the next one was started.
            if !closed && nth + 1 < order.len() {
                return Err(JournalError::Foreign {
                    path: segment.path.clone(),
                    message: format!(
                        "it is damaged: its frames stop at byte {end}, before the frame that closed it"
                    ),
                });
            }
            ends[number as usize] = end;
        }
        for seq in released {
            recovered.pending.remove(&seq);
        }
        for pending in recovered.pending.values() {
            segments[pending.at.file as usize].0.pending += 1;
        }
        // The newest is written to, after its last frame. Those before the oldest one still holding
        // an entry are free, and so are those never started.
        let oldest_needed = order
            .iter()
            .position(|&n| segments[n as usize].0.pending > 0)
            .unwrap_or(order.len().saturating_sub(1));
        let offset = order.last().map_or(HEADER_BYTES, |&n| ends[n as usize]);
        let next_generation = order
            .last()
            .map_or(0, |&n| segments[n as usize].0.generation() + 1);
        recovered.seen.sort_unstable();
        recovered.seen.dedup_by_key(|(_, seq, _)| *seq);
        let unused = (0..segments.len() as u32).filter(|&n| segments[n as usize].2.is_none());
        let free = order[..oldest_needed]
            .iter()
            .copied()
            .chain(unused)
            .collect();
        let segments: Vec<Segment> = segments.into_iter().map(|(s, _, _)| s).collect();
        let files = Arc::new(Files {
            segments: RwLock::new(segments.iter().map(|s| s.shared.clone()).collect()),
        });
        let journal = Journal {
            dir: dir.to_path_buf(),
            id: id.to_string(),
            segment_bytes,
            free,
            active: order[oldest_needed..].iter().copied().collect(),
            segments,
            files,
            offset,
            next_generation,
            buffer: Vec::new(),
        };
        Ok((journal, recovered))
    }

    /// The files, for readers.
    pub(super) fn shared_files(&self) -> Arc<Files> {
        self.files.clone()
    }

    /// Files made so far.
    pub(super) fn files(&self) -> usize {
        self.segments.len()
    }

    /// The oldest file in use, if it holds pending entries and files after it are in use: what
    /// keeps the journal from reusing its files.
    pub(super) fn oldest_pinned(&self) -> Option<u32> {
        let &oldest = self.active.front()?;
        (self.active.len() > 1 && self.segments[oldest as usize].pending > 0).then_some(oldest)
    }

    /// Whether a commit of up to `bytes` of frames may start a file already used once: before
    /// such a commit, the caller makes durable what it derived from the entries in the files.
    pub(super) fn may_reuse(&self, bytes: u64) -> bool {
        !self.free.is_empty() && self.offset + bytes + CLOSE_FRAME > self.segment_bytes
    }

    /// Writes `entries` (in order) and a release of `released` (the entries' locations, as
    /// written), durably, before returning where each entry went. `moved` are the earlier
    /// locations of entries written again here (moved out of an old file): no longer theirs, but
    /// not released. `next_seq` is the sequence number the next entry would get, for a file's
    /// header; `before_reuse` runs before a file is written over. On an error nothing of the
    /// commit counts, and the next commit writes from where this one started in the file written
    /// to.
    pub(super) fn commit(
        &mut self,
        entries: &[NewEntry<'_>],
        released: &[(u64, Location)],
        moved: &[Location],
        next_seq: u64,
        mut before_reuse: impl FnMut() -> io::Result<()>,
    ) -> io::Result<Vec<Location>> {
        let mut commit = CommitState {
            started_at: self.offset,
            touched: Vec::new(),
        };
        let mut locations = Vec::with_capacity(entries.len());
        let written = self.write_frames(
            entries,
            released,
            next_seq,
            &mut before_reuse,
            &mut commit,
            &mut locations,
        );
        // An entry larger than the buffer's bound does not keep its room.
        if self.buffer.capacity() > 2 * MAX_BUFFER {
            self.buffer = Vec::new();
        }
        if let Err(e) = written {
            self.buffer.clear();
            self.offset = commit.started_at;
            return Err(e);
        }
        for at in &locations {
            self.segments[at.file as usize].pending += 1;
        }
        for at in released.iter().map(|(_, at)| at).chain(moved) {
            let segment = &mut self.segments[at.file as usize];
            segment.pending = segment.pending.saturating_sub(1);
        }
        while self.active.len() > 1 {
            let oldest = self.active[0];
            if self.segments[oldest as usize].pending > 0 {
                break;
            }
            self.active.pop_front();
            self.free.push(oldest);
        }
        Ok(locations)
    }

    fn write_frames(
        &mut self,
        entries: &[NewEntry<'_>],
        released: &[(u64, Location)],
        next_seq: u64,
        before_reuse: &mut impl FnMut() -> io::Result<()>,
        commit: &mut CommitState,
        locations: &mut Vec<Location>,
    ) -> io::Result<()> {
        self.buffer.clear();
        for entry in entries {
            let len = Self::frame_bytes(entry) - FRAME_HEAD as u64;
            let at = self.frame(len, next_seq, before_reuse, commit, |out| {
                entry_body(out, entry)
            })?;
            locations.push(at);
        }
        // A release of many thousands of entries is split to fit a file.
        let per_frame = ((self.segment_bytes - HEADER_BYTES) as usize - FRAME_HEAD - 1) / 8;
        for chunk in released.chunks(per_frame) {
            let len = 1 + 8 * chunk.len() as u64;
            self.frame(len, next_seq, before_reuse, commit, |out| {
                out.push(RELEASE);
                for (seq, _) in chunk {
                    out.extend_from_slice(&seq.to_le_bytes());
                }
            })?;
        }
        self.flush_buffer(commit)?;
        for &n in &commit.touched {
            self.segments[n as usize].file().sync_data()?;
        }
        Ok(())
    }

    /// Adds a frame of a `body_len`-byte body (written by `body`) to the commit, in the file
    /// written to if it fits, else in the next one.
    fn frame(
        &mut self,
        body_len: u64,
        next_seq: u64,
        before_reuse: &mut impl FnMut() -> io::Result<()>,
        commit: &mut CommitState,
        body: impl FnOnce(&mut Vec<u8>),
    ) -> io::Result<Location> {
        let frame_len = FRAME_HEAD as u64 + body_len;
        let used = self.offset + self.buffer.len() as u64;
        // A frame larger than a file goes alone into one.
        let fits = used + frame_len + CLOSE_FRAME <= self.segment_bytes || used == HEADER_BYTES;
        let file = match self.active.back() {
            Some(&n) if fits => n,
            current => {
                if let Some(&current) = current {
                    // Closed, and durably so before the next file's header is: every file but the
                    // newest then ends with its close frame, unless it was damaged.
                    self.push_frame(current, 1, |out| out.push(CLOSE));
                    self.flush_buffer(commit)?;
                    self.segments[current as usize].file().sync_data()?;
                    commit.touched.retain(|&n| n != current);
                }
                let n = self.roll(next_seq, before_reuse)?;
                commit.started_at = HEADER_BYTES;
                n
            }
        };
        let at = self.push_frame(file, body_len, body);
        // A large commit is written in parts, so that the buffer stays small.
        if self.buffer.len() > MAX_BUFFER {
            self.flush_buffer(commit)?;
        }
        Ok(at)
    }

    /// Adds a frame to the buffer of `file`, the file written to.
    fn push_frame(
        &mut self,
        file: u32,
        body_len: u64,
        body: impl FnOnce(&mut Vec<u8>),
    ) -> Location {
        let frame_len = FRAME_HEAD as u64 + body_len;
        let at = self.offset + self.buffer.len() as u64;
        let start = self.buffer.len();
        self.buffer.extend_from_slice(&[0; FRAME_HEAD]);
        body(&mut self.buffer);
        debug_assert_eq!((self.buffer.len() - start) as u64, frame_len);
        let crc = checksum(
            self.segments[file as usize].generation(),
            &self.buffer[start + FRAME_HEAD..],
        );
        self.buffer[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
        self.buffer[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        Location {
            file,
            offset: at,
            len: frame_len as u32,
        }
    }

    /// Writes the frames gathered for the file written to, and marks it for `fdatasync`.
    fn flush_buffer(&mut self, commit: &mut CommitState) -> io::Result<()> {
        let Some(&current) = self.active.back() else {
            return Ok(());
        };
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.segments[current as usize]
            .file()
            .write_all_at(&self.buffer, self.offset)?;
        self.offset += self.buffer.len() as u64;
        self.buffer.clear();
        if !commit.touched.contains(&current) {
            commit.touched.push(current);
        }
        Ok(())
    }

    /// Starts the next file: the oldest free one (after `before_reuse`), or a new one. Its header
    /// is durable before any frame is written to it.
    fn roll(
        &mut self,
        next_seq: u64,
        before_reuse: &mut impl FnMut() -> io::Result<()>,
    ) -> io::Result<u32> {
        let generation = self.next_generation;
        let number = match self.free.first().copied() {
            Some(number) => {
                before_reuse()?;
                self.free.remove(0);
                number
            }
            None => self.make_file()?,
        };
        let segment = &mut self.segments[number as usize];
        // Readers holding a location in it from its last use find their frames no longer check
        // out from here on.
        segment
            .shared
            .generation
            .store(generation, Ordering::Release);
        segment
            .file()
            .write_all_at(&header(&self.id, generation, next_seq), 0)?;
        segment.file().sync_data()?;
        segment.pending = 0;
        self.next_generation += 1;
        self.active.push_back(number);
        self.offset = HEADER_BYTES;
        Ok(number)
    }

    /// Makes file number `files()`, empty, durably (its directory entry too). It grows as it is
    /// written the first time, and is written over in place from then on.
    fn make_file(&mut self) -> io::Result<u32> {
        let number = self.segments.len() as u32;
        let path = self.dir.join(file_name(number));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        File::open(&self.dir)?.sync_all()?;
        let shared = Arc::new(SegmentFile {
            file,
            generation: AtomicU64::new(0),
        });
        self.files
            .segments
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(shared.clone());
        self.segments.push(Segment {
            shared,
            path,
            pending: 0,
        });
        Ok(number)
    }

    /// Entry `seq` at `at`, if the frame there still checks out as that entry.
    #[cfg(test)]
    fn read(&self, seq: u64, at: Location) -> io::Result<Option<ReadEntry>> {
        Ok(self.files.read(&[(seq, at)])?.pop())
    }

    #[cfg(test)]
    fn path(&self, number: u32) -> &Path {
        &self.segments[number as usize].path
    }
}

/// The body of `frame` if its length and checksum check out in a file of `generation`.
fn check(frame: &[u8], generation: u64) -> Option<&[u8]> {
    let len = u32::from_le_bytes(frame.get(..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(frame.get(4..8)?.try_into().ok()?);
    let body = frame.get(FRAME_HEAD..FRAME_HEAD + len)?;
    (len > 0 && checksum(generation, body) == crc).then_some(body)
}

/// Reads `segment`'s frames in order, handing each body to `visit` with its location, until the
/// first that does not check out; returns where that one starts, and whether the last that did
/// closed the file.
fn scan(
    segment: &Segment,
    len: u64,
    number: u32,
    mut visit: impl FnMut(Location, &[u8]),
) -> io::Result<(u64, bool)> {
    let mut closed = false;
    let mut offset = HEADER_BYTES;
    let mut head = [0u8; FRAME_HEAD];
    let mut body = Vec::new();
    while offset + FRAME_HEAD as u64 <= len {
        segment.file().read_exact_at(&mut head, offset)?;
        let body_len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as u64;
        let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
        let frame_len = FRAME_HEAD as u64 + body_len;
        if body_len == 0 || offset + frame_len > len {
            break;
        }
        body.resize(body_len as usize, 0);
        segment
            .file()
            .read_exact_at(&mut body, offset + FRAME_HEAD as u64)?;
        if checksum(segment.generation(), &body) != crc {
            break;
        }
        closed = body == [CLOSE];
        visit(
            Location {
                file: number,
                offset,
                len: frame_len as u32,
            },
            &body,
        );
        offset += frame_len;
    }
    Ok((offset, closed))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef";
    /// A header page and room for eleven of [`entry`]'s frames.
    const SEGMENT: u64 = 16 * 1024;

    struct Owned {
        seq: u64,
        uuid: String,
        record: Vec<u8>,
    }

    fn entry(seq: u64) -> Owned {
        Owned {
            seq,
            uuid: format!("00000000-0000-4000-8000-{seq:012}"),
            record: vec![seq as u8; 1000],
        }
    }

    fn new(owned: &[Owned]) -> Vec<NewEntry<'_>> {
        owned
            .iter()
            .map(|o| NewEntry {
                seq: o.seq,
                accepted_at_ms: 1_000 + o.seq,
                uuid: &o.uuid,
                record: &o.record,
            })
            .collect()
    }

    fn open(dir: &Path) -> (Journal, Recovered) {
        Journal::open(dir, ID, SEGMENT).unwrap()
    }

    fn commit(
        journal: &mut Journal,
        seqs: std::ops::Range<u64>,
        released: &[(u64, Location)],
    ) -> Vec<Location> {
        let owned: Vec<Owned> = seqs.clone().map(entry).collect();
        journal
            .commit(&new(&owned), released, &[], seqs.end, || Ok(()))
            .unwrap()
    }

    fn pending(recovered: &Recovered) -> Vec<u64> {
        recovered.pending.keys().copied().collect()
    }

    #[test]
    fn entries_read_back_after_reopening_with_their_records_and_uuids() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, recovered) = open(dir.path());
        assert!(recovered.pending.is_empty() && recovered.end == 0);
        let at = commit(&mut journal, 0..3, &[]);
        let read = journal.read(1, at[1]).unwrap().unwrap();
        assert_eq!((read.seq, read.record), (1, vec![1; 1000]));
        drop(journal);

        let (journal, recovered) = open(dir.path());
        assert_eq!(pending(&recovered), [0, 1, 2]);
        assert_eq!(recovered.end, 3);
        assert_eq!(recovered.seen.len(), 3);
        assert_eq!(recovered.seen[2], (1_002, 2, entry(2).uuid));
        for (seq, p) in &recovered.pending {
            assert_eq!(p.at, at[*seq as usize]);
            assert_eq!(p.record_bytes, 1000);
            assert_eq!(
                journal.read(*seq, p.at).unwrap().unwrap().record,
                entry(*seq).record
            );
        }
    }

    #[test]
    fn released_entries_stay_released_and_are_still_seen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = open(dir.path());
        let at = commit(&mut journal, 0..3, &[]);
        commit(&mut journal, 3..4, &[(0, at[0]), (1, at[1])]);
        drop(journal);
        let (_, recovered) = open(dir.path());
        assert_eq!(pending(&recovered), [2, 3]);
        assert_eq!(
            recovered.seen.len(),
            4,
            "the deduplication record is rebuilt from all"
        );
        assert_eq!(recovered.end, 4);
    }

    #[test]
    fn a_torn_commit_reads_back_as_the_commits_before_it_and_is_written_over() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = open(dir.path());
        commit(&mut journal, 0..2, &[]);
        let torn = commit(&mut journal, 2..3, &[])[0];
        // Half of the last frame reached the disk.
        let file = OpenOptions::new()
            .write(true)
            .open(journal.path(torn.file))
            .unwrap();
        let half = u64::from(torn.len) / 2;
        file.write_all_at(
            &vec![0; (u64::from(torn.len) - half) as usize],
            torn.offset + half,
        )
        .unwrap();
        drop(journal);

        let (mut journal, recovered) = open(dir.path());
        assert_eq!(pending(&recovered), [0, 1]);
        assert_eq!(recovered.end, 2);
        let again = commit(&mut journal, 2..4, &[]);
        assert_eq!(
            again[0].offset, torn.offset,
            "the next commit starts where the torn one did"
        );
        drop(journal);
        let (_, recovered) = open(dir.path());
        assert_eq!(pending(&recovered), [0, 1, 2, 3]);
    }

    #[test]
    fn released_files_are_written_over_and_their_earlier_frames_never_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = open(dir.path());
        let mut reused = 0;
        let mut last: Option<(u64, Location)> = None;
        // One entry a commit, each releasing the one before: eleven frames fit a file.
        for seq in 0..60 {
            let owned = [entry(seq)];
            let released: Vec<_> = last.into_iter().collect();
            let at = journal
                .commit(&new(&owned), &released, &[], seq + 1, || {
                    reused += 1;
                    Ok(())
                })
                .unwrap();
            last = Some((seq, at[0]));
        }
        assert!(journal.files() <= 2, "{} files", journal.files());
        assert!(reused >= 4, "files were written over {reused} times");
        drop(journal);
        // The file written to was reused: beyond its newest frames lie a dozen of an earlier use.
        let (_, recovered) = open(dir.path());
        assert_eq!(pending(&recovered), [59]);
        assert_eq!(recovered.end, 60);
    }

    #[test]
    fn a_reused_files_earlier_frames_never_read_back_even_before_it_holds_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = open(dir.path());
        // Eleven fill file 0, the twelfth starts file 1.
        let at = commit(&mut journal, 0..12, &[]);
        assert_eq!((at[10].file, at[11].file), (0, 1));
        let released: Vec<_> = (0..11).map(|seq| (seq, at[seq as usize])).collect();
        commit(&mut journal, 12..13, &released);
        // The crash comes right after file 1 was closed and file 0's header for its next use is
        // durable.
        let current = &journal.segments[1];
        let mut close = 1u32.to_le_bytes().to_vec();
        close.extend_from_slice(&checksum(current.generation(), &[CLOSE]).to_le_bytes());
        close.push(CLOSE);
        current.file().write_all_at(&close, journal.offset).unwrap();
        let file = OpenOptions::new()
            .write(true)
            .open(journal.path(0))
            .unwrap();
        file.write_all_at(&header(ID, journal.next_generation, 13), 0)
            .unwrap();
        drop(journal);

        let (mut journal, recovered) = open(dir.path());
        assert_eq!(pending(&recovered), [11, 12]);
        let seen: Vec<u64> = recovered.seen.iter().map(|(_, seq, _)| *seq).collect();
        assert_eq!(seen, [11, 12], "nothing of file 0's earlier use");
        let next = commit(&mut journal, 13..14, &[])[0];
        assert_eq!((next.file, next.offset), (0, HEADER_BYTES));
        // An entry's old location does not read as whatever took its place.
        assert_eq!(journal.read(0, at[0]).unwrap(), None);
    }

    #[test]
    fn an_entry_left_pending_keeps_the_files_after_it_until_it_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = open(dir.path());
        let pinned = commit(&mut journal, 0..1, &[])[0];
        let mut last: Option<(u64, Location)> = None;
        for seq in 1..40 {
            let released: Vec<_> = last.into_iter().collect();
            last = Some((seq, commit(&mut journal, seq..seq + 1, &released)[0]));
        }
        assert!(
            journal.files() >= 4,
            "not reused: {} files",
            journal.files()
        );
        assert_eq!(journal.oldest_pinned(), Some(pinned.file));
        let files = journal.files();
        let mut last = Some((0, pinned))
            .into_iter()
            .chain(last)
            .collect::<Vec<_>>();
        for seq in 40..80 {
            let at = commit(&mut journal, seq..seq + 1, &last)[0];
            last = vec![(seq, at)];
        }
        assert_eq!(journal.oldest_pinned(), None);
        assert_eq!(journal.files(), files, "reused once released");
        drop(journal);
        let (_, recovered) = open(dir.path());
        assert_eq!(pending(&recovered), [79]);
    }

    #[test]
    fn a_file_is_written_over_only_after_before_reuse_succeeded() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = open(dir.path());
        let mut last: Option<(u64, Location)> = None;
        let mut seq = 0;
        // Up to the commit that would reuse a file.
        loop {
            let owned = [entry(seq)];
            let released: Vec<_> = last.into_iter().collect();
            let result = journal.commit(&new(&owned), &released, &[], seq + 1, || {
                Err(io::Error::other(
                    "the deduplication record cannot be written",
                ))
            });
            match result {
                Ok(at) => last = Some((seq, at[0])),
                Err(e) => {
                    assert_eq!(e.to_string(), "the deduplication record cannot be written");
                    break;
                }
            }
            seq += 1;
            assert!(seq < 100, "no file was ever reused");
        }
        // The failed commit's sequence number is not given out again.
        let next = seq + 1;
        let owned = [entry(next)];
        let released: Vec<_> = last.into_iter().collect();
        journal
            .commit(&new(&owned), &released, &[], next + 1, || Ok(()))
            .unwrap();
        drop(journal);
        let (_, recovered) = open(dir.path());
        assert!(recovered.pending.contains_key(&next));
        assert!(!recovered.pending.contains_key(&(seq - 1)), "released");
    }

    #[test]
    fn a_damaged_frame_in_a_closed_file_stops_the_journal_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = open(dir.path());
        let at = commit(&mut journal, 0..14, &[]);
        assert_eq!((at[5].file, at[13].file), (0, 1));
        drop(journal);
        let file = OpenOptions::new()
            .write(true)
            .open(dir.path().join("journal-0000"))
            .unwrap();
        file.write_all_at(b"rot", at[5].offset + 40).unwrap();
        let e = Journal::open(dir.path(), ID, SEGMENT)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("journal-0000") && e.contains("damaged"), "{e}");
    }

    #[test]
    fn another_spools_file_or_a_missing_one_stops_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = open(dir.path());
        commit(&mut journal, 0..30, &[]);
        assert!(journal.files() >= 3);
        drop(journal);
        let e = Journal::open(dir.path(), "fedcba9876543210", SEGMENT)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("journal-0000") && e.contains("belongs to spool"),
            "{e}"
        );
        std::fs::remove_file(dir.path().join("journal-0001")).unwrap();
        let e = Journal::open(dir.path(), ID, SEGMENT)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("journal-0001 is missing"), "{e}");
    }

    #[test]
    fn an_entry_larger_than_a_file_has_a_file_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = open(dir.path());
        commit(&mut journal, 0..1, &[]);
        let huge = Owned {
            seq: 1,
            uuid: "u".into(),
            record: vec![7; 2 * SEGMENT as usize],
        };
        let at = journal
            .commit(&new(&[huge]), &[], &[], 2, || Ok(()))
            .unwrap()[0];
        assert_eq!((at.file, at.offset), (1, HEADER_BYTES));
        let after = commit(&mut journal, 2..3, &[])[0];
        assert_eq!((after.file, after.offset), (2, HEADER_BYTES));
        drop(journal);
        let (journal, recovered) = open(dir.path());
        assert_eq!(pending(&recovered), [0, 1, 2]);
        let read = journal.read(1, recovered.pending[&1].at).unwrap().unwrap();
        assert_eq!(read.record, vec![7; 2 * SEGMENT as usize]);
    }

    #[test]
    fn an_entry_written_again_in_a_later_file_reads_back_from_there() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = open(dir.path());
        let old = commit(&mut journal, 0..12, &[]);
        assert_eq!(old[11].file, 1);
        let owned = [entry(3)];
        let moved = journal
            .commit(&new(&owned), &[], &[old[3]], 12, || Ok(()))
            .unwrap()[0];
        assert_eq!(moved.file, 1);
        // The other entries of file 0 are released: it is free, though 3 was never released.
        let released: Vec<_> = (0..11)
            .filter(|&seq| seq != 3)
            .map(|seq| (seq, old[seq as usize]))
            .collect();
        commit(&mut journal, 12..13, &released);
        assert_eq!(journal.oldest_pinned(), None);
        drop(journal);
        let (_, recovered) = open(dir.path());
        assert_eq!(pending(&recovered), [3, 11, 12]);
        assert_eq!(recovered.pending[&3].at, moved);
        assert_eq!(recovered.seen.len(), 13, "each entry seen once");
    }

    #[test]
    fn a_file_made_before_a_crash_but_never_started_is_free() {
        for made in [Vec::new(), vec![0; 100], vec![0; SEGMENT as usize]] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("journal-0000"), made).unwrap();
            let (mut journal, recovered) = open(dir.path());
            assert!(recovered.pending.is_empty());
            commit(&mut journal, 0..2, &[]);
            assert_eq!(journal.files(), 1, "taken up, not made again");
            drop(journal);
            assert_eq!(pending(&open(dir.path()).1), [0, 1]);
        }
    }

    #[test]
    fn a_release_of_more_entries_than_a_frame_holds_is_split() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = open(dir.path());
        let at = commit(&mut journal, 0..1, &[]);
        // Far more releases (of entries long gone) than a file's frame holds.
        let many: Vec<(u64, Location)> = (0..3000).map(|seq| (seq, at[0])).collect();
        commit(&mut journal, 3000..3001, &many);
        drop(journal);
        assert_eq!(pending(&open(dir.path()).1), [3000]);
    }
}
