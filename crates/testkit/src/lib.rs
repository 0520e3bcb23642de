//! placeholder
pub mod ceph;
pub mod pg;
pub mod vault;
pub mod webhook;
