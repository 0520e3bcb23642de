//! Test helpers that start real components: PostgreSQL (`pg`), a vault process (`vault`), Ceph RGW (`ceph`), a webhook sink (`webhook`).
pub mod ceph;
pub mod pg;
pub mod vault;
pub mod webhook;
