//! What the spool's writer pays per group commit for its storage, on redb and on the designs that
//! could replace it: `cargo run --release -- --dir DIR [--rounds N] [--group N] [--record-bytes N]
//! [--round N] [--backlog N] [--commits N] [--engines NAME,NAME]`. DIR must be on the disk the
//! spool would use (a tmpfs makes `fdatasync` free).
//!
//! The same work on each: a commit of `--group` notifications, each a record of `--record-bytes`
//! (stored bytes: the bridge's records are LZ4-compressed before they are stored, so they are
//! filled with bytes that do not compress) and a deduplication entry (acceptance key -> uuid); a
//! release of the oldest `--round` entries in the commit after the spool holds `--backlog` plus a
//! round, as the relay's rounds do; the deduplication record trimmed by 512 once over 100,000
//! uuids. Every commit is durable before the next starts (`fdatasync`).
//!
//! - `redb`: the spool as it is: its tables and settings (`entries`, `seen_order`; 2 MiB cache).
//! - `redb-grouped`: the same, but each commit's records are one value (keyed by the first's
//!   sequence number), removed once every record in it is released.
//! - `fjall`: an LSM tree with a journal; one keyspace per table, a batch per commit persisted with
//!   `SyncData`; memtables of 8 MiB (its default of 64 MiB would not fit the bridge's memory).
//! - `log`: every commit one checksummed frame appended to a file and `fdatasync`; a new file every
//!   64 MiB, a file deleted once nothing in it is pending.
//! - `log-in-place`: the same frames written over files made once at their full size and reused
//!   once released, so that `fdatasync` has no file size to commit.
//! - `journal+redb`: `log-in-place` takes each commit's durability, and redb gets the same commit
//!   without `fdatasync`, made durable every 64th commit: a journal in front of the database.
//! - `journal+seen`: the same, but redb gets only the deduplication record: the entries are the
//!   journal's alone.
//! - `none`: nothing stored; what the harness itself costs per commit (the records' copies, the
//!   uuids), which every other figure includes.
//!
//! The logs are floors, not spools: they keep no index, recover nothing and forget released uuids
//! with their file.
//!
//! Prints, for each engine and round, the process's CPU time per commit (user and system, all
//! threads: fjall's flushes and compactions count) and commits per second.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

const DEDUP_CAPACITY: usize = 100_000;
const DEDUP_SLACK: usize = 512;
const SEGMENT_BYTES: u64 = 64 << 20;

struct Load {
    group: usize,
    record_bytes: usize,
    round: usize,
    backlog: usize,
    commits: usize,
}

/// What one commit does: appends `records` from sequence number `first`, records their uuids
/// under `accepted_at`, removes the entries `released` and the oldest deduplication entries
/// `expired`, durably.
struct Commit<'a> {
    first: u64,
    accepted_at: u64,
    records: &'a [Vec<u8>],
    uuids: &'a [String],
    released: std::ops::Range<u64>,
    expired: &'a [(u64, u64)],
}

