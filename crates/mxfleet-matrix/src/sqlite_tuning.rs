//! Process-wide SQLite settings for many small stores, made once before the first store opens.
//!
//! SQLite gives every connection's page cache an initial bulk allocation of 20 pages (about
//! 87 KiB, all of it touched when its free list is built) and a lookaside allocator. An account
//! has two stores of two pooled connections, so those blocks alone were about 350 KiB of every
//! account's memory, most of it for pages a bot's small stores never fill (a heap profile of 20
//! accounts: docs/benchmarks.md, run 7). Both are turned off here: pages and small objects come
//! from the process's allocator as they are needed.

use std::sync::Once;

use tracing::warn;

/// Applies the settings, once, before any SQLite connection of the process exists.
pub(crate) fn tune_once() {
    static TUNED: Once = Once::new();
    TUNED.call_once(|| {
        use rusqlite::ffi::{
            SQLITE_CONFIG_LOOKASIDE, SQLITE_CONFIG_PAGECACHE, SQLITE_OK, sqlite3_config,
        };
        // SAFETY: `sqlite3_config` is only allowed before SQLite initialises: this runs before
        // the first store is opened (nothing else in the process uses SQLite), once, under
        // `Once`, with the arguments each option takes — LOOKASIDE two ints (slot size, count),
        // PAGECACHE a pointer and two ints (no memory of ours, no initial cache lines).
        #[allow(unsafe_code)]
        let (lookaside, pagecache) = unsafe {
            (
                sqlite3_config(SQLITE_CONFIG_LOOKASIDE, 0i32, 0i32),
                sqlite3_config(
                    SQLITE_CONFIG_PAGECACHE,
                    std::ptr::null_mut::<std::ffi::c_void>(),
                    0i32,
                    0i32,
                ),
            )
        };
        if lookaside != SQLITE_OK || pagecache != SQLITE_OK {
            warn!(
                lookaside,
                pagecache, "could not tune SQLite's memory; stores use more of it"
            );
        }
    });
}
