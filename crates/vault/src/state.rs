//! The vault's state as a fold over catalog records: tokens, retention policy, proposals.
//!
//! Nothing here is stored anywhere but in the catalog, so a vault rebuilt on a new host from
//! the same store (and its key) has exactly the same tokens, policy and pending deletions.
//! Records of unknown kinds are skipped: the catalog is an open set.

use std::collections::BTreeMap;

use store::quorum::{DeletionStatement, KeyholderSignature};
use store::{ObjectName, Timestamp};
use vault_api::{ProposalStatus, ProposalView, Scope, TokenInfo};

/// Record kinds written by the vault.
pub mod kinds {
    pub const TOKEN_CREATED: &str = "token.created";
    pub const TOKEN_REVOKED: &str = "token.revoked";
    pub const RETENTION_POLICY: &str = "retention.policy";
    pub const DELETION_PROPOSED: &str = "deletion.proposed";
    pub const DELETION_SIGNED: &str = "deletion.signed";
    pub const DELETION_VETOED: &str = "deletion.vetoed";
    pub const DELETION_EXECUTED: &str = "deletion.executed";
    pub const PRUNE: &str = "prune";
    pub const CHECK: &str = "check";
    /// A signed restore-drill report ([`vault_api::SignedDrillReport`]).
    pub const DRILL_REPORT: &str = "drill.report";
    /// A pack a client token uploaded (who, which, how many bytes): counts against its quota.
    pub const TOKEN_UPLOAD: &str = "token.upload";
    /// An admin acknowledged an incident on the console ([`IncidentAck`]); the incident stays.
    pub const INCIDENT_ACK: &str = "incident.ack";
}

/// Body of `incident.ack`: incident `number` of `cluster` (as `holdfast incidents` numbers
/// them, oldest first from 1), detected at `detected_at`, acknowledged by the admin token `by`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct IncidentAck {
    pub cluster: String,
    pub number: usize,
    pub detected_at: Timestamp,
    /// The token's label and id.
    pub by: String,
    /// When, by the vault's clock (filled in when folded).
    #[serde(default)]
    pub at: Option<Timestamp>,
}

/// Body of `token.upload`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TokenUpload {
    pub token: String,
    pub object: ObjectName,
    pub bytes: u64,
}

/// Body of `token.created`. Only the BLAKE3 hash of the secret is stored.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TokenCreated {
    pub id: String,
    pub scope: Scope,
    /// Hex BLAKE3 hash of the 32 secret bytes.
    pub hash: String,
    pub label: String,
    pub created_by: String,
}

/// Body of `token.revoked`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TokenRevoked {
    pub id: String,
    pub revoked_by: String,
}

/// Body of `retention.policy`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RetentionPolicyRecord {
    pub days: u32,
    pub set_by: String,
}

/// Body of `deletion.proposed`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DeletionProposed {
    pub statement: DeletionStatement,
    pub proposed_by: String,
    /// The backup the proposal was made for, if any.
    pub backup: Option<String>,
}

/// Body of `deletion.signed` and `deletion.vetoed`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct KeyholderAct {
    pub proposal: String,
    pub public_key: String,
    pub signature: String,
}

/// Body of `deletion.executed`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DeletionExecuted {
    pub proposal: String,
    pub signers: Vec<String>,
    pub removed: Vec<ObjectName>,
    pub absent: Vec<ObjectName>,
}

/// Body of `check`: the outcome of the last `holdfast vault check`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CheckRecord {
    pub ok: bool,
    pub damaged: u64,
}

/// A token as the vault knows it.
#[derive(Debug, Clone)]
pub struct TokenEntry {
    pub id: String,
    pub scope: Scope,
    pub hash: blake3::Hash,
    pub label: String,
    pub created_at: Timestamp,
    pub created_by: String,
    pub revoked_at: Option<Timestamp>,
}

