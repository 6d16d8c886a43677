//! The state-dir lock: two setups, or a setup and an uninstall, never interleave.
//!
//! An exclusive `flock` on `<state dir>/lock`. The kernel drops it when the holder exits, however
//! it exits, so a crashed setup never leaves a stale lock. A second caller polls for a bounded
//! time, then fails with a clear error.

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The lock file's name in the state dir.
pub const LOCK_FILE: &str = "lock";

/// How long a second setup waits by default.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(30);

const POLL: Duration = Duration::from_millis(50);

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Someone else held it for the whole wait.
    #[error("another userwall setup or uninstall holds {path} (waited {waited:.1} s); run again when it has finished")]
    Timeout {
        /// The lock file.
        path: PathBuf,
        /// How long we waited, in seconds.
        waited: f64,
    },
    /// The lock file could not be opened or locked.
    #[error("could not lock {path}: {source}; check that the state dir is writable by root, or pass --state-dir")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The held lock; released on drop.
#[derive(Debug)]
pub struct StateLock {
    _lock: Flock<File>,
}

/// Takes the lock, waiting at most `wait`. Creates the state dir when missing.
pub fn acquire(state_dir: &Path, wait: Duration) -> Result<StateLock, LockError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let path = state_dir.join(LOCK_FILE);
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(state_dir)
        .map_err(io)?;
    let start = Instant::now();
    loop {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            // No link is followed; a FIFO planted here fails at once instead of blocking.
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        if !file.metadata().map_err(io)?.file_type().is_file() {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the lock is not a regular file",
            )));
        }
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(StateLock { _lock: lock }),
            Err((_, Errno::EWOULDBLOCK)) if start.elapsed() < wait => std::thread::sleep(POLL),
            Err((_, Errno::EWOULDBLOCK)) => {
                return Err(LockError::Timeout {
                    path,
                    waited: start.elapsed().as_secs_f64(),
                })
            }
            Err((_, e)) => return Err(io(e.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_taker_times_out_and_gets_it_after_release() {
        let dir = tempfile::tempdir().unwrap();
        let held = acquire(dir.path(), Duration::ZERO).unwrap();
        let err = acquire(dir.path(), Duration::from_millis(120)).unwrap_err();
        assert!(matches!(err, LockError::Timeout { .. }), "{err}");
        assert!(err.to_string().contains("run again"));
        drop(held);
        acquire(dir.path(), Duration::ZERO).unwrap();
    }
}
