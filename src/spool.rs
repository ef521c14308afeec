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
//! - `dead`: messages Kafka rejected for good and the dead-letter topic refused too. They count towards
//!   `--spool-max-bytes` and may fill at most a tenth of it: beyond, the oldest is dropped (logged and
//!   counted), because refusing new notifications instead would lose fresh events and, with repeated
//!   503 answers, the subscription itself.
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
use tokio::sync::{Notify, mpsc, oneshot};

use crate::metrics::Metrics;
use crate::readiness::{Readiness, SpoolHealth};
use crate::routing::{OutboundMessage, RoutePlan};
use crate::sink::{Acceptance, Sink, SinkError, SinkFuture};

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
const SEEN: TableDefinition<&str, u64> = TableDefinition::new("seen");
const SEEN_ORDER: TableDefinition<(u64, u64), &str> = TableDefinition::new("seen_order");
const DEAD: TableDefinition<u64, &[u8]> = TableDefinition::new("dead");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
/// The key of the identity in `meta`.
const IDENTITY_KEY: &str = "identity";

/// The database, inside the spool directory.
pub const DATABASE_FILE: &str = "spool.redb";
/// The identity file, inside the spool directory.
pub const IDENTITY_FILE: &str = "spool.id";
/// Where a new database is prepared, so that `spool.redb` only ever appears complete.
const NEW_DATABASE_FILE: &str = "spool.redb.new";
/// The spool's layout; a spool of a later format is refused rather than misread.
const FORMAT: u32 = 1;

/// The dead-letter area may hold at most `--spool-max-bytes` divided by this.
pub const DEAD_LETTER_SHARE: u64 = 10;

/// The most operations one commit takes: bounds the latency of the requests that wait on it.
const MAX_GROUP: usize = 4096;
/// Expired deduplication records removed per commit, so expiry never stalls a commit.
const MAX_EXPIRE_PER_COMMIT: usize = 1024;

/// What to do about the spool, ending every message about a spool that cannot be opened as it is.
// Files, not the directory: on Kubernetes the directory is a volume's mount point.
const START_EMPTY: &str = "to start an empty spool knowingly, move spool.redb and spool.id out of";

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

/// Who a spool is: written once, when it is created, to `spool.id` and into the database.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SpoolIdentity {
    pub format: u32,
    /// Random, so two spools never share one.
    pub id: String,
    /// RFC 3339.
    pub created_at: String,
}

impl SpoolIdentity {
    fn generate() -> Result<SpoolIdentity, SpoolError> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes)
            .map_err(|e| SpoolError::Storage(format!("no random spool id: {e}")))?;
        Ok(SpoolIdentity {
            format: FORMAT,
            id: bytes.iter().map(|b| format!("{b:02x}")).collect(),
            created_at: rfc3339(now_ms()),
        })
    }

    /// The text of `spool.id`: TOML, explaining itself to whoever finds it.
    fn to_text(&self) -> String {
        format!(
            "# rc-kafka-bridge spool identity, written when this spool was created. The database\n\
             # {DATABASE_FILE} beside it holds the same id: the bridge refuses to start when that file is\n\
             # missing, empty or another spool's, instead of starting empty and losing what it held.\n\
             format = {}\nid = \"{}\"\ncreated_at = \"{}\"\n",
            self.format, self.id, self.created_at
        )
    }

    fn parse(text: &str) -> Result<SpoolIdentity, String> {
        let identity: SpoolIdentity = toml::from_str(text).map_err(|e| e.to_string())?;
        if identity.id.is_empty() {
            return Err("the id is empty".into());
        }
        Ok(identity)
    }
}

/// What [`Spool::summary`] reports.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SpoolSummary {
    pub path: PathBuf,
    /// The identity; `None` for a spool of an earlier release not yet opened by `serve`.
    pub id: Option<String>,
    pub created_at: Option<String>,
    /// The size of the database file, free pages included.
    pub file_bytes: u64,
    pub max_bytes: u64,
    pub pending_entries: u64,
    pub pending_bytes: u64,
    pub oldest_age_seconds: Option<f64>,
    pub dead_letters: u64,
    pub dead_letter_bytes: u64,
    pub dead_letter_max_bytes: u64,
}

