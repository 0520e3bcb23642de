//! Requests that wait for a second person: held statements, just-in-time grants and access
//! outside a person's hours or networks. A request is decided once, by an approver who is not
//! the requester; the waiting side is woken through a watch channel.
//!
//! Also the active grants (role, person, until) and break-glass sessions.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// What is being asked for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Ask {
    /// Run a statement the guard held.
    Statement {
        sql: String,
        class: String,
        reasons: Vec<String>,
        /// The parameters bound to it (extended protocol): their count, and their values as
        /// the gate's `approval_parameters` says (none when redacted).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parameters: Option<Parameters>,
    },
    /// A grant of `role` for `secs` seconds.
    Grant { role: String, secs: u64 },
    /// A session outside the person's hours or networks.
    Access { why: String },
}

/// Bound parameters as an approver sees them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Parameters {
    pub count: usize,
    /// "redacted", "hashed" (`sha256:<hex>` each) or "shown" (text-format values as text;
    /// binary-format ones and non-UTF-8 bytes as `\x<hex>`).
    pub values_are: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<Option<String>>,
}

impl Parameters {
    pub fn new(values: &[(bool, Option<bytes::Bytes>)], display: crate::config::ParamDisplay) -> Parameters {
        use crate::config::ParamDisplay;
        use sha2::Digest as _;
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let count = values.len();
        let (values_are, values) = match display {
            ParamDisplay::Redacted => ("redacted", Vec::new()),
            ParamDisplay::Hashed => (
                "hashed",
                values
                    .iter()
                    .map(|(_, v)| v.as_ref().map(|b| format!("sha256:{}", hex(&sha2::Sha256::digest(b)))))
                    .collect(),
            ),
            ParamDisplay::Shown => (
                "shown",
                values
                    .iter()
                    .map(|(binary, v)| {
                        v.as_ref().map(|b| match std::str::from_utf8(b) {
                            Ok(s) if !binary => s.chars().take(1000).collect(),
                            _ => format!("\\x{}", hex(&b[..b.len().min(500)])),
                        })
                    })
                    .collect(),
            ),
        };
        Parameters { count, values_are: values_are.into(), values }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum State {
    Pending,
    Approved {
        by: String,
        at: u64,
    },
    Rejected {
        by: String,
        at: u64,
        reason: Option<String>,
    },
    /// Nobody decided in time.
    Expired {
        at: u64,
    },
    /// The requester went away (connection closed) before a decision.
    Withdrawn {
        at: u64,
    },
}

/// A request as listed by the control API.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Request {
    pub id: String,
    pub person: String,
    pub client: String,
    pub session: Option<u64>,
    pub ask: Ask,
    pub reason: Option<String>,
    pub created_at: u64,
    pub expires_at: u64,
    pub state: State,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecideError {
    #[error("no request {0:?} (see `holdfast gate pending`)")]
    Unknown(String),
    #[error("request {id} is already {state}")]
    Decided { id: String, state: String },
    #[error("{0} may not approve their own request: another approver must")]
    SelfApproval(String),
    #[error("{0} is not an approver (approver = true in gate.toml)")]
    NotApprover(String),
}

struct Entry {
    req: Request,
    tx: watch::Sender<State>,
}

/// An active grant.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Grant {
    pub id: String,
    pub person: String,
    pub role: String,
    pub until: u64,
    pub approved_by: String,
    pub reason: Option<String>,
    /// A break-glass grant: approvals are skipped, every statement alerts.
    pub break_glass: bool,
}

#[derive(Default)]
pub struct Approvals {
    requests: Mutex<HashMap<String, Entry>>,
    grants: Mutex<Vec<Grant>>,
}

fn new_id(prefix: char) -> String {
    let mut b = [0u8; 5];
    getrandom::getrandom(&mut b).expect("the OS random source works");
    format!("{prefix}{}", crate::totp::base32_encode(&b).to_lowercase())
}

impl Approvals {
    /// Opens a request; the receiver sees its decision.
    pub fn open(
        &self,
        person: &str,
        client: &str,
        session: Option<u64>,
        ask: Ask,
        reason: Option<String>,
        timeout: Duration,
    ) -> (Request, watch::Receiver<State>) {
        let now = unix_now();
        let prefix = match ask {
            Ask::Statement { .. } => 'a',
            Ask::Grant { .. } => 'g',
            Ask::Access { .. } => 'c',
        };
        let req = Request {
            id: new_id(prefix),
            person: person.into(),
            client: client.into(),
            session,
            ask,
            reason,
            created_at: now,
            expires_at: now + timeout.as_secs(),
            state: State::Pending,
        };
        let (tx, rx) = watch::channel(State::Pending);
        let mut m = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        // Decided requests are kept for listing for an hour, then forgotten (the audit log keeps them).
        m.retain(|_, e| e.req.state == State::Pending || e.req.expires_at + 3600 > now);
        m.insert(req.id.clone(), Entry { req: req.clone(), tx });
        (req, rx)
    }

