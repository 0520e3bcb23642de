//! Packs: many sealed blobs in one object, followed by a sealed header that lists them.
//!
//! ```text
//! blob 0 | blob 1 | … | sealed header JSON | u32 LE length of the sealed header | b"HFPK0001"
//! header JSON: {"blobs":[{"id":hex,"type":"data"|"tree","offset":u64,"length":u64,"raw_length":u64}]}
//! ```
//!
//! `offset`/`length` locate the blob's envelope inside the pack; `raw_length` is its plaintext
//! size. Packs are assembled in memory up to the target size and written only when complete,
//! so a pack object is never partial.

use bytes::Bytes;

use crate::backend::ObjectStore;
use crate::error::RepoError;
use crate::keys::{ChunkId, MasterKeys};
use crate::name::{ObjectKind, ObjectName};

/// The magic at the very end of every pack.
pub const MAGIC: &[u8; 8] = b"HFPK0001";
/// Length of the trailer: header length (u32 LE) plus magic.
pub const TRAILER_LEN: usize = 12;
/// Default target pack size.
pub const DEFAULT_PACK_SIZE: usize = 16 << 20;

/// What a blob holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobType {
    /// File content.
    Data,
    /// Part of a backup manifest.
    Tree,
}

/// One blob's entry in a pack header or index file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobEntry {
    /// The chunk id (keyed BLAKE3 of the plaintext).
    pub id: ChunkId,
    /// Data or tree.
    #[serde(rename = "type")]
    pub blob_type: BlobType,
    /// Where the blob's envelope starts in the pack.
    pub offset: u64,
    /// Length of the envelope.
    pub length: u64,
    /// Length of the plaintext.
    pub raw_length: u64,
}

/// The header JSON of a pack.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackHeader {
    /// The blobs, in offset order.
    pub blobs: Vec<BlobEntry>,
}

/// A complete pack ready to store.
#[derive(Debug, Clone)]
pub struct FinishedPack {
    /// `pack/<hash of bytes>`.
    pub name: ObjectName,
    /// The pack bytes.
    pub bytes: Bytes,
    /// Its blobs.
    pub blobs: Vec<BlobEntry>,
}

/// Accumulates sealed blobs into one pack.
#[derive(Debug)]
pub struct Packer {
    buf: Vec<u8>,
    blobs: Vec<BlobEntry>,
    target: usize,
}

impl Packer {
    /// An empty packer that reports full at `target` bytes.
    pub fn new(target: usize) -> Packer {
        Packer { buf: Vec::with_capacity(target + (1 << 20)), blobs: Vec::new(), target }
    }

    /// Appends a sealed blob.
    pub fn add(&mut self, id: ChunkId, blob_type: BlobType, sealed: &[u8], raw_length: u64) {
        self.blobs.push(BlobEntry {
            id,
            blob_type,
            offset: self.buf.len() as u64,
            length: sealed.len() as u64,
            raw_length,
        });
        self.buf.extend_from_slice(sealed);
    }

    /// Bytes of blobs so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// No blob yet.
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Reached the target size.
    pub fn is_full(&self) -> bool {
        self.buf.len() >= self.target
    }

    /// Seals the header, appends the trailer, names the pack, and leaves this packer empty.
    pub fn finish(&mut self, keys: &MasterKeys, level: i32) -> Result<FinishedPack, RepoError> {
        let blobs = std::mem::take(&mut self.blobs);
        let header =
            serde_json::to_vec(&PackHeader { blobs }).map_err(|e| RepoError::malformed("pack header", e))?;
        let sealed = keys.seal_checked(&header, level)?;
        let mut buf = std::mem::replace(&mut self.buf, Vec::with_capacity(self.target + (1 << 20)));
        buf.extend_from_slice(&sealed);
        buf.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        buf.extend_from_slice(MAGIC);
        let name = ObjectName::for_bytes(ObjectKind::Pack, &buf);
        let PackHeader { blobs } =
            serde_json::from_slice(&header).map_err(|e| RepoError::malformed("pack header", e))?;
        Ok(FinishedPack { name, bytes: Bytes::from(buf), blobs })
    }
}

