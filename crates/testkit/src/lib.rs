//! placeholder
pub mod pg;
pub mod vault;