/// One engine's way of doing a commit.
trait Engine {
    fn commit(&mut self, commit: &Commit<'_>);
}

struct Nothing;

impl Engine for Nothing {
    fn commit(&mut self, _: &Commit<'_>) {}
}

struct Redb {
    db: redb::Database,
    /// A journal written in place takes each commit's durability; the database commits without
    /// `fdatasync` and is made durable every `LAZY_EVERY` commits (the journal's files are then
    /// free to be written over).
    journal: Option<Log>,
    /// Behind the journal, the database gets only the deduplication record: the entries are the
    /// journal's alone.
    only_seen: bool,
    /// Each commit's records are one value (keyed by the first's sequence number), removed once
    /// every record in it is released.
    grouped: bool,
    /// The groups stored, oldest first: (first sequence number, last).
    groups: std::collections::VecDeque<(u64, u64)>,
    value: Vec<u8>,
    commits: u64,
}

const LAZY_EVERY: u64 = 64;

const ENTRIES: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("entries");
const SEEN_ORDER: redb::TableDefinition<(u64, u64), &str> =
    redb::TableDefinition::new("seen_order");

impl Redb {
    fn open(dir: &Path, journal: bool, only_seen: bool, grouped: bool) -> Redb {
        let db = redb::Builder::new()
            .set_cache_size(2 << 20)
            .create(dir.join("spool.redb"))
            .expect("redb opens");
        Redb {
            db,
            journal: journal.then(|| Log::open(dir, true)),
            only_seen,
            grouped,
            groups: Default::default(),
            value: Vec::new(),
            commits: 0,
        }
    }
}

impl Engine for Redb {
    fn commit(&mut self, commit: &Commit<'_>) {
        if let Some(journal) = &mut self.journal {
            journal.commit(commit);
        }
        self.commits += 1;
        let mut txn = self.db.begin_write().expect("write transaction");
        if self.journal.is_some() && !self.commits.is_multiple_of(LAZY_EVERY) {
            txn.set_durability(redb::Durability::None)
                .expect("durability");
        }
        {
            let mut entries = txn.open_table(ENTRIES).expect("entries");
            let mut seen = txn.open_table(SEEN_ORDER).expect("seen_order");
            if self.grouped {
                while let Some(&(first, last)) = self.groups.front() {
                    if last >= commit.released.end {
                        break;
                    }
                    entries.remove(first).expect("remove group");
                    self.groups.pop_front();
                }
            } else if !self.only_seen {
                for seq in commit.released.clone() {
                    entries.remove(seq).expect("remove");
                }
            }
            for key in commit.expired {
                seen.remove(*key).expect("expire");
            }
            if self.grouped {
                self.value.clear();
                for record in commit.records {
                    self.value
                        .extend_from_slice(&(record.len() as u32).to_le_bytes());
                    self.value.extend_from_slice(record);
                }
                entries
                    .insert(commit.first, self.value.as_slice())
                    .expect("insert group");
                let last = commit.first + commit.records.len() as u64 - 1;
                self.groups.push_back((commit.first, last));
            }
            for ((seq, record), uuid) in (commit.first..).zip(commit.records).zip(commit.uuids) {
                if !self.only_seen && !self.grouped {
                    entries.insert(seq, record.as_slice()).expect("insert");
                }
                seen.insert((commit.accepted_at, seq), uuid.as_str())
                    .expect("insert uuid");
            }
        }
        txn.commit().expect("commit");
    }
}

struct Fjall {
    db: fjall::Database,
    entries: fjall::Keyspace,
    seen: fjall::Keyspace,
}

impl Fjall {
    fn open(dir: &Path) -> Fjall {
        let db = fjall::Database::builder(dir.join("fjall"))
            .cache_size(2 << 20)
            .open()
            .expect("fjall opens");
        let options = || fjall::KeyspaceCreateOptions::default().max_memtable_size(8 << 20);
        let entries = db.keyspace("entries", options).expect("entries");
        let seen = db.keyspace("seen_order", options).expect("seen_order");
        Fjall { db, entries, seen }
    }
}

fn seen_key((at, seq): (u64, u64)) -> [u8; 16] {
    let mut key = [0; 16];
    key[..8].copy_from_slice(&at.to_be_bytes());
    key[8..].copy_from_slice(&seq.to_be_bytes());
    key
}

impl Engine for Fjall {
    fn commit(&mut self, commit: &Commit<'_>) {
        let mut batch = self
            .db
            .batch()
            .durability(Some(fjall::PersistMode::SyncData));
        for seq in commit.released.clone() {
            batch.remove(&self.entries, seq.to_be_bytes());
        }
        for key in commit.expired {
            batch.remove(&self.seen, seen_key(*key));
        }
        for ((seq, record), uuid) in (commit.first..).zip(commit.records).zip(commit.uuids) {
            batch.insert(&self.entries, seq.to_be_bytes(), record.as_slice());
            batch.insert(
                &self.seen,
                seen_key((commit.accepted_at, seq)),
                uuid.as_str(),
            );
        }
        batch.commit().expect("commit");
    }
}

struct Log {
    dir: PathBuf,
    /// Files are written over in place, never grown: a released file is taken as the next one
    /// (the files of the first 64 MiB are filled with zeros when made). Appending grows the file,
    /// so each `fdatasync` also commits its new size to the file system's journal.
    recycle: bool,
    /// Files released, to be written over.
    free: Vec<u64>,
    next_number: u64,
    file: File,
    /// Files written, oldest first: (number, last sequence number in it).
    segments: Vec<(u64, u64)>,
    written: u64,
    frame: Vec<u8>,
}

impl Log {
    fn open(dir: &Path, recycle: bool) -> Log {
        let dir = dir.join("log");
        fs::create_dir_all(&dir).expect("log dir");
        Log {
            file: Log::create(&dir, 0, recycle),
            dir,
            recycle,
            free: Vec::new(),
            next_number: 1,
            segments: vec![(0, 0)],
            written: 0,
            frame: Vec::new(),
        }
    }

