//! The vault's HTTP interface: wire types, token scopes and a typed client.
//!
//! Everything outside the vault (the CLI, restore, gate) talks to it only through this crate,
//! never through `vault` itself. Wire types and the client only: serving HTTPS and delivering
//! alerts live in the `serve` crate, so a client links no server stack (checked by
//! `crates/holdfast/tests/architecture.rs`).
//!
//! ```
//! use vault_api::{Scope, Token};
//! let t: Token = "hft_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".parse().unwrap();
//! assert_eq!(t.id(), "0123456789abcdef");
//! assert_eq!("append".parse::<Scope>().unwrap(), Scope::Append);
//! ```

pub mod client;
pub mod drill;
pub mod standby;
pub mod status;
pub mod token;
pub mod window;
pub mod wire;

pub use client::{ClientError, VaultClient};
pub use drill::{DrillReport, DrillStatus, DrillsResponse, SignedDrillReport};
pub use token::{Scope, Token, TokenError};
pub use wire::*;