/// One line of `spool export`: a message as it would go to Kafka, and where it is in the spool.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
enum Exported<'a> {
    #[serde(rename_all = "camelCase")]
    Pending {
        uuid: &'a str,
        accepted_at: String,
        topic: &'a str,
        key: &'a str,
        headers: &'a [(String, String)],
        value: &'a str,
    },
    #[serde(rename_all = "camelCase")]
    DeadLetter {
        id: u64,
        error: &'a str,
        topic: &'a str,
        key: &'a str,
        headers: &'a [(String, String)],
        value: &'a str,
    },
}

/// How many messages [`Spool::export`] wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExportCounts {
    pub pending_messages: u64,
    pub dead_letters: u64,
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
    identity: Option<SpoolIdentity>,
    max_bytes: u64,
    dedup_window: Duration,
    dedup_capacity: usize,
    entries: AtomicU64,
    bytes: AtomicU64,
    dead_letters: AtomicU64,
    dead_letter_bytes: AtomicU64,
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

fn builder() -> redb::Builder {
    let mut builder = Database::builder();
    builder.set_cache_size(CACHE_BYTES);
    builder
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

/// How opening may treat the spool's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// `serve`: creates a spool in an empty directory, adopts one without an identity file, tightens
    /// file permissions.
    Serve,
    /// The `spool` commands: an existing spool only, opened as it is.
    Existing,
}

/// What the files held when they were opened.
#[derive(Default)]
struct Counts {
    entries: u64,
    bytes: u64,
    dead_letters: u64,
    dead_letter_bytes: u64,
}

struct Opened {
    db: Database,
    identity: Option<SpoolIdentity>,
    counts: Counts,
}

thread_local! {
    /// `Some` while this thread opens a spool: a panic inside the storage engine is recorded here
    /// and reported as a damaged spool, instead of printed as a crash.
    static STORAGE_PANIC: RefCell<Option<Option<String>>> = const { RefCell::new(None) };
}

/// Runs `f`, turning a panic inside it into an error message. The panic hook stays quiet for such
/// panics only; every other panic is reported as before.
fn catch_storage_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static QUIET_HOOK: Once = Once::new();
    QUIET_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let recorded = STORAGE_PANIC
                .try_with(|slot| match slot.try_borrow_mut() {
                    Ok(mut slot) => match slot.as_mut() {
                        Some(message) => {
                            let what = info.payload_as_str().unwrap_or("no message");
                            *message = Some(match info.location() {
                                Some(at) => format!("{what} ({at})"),
                                None => what.to_string(),
                            });
                            true
                        }
                        None => false,
                    },
                    Err(_) => false,
                })
                .unwrap_or(false);
            if !recorded {
                previous(info);
            }
        }));
    });
    STORAGE_PANIC.with(|slot| *slot.borrow_mut() = Some(None));
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    let message = STORAGE_PANIC
        .with(|slot| slot.borrow_mut().take())
        .flatten();
    result.map_err(|_| message.unwrap_or_else(|| "no message".into()))
}