/// Parses the 12-byte trailer of a pack of `pack_len` bytes: the sealed header's length.
pub fn header_length(name: &ObjectName, trailer: &[u8], pack_len: u64) -> Result<u64, RepoError> {
    if trailer.len() != TRAILER_LEN || &trailer[4..] != MAGIC {
        return Err(RepoError::malformed(format!("pack {name}"), "no HFPK0001 trailer"));
    }
    let n = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]) as u64;
    if n + TRAILER_LEN as u64 > pack_len {
        return Err(RepoError::malformed(
            format!("pack {name}"),
            format!("header length {n} exceeds the pack"),
        ));
    }
    Ok(n)
}

/// Opens a sealed header and checks that every entry lies inside the blob area.
pub fn parse_header(
    keys: &MasterKeys,
    name: &ObjectName,
    sealed: &[u8],
    blob_area: u64,
) -> Result<Vec<BlobEntry>, RepoError> {
    let what = format!("header of pack {name}");
    let plain = keys.open_named(sealed, &what)?;
    let header: PackHeader = serde_json::from_slice(&plain).map_err(|e| RepoError::malformed(&what, e))?;
    for b in &header.blobs {
        if b.offset.checked_add(b.length).is_none_or(|end| end > blob_area) {
            return Err(RepoError::malformed(&what, format!("blob {} lies outside the pack", b.id)));
        }
    }
    Ok(header.blobs)
}

/// Reads a pack's header from whole pack bytes (used by `check`).
pub fn header_from_bytes(
    keys: &MasterKeys,
    name: &ObjectName,
    bytes: &[u8],
) -> Result<Vec<BlobEntry>, RepoError> {
    let len = bytes.len() as u64;
    if bytes.len() < TRAILER_LEN {
        return Err(RepoError::malformed(format!("pack {name}"), "shorter than its trailer"));
    }
    let n = header_length(name, &bytes[bytes.len() - TRAILER_LEN..], len)?;
    let start = (len - TRAILER_LEN as u64 - n) as usize;
    parse_header(keys, name, &bytes[start..bytes.len() - TRAILER_LEN], start as u64)
}

/// Checks that `bytes` are a well-formed pack of the repository whose keys are `keys`, before
/// anything stores them: the header opens with the repository's data key, the blobs tile the
/// blob area exactly (in order, no gap, no overlap, nothing unaccounted for), and every blob
/// opens, has its declared plaintext length and hashes to its chunk id under the repository's
/// id key. Anything else — random bytes, a pack of another repository, a header that lies —
/// would be reported as damage by `check` for as long as it is retained, so it is refused at
/// the door. Returns the blobs. CPU-bound: call it off the async runtime for large packs.
pub fn validate(keys: &MasterKeys, name: &ObjectName, bytes: &[u8]) -> Result<Vec<BlobEntry>, RepoError> {
    if name.kind != ObjectKind::Pack {
        return Err(RepoError::malformed(format!("{name}"), "not a pack object name"));
    }
    let blobs = header_from_bytes(keys, name, bytes)?;
    let what = format!("pack {name}");
    if blobs.is_empty() {
        return Err(RepoError::malformed(&what, "the header lists no blobs"));
    }
    let header_start = {
        let trailer = &bytes[bytes.len() - TRAILER_LEN..];
        bytes.len() as u64 - TRAILER_LEN as u64 - header_length(name, trailer, bytes.len() as u64)?
    };
    let mut at = 0u64;
    let mut seen = std::collections::HashSet::new();
    for b in &blobs {
        if b.offset != at {
            return Err(RepoError::malformed(
                &what,
                format!("blob {} starts at {} but the previous one ends at {at}", b.id, b.offset),
            ));
        }
        if !seen.insert(b.id) {
            return Err(RepoError::malformed(&what, format!("blob {} is listed twice", b.id)));
        }
        let env = &bytes[b.offset as usize..(b.offset + b.length) as usize];
        let plain = keys.open_named(env, format!("blob {} of {what}", b.id))?;
        if plain.len() as u64 != b.raw_length {
            return Err(RepoError::malformed(
                &what,
                format!("blob {} holds {} bytes, the header says {}", b.id, plain.len(), b.raw_length),
            ));
        }
        if keys.chunk_id(&plain) != b.id {
            return Err(RepoError::malformed(&what, format!("blob {} does not hash to its id", b.id)));
        }
        at = b.offset + b.length;
    }
    if at != header_start {
        return Err(RepoError::malformed(
            &what,
            format!("{} bytes between the last blob and the header belong to no blob", header_start - at),
        ));
    }
    Ok(blobs)
}

