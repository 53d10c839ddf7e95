//! mxfleet-matrix
