//! Every integration test of `store` in one test binary: each file of this directory is a
//! module here, so the crate's dependency graph is linked once, not once per file. A new test
//! file must be added below (`tests/tidy.rs` in holdfast fails otherwise).

#[path = "backend_conformance.rs"]
mod backend_conformance;

#[path = "check.rs"]
mod check;

#[path = "repo.rs"]
mod repo;

#[path = "s3_adversary.rs"]
mod s3_adversary;

#[path = "mirror_faults.rs"]
mod mirror_faults;
