//! Every integration test of `gate` in one test binary: each file of this directory is a
//! module here, so the crate's dependency graph is linked once, not once per file. A new test
//! file must be added below (`tests/tidy.rs` in holdfast fails otherwise).

#[path = "example_config.rs"]
mod example_config;

#[path = "wire.rs"]
mod wire;

#[path = "shadowed.rs"]
mod shadowed;
