//! Master keys, chunk ids, and the `keys/` object that wraps the keys to age recipients.
//!
//! A repository has two 32-byte secrets: `data_key` encrypts every envelope, `id_key` keys the
//! BLAKE3 hash that names chunks (so equal plaintexts dedup, yet a chunk id reveals nothing to
//! someone without the key). Both are wrapped with `age` to the vault's own X25519 recipient
//! and to escrow recipients held offline by other people: losing the vault host's identity
//! never makes backups unreadable (DESIGN.md G5).

use std::fmt;
use std::io::{Read, Write};

use base64::Engine as _;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::envelope::{self, EnvelopeError};
use crate::error::RepoError;
use crate::timestamp::Timestamp;

/// A chunk (blob) id: `blake3::keyed_hash(id_key, plaintext)`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<ChunkId> {
        let mut b = [0u8; 32];
        if s.len() != 64 {
            return None;
        }
        hex::decode_to_slice(s, &mut b).ok()?;
        Some(ChunkId(b))
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl serde::Serialize for ChunkId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for ChunkId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        ChunkId::from_hex(&s).ok_or_else(|| serde::de::Error::custom("expected 64 hex digits for a blob id"))
    }
}

/// The repository's secrets. Zeroed when dropped; never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterKeys {
    data_key: [u8; 32],
    id_key: [u8; 32],
}

impl fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKeys([redacted])")
    }
}

impl MasterKeys {
    /// Fresh random keys from the operating system.
    pub fn generate() -> Result<MasterKeys, RepoError> {
        let mut k = MasterKeys { data_key: [0; 32], id_key: [0; 32] };
        getrandom::getrandom(&mut k.data_key).map_err(|e| RepoError::Random(e.to_string()))?;
        getrandom::getrandom(&mut k.id_key).map_err(|e| RepoError::Random(e.to_string()))?;
        Ok(k)
    }

    /// Keys from known bytes (tests and tools).
    pub fn from_bytes(data_key: [u8; 32], id_key: [u8; 32]) -> MasterKeys {
        MasterKeys { data_key, id_key }
    }

    /// A 32-byte key for another purpose, derived from the data key with BLAKE3's key
    /// derivation under `context` (e.g. the vault's drill-report signing key). Anyone who can
    /// open the repository (the vault key or an escrow identity) derives the same key.
    pub fn derive_key(&self, context: &str) -> [u8; 32] {
        blake3::derive_key(context, &self.data_key)
    }

    /// The id of a chunk with this plaintext.
    pub fn chunk_id(&self, plaintext: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.id_key, plaintext).as_bytes())
    }

    /// Seals with the data key at the given zstd level.
    pub fn seal(&self, plaintext: &[u8], level: i32) -> Result<Vec<u8>, EnvelopeError> {
        envelope::seal(&self.data_key, plaintext, level)
    }

    /// Opens an envelope sealed with the data key.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        envelope::open(&self.data_key, sealed)
    }

    /// Opens an envelope, mapping failure to a [`RepoError`] that names `what`.
    pub(crate) fn open_named(&self, sealed: &[u8], what: impl fmt::Display) -> Result<Vec<u8>, RepoError> {
        self.open(sealed).map_err(|e| match e {
            EnvelopeError::Auth => RepoError::Tampered { what: what.to_string() },
            other => RepoError::malformed(what.to_string(), other),
        })
    }

    /// Seals, mapping failure to a [`RepoError`].
    pub(crate) fn seal_checked(&self, plaintext: &[u8], level: i32) -> Result<Vec<u8>, RepoError> {
        self.seal(plaintext, level).map_err(|e| RepoError::Random(e.to_string()))
    }
}

/// The plaintext inside `wrapped`.
#[derive(serde::Serialize, serde::Deserialize, Zeroize, ZeroizeOnDrop)]
struct KeyMaterial {
    data_key: String,
    id_key: String,
}

/// The JSON content of a `keys/<hash>` object.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysFile {
    /// Format version, 1.
    pub version: u32,
    /// The repository these keys belong to.
    pub repository: String,
    /// When the keys object was written (vault clock).
    pub created: Timestamp,
    /// The age recipients the keys are wrapped to (public; for audit).
    pub recipients: Vec<String>,
    /// Base64 (standard, padded) of the binary age ciphertext of `{"data_key":hex,"id_key":hex}`.
    pub wrapped: String,
}

