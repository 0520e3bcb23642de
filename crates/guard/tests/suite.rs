//! Every integration test of `guard` in one test binary: each file of this directory is a
//! module here, so the crate's dependency graph is linked once, not once per file. A new test
//! file must be added below (`tests/tidy.rs` in holdfast fails otherwise).
//!
//! Several files declare `mod cases;` themselves (so each still reads as a whole): the shared
//! helpers are compiled once per file that uses them, which is harmless for test helpers.
#![allow(clippy::duplicate_mod)]

#[path = "bypass.rs"]
mod bypass;

#[path = "policy.rs"]
mod policy;

#[path = "props.rs"]
mod props;

#[path = "real_postgres.rs"]
mod real_postgres;

#[path = "shape_cache.rs"]
mod shape_cache;