    /// Approves or rejects; `approver` is checked: a different person, with the approver role.
    pub fn decide(
        &self,
        id: &str,
        by: &crate::config::Person,
        approve: bool,
        reason: Option<String>,
    ) -> Result<Request, DecideError> {
        let mut m = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        let e = m.get_mut(id).ok_or_else(|| DecideError::Unknown(id.into()))?;
        self.expire_if_due(e);
        if e.req.state != State::Pending {
            return Err(DecideError::Decided { id: id.into(), state: state_name(&e.req.state).into() });
        }
        if e.req.person == by.name {
            return Err(DecideError::SelfApproval(by.name.clone()));
        }
        if !by.approver {
            return Err(DecideError::NotApprover(by.name.clone()));
        }
        let at = unix_now();
        e.req.state = if approve {
            State::Approved { by: by.name.clone(), at }
        } else {
            State::Rejected { by: by.name.clone(), at, reason }
        };
        let _ = e.tx.send(e.req.state.clone());
        if let (true, Ask::Grant { role, secs }) = (approve, &e.req.ask) {
            self.grants.lock().unwrap_or_else(|p| p.into_inner()).push(Grant {
                id: e.req.id.clone(),
                person: e.req.person.clone(),
                role: role.clone(),
                until: at + secs,
                approved_by: by.name.clone(),
                reason: e.req.reason.clone(),
                break_glass: false,
            });
        }
        Ok(e.req.clone())
    }

    fn expire_if_due(&self, e: &mut Entry) {
        if e.req.state == State::Pending && unix_now() >= e.req.expires_at {
            e.req.state = State::Expired { at: unix_now() };
            let _ = e.tx.send(e.req.state.clone());
        }
    }

    /// Marks a pending request expired (its waiter timed out) or withdrawn.
    pub fn close(&self, id: &str, withdrawn: bool) -> State {
        let mut m = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        match m.get_mut(id) {
            Some(e) if e.req.state == State::Pending => {
                let at = unix_now();
                e.req.state = if withdrawn { State::Withdrawn { at } } else { State::Expired { at } };
                let _ = e.tx.send(e.req.state.clone());
                e.req.state.clone()
            }
            Some(e) => e.req.state.clone(),
            None => State::Expired { at: unix_now() },
        }
    }

    /// Every known request, pending first, newest first.
    pub fn list(&self) -> Vec<Request> {
        let mut m = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        let ids: Vec<String> = m.keys().cloned().collect();
        for id in ids {
            if let Some(e) = m.get_mut(&id) {
                self.expire_if_due(e);
            }
        }
        let mut v: Vec<Request> = m.values().map(|e| e.req.clone()).collect();
        v.sort_by_key(|r| (r.state != State::Pending, std::cmp::Reverse(r.created_at), r.id.clone()));
        v
    }

