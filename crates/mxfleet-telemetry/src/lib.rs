//! mxfleet-telemetry