impl TokenEntry {
    /// The listing form (no hash, no secret).
    pub fn info(&self) -> TokenInfo {
        TokenInfo {
            id: self.id.clone(),
            scope: self.scope,
            label: self.label.clone(),
            created_at: self.created_at,
            created_by: self.created_by.clone(),
            revoked_at: self.revoked_at,
        }
    }
}

/// A deletion proposal and what keyholders did about it.
#[derive(Debug, Clone)]
pub struct Proposal {
    pub statement: DeletionStatement,
    pub proposed_by: String,
    pub backup: Option<String>,
    pub signatures: Vec<KeyholderSignature>,
    pub vetoed_by: Option<String>,
    pub executed_at: Option<Timestamp>,
}

impl Proposal {
    /// Where it stands.
    pub fn status(&self) -> ProposalStatus {
        if self.executed_at.is_some() {
            ProposalStatus::Executed
        } else if self.vetoed_by.is_some() {
            ProposalStatus::Vetoed
        } else {
            ProposalStatus::Pending
        }
    }

    /// The wire form.
    pub fn view(&self, threshold: usize) -> ProposalView {
        let mut signed_by: Vec<String> = self.signatures.iter().map(|s| s.public_key.clone()).collect();
        signed_by.sort();
        signed_by.dedup();
        ProposalView {
            id: self.statement.proposal.clone(),
            status: self.status(),
            statement: self.statement.clone(),
            canonical_hex: hex::encode(self.statement.canonical_bytes()),
            signed_by,
            threshold,
            vetoed_by: self.vetoed_by.clone(),
            executed_at: self.executed_at,
            effects: None,
        }
    }
}

/// Everything the vault derives from the catalog.
#[derive(Debug, Clone, Default)]
pub struct VaultState {
    pub tokens: BTreeMap<String, TokenEntry>,
    /// The longest retention policy ever recorded (0 if none: the config's initial value applies).
    pub recorded_retention_days: u32,
    pub proposals: BTreeMap<String, Proposal>,
    pub last_check: Option<(Timestamp, CheckRecord)>,
    /// Drill reports, in catalog order (signatures are checked by readers, not here).
    pub drills: Vec<vault_api::drill::DrillEntry>,
    /// Incident acknowledgements, in the order written.
    pub incident_acks: Vec<IncidentAck>,
    /// Bytes each client token has had the vault store (records it appended, packs it
    /// uploaded), by token id and day of the vault's clock ([`day_of`]): what its daily storage
    /// quota is measured against.
    pub usage: BTreeMap<(String, i64), u64>,
}

impl VaultState {
    /// Applies one record. Malformed bodies of known kinds are logged and skipped: the catalog
    /// is sealed with the vault's key, so such a record can only come from a bug, and one bad
    /// record must not stop the vault from starting.
    pub fn apply(&mut self, name: &ObjectName, kind: &str, written_at: Timestamp, body: &serde_json::Value) {
        self.apply_authored(name, kind, written_at, body, None);
    }

