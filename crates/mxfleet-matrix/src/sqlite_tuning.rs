//! Process-wide SQLite settings for many small stores, made once before the first store opens.
//!
//! SQLite gives every connection's page cache an initial bulk allocation of 20 pages (about
//! 87 KiB, all of it touched when its free list is built) and a lookaside allocator. An account
//! has two stores of two pooled connections, so those blocks alone were about 350 KiB of every
//! account's memory, most of it for pages a bot's small stores never fill (a heap profile of 20
//! accounts: docs/benchmarks.md, run 7). Both are turned off here: pages and small objects come
//! from the process's allocator as they are needed.
//!
//! Every connection's page cache is also capped ([`set_page_cache_kib`], 16 KiB unless the
//! configuration says otherwise). matrix-sdk applies its configured cache size to one
//! connection of each store; the others (the writer among them) kept SQLite's default of 2 MiB
//! each, and a heap profile of 100 accounts found their pages the largest single part of the
//! heap (docs/benchmarks.md, run 13). An extension SQLite runs for every connection it opens
//! sets the cap on all of them.

use std::ffi::{c_char, c_int};
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};

use rusqlite::ffi;
use tracing::warn;

/// The page cache of every SQLite connection the process opens from now on, in KiB.
static PAGE_CACHE_KIB: AtomicU32 = AtomicU32::new(16);

/// Sets the page cache of every SQLite connection the process opens from now on, in KiB
/// (`store_page_cache_kib`). A bot's stores are small and, in WAL mode, a reader's cache is
/// emptied whenever the writer commits, so a large cache holds little that is read again;
/// pages beyond it come from the operating system's cache. A larger one made a restart of
/// many accounts faster, at the cost of memory (docs/benchmarks.md, run 13), until a start
/// opened a bounded number of accounts at once (run 14).
pub fn set_page_cache_kib(kib: u32) {
    PAGE_CACHE_KIB.store(kib, Ordering::Relaxed);
}

/// The cap in bytes, as matrix-sdk's store configuration takes it.
pub(crate) fn page_cache_bytes() -> u32 {
    page_cache_kib().saturating_mul(1024)
}

fn page_cache_kib() -> u32 {
    PAGE_CACHE_KIB.load(Ordering::Relaxed)
}

/// Applies the settings, once, before any SQLite connection of the process exists.
pub(crate) fn tune_once() {
    static TUNED: Once = Once::new();
    TUNED.call_once(|| {
        // SAFETY: `sqlite3_config` is only allowed before SQLite initialises: this runs before
        // the first store is opened (nothing else in the process uses SQLite), once, under
        // `Once`, with the arguments each option takes — LOOKASIDE two ints (slot size, count),
        // PAGECACHE a pointer and two ints (no memory of ours, no initial cache lines). Had
        // SQLite initialised already, both return an error and change nothing.
        #[allow(unsafe_code)]
        let (lookaside, pagecache) = unsafe {
            (
                ffi::sqlite3_config(ffi::SQLITE_CONFIG_LOOKASIDE, 0i32, 0i32),
                ffi::sqlite3_config(
                    ffi::SQLITE_CONFIG_PAGECACHE,
                    std::ptr::null_mut::<std::ffi::c_void>(),
                    0i32,
                    0i32,
                ),
            )
        };
        if lookaside != ffi::SQLITE_OK || pagecache != ffi::SQLITE_OK {
            warn!(
                lookaside,
                pagecache, "could not tune SQLite's memory; stores use more of it"
            );
        }
        // SAFETY: the extension opens no database, closes none and does not touch the list of
        // extensions (the conditions `register_auto_extension` states); it only runs a PRAGMA
        // on the connection it is given.
        #[allow(unsafe_code)]
        let registered =
            unsafe { rusqlite::auto_extension::register_auto_extension(cap_page_cache) };
        if let Err(error) = registered {
            warn!(%error, "could not cap SQLite's page caches; stores use more memory");
        }
    });
}

/// Run by SQLite for every connection it opens: caps the connection's page cache. It never
/// fails the open: the PRAGMA reads the schema, and a connection that cannot do that yet (the
/// database busy, no busy timeout set this early, or not a database) keeps SQLite's default
/// cache instead.
#[allow(unsafe_code)]
unsafe extern "C" fn cap_page_cache(
    db: *mut ffi::sqlite3,
    error_message: *mut *mut c_char,
    _api: *const ffi::sqlite3_api_routines,
) -> c_int {
    // SAFETY: SQLite passes the connection being opened and a place for an error message;
    // `init_auto_extension` borrows the connection without closing it and catches panics.
    unsafe {
        rusqlite::auto_extension::init_auto_extension(db, error_message, |connection| {
            let kib = page_cache_kib();
            if let Err(error) = connection.execute_batch(&format!("PRAGMA cache_size = -{kib};")) {
                warn!(%error, "could not cap a SQLite connection's page cache; it uses more memory");
                // SQLite fails the open with the connection's last error: clear it with a
                // statement that reads nothing. A database that cannot be read then fails at its
                // first real statement, as it would without the extension.
                let _cleared = connection.query_row("SELECT 1", [], |_| Ok(()));
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache_of_a_new_connection() -> i64 {
        let connection = rusqlite::Connection::open_in_memory().expect("opened");
        connection
            .query_row("PRAGMA cache_size", [], |row| row.get(0))
            .expect("read")
    }

    #[test]
    fn every_connection_opened_after_tuning_has_the_capped_page_cache() {
        tune_once();
        assert_eq!(cache_of_a_new_connection(), -16, "the default");
        assert_eq!(cache_of_a_new_connection(), -16, "every connection");
        set_page_cache_kib(256);
        assert_eq!(cache_of_a_new_connection(), -256, "as configured");
        assert_eq!(page_cache_bytes(), 256 * 1024);
        set_page_cache_kib(16);
    }

    #[test]
    fn a_connection_whose_schema_cannot_be_read_still_opens() {
        tune_once();
        let path = std::env::temp_dir().join(format!("mxfleet-not-sqlite-{}", std::process::id()));
        std::fs::write(&path, vec![7u8; 8192]).expect("written");
        // Not a database: the extension's PRAGMA fails, the open itself must not.
        let opened = rusqlite::Connection::open(&path);
        let _ = std::fs::remove_file(&path);
        assert!(opened.is_ok(), "{opened:?}");
    }
}
