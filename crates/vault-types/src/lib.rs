//! The vault's plain vocabulary, shared by the store, the vault's API and its clients: object
//! names and kinds (`<kind>/<64 hex>`, BLAKE3 of the bytes), `Timestamp`, the facts the store
//! reports about an object, and the deletion statement keyholders sign.
//!
//! No IO and no async runtime: a client of the vault (gate, restore) links this, not the
//! encrypted storage engine in `store`, which re-exports these types where they used to live.
//!
//! ```
//! use vault_types::{ObjectKind, ObjectName, Timestamp};
//! let name = ObjectName::for_bytes(ObjectKind::Pack, b"hello");
//! assert!(name.verify(b"hello").is_ok());
//! assert_eq!("1970-01-01T00:00:00Z".parse::<Timestamp>().unwrap(), Timestamp(0));
//! ```

pub mod deletion;
pub mod error;
pub mod name;
pub mod object;
pub mod timestamp;

pub use deletion::{DELETION_PURPOSE, DeletionStatement};
pub use error::UserFacing;
pub use name::{NameError, ObjectId, ObjectKind, ObjectName};
pub use object::{ObjectMeta, PutOutcome, StoreStatus};
pub use timestamp::{Timestamp, TimestampError};
