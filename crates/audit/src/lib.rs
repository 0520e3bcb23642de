//! The gate's tamper-evident audit log.
//!
//! Every event is a [`Record`] in a per-gate hash chain (seq from 1, gap-free; each record's
//! BLAKE3 hash covers the previous one). Consecutive records are signed together with the
//! gate's ed25519 key as a [`Batch`] and stored in the vault as an `audit.batch` record, out of
//! reach of whoever controls the gate host. [`verify`] checks what the vault holds and names the
//! first bad record; [`search`] answers "who did what from where".
//!
//! The chain, batches, verification and search are pure; [`keyfile`] reads and writes the
//! signing key with `std::fs`. The durable spool and the shipper (`AuditLog`) are behind the
//! `spool` feature, which brings in tokio and the vault client.
//!
//! ```
//! use audit::{Batch, Digest, Event, EventKind, Record, StoredBatch, AuditTime, verify};
//! let key = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
//! let ev = Event::new(EventKind::Statement).person("alice").client("10.0.0.7:51234")
//!     .detail(serde_json::json!({"sql": "DELETE FROM orders WHERE id = 7"}));
//! let r1 = Record::new(1, AuditTime(1_795_000_000_000_000), Digest::ZERO, ev);
//! let batch = Batch::sign("gate-1", vec![r1], &key).unwrap();
//! let stored = StoredBatch {
//!     name: "catalog/…".into(),
//!     written_at: "2026-11-23T10:00:00Z".into(),
//!     body: serde_json::to_value(&batch).unwrap(),
//! };
//! let report = verify(&[stored], &[key.verifying_key()]);
//! assert!(report.intact);
//! ```

pub mod batch;
pub mod error;
pub mod event;
pub mod export;
pub mod keyfile;
pub mod record;
pub mod search;
pub mod time;
pub mod verify;

#[cfg(feature = "spool")]
mod ship;
#[cfg(feature = "spool")]
pub mod spool;

pub use batch::{BATCH_KIND, Batch, key_hex, parse_public_key, validate_gate_id};
pub use error::{AuditError, BatchError, ParseError};
pub use event::{Event, EventKind};
pub use export::SearchForm;
pub use record::{Digest, Record};
pub use search::{Filter, search};
pub use time::AuditTime;
pub use verify::{GateReport, Problem, ProblemKind, StoredBatch, Trust, VerifyReport, check_run, verify};

#[cfg(feature = "spool")]
pub use spool::{AuditLog, RecordRef, SpoolOptions, SpoolStatus};