    /// [`VaultState::apply`] for a record appended on behalf of client token `author` (`None`:
    /// written by the vault itself). A client-written record only counts against its token's
    /// quota: whatever its kind says, it never becomes a token, a policy, a proposal or a drill
    /// — the vault's history is what the vault wrote.
    pub fn apply_authored(
        &mut self,
        name: &ObjectName,
        kind: &str,
        written_at: Timestamp,
        body: &serde_json::Value,
        author: Option<&str>,
    ) {
        if let Some(token) = author {
            *self.usage.entry((token.to_string(), day_of(written_at))).or_default() += body_bytes(body);
            return;
        }
        fn parse<T: serde::de::DeserializeOwned>(name: &ObjectName, body: &serde_json::Value) -> Option<T> {
            match serde_json::from_value(body.clone()) {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::warn!(record = %name, error = %e, "skipping a catalog record with a malformed body");
                    None
                }
            }
        }
        match kind {
            kinds::TOKEN_CREATED => {
                let Some(t) = parse::<TokenCreated>(name, body) else { return };
                let Ok(hash) = blake3::Hash::from_hex(&t.hash) else {
                    tracing::warn!(record = %name, "skipping a token record with a malformed hash");
                    return;
                };
                // First creation wins: a record can never replace an existing token.
                self.tokens.entry(t.id.clone()).or_insert(TokenEntry {
                    id: t.id,
                    scope: t.scope,
                    hash,
                    label: t.label,
                    created_at: written_at,
                    created_by: t.created_by,
                    revoked_at: None,
                });
            }
            kinds::TOKEN_REVOKED => {
                let Some(r) = parse::<TokenRevoked>(name, body) else { return };
                if let Some(t) = self.tokens.get_mut(&r.id) {
                    t.revoked_at.get_or_insert(written_at);
                }
            }
            kinds::RETENTION_POLICY => {
                let Some(p) = parse::<RetentionPolicyRecord>(name, body) else { return };
                // Only lengthening counts, whatever order records arrive in.
                self.recorded_retention_days = self.recorded_retention_days.max(p.days);
            }
            kinds::DELETION_PROPOSED => {
                let Some(p) = parse::<DeletionProposed>(name, body) else { return };
                self.proposals.entry(p.statement.proposal.clone()).or_insert(Proposal {
                    statement: p.statement,
                    proposed_by: p.proposed_by,
                    backup: p.backup,
                    signatures: Vec::new(),
                    vetoed_by: None,
                    executed_at: None,
                });
            }
            kinds::DELETION_SIGNED => {
                let Some(s) = parse::<KeyholderAct>(name, body) else { return };
                if let Some(p) = self.proposals.get_mut(&s.proposal) {
                    p.signatures
                        .push(KeyholderSignature { public_key: s.public_key, signature: s.signature });
                }
            }
            kinds::DELETION_VETOED => {
                let Some(v) = parse::<KeyholderAct>(name, body) else { return };
                if let Some(p) = self.proposals.get_mut(&v.proposal) {
                    p.vetoed_by.get_or_insert(v.public_key);
                }
            }
            kinds::DELETION_EXECUTED => {
                let Some(x) = parse::<DeletionExecuted>(name, body) else { return };
                if let Some(p) = self.proposals.get_mut(&x.proposal) {
                    p.executed_at.get_or_insert(written_at);
                }
            }
            kinds::INCIDENT_ACK => {
                let Some(mut a) = parse::<IncidentAck>(name, body) else { return };
                a.at = Some(written_at);
                self.incident_acks.push(a);
            }
            kinds::DRILL_REPORT => {
                let Some(signed) = parse::<vault_api::SignedDrillReport>(name, body) else { return };
                self.drills.push(vault_api::drill::DrillEntry {
                    record: name.to_string(),
                    written_at,
                    signed,
                });
            }
            kinds::CHECK => {
                let Some(c) = parse::<CheckRecord>(name, body) else { return };
                self.last_check = Some((written_at, c));
            }
            kinds::TOKEN_UPLOAD => {
                let Some(u) = parse::<TokenUpload>(name, body) else { return };
                *self.usage.entry((u.token, day_of(written_at))).or_default() += u.bytes;
            }
            _ => {}
        }
    }

    /// Bytes token `id` had stored on the vault-clock day of `now`.
    pub fn used_today(&self, id: &str, now: Timestamp) -> u64 {
        self.usage.get(&(id.to_string(), day_of(now))).copied().unwrap_or(0)
    }

    /// Live (unrevoked) admin tokens.
    pub fn live_admins(&self) -> usize {
        self.tokens.values().filter(|t| t.scope == Scope::Admin && t.revoked_at.is_none()).count()
    }

    /// The retention policy in force: the configured initial value or anything longer recorded.
    pub fn retention_days(&self, configured: u32) -> u32 {
        self.recorded_retention_days.max(configured)
    }

    /// The live token matching `token`, if any. Compares BLAKE3 hashes in constant time.
    pub fn authenticate(&self, token: &vault_api::Token) -> Option<&TokenEntry> {
        let entry = self.tokens.get(token.id())?;
        let presented = blake3::hash(token.secret());
        (entry.revoked_at.is_none() && entry.hash == presented).then_some(entry)
    }
}

