//! Every integration test of `holdfast` in one test binary: each file of this directory is a
//! module here, so the crate's dependency graph is linked once, not once per file. A new test
//! file must be added below (`tests/tidy.rs` in holdfast fails otherwise).

#![allow(clippy::duplicate_mod)]

#[path = "architecture.rs"]
mod architecture;

#[path = "audit.rs"]
mod audit;

#[path = "backup_volume.rs"]
mod backup_volume;

#[path = "capture_process.rs"]
mod capture_process;

#[path = "console.rs"]
mod console;

#[path = "demo.rs"]
mod demo;

#[path = "drill.rs"]
mod drill;

#[path = "gate.rs"]
mod gate;

#[path = "gate_attacks.rs"]
mod gate_attacks;

#[path = "gate_fuzz.rs"]
mod gate_fuzz;

#[path = "gate_hidden_writes.rs"]
mod gate_hidden_writes;

#[path = "incidents.rs"]
mod incidents;

#[path = "repair.rs"]
mod repair;

#[path = "restore.rs"]
mod restore;

#[path = "vault_process.rs"]
mod vault_process;

#[path = "standby.rs"]
mod standby;

#[path = "tidy.rs"]
mod tidy;

#[path = "s3_mirror_restore.rs"]
mod s3_mirror_restore;
