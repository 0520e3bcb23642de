//! Test helpers that start real components: PostgreSQL (`pg`), a clock for it that root on its host has moved (`clock`), headless Chromium over WebDriver (`browser`), a vault process (`vault`), Ceph RGW (`ceph`) and S3 requests to it as the vault and an adversary make them (`s3`), a webhook sink (`webhook`); waiting for a condition against a deadline (`wait`); ports nothing else takes meanwhile (`net`).
pub mod browser;
pub mod ceph;
pub mod clock;
pub mod net;
pub mod pg;
pub mod s3;
pub mod vault;
pub mod wait;
pub mod webhook;