/// Sorts a storage error into what the operator has to do about it.
fn classify(path: &Path, dir: &Path, error: impl Into<redb::Error>) -> SpoolError {
    match error.into() {
        redb::Error::DatabaseAlreadyOpen | redb::Error::LockProtocolMismatch => SpoolError::InUse {
            path: path.to_path_buf(),
        },
        redb::Error::Io(e) if e.kind() != std::io::ErrorKind::InvalidData => SpoolError::Open {
            path: path.to_path_buf(),
            message: e.to_string(),
        },
        redb::Error::UpgradeRequired(version) => SpoolError::Open {
            path: path.to_path_buf(),
            message: format!(
                "written in redb's file format {version}, which this release cannot read"
            ),
        },
        other => SpoolError::Damaged {
            path: path.to_path_buf(),
            message: other.to_string(),
            dir: dir.to_path_buf(),
        },
    }
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> SpoolError + '_ {
    move |e| SpoolError::Open {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn create_tables(txn: &WriteTransaction) -> Result<(), redb::TableError> {
    for table in [ENTRIES, DEAD] {
        txn.open_table(table)?;
    }
    txn.open_table(SEEN)?;
    txn.open_table(SEEN_ORDER)?;
    txn.open_table(META)?;
    Ok(())
}

fn store_identity(txn: &WriteTransaction, identity: &SpoolIdentity) -> Result<(), redb::Error> {
    let mut meta = txn.open_table(META)?;
    meta.insert(IDENTITY_KEY, identity.to_text().as_str())?;
    Ok(())
}

/// Makes a rename or a new file in `dir` durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

fn read_identity(path: &Path, dir: &Path) -> Result<Option<SpoolIdentity>, SpoolError> {
    let invalid = |message: String| SpoolError::Identity {
        path: path.to_path_buf(),
        message,
        dir: dir.to_path_buf(),
    };
    let identity = match fs::read_to_string(path) {
        Ok(text) => SpoolIdentity::parse(&text).map_err(invalid)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(invalid(e.to_string())),
    };
    if identity.format > FORMAT {
        return Err(SpoolError::NewerFormat {
            path: path.to_path_buf(),
            found: identity.format,
        });
    }
    Ok(Some(identity))
}

/// Writes `spool.id` whole or not at all.
fn write_identity(dir: &Path, identity: &SpoolIdentity) -> Result<(), SpoolError> {
    let path = dir.join(IDENTITY_FILE);
    let staged = dir.join(format!("{IDENTITY_FILE}.new"));
    let write = || -> std::io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&staged)?;
        file.write_all(identity.to_text().as_bytes())?;
        file.sync_all()?;
        fs::rename(&staged, &path)?;
        sync_dir(dir)
    };
    write().map_err(io_error(&path))
}

/// Files of earlier releases were created readable by everyone: the spool holds every notification.
fn restrict_to_owner(path: &Path) -> Result<(), SpoolError> {
    let mode = fs::metadata(path)
        .map_err(io_error(path))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io_error(path))?;
        tracing::info!(path = %path.display(), "spool file was readable by others: now 0600");
    }
    Ok(())
}

fn prepare_directory(dir: &Path) -> Result<(), SpoolError> {
    // An existing directory keeps its permissions: a mounted volume's root is not always ours to change.
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| SpoolError::Directory {
            path: dir.to_path_buf(),
            source,
        })
}

/// A new spool: the database is prepared under another name and renamed into place, then the
/// identity file written, so a crash at any point leaves either nothing or a database that names itself.
fn create_spool(dir: &Path) -> Result<SpoolIdentity, SpoolError> {
    let path = dir.join(DATABASE_FILE);
    let staged = dir.join(NEW_DATABASE_FILE);
    let identity = SpoolIdentity::generate()?;
    match fs::remove_file(&staged) {
        Ok(()) => tracing::info!(path = %staged.display(), "removed an unfinished spool creation"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(&staged)(e)),
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&staged)
        .map_err(io_error(&staged))?;
    {
        let backend =
            redb::backends::FileBackend::new(file).map_err(|e| classify(&staged, dir, e))?;
        let db = builder()
            .create_with_backend(backend)
            .map_err(|e| classify(&staged, dir, e))?;
        let initialise = || -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            create_tables(&txn)?;
            store_identity(&txn, &identity)?;
            txn.commit()?;
            Ok(())
        };
        initialise().map_err(|e| classify(&staged, dir, e))?;
    }
    fs::rename(&staged, &path).map_err(io_error(&path))?;
    sync_dir(dir).map_err(io_error(dir))?;
    write_identity(dir, &identity)?;
    tracing::info!(dir = %dir.display(), id = %identity.id, "created a new spool");
    Ok(identity)
}

