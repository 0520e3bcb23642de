//! Quorum warrants: the only authority under which an unexpired object can be removed.
//!
//! A deletion statement names the objects, the vault, and the earliest instant it may run.
//! Keyholders sign the statement's canonical bytes with ed25519. A [`QuorumWarrant`] can only
//! be built by [`QuorumWarrant::verify`], which checks that at least `threshold` *distinct*
//! enrolled keys signed those exact bytes and that the waiting period is over. The vault's
//! quorum module adds what the store cannot see (vetoes recorded in the catalog).

use std::collections::BTreeSet;

use ed25519_dalek::{Signature, Verifier, VerifyingKey};

use crate::name::ObjectName;
use crate::timestamp::Timestamp;

pub use vault_types::deletion::{DELETION_PURPOSE, DeletionStatement};

/// One keyholder's signature over a statement's canonical bytes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyholderSignature {
    /// The signer's ed25519 public key, 64 hex digits.
    pub public_key: String,
    /// The ed25519 signature, 128 hex digits.
    pub signature: String,
}

/// Why a warrant was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuorumError {
    #[error("the statement is not a holdfast deletion statement for this vault")]
    WrongStatement,
    #[error("only {valid} distinct enrolled keyholder(s) signed; {threshold} are required")]
    NotEnough { valid: usize, threshold: usize },
    #[error("the waiting period runs until {not_before}; it is now {now}")]
    TooEarly { not_before: Timestamp, now: Timestamp },
    #[error("threshold must be at least 1")]
    BadThreshold,
}

/// Proof that a quorum authorised removing a set of objects. No public constructor but `verify`.
#[derive(Debug)]
pub struct QuorumWarrant {
    objects: BTreeSet<ObjectName>,
    signers: Vec<String>,
    proposal: String,
}

impl QuorumWarrant {
    /// Checks `signatures` over `statement` against the `enrolled` keys.
    ///
    /// Signatures by keys that are not enrolled, invalid signatures and repeated signatures by
    /// the same key are ignored (one keyholder signing twice counts once).
    pub fn verify(
        repository: &str,
        statement: &DeletionStatement,
        signatures: &[KeyholderSignature],
        enrolled: &[VerifyingKey],
        threshold: usize,
        now: Timestamp,
    ) -> Result<QuorumWarrant, QuorumError> {
        if threshold == 0 {
            return Err(QuorumError::BadThreshold);
        }
        if statement.purpose != DELETION_PURPOSE || statement.repository != repository {
            return Err(QuorumError::WrongStatement);
        }
        let message = statement.canonical_bytes();
        let mut signers: BTreeSet<[u8; 32]> = BTreeSet::new();
        for s in signatures {
            let Some(key) = parse_key(&s.public_key) else { continue };
            if !enrolled.iter().any(|k| k.as_bytes() == key.as_bytes()) {
                continue;
            }
            let Some(sig) = parse_sig(&s.signature) else { continue };
            if key.verify(&message, &sig).is_ok() {
                signers.insert(*key.as_bytes());
            }
        }
        if signers.len() < threshold {
            return Err(QuorumError::NotEnough { valid: signers.len(), threshold });
        }
        if now < statement.not_before {
            return Err(QuorumError::TooEarly { not_before: statement.not_before, now });
        }
        Ok(QuorumWarrant {
            objects: statement.objects.clone(),
            signers: signers.iter().map(hex::encode).collect(),
            proposal: statement.proposal.clone(),
        })
    }

    /// Whether this warrant authorises removing `name`.
    pub fn covers(&self, name: &ObjectName) -> bool {
        self.objects.contains(name)
    }

    /// The public keys (hex) of the keyholders who signed.
    pub fn signers(&self) -> &[String] {
        &self.signers
    }

    /// The proposal id.
    pub fn proposal(&self) -> &str {
        &self.proposal
    }
}

/// Parses a 64-hex-digit ed25519 public key.
pub fn parse_key(hex_key: &str) -> Option<VerifyingKey> {
    let mut b = [0u8; 32];
    hex::decode_to_slice(hex_key, &mut b).ok()?;
    VerifyingKey::from_bytes(&b).ok()
}

fn parse_sig(hex_sig: &str) -> Option<Signature> {
    let mut b = [0u8; 64];
    hex::decode_to_slice(hex_sig, &mut b).ok()?;
    Some(Signature::from_bytes(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::name::{ObjectKind, ObjectName};
    use ed25519_dalek::{Signer, SigningKey};

    fn statement() -> DeletionStatement {
        DeletionStatement {
            purpose: DELETION_PURPOSE.into(),
            repository: "repo1".into(),
            proposal: "p1".into(),
            proposed_at: Timestamp(100),
            not_before: Timestamp(200),
            objects: [ObjectName::for_bytes(ObjectKind::Pack, b"x")].into(),
            reason: "test".into(),
        }
    }

    fn sign(k: &SigningKey, st: &DeletionStatement) -> KeyholderSignature {
        KeyholderSignature {
            public_key: hex::encode(k.verifying_key().as_bytes()),
            signature: hex::encode(k.sign(&st.canonical_bytes()).to_bytes()),
        }
    }

    #[test]
    fn quorum_rules() {
        let keys: Vec<SigningKey> = (1..=3u8).map(|i| SigningKey::from_bytes(&[i; 32])).collect();
        let enrolled: Vec<VerifyingKey> = keys.iter().map(|k| k.verifying_key()).collect();
        let st = statement();
        let one = sign(&keys[0], &st);
        // The same keyholder twice counts once.
        let err =
            QuorumWarrant::verify("repo1", &st, &[one.clone(), one.clone()], &enrolled, 2, Timestamp(300));
        assert_eq!(err.unwrap_err(), QuorumError::NotEnough { valid: 1, threshold: 2 });
        // A key that is not enrolled does not count.
        let stranger = sign(&SigningKey::from_bytes(&[9; 32]), &st);
        let err = QuorumWarrant::verify("repo1", &st, &[one.clone(), stranger], &enrolled, 2, Timestamp(300));
        assert!(matches!(err, Err(QuorumError::NotEnough { valid: 1, .. })));
        // A signature over a different statement does not count.
        let mut other = st.clone();
        other.reason = "something else".into();
        let forged = sign(&keys[1], &other);
        let err = QuorumWarrant::verify("repo1", &st, &[one.clone(), forged], &enrolled, 2, Timestamp(300));
        assert!(matches!(err, Err(QuorumError::NotEnough { valid: 1, .. })));
        // Two distinct keyholders, but too early.
        let two = sign(&keys[1], &st);
        let err =
            QuorumWarrant::verify("repo1", &st, &[one.clone(), two.clone()], &enrolled, 2, Timestamp(199));
        assert!(matches!(err, Err(QuorumError::TooEarly { .. })));
        // Wrong vault.
        let err =
            QuorumWarrant::verify("repo2", &st, &[one.clone(), two.clone()], &enrolled, 2, Timestamp(300));
        assert_eq!(err.unwrap_err(), QuorumError::WrongStatement);
        // Enough, on time.
        let w = QuorumWarrant::verify("repo1", &st, &[one, two], &enrolled, 2, Timestamp(300)).unwrap();
        assert!(w.covers(st.objects.iter().next().unwrap()));
        assert!(!w.covers(&ObjectName::for_bytes(ObjectKind::Pack, b"y")));
        assert_eq!(w.signers().len(), 2);
    }
}
