//! Process-wide SQLite settings for many small stores, made once before the first store opens.
//!
//! SQLite gives every connection's page cache an initial bulk allocation of 20 pages (about
//! 87 KiB, all of it touched when its free list is built) and a lookaside allocator. An account
//! has two stores of two pooled connections, so those blocks alone were about 350 KiB of every
//! account's memory, most of it for pages a bot's small stores never fill (a heap profile of 20
//! accounts: docs/benchmarks.md, run 7). Both are turned off here: pages and small objects come
//! from the process's allocator as they are needed.
//!
//! Every connection's page cache is also capped at [`PAGE_CACHE_KIB`]. matrix-sdk applies its
//! configured cache size to one connection of each store; the others (the writer among them)
//! kept SQLite's default of 2 MiB each, and a heap profile of 100 accounts found their pages
//! the largest single part of the heap (docs/benchmarks.md, run 13). An extension SQLite runs
//! for every connection it opens sets the cap on all of them.

use std::ffi::{c_char, c_int};
use std::sync::Once;

use rusqlite::ffi;
use tracing::warn;

/// The page cache of every SQLite connection of the process, in KiB. A bot's stores are small
/// and, in WAL mode, a reader's cache is emptied whenever the writer commits, so a large cache
/// holds little that is read again; pages beyond it come from the operating system's cache.
pub(crate) const PAGE_CACHE_KIB: u32 = 16;

/// The same cap in bytes, as matrix-sdk's store configuration takes it.
pub(crate) const PAGE_CACHE_BYTES: u32 = PAGE_CACHE_KIB * 1024;

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

/// Run by SQLite for every connection it opens: caps the connection's page cache.
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
            connection.execute_batch(&format!("PRAGMA cache_size = -{PAGE_CACHE_KIB};"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_connection_opened_after_tuning_has_the_capped_page_cache() {
        tune_once();
        for _ in 0..2 {
            let connection = rusqlite::Connection::open_in_memory().expect("opened");
            let cache: i64 = connection
                .query_row("PRAGMA cache_size", [], |row| row.get(0))
                .expect("read");
            assert_eq!(cache, -i64::from(PAGE_CACHE_KIB));
        }
    }
}
