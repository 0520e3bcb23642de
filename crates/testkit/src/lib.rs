//! placeholder
pub mod pg;
pub mod vault;
pub mod webhook;
