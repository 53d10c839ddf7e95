//! An exclusive, process-wide lock on a directory.
//!
//! Two processes on one data directory would run two Olm machines for one device and corrupt the
//! crypto store, so the second one must stop at once. The lock is an OS file lock
//! (`flock`-style) on `<dir>/<name>`: it is released when the holder exits, even by SIGKILL.
//!
//! Short-lived commands (`status`, `doctor`, `recovery-key`) take or test the same lock for a
//! moment; a starting fleet waits out such a moment ([`DirLock::acquire_waiting`]) instead of
//! taking it for a second fleet and exiting.

use std::{
    fs::{File, OpenOptions, TryLockError},
    io::Write,
    path::Path,
    time::{Duration, Instant},
};

use crate::StoreError;

/// A held directory lock; released on drop or process exit.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Creates `dir` if needed and takes the lock file `name` in it without waiting.
    pub fn acquire(dir: &Path, name: &str) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.into(),
            source,
        })?;
        let path = dir.join(name);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| StoreError::Io {
                path: path.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(StoreError::Locked { path }),
            Err(TryLockError::Error(source)) => return Err(StoreError::Io { path, source }),
        }
        // Best effort: the pid helps an operator find the holder; the lock is what matters.
        let _ = file
            .set_len(0)
            .and_then(|()| writeln!(file, "{}", std::process::id()));
        Ok(Self { _file: file })
    }

    /// Like [`DirLock::acquire`], retrying for up to `patience` while another process holds
    /// the lock (a command looking at the data directory holds it for milliseconds).
    pub fn acquire_waiting(dir: &Path, name: &str, patience: Duration) -> Result<Self, StoreError> {
        let began = Instant::now();
        loop {
            match Self::acquire(dir, name) {
                Err(StoreError::Locked { .. }) if began.elapsed() < patience => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => return other,
            }
        }
    }

    /// Whether a process holds the lock file `name` in `dir`, tested without creating anything
    /// and with a shared lock held only for the test.
    pub fn is_held(dir: &Path, name: &str) -> bool {
        match File::open(dir.join(name)) {
            Ok(file) => matches!(file.try_lock_shared(), Err(TryLockError::WouldBlock)),
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_until_release() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Task(e.to_string()))?;
        let first = DirLock::acquire(dir.path(), "lock")?;
        assert!(matches!(
            DirLock::acquire(dir.path(), "lock"),
            Err(StoreError::Locked { .. })
        ));
        assert!(DirLock::is_held(dir.path(), "lock"));
        drop(first);
        assert!(!DirLock::is_held(dir.path(), "lock"));
        DirLock::acquire(dir.path(), "lock")?;
        Ok(())
    }

    #[test]
    fn a_starting_holder_waits_out_a_brief_one() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Task(e.to_string()))?;
        let brief = DirLock::acquire(dir.path(), "lock")?;
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(brief);
        });
        DirLock::acquire_waiting(dir.path(), "lock", Duration::from_secs(5))?;
        let _ = release.join();
        let held = DirLock::acquire(dir.path(), "other")?;
        assert!(matches!(
            DirLock::acquire_waiting(dir.path(), "other", Duration::from_millis(200)),
            Err(StoreError::Locked { .. })
        ));
        drop(held);
        Ok(())
    }
}