    fn create(dir: &Path, number: u64, recycle: bool) -> File {
        let path = dir.join(format!("{number:08}.log"));
        if !recycle {
            return OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("segment");
        }
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .expect("segment");
        if file.metadata().expect("metadata").len() < SEGMENT_BYTES {
            let zeros = vec![0; 1 << 20];
            for _ in 0..SEGMENT_BYTES >> 20 {
                file.write_all(&zeros).expect("fill");
            }
            file.sync_all().expect("fsync");
        }
        file
    }
}

impl Engine for Log {
    fn commit(&mut self, commit: &Commit<'_>) {
        // One frame: length, checksum, then the release and each record with its uuid.
        let frame = &mut self.frame;
        frame.clear();
        frame.extend_from_slice(&[0; 8]);
        frame.extend_from_slice(&commit.released.start.to_le_bytes());
        frame.extend_from_slice(&commit.released.end.to_le_bytes());
        frame.extend_from_slice(&commit.accepted_at.to_le_bytes());
        for ((seq, record), uuid) in (commit.first..).zip(commit.records).zip(commit.uuids) {
            frame.extend_from_slice(&seq.to_le_bytes());
            frame.extend_from_slice(&(uuid.len() as u32).to_le_bytes());
            frame.extend_from_slice(uuid.as_bytes());
            frame.extend_from_slice(&(record.len() as u32).to_le_bytes());
            frame.extend_from_slice(record);
        }
        let length = (frame.len() - 8) as u32;
        let checksum = crc32fast::hash(&frame[8..]);
        frame[..4].copy_from_slice(&length.to_le_bytes());
        frame[4..8].copy_from_slice(&checksum.to_le_bytes());
        if self.recycle {
            use std::os::unix::fs::FileExt;
            self.file
                .write_all_at(frame, self.written)
                .expect("write in place");
        } else {
            self.file.write_all(frame).expect("append");
        }
        self.file.sync_data().expect("fdatasync");
        self.written += frame.len() as u64;
        let last = commit.first + commit.records.len() as u64 - 1;
        self.segments.last_mut().expect("a segment").1 = last;
        // Files whose every entry is released go.
        while self.segments.len() > 1 && self.segments[0].1 < commit.released.end {
            let (number, _) = self.segments.remove(0);
            let path = self.dir.join(format!("{number:08}.log"));
            if self.recycle {
                self.free.push(number);
            } else {
                fs::remove_file(path).expect("delete");
            }
        }
        if self.written + (1 << 20) >= SEGMENT_BYTES {
            let number = match self.free.pop() {
                Some(number) => number,
                None => {
                    self.next_number += 1;
                    self.next_number - 1
                }
            };
            self.file = Log::create(&self.dir, number, self.recycle);
            self.segments.push((number, last));
            self.written = 0;
        }
    }
}

/// Bytes LZ4 would not shrink, as the bridge's stored records are already compressed.
fn noise(state: &mut u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            *state as u8
        })
        .collect()
}

