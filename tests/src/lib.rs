//! End-to-end tests of mxfleet against a real Synapse live in `tests/`; this crate has no code
//! of its own. Run them with `scripts/test.sh`, which starts the shared Synapse.
