//! Test helpers that start real components: PostgreSQL (`pg`), headless Chromium over WebDriver (`browser`), a vault process (`vault`), Ceph RGW (`ceph`), a webhook sink (`webhook`); and waiting for a condition against a deadline (`wait`).
pub mod browser;
pub mod ceph;
pub mod pg;
pub mod vault;
pub mod wait;
pub mod webhook;