/// Reads a pack's header from the store with two range reads.
pub async fn read_header(
    store: &dyn ObjectStore,
    keys: &MasterKeys,
    name: &ObjectName,
) -> Result<Vec<BlobEntry>, RepoError> {
    let meta = store.head(name).await?.ok_or(crate::backend::StoreError::NotFound(*name))?;
    if meta.size < TRAILER_LEN as u64 {
        return Err(RepoError::malformed(format!("pack {name}"), "shorter than its trailer"));
    }
    let trailer = store.get_range(name, meta.size - TRAILER_LEN as u64..meta.size).await?;
    let n = header_length(name, &trailer, meta.size)?;
    let start = meta.size - TRAILER_LEN as u64 - n;
    let sealed = store.get_range(name, start..meta.size - TRAILER_LEN as u64).await?;
    parse_header(keys, name, &sealed, start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trip() {
        let keys = MasterKeys::from_bytes([1; 32], [2; 32]);
        let mut p = Packer::new(100);
        assert!(p.is_empty());
        let mut plains = Vec::new();
        for i in 0..5u8 {
            let plain = vec![i; 40];
            let sealed = keys.seal(&plain, 3).unwrap();
            p.add(keys.chunk_id(&plain), BlobType::Data, &sealed, plain.len() as u64);
            plains.push(plain);
        }
        assert!(p.is_full());
        let f = p.finish(&keys, 3).unwrap();
        assert!(p.is_empty());
        f.name.verify(&f.bytes).unwrap();
        let blobs = header_from_bytes(&keys, &f.name, &f.bytes).unwrap();
        assert_eq!(blobs, f.blobs);
        for (b, plain) in blobs.iter().zip(&plains) {
            let env = &f.bytes[b.offset as usize..(b.offset + b.length) as usize];
            assert_eq!(&keys.open(env).unwrap(), plain);
            assert_eq!(b.raw_length, 40);
        }
        // A flipped byte in the header is detected; a wrong trailer is refused.
        let mut bad = f.bytes.to_vec();
        let at = bad.len() - TRAILER_LEN - 5;
        bad[at] ^= 1;
        assert!(header_from_bytes(&keys, &f.name, &bad).is_err());
        let mut bad = f.bytes.to_vec();
        let at = bad.len() - 1;
        bad[at] = b'X';
        assert!(header_from_bytes(&keys, &f.name, &bad).is_err());
        assert!(header_from_bytes(&keys, &f.name, b"short").is_err());
        assert_eq!(validate(&keys, &f.name, &f.bytes).unwrap(), f.blobs);
    }

    #[test]
    fn validate_refuses_junk_foreign_and_lying_packs() {
        let keys = MasterKeys::from_bytes([1; 32], [2; 32]);
        let other = MasterKeys::from_bytes([3; 32], [4; 32]);
        let pack = |k: &MasterKeys, plain: &[u8], lie: Option<ChunkId>| {
            let mut p = Packer::new(1 << 20);
            let sealed = k.seal(plain, 3).unwrap();
            p.add(lie.unwrap_or_else(|| k.chunk_id(plain)), BlobType::Data, &sealed, plain.len() as u64);
            p.finish(k, 3).unwrap()
        };
        let good = pack(&keys, b"precious", None);
        validate(&keys, &good.name, &good.bytes).unwrap();
        let junk = ObjectName::for_bytes(ObjectKind::Pack, b"ransom note");
        assert!(validate(&keys, &junk, b"ransom note").is_err());
        let foreign = pack(&other, b"precious", None);
        assert!(validate(&keys, &foreign.name, &foreign.bytes).is_err(), "another repository's pack");
        let lying = pack(&keys, b"precious", Some(keys.chunk_id(b"something else")));
        let err = validate(&keys, &lying.name, &lying.bytes).unwrap_err().to_string();
        assert!(err.contains("does not hash to its id"), "{err}");
        // Bytes smuggled between the blobs and a genuine header.
        let mut p = Packer::new(1 << 20);
        let sealed = keys.seal(b"x", 3).unwrap();
        p.add(keys.chunk_id(b"x"), BlobType::Data, &sealed, 1);
        p.buf.extend_from_slice(b"smuggled");
        let f = p.finish(&keys, 3).unwrap();
        let err = validate(&keys, &f.name, &f.bytes).unwrap_err().to_string();
        assert!(err.contains("belong to no blob"), "{err}");
    }
}
