//! `Batch`: consecutive records of one gate, signed with the gate's ed25519 key, stored in the
//! vault as the body of one `audit.batch` catalog record.
//!
//! The signature covers the gate id, the range, the first record's `prev` and the last record's
//! hash. Because every record's hash covers its `prev`, that pins every record of the batch and
//! links the batch to the one before it.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::error::{BatchError, ParseError, clip};
use crate::record::{Digest, Record};

/// The catalog record kind batches are stored under.
pub const BATCH_KIND: &str = "audit.batch";

/// The batch format this version writes and reads.
pub const BATCH_FORMAT: u32 = 1;

const SIGN_DOMAIN: &[u8] = b"holdfast audit batch v1\0";

/// The body of an `audit.batch` record.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    pub format: u32,
    /// The gate that wrote these records (one chain per gate).
    pub gate: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub records: Vec<Record>,
    /// The signing key, 64 hex digits.
    pub public_key: String,
    /// ed25519 over [`Batch::signed_message`], 128 hex digits.
    pub signature: String,
}

/// Checks a gate id: 1–64 characters of letters, digits, `.`, `_`, `-`.
pub fn validate_gate_id(gate: &str) -> Result<(), ParseError> {
    let ok = !gate.is_empty()
        && gate.len() <= 64
        && gate.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok { Ok(()) } else { Err(ParseError::GateId(clip(gate))) }
}

/// Hex of a public key, as batches carry it.
pub fn key_hex(key: &VerifyingKey) -> String {
    hex::encode(key.as_bytes())
}

/// Parses 64 hex digits into a public key.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, ParseError> {
    let text = text.trim();
    let mut b = [0u8; 32];
    hex::decode_to_slice(text, &mut b).map_err(|_| ParseError::PublicKeyHex(clip(text)))?;
    VerifyingKey::from_bytes(&b).map_err(|_| ParseError::PublicKeyInvalid(text.to_string()))
}

impl Batch {
    /// The exact bytes signed for a batch.
    pub fn signed_message(
        gate: &str,
        first_seq: u64,
        last_seq: u64,
        first_prev: &Digest,
        last_hash: &Digest,
    ) -> Vec<u8> {
        let mut m = Vec::with_capacity(SIGN_DOMAIN.len() + 8 + gate.len() + 16 + 64);
        m.extend_from_slice(SIGN_DOMAIN);
        m.extend_from_slice(&(gate.len() as u64).to_be_bytes());
        m.extend_from_slice(gate.as_bytes());
        m.extend_from_slice(&first_seq.to_be_bytes());
        m.extend_from_slice(&last_seq.to_be_bytes());
        m.extend_from_slice(&first_prev.0);
        m.extend_from_slice(&last_hash.0);
        m
    }

    /// Signs consecutive records (at least one) of `gate`.
    pub fn sign(gate: &str, records: Vec<Record>, key: &SigningKey) -> Result<Batch, BatchError> {
        validate_gate_id(gate)?;
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            return Err(BatchError::Empty);
        };
        let (first_seq, last_seq, prev, hash) = (first.seq, last.seq, first.prev, last.hash);
        if last_seq.checked_sub(first_seq).map(|d| d + 1) != Some(records.len() as u64) {
            return Err(BatchError::NotConsecutive {
                first: first_seq,
                last: last_seq,
                count: records.len(),
            });
        }
        let sig = key.sign(&Batch::signed_message(gate, first_seq, last_seq, &prev, &hash));
        Ok(Batch {
            format: BATCH_FORMAT,
            gate: gate.to_string(),
            first_seq,
            last_seq,
            records,
            public_key: key_hex(&key.verifying_key()),
            signature: hex::encode(sig.to_bytes()),
        })
    }

    /// The key the batch claims to be signed with.
    pub fn claimed_key(&self) -> Result<VerifyingKey, ParseError> {
        parse_public_key(&self.public_key)
    }

    /// Checks the signature against the batch's own key, over its records' first `prev` and
    /// last hash and its claimed range. Whether that key is *trusted* is the caller's question.
    pub fn check_signature(&self) -> Result<VerifyingKey, BatchError> {
        let key = self.claimed_key()?;
        let (Some(first), Some(last)) = (self.records.first(), self.records.last()) else {
            return Err(BatchError::Empty);
        };
        let mut sig = [0u8; 64];
        hex::decode_to_slice(&self.signature, &mut sig).map_err(|_| BatchError::SignatureNotHex)?;
        let msg = Batch::signed_message(&self.gate, self.first_seq, self.last_seq, &first.prev, &last.hash);
        key.verify_strict(&msg, &Signature::from_bytes(&sig)).map_err(|_| BatchError::SignatureMismatch)?;
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, EventKind};
    use crate::time::AuditTime;

    fn chain(n: u64) -> Vec<Record> {
        let mut prev = Digest::ZERO;
        (1..=n)
            .map(|s| {
                let r = Record::new(s, AuditTime(s as i64), prev, Event::new(EventKind::Connect));
                prev = r.hash;
                r
            })
            .collect()
    }

    #[test]
    fn sign_and_check() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let b = Batch::sign("gate-1", chain(3), &key).unwrap();
        assert_eq!(b.check_signature().unwrap(), key.verifying_key());
        let mut other_gate = b.clone();
        other_gate.gate = "gate-2".into();
        assert_eq!(other_gate.check_signature(), Err(BatchError::SignatureMismatch));
        let mut other_range = b.clone();
        other_range.last_seq = 4;
        assert!(other_range.check_signature().is_err());
        let mut dropped_last = b.clone();
        dropped_last.records.pop();
        assert!(dropped_last.check_signature().is_err());
        assert_eq!(Batch::sign("gate 1", chain(1), &key), Err(ParseError::GateId("gate 1".into()).into()));
        let mut gap = chain(3);
        gap.remove(1);
        let e = Batch::sign("g", gap, &key).unwrap_err();
        assert_eq!(e, BatchError::NotConsecutive { first: 1, last: 3, count: 2 });
        assert!(e.to_string().contains("records 1..3 are not consecutive"), "{e}");
        assert_eq!(Batch::sign("g", Vec::new(), &key), Err(BatchError::Empty));
        let mut bad_sig = b.clone();
        bad_sig.signature = "zz".into();
        assert_eq!(bad_sig.check_signature(), Err(BatchError::SignatureNotHex));
        let mut bad_key = b.clone();
        bad_key.public_key = "not hex".into();
        let e = bad_key.check_signature().unwrap_err();
        assert!(e.to_string().contains("not an ed25519 public key (64 hex digits expected)"), "{e}");
    }
}