/// Opens an existing database, checking every page it uses, and reads what the spool holds. Any
/// failure, a panic inside the storage engine included, is an error naming the file.
fn open_database(path: &Path, dir: &Path) -> Result<Opened, SpoolError> {
    let open = || -> Result<Opened, SpoolError> {
        let fail = |e: redb::Error| classify(path, dir, e);
        // The integrity check verifies the checksum of every page in use: a damaged file is refused
        // here, where a plain open trusts it and may panic later, halfway through serving.
        let db = builder()
            .set_check_integrity_on_open(true)
            .open(path)
            .map_err(|e| fail(e.into()))?;
        let txn = db.begin_write().map_err(|e| fail(e.into()))?;
        create_tables(&txn).map_err(|e| fail(e.into()))?;
        txn.commit().map_err(|e| fail(e.into()))?;

        let read = db.begin_read().map_err(|e| fail(e.into()))?;
        let stored =
            {
                let meta = read.open_table(META).map_err(|e| fail(e.into()))?;
                let text = meta
                    .get(IDENTITY_KEY)
                    .map_err(|e| fail(e.into()))?
                    .map(|v| v.value().to_string());
                match text {
                    Some(text) => Some(SpoolIdentity::parse(&text).map_err(|message| {
                        SpoolError::Damaged {
                            path: path.to_path_buf(),
                            message: format!("its identity is unreadable: {message}"),
                            dir: dir.to_path_buf(),
                        }
                    })?),
                    None => None,
                }
            };
        let mut counts = Counts::default();
        for (table, count, bytes) in [
            (ENTRIES, &mut counts.entries, &mut counts.bytes),
            (
                DEAD,
                &mut counts.dead_letters,
                &mut counts.dead_letter_bytes,
            ),
        ] {
            let table = read.open_table(table).map_err(|e| fail(e.into()))?;
            for item in table.iter().map_err(|e| fail(e.into()))? {
                let (_, value) = item.map_err(|e| fail(e.into()))?;
                *bytes += value.value().len() as u64;
                *count += 1;
            }
        }
        drop(read);
        Ok(Opened {
            db,
            identity: stored,
            counts,
        })
    };
    catch_storage_panic(open).unwrap_or_else(|panic| {
        Err(SpoolError::Damaged {
            path: path.to_path_buf(),
            message: format!("the storage engine failed on it: {panic}"),
            dir: dir.to_path_buf(),
        })
    })
}

/// Opens the spool in `dir`, checking that the database is the one the identity file names.
fn open_files(dir: &Path, access: Access) -> Result<Opened, SpoolError> {
    let path = dir.join(DATABASE_FILE);
    let identity_path = dir.join(IDENTITY_FILE);
    if access == Access::Serve {
        prepare_directory(dir)?;
    }
    let mut identity = read_identity(&identity_path, dir)?;
    let size = match fs::metadata(&path) {
        Ok(metadata) => Some(metadata.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_error(&path)(e)),
    };
    match (&identity, size) {
        (Some(identity), None) => {
            return Err(SpoolError::Missing {
                dir: dir.to_path_buf(),
                id: identity.id.clone(),
                created_at: identity.created_at.clone(),
            });
        }
        (_, Some(0)) => {
            return Err(SpoolError::Emptied {
                path,
                dir: dir.to_path_buf(),
            });
        }
        (None, None) => match access {
            Access::Serve => identity = Some(create_spool(dir)?),
            Access::Existing => {
                return Err(SpoolError::NotFound {
                    dir: dir.to_path_buf(),
                });
            }
        },
        (_, Some(_)) => {}
    }
    if access == Access::Serve {
        restrict_to_owner(&path)?;
        if identity.is_some() {
            restrict_to_owner(&identity_path)?;
        }
    }

    let mut opened = open_database(&path, dir)?;
    if let Some(stored) = &opened.identity
        && stored.format > FORMAT
    {
        return Err(SpoolError::NewerFormat {
            path,
            found: stored.format,
        });
    }
    opened.identity = match (identity, opened.identity.take()) {
        (Some(expected), Some(stored)) if expected.id == stored.id => Some(expected),
        (Some(expected), stored) => {
            return Err(SpoolError::Replaced {
                dir: dir.to_path_buf(),
                expected: expected.id,
                found: match stored {
                    Some(stored) => {
                        format!("is spool {} (created {})", stored.id, stored.created_at)
                    }
                    None => "has no identity (a spool of an earlier release?)".into(),
                },
            });
        }
        (None, Some(stored)) => {
            if access == Access::Serve {
                write_identity(dir, &stored)?;
                tracing::info!(path = %identity_path.display(), id = %stored.id,
                    "spool identity file was missing: written again from the database");
            }
            Some(stored)
        }
        (None, None) if access == Access::Serve => {
            let adopted = SpoolIdentity::generate()?;
            let adopt = || -> Result<(), redb::Error> {
                let txn = opened.db.begin_write()?;
                store_identity(&txn, &adopted)?;
                txn.commit()?;
                Ok(())
            };
            adopt().map_err(|e| classify(&path, dir, e))?;
            write_identity(dir, &adopted)?;
            tracing::info!(dir = %dir.display(), id = %adopted.id,
                "adopted a spool without an identity (written by an earlier release): wrote {IDENTITY_FILE}");
            Some(adopted)
        }
        (None, None) => None,
    };
    Ok(opened)
}

