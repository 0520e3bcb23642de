//! holdfast's store: immutable, content-addressed objects and everything built from them.
//!
//! Layers, bottom up: [`name`] (what an object is called), [`backend`] (the no-delete
//! [`ObjectStore`] trait) and its backends ([`local`], [`s3`], and [`mirror`]: local written
//! through to S3); then the repository format built on
//! them — keys, envelope, chunking, packs, index, catalog — described in `docs/vault-format.md`;
//! and [`journal`], a write-ahead log on a local file for bytes needed durable sooner than an
//! object can be.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use store::{LocalDir, ObjectKind, ObjectName, ObjectStore, PutOutcome, Timestamp};
//! let dir = tempfile::tempdir().unwrap();
//! let s = LocalDir::open(dir.path()).unwrap();
//! let name = ObjectName::for_bytes(ObjectKind::Pack, b"bytes");
//! let until = Timestamp::now().plus(std::time::Duration::from_secs(86400));
//! assert_eq!(s.put_if_absent(&name, "bytes".into(), until).await.unwrap(), PutOutcome::Created);
//! // The same name again changes nothing; different bytes under that name are refused.
//! assert_eq!(s.put_if_absent(&name, "bytes".into(), until).await.unwrap(), PutOutcome::AlreadyPresent);
//! assert!(s.put_if_absent(&name, "other".into(), until).await.is_err());
//! # });
//! ```

pub mod backend;
pub mod backup;
pub mod catalog;
pub mod check;
pub mod chunker;
pub mod envelope;
pub mod error;
pub mod index;
pub mod journal;
pub mod keys;
pub mod local;
pub mod mirror;
/// Object names: moved to `vault-types`, re-exported here.
pub mod name {
    pub use vault_types::name::*;
}
pub mod pack;
pub mod quorum;
pub mod repo;
pub mod s3;
pub mod snapshot;
/// `Timestamp`: moved to `vault-types`, re-exported here.
pub mod timestamp {
    pub use vault_types::timestamp::*;
}

pub use backend::{Expunge, ExpungeAuthority, ObjectMeta, ObjectStore, PutOutcome, StoreError, StoreStatus};
pub use backup::{BackupWriter, RestoreStats};
pub use catalog::CatalogRecord;
pub use check::{CheckReport, check};
pub use error::RepoError;
pub use journal::Journal;
pub use keys::{ChunkId, KeysFile, MasterKeys};
pub use local::LocalDir;
pub use mirror::{CopiesReport, MirrorStore};
pub use name::{NameError, ObjectId, ObjectKind, ObjectName};
pub use repo::{InitOptions, RepoConfig, Repository};
pub use s3::{Protection, S3Config, S3Store};
pub use snapshot::{BackupRecord, FileEntry};
pub use timestamp::Timestamp;
pub use vault_types::UserFacing;