/// The day (since the epoch, UTC, vault clock) a time falls on: quotas are per day.
pub fn day_of(t: Timestamp) -> i64 {
    t.as_secs().div_euclid(86_400)
}

/// The bytes a record body counts for against a quota (its JSON length).
pub fn body_bytes(body: &serde_json::Value) -> u64 {
    serde_json::to_vec(body).map(|v| v.len() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use store::ObjectKind;

    fn n(i: u8) -> ObjectName {
        ObjectName::for_bytes(ObjectKind::Catalog, &[i])
    }

    #[test]
    fn tokens_fold_and_revocation_sticks() {
        let secret = [7u8; 32];
        let tok = vault_api::Token::new("0123456789abcdef".into(), secret).unwrap();
        let created = serde_json::json!({"id": tok.id(), "scope": "admin", "hash": blake3::hash(&secret).to_hex().to_string(), "label": "l", "created_by": "init"});
        let mut s = VaultState::default();
        s.apply(&n(1), kinds::TOKEN_CREATED, Timestamp(10), &created);
        assert_eq!(s.authenticate(&tok).unwrap().scope, Scope::Admin);
        // A second creation record for the same id cannot change the token.
        let hijack = serde_json::json!({"id": tok.id(), "scope": "admin", "hash": blake3::hash(&[0u8; 32]).to_hex().to_string(), "label": "x", "created_by": "x"});
        s.apply(&n(2), kinds::TOKEN_CREATED, Timestamp(11), &hijack);
        assert!(s.authenticate(&tok).is_some());
        let wrong = vault_api::Token::new("0123456789abcdef".into(), [8u8; 32]).unwrap();
        assert!(s.authenticate(&wrong).is_none());
        s.apply(
            &n(3),
            kinds::TOKEN_REVOKED,
            Timestamp(12),
            &serde_json::json!({"id": tok.id(), "revoked_by": "a"}),
        );
        assert!(s.authenticate(&tok).is_none());
    }

    #[test]
    fn client_written_records_never_become_vault_history() {
        let secret = [7u8; 32];
        let tok = vault_api::Token::new("0123456789abcdef".into(), secret).unwrap();
        let created = serde_json::json!({"id": tok.id(), "scope": "admin", "hash": blake3::hash(&secret).to_hex().to_string(), "label": "l", "created_by": "x"});
        let mut s = VaultState::default();
        s.apply_authored(&n(1), kinds::TOKEN_CREATED, Timestamp(10), &created, Some("feedfacefeedface"));
        assert!(s.authenticate(&tok).is_none(), "a client-written token record minted a token");
        s.apply_authored(
            &n(2),
            kinds::RETENTION_POLICY,
            Timestamp(11),
            &serde_json::json!({"days": 1, "set_by": "x"}),
            Some("feedfacefeedface"),
        );
        assert_eq!(s.recorded_retention_days, 0);
        assert!(
            s.used_today("feedfacefeedface", Timestamp(11)) > 0,
            "it still counts against the token's quota"
        );
    }

    #[test]
    fn retention_only_grows() {
        let mut s = VaultState::default();
        s.apply(
            &n(1),
            kinds::RETENTION_POLICY,
            Timestamp(1),
            &serde_json::json!({"days": 90, "set_by": "a"}),
        );
        s.apply(&n(2), kinds::RETENTION_POLICY, Timestamp(2), &serde_json::json!({"days": 7, "set_by": "a"}));
        assert_eq!(s.retention_days(30), 90);
        s.apply(&n(3), kinds::RETENTION_POLICY, Timestamp(3), &serde_json::json!({"bogus": 1}));
        assert_eq!(s.retention_days(120), 120);
    }
}
