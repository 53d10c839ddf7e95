//! mxfleet-testkit
