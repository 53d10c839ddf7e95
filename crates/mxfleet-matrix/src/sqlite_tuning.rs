//! Process-wide SQLite settings for many small stores, made once before the first store opens.
//!
//! SQLite gives every connection a lookaside allocator, preallocated in one block when the
//! connection opens (tens of KiB each). An account has two stores of two pooled connections,
//! so at a thousand accounts those blocks alone would be hundreds of MiB of a fleet's memory,
//! for the small speed-up they bring to statement parsing. They are turned off here; SQLite
//! then takes its small allocations from the process's allocator (docs/benchmarks.md, run 6).

use std::sync::Once;

use tracing::warn;

/// Applies the settings, once, before any SQLite connection of the process exists.
pub(crate) fn tune_once() {
    static TUNED: Once = Once::new();
    TUNED.call_once(|| {
        // SAFETY: `sqlite3_config` is only allowed before SQLite initialises: this runs before
        // the first store is opened (nothing else in the process uses SQLite), once, under
        // `Once`, with the argument types SQLITE_CONFIG_LOOKASIDE takes (two ints).
        #[allow(unsafe_code)]
        let rc = unsafe {
            rusqlite::ffi::sqlite3_config(rusqlite::ffi::SQLITE_CONFIG_LOOKASIDE, 0i32, 0i32)
        };
        if rc != rusqlite::ffi::SQLITE_OK {
            warn!(
                code = rc,
                "could not turn off SQLite's lookaside memory; stores use more memory"
            );
        }
    });
}