/// How large redb's file may grow, as a multiple of the bytes the spool accounts for
/// (`--spool-max-bytes`). Measured under churn (`tests/api/spool.rs`): about 3.1, because the file
/// doubles each time it grows and holds what is not accounted (copy-on-write pages of the last commits,
/// free pages kept for reuse, the deduplication record). 3.5 leaves a margin; the shipped Kubernetes
/// volume is sized with it.
pub const FILE_SIZE_FACTOR: f64 = 3.5;

/// The largest the spool's file is expected to grow to.
pub fn worst_case_file_bytes(max_bytes: u64) -> u64 {
    (max_bytes as f64 * FILE_SIZE_FACTOR) as u64
}

/// Warns when the spool's filesystem could not hold a full spool.
fn warn_if_disk_is_small(dir: &Path, path: &Path, max_bytes: u64) {
    let stats = match rustix::fs::statvfs(dir) {
        Ok(stats) => stats,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot tell the free space of the spool's filesystem");
            return;
        }
    };
    let free = stats.f_bavail.saturating_mul(stats.f_frsize);
    // The file's own pages are reused as it fills, so they count as room too.
    let file = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let needed = worst_case_file_bytes(max_bytes);
    if free.saturating_add(file) < needed {
        tracing::warn!(
            dir = %dir.display(),
            free_bytes = free,
            spool_file_bytes = file,
            spool_max_bytes = max_bytes,
            needed_bytes = needed,
            "the spool's filesystem has {free} bytes free (and the spool file {file}), under the \
             {needed} bytes a full spool's file may take ({FILE_SIZE_FACTOR} x --spool-max-bytes \
             {max_bytes}): the disk may fill before the spool does, and notifications get 503"
        );
    }
}

