//! The C library's allocator, which serves librdkafka (the bridge's own allocations go to mimalloc,
//! set in `main.rs`).
//!
//! For every record the relay produces, librdkafka allocates a copy of the message and a block per
//! header, and frees them once Kafka has acknowledged: thousands of blocks of a few sizes, freed and
//! allocated again in bursts, on one thread. glibc keeps at most 7 freed blocks of each size per
//! thread ready for reuse (its tcache); the others go back to its shared bins, which cost several
//! times as much to free into and to allocate from. With room for 4,096, the bridge measured 0.85×
//! the CPU per notification at maximum load and 1.1× the drain rate, for a few MiB more peak RSS
//! (BENCHMARKS.md, "The C allocator's cache"). The cache holds only blocks that were in use at once
//! before, so it stays within the high-water mark that the relay's round caps already bound.
//!
//! glibc reads the setting only from the `GLIBC_TUNABLES` environment variable, when a program
//! starts; it has no call to change it later. So the bridge starts itself again, once, with the
//! setting added: [`restart_with_tcache`].

use std::ffi::OsStr;

/// glibc's tunable: how many freed blocks of each size a thread's cache keeps.
const TCACHE_COUNT: &str = "glibc.malloc.tcache_count";
/// The bridge's value for [`TCACHE_COUNT`].
const TCACHE_BLOCKS: u32 = 4096;
/// Set in the environment of the restarted process, so that it never restarts again: glibc drops
/// `GLIBC_TUNABLES` from the environment of a program with file capabilities or set-user-ID, and the
/// restart would otherwise repeat forever.
const RESTARTED: &str = "RC_KAFKA_BRIDGE_RESTARTED";

/// The `GLIBC_TUNABLES` value to start again with, given the current one; `None` when the operator
/// chose the cache size already (the way to keep glibc's own: `glibc.malloc.tcache_count=7`), or when
/// the current value is not text (left as it is).
pub fn tunables_with_tcache(current: Option<&OsStr>) -> Option<String> {
    let current = match current {
        None => "",
        Some(value) => value.to_str()?,
    };
    let chosen = current
        .split(':')
        .any(|tunable| tunable.split('=').next() == Some(TCACHE_COUNT));
    if chosen {
        return None;
    }
    let ours = format!("{TCACHE_COUNT}={TCACHE_BLOCKS}");
    Some(if current.is_empty() {
        ours
    } else {
        format!("{current}:{ours}")
    })
}

/// Replaces this process with the same program, arguments and environment, with the cache size
/// added to `GLIBC_TUNABLES`. Returns when there is nothing to do, or when the restart cannot be done
/// (the bridge then runs with glibc's default). Call it first in `main`, before any thread starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn restart_with_tcache() {
    use std::os::unix::process::CommandExt;

    if std::env::var_os(RESTARTED).is_some() {
        return;
    }
    let Some(tunables) = tunables_with_tcache(std::env::var_os("GLIBC_TUNABLES").as_deref()) else {
        return;
    };
    let Ok(program) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(program);
    if let Some(name) = args.next() {
        command.arg0(name);
    }
    // `exec` returns only if it failed; the process then goes on as it is.
    let _ = command
        .args(args)
        .env("GLIBC_TUNABLES", tunables)
        .env(RESTARTED, "1")
        .exec();
}

/// Only glibc has the cache.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn restart_with_tcache() {}

/// Whether this process is the one [`restart_with_tcache`] started, with the setting in its
/// environment (for the start-up log). Not read from `GLIBC_TUNABLES` itself: glibc cuts its text
/// short at the first tunable once it has read it.
pub fn tcache_sized() -> bool {
    std::env::var_os(RESTARTED).is_some()
        && std::env::var_os("GLIBC_TUNABLES").is_some_and(|value| !value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(current: Option<&str>) -> Option<String> {
        tunables_with_tcache(current.map(OsStr::new))
    }

    #[test]
    fn the_cache_size_is_added_to_whatever_is_set() {
        assert_eq!(
            with(None).as_deref(),
            Some("glibc.malloc.tcache_count=4096")
        );
        assert_eq!(
            with(Some("")).as_deref(),
            Some("glibc.malloc.tcache_count=4096")
        );
        assert_eq!(
            with(Some("glibc.malloc.arena_max=2")).as_deref(),
            Some("glibc.malloc.arena_max=2:glibc.malloc.tcache_count=4096")
        );
    }

    #[test]
    fn a_cache_size_the_operator_chose_is_kept() {
        assert_eq!(with(Some("glibc.malloc.tcache_count=7")), None);
        assert_eq!(
            with(Some("glibc.malloc.arena_max=2:glibc.malloc.tcache_count=0")),
            None
        );
        // A tunable whose name only starts the same is another tunable.
        assert!(with(Some("glibc.malloc.tcache_count_x=1")).is_some());
    }

    #[test]
    fn a_value_that_is_not_text_is_left_alone() {
        use std::os::unix::ffi::OsStrExt;
        let current = OsStr::from_bytes(b"glibc.malloc.arena_max=\xff");
        assert_eq!(tunables_with_tcache(Some(current)), None);
    }
}
