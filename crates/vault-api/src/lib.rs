//! The vault's HTTP interface: wire types, token scopes and a typed client.
//!
//! Everything outside the vault (the CLI, restore, gate) talks to it only through this crate,
//! never through `vault` itself.
//!
//! ```
//! use vault_api::{Scope, Token};
//! let t: Token = "hft_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".parse().unwrap();
//! assert_eq!(t.id(), "0123456789abcdef");
//! assert_eq!("append".parse::<Scope>().unwrap(), Scope::Append);
//! ```

pub mod alerts;
pub mod client;
pub mod drill;
pub mod standby;
pub mod status;
pub mod tls;
pub mod token;
pub mod window;
pub mod wire;

pub use client::{ClientError, VaultClient};
pub use drill::{DrillReport, DrillStatus, DrillsResponse, SignedDrillReport};
pub use token::{Scope, Token, TokenError};
pub use wire::*;

/// Parses `"90s"`, `"15m"`, `"24h"`, `"7d"` or a sum such as `"1h30m"`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let bad =
        || format!("{text:?} is not a duration: write e.g. \"90s\", \"15m\", \"24h\", \"7d\" or \"1h30m\"");
    let mut total: u64 = 0;
    let mut num = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = num.parse().map_err(|_| bad())?;
        total = n.checked_mul(unit).and_then(|v| total.checked_add(v)).ok_or_else(bad)?;
        num.clear();
    }
    if !num.is_empty() || total == 0 {
        return Err(bad());
    }
    Ok(std::time::Duration::from_secs(total))
}
