//! What the services (the vault and the gate) share to serve: TLS set-up and the HTTPS accept
//! loop with per-address limits on unauthenticated connections (`tls`), the TCP accept loop
//! itself (`accept`, also the gate's PostgreSQL listener), alert delivery to webhooks
//! (`alerts`), the browser consoles' cookies, CSRF and security headers (`web`), and config
//! durations.
//!
//! Clients of the vault never link this crate: they use `vault-api` (wire types and client).

pub mod accept;
pub mod alerts;
pub mod tls;
pub mod web;

/// A duration in a config file that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a duration: write e.g. \"90s\", \"15m\", \"24h\", \"7d\" or \"1h30m\"")]
pub struct DurationError(pub String);

/// Parses `"90s"`, `"15m"`, `"24h"`, `"7d"` or a sum such as `"1h30m"`.
///
/// Not `humantime`: it also accepts `M` (months), `y`, `ms`, `ns`…, so a typo such as `5M`
/// for five minutes would be a five-month setting; this small language has no such neighbour.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, DurationError> {
    let bad = || DurationError(text.to_string());
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
