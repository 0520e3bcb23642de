//! Object names: `<kind>/<64 lowercase hex>` where the hex is the BLAKE3 hash of the stored bytes.
//!
//! A name is the only thing a client supplies when it stores an object, so parsing is strict:
//! a fixed set of kinds, exactly 64 lowercase hex digits, nothing else. That rules out `..`,
//! `/`, NUL, empty and overlong names by construction rather than by a list of bad inputs.

use std::fmt;
use std::str::FromStr;

/// The kinds of object a vault holds. Each kind is a top-level folder in every backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectKind {
    /// Repository config: id, format version, chunker parameters. Plain JSON, not encrypted.
    Config,
    /// Master keys wrapped to age recipients. Plain JSON around an age ciphertext.
    Keys,
    /// A pack: many sealed blobs followed by a sealed header.
    Pack,
    /// A sealed index file mapping blob ids to packs.
    Index,
    /// A sealed append-only catalog record.
    Catalog,
    /// A sealed piece of the WAL stream, stored as it arrives (see docs/vault-format.md).
    Wal,
}

impl ObjectKind {
    /// Every kind, in the order `vault check` walks them.
    pub const ALL: [ObjectKind; 6] = [
        ObjectKind::Config,
        ObjectKind::Keys,
        ObjectKind::Index,
        ObjectKind::Catalog,
        ObjectKind::Pack,
        ObjectKind::Wal,
    ];

    /// The folder name used in names and paths.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Config => "config",
            ObjectKind::Keys => "keys",
            ObjectKind::Pack => "pack",
            ObjectKind::Index => "index",
            ObjectKind::Catalog => "catalog",
            ObjectKind::Wal => "wal",
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ObjectKind {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        Ok(match s {
            "config" => ObjectKind::Config,
            "keys" => ObjectKind::Keys,
            "pack" => ObjectKind::Pack,
            "index" => ObjectKind::Index,
            "catalog" => ObjectKind::Catalog,
            "wal" => ObjectKind::Wal,
            _ => return Err(NameError::UnknownKind(truncate(s))),
        })
    }
}

/// The BLAKE3 hash of an object's stored bytes: its identity, checkable without any key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(pub [u8; 32]);

impl ObjectId {
    /// Hashes stored bytes.
    pub fn of(bytes: &[u8]) -> ObjectId {
        ObjectId(*blake3::hash(bytes).as_bytes())
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses exactly 64 lowercase hex digits.
    pub fn from_hex(s: &str) -> Result<ObjectId, NameError> {
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(NameError::BadHash(truncate(s)));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| NameError::BadHash(truncate(s)))?;
        Ok(ObjectId(out))
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A validated object name: a kind plus the hash of the stored bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectName {
    pub kind: ObjectKind,
    pub id: ObjectId,
}

impl ObjectName {
    /// The name under which `bytes` must be stored as an object of `kind`.
    pub fn for_bytes(kind: ObjectKind, bytes: &[u8]) -> ObjectName {
        ObjectName { kind, id: ObjectId::of(bytes) }
    }

    /// Checks that `bytes` hash to this name; the store refuses anything else.
    pub fn verify(&self, bytes: &[u8]) -> Result<(), NameError> {
        let actual = ObjectId::of(bytes);
        if actual == self.id { Ok(()) } else { Err(NameError::HashMismatch { name: *self, actual }) }
    }
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.id)
    }
}

impl FromStr for ObjectName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong(s.len()));
        }
        let (kind, hash) = s.split_once('/').ok_or_else(|| NameError::Malformed(truncate(s)))?;
        Ok(ObjectName { kind: kind.parse()?, id: ObjectId::from_hex(hash)? })
    }
}

impl serde::Serialize for ObjectName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ObjectName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Longest accepted name: `catalog/` plus 64 hex digits, with room to spare.
pub const MAX_NAME_LEN: usize = 80;

/// Why a name or an object's bytes were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("unknown object kind {0:?}: expected one of config, keys, pack, index, catalog, wal")]
    UnknownKind(String),
    #[error("bad object hash {0:?}: expected 64 lowercase hex digits (the BLAKE3 hash of the bytes)")]
    BadHash(String),
    #[error("malformed object name {0:?}: expected <kind>/<64 hex digits>")]
    Malformed(String),
    #[error("object name is {0} bytes long: at most {MAX_NAME_LEN} are allowed")]
    TooLong(usize),
    #[error("bytes do not match the name {name}: they hash to {actual}; nothing was stored")]
    HashMismatch { name: ObjectName, actual: ObjectId },
}

/// Echoes at most 80 characters of untrusted input back in errors, escaped by `{:?}`.
fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let n = ObjectName::for_bytes(ObjectKind::Pack, b"hello");
        let s = n.to_string();
        assert!(s.starts_with("pack/"));
        assert_eq!(s.parse::<ObjectName>().unwrap(), n);
        n.verify(b"hello").unwrap();
        assert!(matches!(n.verify(b"hellO"), Err(NameError::HashMismatch { .. })));
    }

    #[test]
    fn hostile_names_are_refused() {
        let good = "a".repeat(64);
        for bad in [
            "".to_string(),
            "pack".to_string(),
            format!("pack/../{good}"),
            format!("pack/{}", "../".repeat(30)),
            format!("../pack/{good}"),
            format!("pack/{good}/x"),
            format!("pack/{}\0", &good[..63]),
            format!("pack/{}", "A".repeat(64)),
            format!("pack/{}", "a".repeat(65)),
            format!("pack/{}", "a".repeat(500)),
            format!("tmp/{good}"),
            format!("Pack/{good}"),
            format!("pack//{good}"),
        ] {
            assert!(bad.parse::<ObjectName>().is_err(), "accepted {bad:?}");
        }
        assert!(format!("pack/{good}").parse::<ObjectName>().is_ok());
    }
}