impl KeysFile {
    /// Wraps `keys` to every recipient (at least one is required; pass the vault's own and escrow).
    pub fn wrap(
        keys: &MasterKeys,
        repository: &str,
        created: Timestamp,
        recipients: &[age::x25519::Recipient],
    ) -> Result<KeysFile, RepoError> {
        if recipients.is_empty() {
            return Err(RepoError::Wrap("no recipient given".into()));
        }
        let material = KeyMaterial { data_key: hex::encode(keys.data_key), id_key: hex::encode(keys.id_key) };
        let mut plain = serde_json::to_vec(&material).map_err(|e| RepoError::Wrap(e.to_string()))?;
        let enc = age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| RepoError::Wrap(e.to_string()))?;
        let mut ct = Vec::new();
        let res = (|| -> std::io::Result<()> {
            let mut w = enc.wrap_output(&mut ct)?;
            w.write_all(&plain)?;
            w.finish()?;
            Ok(())
        })();
        plain.zeroize();
        res.map_err(|e| RepoError::Wrap(e.to_string()))?;
        Ok(KeysFile {
            version: 1,
            repository: repository.to_string(),
            created,
            recipients: recipients.iter().map(|r| r.to_string()).collect(),
            wrapped: base64::engine::general_purpose::STANDARD.encode(ct),
        })
    }

    /// Unwraps with the first identity that works, or `None` if none does.
    pub fn unwrap_with(&self, identities: &[age::x25519::Identity]) -> Result<Option<MasterKeys>, RepoError> {
        let what = || format!("keys object of repository {}", self.repository);
        let ct = base64::engine::general_purpose::STANDARD
            .decode(&self.wrapped)
            .map_err(|e| RepoError::malformed(what(), format!("wrapped is not base64: {e}")))?;
        let dec = age::Decryptor::new_buffered(&ct[..]).map_err(|e| RepoError::malformed(what(), e))?;
        let mut reader = match dec.decrypt(identities.iter().map(|i| i as &dyn age::Identity)) {
            Ok(r) => r,
            Err(age::DecryptError::NoMatchingKeys) => return Ok(None),
            Err(e) => return Err(RepoError::malformed(what(), e)),
        };
        let mut plain = Vec::new();
        reader.read_to_end(&mut plain).map_err(|e| RepoError::malformed(what(), e))?;
        let parsed: Result<KeyMaterial, _> = serde_json::from_slice(&plain);
        plain.zeroize();
        let material = parsed.map_err(|e| RepoError::malformed(what(), e))?;
        let mut keys = MasterKeys { data_key: [0; 32], id_key: [0; 32] };
        hex::decode_to_slice(&material.data_key, &mut keys.data_key)
            .and_then(|_| hex::decode_to_slice(&material.id_key, &mut keys.id_key))
            .map_err(|e| RepoError::malformed(what(), e))?;
        Ok(Some(keys))
    }

    /// The object bytes (pretty JSON: this file is read by people recovering from escrow).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("keys file serialises")
    }

    /// Parses object bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<KeysFile, RepoError> {
        serde_json::from_slice(bytes).map_err(|e| RepoError::malformed("keys object", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_ids_are_keyed() {
        let a = MasterKeys::from_bytes([1; 32], [2; 32]);
        let b = MasterKeys::from_bytes([1; 32], [3; 32]);
        assert_eq!(a.chunk_id(b"page"), a.chunk_id(b"page"));
        assert_ne!(a.chunk_id(b"page"), b.chunk_id(b"page"));
        assert_ne!(a.chunk_id(b"page").0, *blake3::hash(b"page").as_bytes());
        let id = a.chunk_id(b"x");
        assert_eq!(ChunkId::from_hex(&id.to_hex()), Some(id));
    }

    #[test]
    fn escrow_identity_alone_opens_keys() {
        let vault = age::x25519::Identity::generate();
        let escrow = age::x25519::Identity::generate();
        let stranger = age::x25519::Identity::generate();
        let keys = MasterKeys::generate().unwrap();
        let file =
            KeysFile::wrap(&keys, "r1", Timestamp(1), &[vault.to_public(), escrow.to_public()]).unwrap();
        let parsed = KeysFile::from_bytes(&file.to_bytes()).unwrap();
        assert_eq!(parsed, file);
        assert_eq!(parsed.recipients.len(), 2);
        // The vault host's identity is destroyed: the escrow identity alone opens the keys (G5).
        let opened = parsed.unwrap_with(&[escrow]).unwrap().expect("escrow opens");
        let sealed = keys.seal(b"data", 3).unwrap();
        assert_eq!(opened.open(&sealed).unwrap(), b"data");
        assert_eq!(opened.chunk_id(b"c"), keys.chunk_id(b"c"));
        // A stranger's identity opens nothing; a stranger next to the vault's works.
        assert!(parsed.unwrap_with(std::slice::from_ref(&stranger)).unwrap().is_none());
        assert!(parsed.unwrap_with(&[stranger, vault]).unwrap().is_some());
        // Debug output never shows the key.
        assert_eq!(format!("{keys:?}"), "MasterKeys([redacted])");
    }

    #[test]
    fn wrap_needs_a_recipient() {
        let keys = MasterKeys::generate().unwrap();
        assert!(KeysFile::wrap(&keys, "r", Timestamp(1), &[]).is_err());
    }
}
