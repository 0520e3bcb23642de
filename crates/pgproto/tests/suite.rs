//! Every integration test of `pgproto` in one test binary: each file of this directory is a
//! module here, so the crate's dependency graph is linked once, not once per file. A new test
//! file must be added below (`tests/tidy.rs` in holdfast fails otherwise).

#[path = "cancel.rs"]
mod cancel;

#[path = "replication.rs"]
mod replication;