/// The process's CPU time so far (user and system, every thread), in seconds.
fn cpu_seconds() -> f64 {
    let stat = fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The fields after the command's closing parenthesis; utime and stime are the 14th and 15th.
    let after = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// Runs `load` on `engine`: warm-up commits first, until the backlog and the deduplication
/// record are at their steady size, then `load.commits` measured. Returns (CPU ms per commit,
/// commits per second).
fn run(engine: &mut dyn Engine, load: &Load, state: &mut u64) -> (f64, f64) {
    let records: Vec<Vec<u8>> = (0..64)
        .map(|i| noise(state, load.record_bytes + (i % 7) * 16))
        .collect();
    let mut next = 0u64;
    let mut oldest = 0u64;
    let mut seen: std::collections::VecDeque<(u64, u64)> = Default::default();
    let warm_up = (DEDUP_CAPACITY / load.group).max(load.backlog / load.group) + 100;
    let mut started = None;
    for i in 0..warm_up + load.commits {
        if i == warm_up {
            started = Some((Instant::now(), cpu_seconds()));
        }
        let group: Vec<Vec<u8>> = (0..load.group)
            .map(|k| records[(next as usize + k) % records.len()].clone())
            .collect();
        let uuids: Vec<String> = (next..next + load.group as u64)
            .map(|seq| format!("{:08x}-0000-4000-8000-{:012x}", seq as u32, seq))
            .collect();
        let pending = (next - oldest) as usize;
        let released = if pending >= load.backlog + load.round {
            oldest..oldest + load.round as u64
        } else {
            oldest..oldest
        };
        let accepted_at = i as u64;
        for seq in next..next + load.group as u64 {
            seen.push_back((accepted_at, seq));
        }
        let expired: Vec<(u64, u64)> = if seen.len() > DEDUP_CAPACITY {
            let over = seen.len() - DEDUP_CAPACITY + DEDUP_SLACK;
            seen.drain(..over).collect()
        } else {
            Vec::new()
        };
        engine.commit(&Commit {
            first: next,
            accepted_at,
            records: &group,
            uuids: &uuids,
            released: released.clone(),
            expired: &expired,
        });
        oldest = released.end;
        next += load.group as u64;
    }
    let (at, cpu) = started.expect("measured commits");
    let (seconds, cpu) = (at.elapsed().as_secs_f64(), cpu_seconds() - cpu);
    (
        cpu * 1000.0 / load.commits as f64,
        load.commits as f64 / seconds,
    )
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == name)?;
    Some(args.get(at + 1).expect("a value after the option").clone())
}

fn number(name: &str, default: usize) -> usize {
    arg(name).map_or(default, |v| v.parse().expect("a number"))
}

fn main() {
    let load = Load {
        group: number("--group", 14),
        record_bytes: number("--record-bytes", 1340),
        round: number("--round", 105),
        backlog: number("--backlog", 2000),
        commits: number("--commits", 10_000),
    };
    let rounds = number("--rounds", 3);
    let base = PathBuf::from(arg("--dir").expect("--dir DIR: a directory on the spool's disk"))
        .join(format!("spool-engines-{}", std::process::id()));
    let mut state = 0x9e37_79b9_7f4a_7c15;
    println!(
        "group {} of {} bytes, rounds of {} released behind {} pending, {} commits",
        load.group, load.record_bytes, load.round, load.backlog, load.commits
    );
    println!("round engine        CPU ms/commit  commits/s");
    for round in 0..rounds {
        // Each round in another order, so that none always runs first or last.
        let all = [
            "redb",
            "redb-grouped",
            "fjall",
            "log",
            "log-in-place",
            "journal+redb",
            "journal+seen",
            "none",
        ];
        let chosen = arg("--engines");
        let mut order: Vec<&str> = all
            .into_iter()
            .filter(|e| {
                chosen
                    .as_ref()
                    .is_none_or(|c| c.split(',').any(|n| n == *e))
            })
            .collect();
        let engines = order.len();
        order.rotate_left(round % engines);
        for name in order {
            let dir = base.join(format!("{name}-{round}"));
            fs::create_dir_all(&dir).expect("bench dir");
            let mut engine: Box<dyn Engine> = match name {
                "redb" => Box::new(Redb::open(&dir, false, false, false)),
                "redb-grouped" => Box::new(Redb::open(&dir, false, false, true)),
                "journal+redb" => Box::new(Redb::open(&dir, true, false, false)),
                "journal+seen" => Box::new(Redb::open(&dir, true, true, false)),
                "fjall" => Box::new(Fjall::open(&dir)),
                "log" => Box::new(Log::open(&dir, false)),
                "log-in-place" => Box::new(Log::open(&dir, true)),
                _ => Box::new(Nothing),
            };
            let (cpu, rate) = run(engine.as_mut(), &load, &mut state);
            drop(engine);
            fs::remove_dir_all(&dir).expect("clean up");
            println!("{round:>5} {name:<12} {cpu:>14.4} {rate:>10.0}");
        }
    }
    let _ = fs::remove_dir_all(&base);
}