impl Spool {
    /// Opens (or creates) the spool in `dir` and resumes whatever an earlier run left in it. A spool
    /// that was lost or damaged is an error, never a new empty spool.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        dedup_window: Duration,
        dedup_capacity: usize,
        metrics: Metrics,
    ) -> Result<Spool, SpoolError> {
        let opened = open_files(dir, Access::Serve)?;
        warn_if_disk_is_small(dir, &dir.join(DATABASE_FILE), max_bytes);
        let counts = &opened.counts;
        if counts.entries > 0 || counts.dead_letters > 0 {
            tracing::info!(
                entries = counts.entries,
                bytes = counts.bytes,
                dead_letters = counts.dead_letters,
                "resuming spooled notifications from an earlier run"
            );
        }
        Self::start(
            dir,
            opened,
            max_bytes,
            dedup_window,
            dedup_capacity,
            metrics,
        )
    }

    /// Opens the spool in `dir` as it is, for the `spool` commands: it must exist, and nothing is
    /// created, adopted or tightened to open it.
    pub fn open_existing(
        dir: &Path,
        max_bytes: u64,
        dedup_window: Duration,
        dedup_capacity: usize,
        metrics: Metrics,
    ) -> Result<Spool, SpoolError> {
        let opened = open_files(dir, Access::Existing)?;
        Self::start(
            dir,
            opened,
            max_bytes,
            dedup_window,
            dedup_capacity,
            metrics,
        )
    }

    fn start(
        dir: &Path,
        opened: Opened,
        max_bytes: u64,
        dedup_window: Duration,
        dedup_capacity: usize,
        metrics: Metrics,
    ) -> Result<Spool, SpoolError> {
        let Opened {
            db,
            identity,
            counts,
        } = opened;
        let shared = Arc::new(Shared {
            db: std::sync::RwLock::new(Some(Arc::new(db))),
            path: dir.join(DATABASE_FILE),
            identity,
            max_bytes,
            dedup_window,
            dedup_capacity,
            entries: AtomicU64::new(counts.entries),
            bytes: AtomicU64::new(counts.bytes),
            dead_letters: AtomicU64::new(counts.dead_letters),
            dead_letter_bytes: AtomicU64::new(counts.dead_letter_bytes),
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
        self.commit_release(seqs, dead, Vec::new()).await
    }

    /// Removes dead letters (by the ids of [`Spool::dead_letters_from`]) that reached Kafka after all.
    pub async fn forget_dead_letters(&self, ids: Vec<u64>) -> Result<(), SpoolError> {
        self.commit_release(Vec::new(), Vec::new(), ids).await
    }

    async fn commit_release(
        &self,
        seqs: Vec<u64>,
        dead: Vec<DeadLetter>,
        forget: Vec<u64>,
    ) -> Result<(), SpoolError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Release(Release {
            seqs,
            dead,
            forget,
            reply,
        }))
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

    /// Pending entries from sequence number `from` on, in acceptance order: at most `limit` of them.
    pub fn entries_from(&self, from: u64, limit: usize) -> Result<Vec<SpooledEntry>, SpoolError> {
        let read = self.shared.database()?.begin_read().map_err(storage)?;
        let table = read.open_table(ENTRIES).map_err(storage)?;
        let mut out = Vec::new();
        for item in table.range(from..).map_err(storage)?.take(limit) {
            let (seq, value) = item.map_err(storage)?;
            let mut entry: SpooledEntry = serde_json::from_slice(value.value()).map_err(storage)?;
            entry.seq = seq.value();
            out.push(entry);
        }
        Ok(out)
    }

    /// Bytes of dead letters kept in the spool.
    pub fn dead_letter_bytes(&self) -> u64 {
        self.shared.dead_letter_bytes.load(Ordering::Relaxed)
    }

    /// What the spool holds, for `spool inspect`.
    pub fn summary(&self) -> Result<SpoolSummary, SpoolError> {
        let shared = &self.shared;
        let oldest = self.entries_from(0, 1)?;
        Ok(SpoolSummary {
            path: shared.path.clone(),
            id: shared.identity.as_ref().map(|i| i.id.clone()),
            created_at: shared.identity.as_ref().map(|i| i.created_at.clone()),
            file_bytes: fs::metadata(&shared.path).map(|m| m.len()).unwrap_or(0),
            max_bytes: shared.max_bytes,
            pending_entries: self.entries(),
            pending_bytes: self.bytes(),
            oldest_age_seconds: oldest.first().map(|e| e.age().as_secs_f64()),
            dead_letters: shared.dead_letters.load(Ordering::Relaxed),
            dead_letter_bytes: self.dead_letter_bytes(),
            dead_letter_max_bytes: shared.dead_letter_max_bytes(),
        })
    }

    /// Writes every pending message, then every dead letter, as one JSON object per line: what a human
    /// reads, or a replay publishes (topic, key, headers and value exactly as they would go to Kafka).
    pub fn export(&self, out: &mut impl Write) -> Result<ExportCounts, SpoolError> {
        const PAGE: usize = 256;
        let mut counts = ExportCounts::default();
        let mut line = |record: &Exported| -> Result<(), SpoolError> {
            serde_json::to_writer(&mut *out, record).map_err(|e| SpoolError::Output(e.into()))?;
            out.write_all(b"\n").map_err(SpoolError::Output)
        };
        let mut from = 0;
        while let Some(last) = {
            let page = self.entries_from(from, PAGE)?;
            for entry in &page {
                let accepted_at = rfc3339(entry.accepted_at_ms);
                for message in &entry.plan.messages {
                    line(&Exported::Pending {
                        uuid: &entry.plan.uuid,
                        accepted_at: accepted_at.clone(),
                        topic: &message.topic,
                        key: &message.key,
                        headers: &message.headers,
                        value: &message.value,
                    })?;
                    counts.pending_messages += 1;
                }
            }
            page.last().map(|e| e.seq)
        } {
            from = last + 1;
        }
        let mut from = 0;
        while let Some(last) = {
            let page = self.dead_letters_from(from, PAGE)?;
            for (id, letter) in &page {
                let message = &letter.message;
                line(&Exported::DeadLetter {
                    id: *id,
                    error: &letter.reason,
                    topic: &message.topic,
                    key: &message.key,
                    headers: &message.headers,
                    value: &message.value,
                })?;
                counts.dead_letters += 1;
            }
            page.last().map(|(id, _)| *id)
        } {
            from = last + 1;
        }
        out.flush().map_err(SpoolError::Output)?;
        Ok(counts)
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
    added_dead_letters: u64,
    added_dead_letter_bytes: u64,
    removed_dead_letters: u64,
    removed_dead_letter_bytes: u64,
    /// Dead letters dropped to keep the area within its share: logged once the commit is durable.
    dropped: Vec<DeadLetter>,
}

impl Shared {
    fn dead_letter_max_bytes(&self) -> u64 {
        self.max_bytes / DEAD_LETTER_SHARE
    }

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
        // Open, never create: a file that vanished while serving must not come back empty.
        match catch_storage_panic(|| builder().open(&self.path)) {
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

            let mut next_seq = entries
                .last()
                .map_err(storage)?
                .map(|(k, _)| k.value() + 1)
                .unwrap_or(0);
            // Pending entries and dead letters share --spool-max-bytes.
            let mut bytes = self.bytes.load(Ordering::Relaxed) - delta.removed_bytes + dead_bytes;
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
        self.metrics
            .spool_dead_letters
            .set(self.dead_letters.load(Ordering::Relaxed) as i64);
        self.metrics
            .spool_dead_letter_bytes
            .set(self.dead_letter_bytes.load(Ordering::Relaxed) as i64);
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

    #[test]
    fn a_panic_inside_the_storage_engine_becomes_a_message() {
        let caught = catch_storage_panic(|| -> u32 { panic!("page checksum mismatch") });
        let message = caught.unwrap_err();
        assert!(message.contains("page checksum mismatch"), "{message}");
        assert!(message.contains("spool.rs"), "names where: {message}");
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
            10_000,
            Duration::from_secs(3600),
            1000,
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
        while spool.accept(plan(&format!("p{n}"))).await.is_ok() {
            n += 1;
        }
        assert!(spool.bytes() + spool.dead_letter_bytes() <= 10_000);
        let entry = serde_json::to_vec(&spool.oldest(1, usize::MAX).unwrap()[0])
            .unwrap()
            .len() as u64;
        // Refused only once the next entry (a uuid at most two characters longer) no longer fitted.
        assert!(spool.bytes() + spool.dead_letter_bytes() + entry + 2 > 10_000);

        // A dead letter published after all leaves the spool.
        let (id, _) = spool.dead_letters_from(0, 10).unwrap().remove(0);
        spool.forget_dead_letters(vec![id]).await.unwrap();
        assert!(spool.dead_letters().unwrap().is_empty());
        assert_eq!(spool.dead_letter_bytes(), 0);
    }
}
