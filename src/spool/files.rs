//! The spool's files: creating, opening and checking the database and its identity file, so that a
//! lost, replaced or damaged spool stops start-up instead of starting empty.

use super::*;

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

/// How opening may treat the spool's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    /// `serve`: creates a spool in an empty directory, adopts one without an identity file, tightens
    /// file permissions.
    Serve,
    /// The `spool` commands: an existing spool only, opened as it is.
    Existing,
}

/// What the files held when they were opened.
#[derive(Default)]
pub(super) struct Counts {
    pub(super) entries: u64,
    pub(super) bytes: u64,
    pub(super) dead_letters: u64,
    pub(super) dead_letter_bytes: u64,
}

pub(super) struct Opened {
    pub(super) db: Database,
    pub(super) identity: Option<SpoolIdentity>,
    pub(super) counts: Counts,
}

thread_local! {
    /// `Some` while this thread opens a spool: a panic inside the storage engine is recorded here
    /// and reported as a damaged spool, instead of printed as a crash.
    static STORAGE_PANIC: RefCell<Option<Option<String>>> = const { RefCell::new(None) };
}

/// Runs `f`, turning a panic inside it into an error message. The panic hook stays quiet for such
/// panics only; every other panic is reported as before.
pub(super) fn catch_storage_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
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
pub(super) fn classify(path: &Path, dir: &Path, error: impl Into<redb::Error>) -> SpoolError {
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

pub(super) fn io_error(path: &Path) -> impl Fn(std::io::Error) -> SpoolError + '_ {
    move |e| SpoolError::Open {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), redb::TableError> {
    for table in [ENTRIES, DEAD] {
        txn.open_table(table)?;
    }
    txn.open_table(SEEN_ORDER)?;
    txn.open_table(META)?;
    Ok(())
}

pub(super) fn store_identity(
    txn: &WriteTransaction,
    identity: &SpoolIdentity,
) -> Result<(), redb::Error> {
    let mut meta = txn.open_table(META)?;
    meta.insert(IDENTITY_KEY, identity.to_text().as_str())?;
    Ok(())
}

/// Makes a rename or a new file in `dir` durable.
pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

pub(super) fn read_identity(path: &Path, dir: &Path) -> Result<Option<SpoolIdentity>, SpoolError> {
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
pub(super) fn write_identity(dir: &Path, identity: &SpoolIdentity) -> Result<(), SpoolError> {
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
pub(super) fn restrict_to_owner(path: &Path) -> Result<(), SpoolError> {
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

pub(super) fn prepare_directory(dir: &Path) -> Result<(), SpoolError> {
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
pub(super) fn create_spool(dir: &Path) -> Result<SpoolIdentity, SpoolError> {
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
        // Empty and closed again at once: its page cache never fills.
        let db = Database::builder()
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
pub(super) fn open_database(
    path: &Path,
    dir: &Path,
    cache_bytes: usize,
) -> Result<Opened, SpoolError> {
    let open = || -> Result<Opened, SpoolError> {
        let fail = |e: redb::Error| classify(path, dir, e);
        // The integrity check verifies the checksum of every page in use: a damaged file is refused
        // here, where a plain open trusts it and may panic later, halfway through serving.
        let db = builder(cache_bytes)
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
        let counts = count(&read).map_err(fail)?;
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

/// What the database holds: its pending entries and dead letters, counted and measured.
pub(super) fn count(read: &redb::ReadTransaction) -> Result<Counts, redb::Error> {
    let mut counts = Counts::default();
    for (table, count, bytes) in [
        (ENTRIES, &mut counts.entries, &mut counts.bytes),
        (
            DEAD,
            &mut counts.dead_letters,
            &mut counts.dead_letter_bytes,
        ),
    ] {
        let table = read.open_table(table)?;
        for item in table.iter()? {
            let (_, value) = item?;
            *bytes += value.value().len() as u64;
            *count += 1;
        }
    }
    Ok(counts)
}

/// Opens the spool in `dir`, checking that the database is the one the identity file names.
pub(super) fn open_files(
    dir: &Path,
    access: Access,
    cache_bytes: usize,
) -> Result<Opened, SpoolError> {
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

    let mut opened = open_database(&path, dir, cache_bytes)?;
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
            commit_identity(&opened.db, &adopted).map_err(|e| classify(&path, dir, e))?;
            write_identity(dir, &adopted)?;
            tracing::info!(dir = %dir.display(), id = %adopted.id,
                "adopted a spool without an identity (written by an earlier release): wrote {IDENTITY_FILE}");
            Some(adopted)
        }
        (None, None) => None,
    };
    // A spool of an earlier format is read as it is, but what this release writes (binary entries
    // since format 2, compressed since 3, no uuid table since 4, the journal since 5) an earlier
    // release cannot read: the
    // identity says so, so that such a release refuses the spool with a clear message instead of
    // failing on its entries or missing its duplicates.
    if access == Access::Serve
        && let Some(identity) = &mut opened.identity
        && identity.format < FORMAT
    {
        let upgraded = SpoolIdentity {
            format: FORMAT,
            ..identity.clone()
        };
        upgrade(&opened.db, &upgraded).map_err(|e| classify(&path, dir, e))?;
        write_identity(dir, &upgraded)?;
        tracing::info!(dir = %dir.display(), from = identity.format, to = FORMAT,
            "spool format upgraded: earlier releases will refuse this spool");
        *identity = upgraded;
    }
    Ok(opened)
}

/// Stores the identity of the upgraded format and drops what that format no longer keeps, durably,
/// in one commit.
fn upgrade(db: &Database, identity: &SpoolIdentity) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    store_identity(&txn, identity)?;
    let seen_by_uuid: TableDefinition<&str, u64> = TableDefinition::new(SEEN_BY_UUID);
    txn.delete_table(seen_by_uuid)?;
    txn.commit()?;
    Ok(())
}

/// Stores `identity` in the database, durably.
fn commit_identity(db: &Database, identity: &SpoolIdentity) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    store_identity(&txn, identity)?;
    txn.commit()?;
    Ok(())
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

/// The bytes the database at `path` and the journal's files in `dir` take.
pub(super) fn spool_files_bytes(dir: &Path, path: &Path) -> u64 {
    let journal: u64 = fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("journal-"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    fs::metadata(path).map(|m| m.len()).unwrap_or(0) + journal
}

/// Warns when the spool's filesystem could not hold a full spool.
pub(super) fn warn_if_disk_is_small(dir: &Path, path: &Path, max_bytes: u64) {
    let stats = match rustix::fs::statvfs(dir) {
        Ok(stats) => stats,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot tell the free space of the spool's filesystem");
            return;
        }
    };
    let free = stats.f_bavail.saturating_mul(stats.f_frsize);
    // The files' own pages are reused as the spool fills, so they count as room too.
    let file = spool_files_bytes(dir, path);
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
