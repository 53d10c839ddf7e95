//! mxfleet-core
