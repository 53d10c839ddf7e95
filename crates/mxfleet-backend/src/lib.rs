//! mxfleet-backend