    /// The grant of `role` that `person` holds now, if any.
    pub fn active_grant(&self, person: &str, role: &str) -> Option<Grant> {
        let now = unix_now();
        let g = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        g.iter()
            .filter(|g| g.person == person && g.role == role && g.until > now)
            .max_by_key(|g| g.until)
            .cloned()
    }

    /// Starts break-glass for `person`: no approver needed, always alerted by the caller.
    pub fn break_glass(&self, person: &str, secs: u64, reason: String) -> Grant {
        let g = Grant {
            id: new_id('b'),
            person: person.into(),
            role: "break-glass".into(),
            until: unix_now() + secs,
            approved_by: person.into(),
            reason: Some(reason),
            break_glass: true,
        };
        self.grants.lock().unwrap_or_else(|p| p.into_inner()).push(g.clone());
        g
    }

    /// Whether `person` is in break-glass now (asked for every statement: no copying).
    pub fn break_glass_active(&self, person: &str) -> bool {
        let now = unix_now();
        let g = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        g.iter().any(|g| g.break_glass && g.person == person && g.until > now)
    }

    /// Grants still running.
    pub fn grants(&self) -> Vec<Grant> {
        let now = unix_now();
        let mut g = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        g.retain(|g| g.until > now);
        g.clone()
    }
}

pub fn state_name(s: &State) -> &'static str {
    match s {
        State::Pending => "pending",
        State::Approved { .. } => "approved",
        State::Rejected { .. } => "rejected",
        State::Expired { .. } => "expired",
        State::Withdrawn { .. } => "withdrawn",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(name: &str, approver: bool) -> crate::config::Person {
        crate::config::Person {
            name: name.into(),
            verifier: crate::scram::Verifier::generate("x"),
            approver,
            db_user: None,
            totp_secret: None,
            networks: vec![],
            hours: None,
            may_request: vec![],
        }
    }

    #[test]
    fn second_person_decides_once() {
        let a = Approvals::default();
        let ask = Ask::Statement {
            sql: "DROP TABLE t".into(),
            class: "destructive".into(),
            reasons: vec![],
            parameters: None,
        };
        let (req, rx) = a.open("mallory", "127.0.0.1:5", Some(1), ask, None, Duration::from_secs(60));
        assert_eq!(
            a.decide(&req.id, &person("mallory", true), true, None).unwrap_err(),
            DecideError::SelfApproval("mallory".into())
        );
        assert_eq!(
            a.decide(&req.id, &person("eve", false), true, None).unwrap_err(),
            DecideError::NotApprover("eve".into())
        );
        assert_eq!(*rx.borrow(), State::Pending);
        a.decide(&req.id, &person("bob", true), false, Some("no".into())).unwrap();
        assert!(matches!(&*rx.borrow(), State::Rejected { by, .. } if by == "bob"));
        assert!(matches!(
            a.decide(&req.id, &person("carol", true), true, None),
            Err(DecideError::Decided { .. })
        ));
        assert!(matches!(a.decide("a-nope", &person("bob", true), true, None), Err(DecideError::Unknown(_))));
    }

    #[test]
    fn approved_grant_is_active_until_it_ends() {
        let a = Approvals::default();
        let (req, _rx) = a.open(
            "alice",
            "c",
            None,
            Ask::Grant { role: "dba".into(), secs: 3600 },
            None,
            Duration::from_secs(60),
        );
        assert!(a.active_grant("alice", "dba").is_none());
        a.decide(&req.id, &person("bob", true), true, None).unwrap();
        let g = a.active_grant("alice", "dba").unwrap();
        assert!(g.until >= unix_now() + 3599);
        assert!(a.active_grant("alice", "other").is_none() && a.active_grant("bob", "dba").is_none());
        let (req, _rx) = a.open(
            "alice",
            "c",
            None,
            Ask::Grant { role: "x".into(), secs: 1 },
            None,
            Duration::from_secs(0),
        );
        assert!(
            matches!(a.decide(&req.id, &person("bob", true), true, None), Err(DecideError::Decided { .. })),
            "expired"
        );
    }
}
