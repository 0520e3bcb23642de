//! What the gate records: one `Event` per connection step, statement, verdict or approval.

use std::fmt;
use std::str::FromStr;

use crate::error::ParseError;

/// What happened. Written as a snake_case word; kinds this version does not know are kept as
/// `Other` so that an older verifier still checks (and shows) records of a newer gate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// The gate started (its version, config digest…).
    GateStart,
    /// The gate stopped cleanly.
    GateStop,
    /// A client connected (before authentication): client address, TLS.
    Connect,
    /// Authentication result for a person (ok or failed, method, second factor).
    Auth,
    /// A statement as received, before anything is forwarded.
    Statement,
    /// The guard's verdict on a statement.
    Verdict,
    /// A statement held for a second person's approval.
    ApprovalRequested,
    /// A held statement approved by a second person.
    Approved,
    /// A held statement rejected.
    Rejected,
    /// An approval request that nobody answered in time.
    ApprovalExpired,
    /// A statement finished: rows affected, duration, error.
    StatementDone,
    /// A just-in-time grant requested, approved, rejected, expired.
    GrantRequested,
    GrantApproved,
    GrantRejected,
    GrantExpired,
    /// Emergency access: always with a reason, always alerted.
    BreakGlass,
    /// A session ended by the gate (grant expired, policy), with the reason.
    SessionEnded,
    /// The client went away.
    Disconnect,
    /// The audit spool dropped an unacknowledged torn write at start (how many bytes).
    SpoolRecovered,
    /// A kind this version does not know.
    Other(String),
}

impl EventKind {
    const KNOWN: &'static [(&'static str, EventKind)] = &[
        ("gate_start", EventKind::GateStart),
        ("gate_stop", EventKind::GateStop),
        ("connect", EventKind::Connect),
        ("auth", EventKind::Auth),
        ("statement", EventKind::Statement),
        ("verdict", EventKind::Verdict),
        ("approval_requested", EventKind::ApprovalRequested),
        ("approved", EventKind::Approved),
        ("rejected", EventKind::Rejected),
        ("approval_expired", EventKind::ApprovalExpired),
        ("statement_done", EventKind::StatementDone),
        ("grant_requested", EventKind::GrantRequested),
        ("grant_approved", EventKind::GrantApproved),
        ("grant_rejected", EventKind::GrantRejected),
        ("grant_expired", EventKind::GrantExpired),
        ("break_glass", EventKind::BreakGlass),
        ("session_ended", EventKind::SessionEnded),
        ("disconnect", EventKind::Disconnect),
        ("spool_recovered", EventKind::SpoolRecovered),
    ];

    /// The snake_case name.
    pub fn as_str(&self) -> &str {
        if let EventKind::Other(s) = self {
            return s;
        }
        Self::KNOWN.iter().find(|(_, k)| k == self).map(|(n, _)| *n).unwrap_or("unknown")
    }

    /// Every kind this version knows, by name.
    pub fn known_names() -> impl Iterator<Item = &'static str> {
        Self::KNOWN.iter().map(|(n, _)| *n)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventKind {
    type Err = ParseError;
    /// Any lowercase snake_case word of at most 64 characters; unknown ones become `Other`.
    fn from_str(s: &str) -> Result<Self, ParseError> {
        if let Some((_, k)) = Self::KNOWN.iter().find(|(n, _)| *n == s) {
            return Ok(k.clone());
        }
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if ok {
            Ok(EventKind::Other(s.to_string()))
        } else {
            Err(ParseError::EventKind(crate::error::clip(s)))
        }
    }
}

impl serde::Serialize for EventKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for EventKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One audited event. The gate records it *before* its effect: it awaits
/// `AuditLog::append` before forwarding a statement.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub kind: EventKind,
    /// The person (gate user), once known.
    pub person: Option<String>,
    /// `ip:port` of the client, from the socket.
    pub client: Option<String>,
    /// The gate's session number.
    pub session: Option<u64>,
    /// Free-form: sql text, verdict, approver, rows, duration_ms, error, tls, application_name…
    pub detail: serde_json::Value,
}

impl Event {
    /// An event of `kind` with nothing else filled in (`detail` is `{}`).
    pub fn new(kind: EventKind) -> Event {
        Event {
            kind,
            person: None,
            client: None,
            session: None,
            detail: serde_json::Value::Object(Default::default()),
        }
    }

    /// With the person (gate user).
    pub fn person(mut self, p: impl Into<String>) -> Event {
        self.person = Some(p.into());
        self
    }

    /// With the client's `ip:port`.
    pub fn client(mut self, c: impl Into<String>) -> Event {
        self.client = Some(c.into());
        self
    }

    /// With the gate's session number.
    pub fn session(mut self, s: u64) -> Event {
        self.session = Some(s);
        self
    }

    /// With the free-form detail (replaces it).
    pub fn detail(mut self, d: serde_json::Value) -> Event {
        self.detail = d;
        self
    }

    /// A one-line human summary: the SQL text if any, else the most telling detail fields.
    pub fn summary(&self) -> String {
        let d = &self.detail;
        let mut parts: Vec<String> = Vec::new();
        for key in
            ["sql", "verdict", "approval", "approver", "role", "rows", "duration_ms", "reason", "error"]
        {
            match d.get(key) {
                None | Some(serde_json::Value::Null) => {}
                Some(serde_json::Value::String(s)) if key == "sql" => {
                    parts.push(s.split_whitespace().collect::<Vec<_>>().join(" "))
                }
                Some(serde_json::Value::String(s)) => parts.push(format!("{key}={s}")),
                Some(v) => parts.push(format!("{key}={v}")),
            }
        }
        if parts.is_empty() {
            match d {
                serde_json::Value::Object(m) if m.is_empty() => String::new(),
                other => other.to_string(),
            }
        } else {
            parts.join(" ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_unknown_ones_survive() {
        for name in EventKind::known_names() {
            let k: EventKind = name.parse().unwrap();
            assert!(!matches!(k, EventKind::Other(_)), "{name}");
            assert_eq!(k.as_str(), name);
        }
        let k: EventKind = "console_login".parse().unwrap();
        assert_eq!(k, EventKind::Other("console_login".into()));
        assert_eq!(serde_json::to_string(&k).unwrap(), "\"console_login\"");
        assert!("Drop Table".parse::<EventKind>().is_err());
    }

    #[test]
    fn summary_prefers_sql() {
        let e = Event::new(EventKind::Statement)
            .detail(serde_json::json!({"sql": "DELETE  FROM\n orders", "verdict": "destructive"}));
        assert_eq!(e.summary(), "DELETE FROM orders verdict=destructive");
        assert_eq!(Event::new(EventKind::Connect).summary(), "");
    }
}
