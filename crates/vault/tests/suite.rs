//! Every integration test of `vault` in one test binary: each file of this directory is a
//! module here, so the crate's dependency graph is linked once, not once per file. A new test
//! file must be added below (`tests/tidy.rs` in holdfast fails otherwise).
//!
//! Several files declare `mod common;` themselves (so each still reads as a whole): the shared
//! helpers are compiled once per file that uses them, which is harmless for test helpers.
#![allow(clippy::duplicate_mod)]

#[path = "adversary_input.rs"]
mod adversary_input;

#[path = "adversary_quorum.rs"]
mod adversary_quorum;

#[path = "adversary_tokens.rs"]
mod adversary_tokens;

#[path = "example_config.rs"]
mod example_config;

#[path = "only_retention_deletes.rs"]
mod only_retention_deletes;

#[path = "prune.rs"]
mod prune;

#[path = "adversary_history.rs"]
mod adversary_history;

#[path = "s3_store.rs"]
mod s3_store;

#[path = "service_layers.rs"]
mod service_layers;

#[path = "s3_mirror.rs"]
mod s3_mirror;
