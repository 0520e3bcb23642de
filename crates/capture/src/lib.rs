//! The vault's collector: pulls WAL and base backups from PostgreSQL over the replication
//! protocol and stores them in the vault's repository.
//!
//! The database hosts hold no credential for the vault: this crate connects *out* to
//! PostgreSQL with a replication-only role. WAL is stored in pieces as it arrives
//! ([`piece`]), and the [`walmap`] says exactly which LSN ranges are durable, which is the
//! only position ever reported back to PostgreSQL as flushed.

pub mod piece;
pub mod tar;
pub mod walmap;
