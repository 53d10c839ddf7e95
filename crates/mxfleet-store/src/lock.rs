//! An exclusive, process-wide lock on a directory.
//!
//! Two processes on one data directory would run two Olm machines for one device and corrupt the
//! crypto store, so the second one must stop at once. The lock is an OS file lock
//! (`flock`-style) on `<dir>/<name>`: it is released when the holder exits, even by SIGKILL.

use std::{
    fs::{File, OpenOptions, TryLockError},
    io::Write,
    path::Path,
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
        drop(first);
        DirLock::acquire(dir.path(), "lock")?;
        Ok(())
    }
}
