//! The index: which pack holds each blob. In memory a hash map; on disk sealed index files.
//!
//! Index file (`index/<hash>`, sealed JSON): `{"packs":[{"pack":hex,"blobs":[BlobEntry…]}]}`.
//! An index file is written only after every pack it names is durable, and it can always be
//! rebuilt from the pack headers (see [`rebuild`]). All index files are loaded at open.

use std::collections::{HashMap, HashSet};

use crate::backend::ObjectStore;
use crate::error::RepoError;
use crate::keys::{ChunkId, MasterKeys};
use crate::name::{ObjectId, ObjectKind, ObjectName};
use crate::pack::{self, BlobEntry, BlobType};

/// Where a blob lives (compact: about 50 bytes per blob in memory, with the map's overhead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Position of the pack in [`Index::pack_ids`].
    pub pack: u32,
    /// Offset of the envelope in the pack.
    pub offset: u32,
    /// Length of the envelope.
    pub length: u32,
    /// Length of the plaintext.
    pub raw_length: u32,
    /// Data or tree.
    pub blob_type: BlobType,
}

/// The in-memory index of every blob in every loaded index file.
#[derive(Debug, Default)]
pub struct Index {
    packs: Vec<ObjectId>,
    pack_pos: HashMap<ObjectId, u32>,
    blobs: HashMap<ChunkId, Location>,
    files: HashSet<ObjectId>,
}

impl Index {
    /// Number of blobs.
    pub fn len(&self) -> usize {
        self.blobs.len()
    }

    /// No blobs.
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Whether a blob is indexed.
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.blobs.contains_key(id)
    }

    /// A blob's location.
    pub fn get(&self, id: &ChunkId) -> Option<Location> {
        self.blobs.get(id).copied()
    }

    /// The pack object for a location's pack number.
    pub fn pack_name(&self, pack: u32) -> ObjectName {
        ObjectName { kind: ObjectKind::Pack, id: self.packs[pack as usize] }
    }

    /// Every pack id known to the index.
    pub fn pack_ids(&self) -> &[ObjectId] {
        &self.packs
    }

    /// Whether an index file has been loaded already.
    pub fn has_file(&self, id: &ObjectId) -> bool {
        self.files.contains(id)
    }

    /// Records that an index file was loaded.
    pub fn mark_file(&mut self, id: ObjectId) {
        self.files.insert(id);
    }

    /// The pack number of `pack`, adding it if new.
    fn intern(&mut self, pack: ObjectId) -> u32 {
        if let Some(p) = self.pack_pos.get(&pack) {
            return *p;
        }
        let p = self.packs.len() as u32;
        self.packs.push(pack);
        self.pack_pos.insert(pack, p);
        p
    }

    /// Adds a pack's blobs. The first location seen for a blob wins.
    pub fn add_pack(&mut self, pack: ObjectId, blobs: &[BlobEntry]) -> Result<(), IndexError> {
        let p = self.intern(pack);
        for b in blobs {
            let small = |v: u64, what: &'static str| {
                u32::try_from(v).map_err(|_| IndexError::TooLarge { blob: b.id.to_string(), what, value: v })
            };
            let loc = Location {
                pack: p,
                offset: small(b.offset, "offset")?,
                length: small(b.length, "length")?,
                raw_length: small(b.raw_length, "raw length")?,
                blob_type: b.blob_type,
            };
            self.blobs.entry(b.id).or_insert(loc);
        }
        Ok(())
    }

    /// Adds every pack of an index file.
    pub fn add_file(&mut self, file: &IndexFile) -> Result<(), IndexError> {
        for p in &file.packs {
            self.add_pack(p.pack_id()?, &p.blobs)?;
        }
        Ok(())
    }
}

/// One pack's entry in an index file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexPack {
    /// The pack's hash (64 hex; the object is `pack/<hash>`).
    pub pack: String,
    /// Its blobs, as in the pack header.
    pub blobs: Vec<BlobEntry>,
}

impl IndexPack {
    /// The pack id.
    pub fn pack_id(&self) -> Result<ObjectId, IndexError> {
        Ok(ObjectId::from_hex(&self.pack)?)
    }
}

/// Why an index file's entry cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// An offset or length past what a pack can hold.
    #[error("blob {blob} {what} {value} is too large")]
    TooLarge { blob: String, what: &'static str, value: u64 },
    /// The pack is not named by 64 hex digits.
    #[error(transparent)]
    BadPackId(#[from] crate::name::NameError),
}

/// The JSON of one index file.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexFile {
    /// Packs listed.
    pub packs: Vec<IndexPack>,
}

/// Most blobs one index file lists; larger sets are split over several files.
pub const MAX_BLOBS_PER_FILE: usize = 65_536;

impl IndexFile {
    /// Seals to object bytes and name.
    pub fn seal(&self, keys: &MasterKeys, level: i32) -> Result<(ObjectName, Vec<u8>), RepoError> {
        let json = serde_json::to_vec(self).map_err(|e| RepoError::malformed("index file", e))?;
        let sealed = keys.seal_checked(&json, level)?;
        Ok((ObjectName::for_bytes(ObjectKind::Index, &sealed), sealed))
    }

    /// Opens object bytes.
    pub fn open(keys: &MasterKeys, name: &ObjectName, bytes: &[u8]) -> Result<IndexFile, RepoError> {
        let what = format!("index file {name}");
        let plain = keys.open_named(bytes, &what)?;
        serde_json::from_slice(&plain).map_err(|e| RepoError::malformed(what, e))
    }

    /// Splits packs into files of at most [`MAX_BLOBS_PER_FILE`] blobs (a pack is never split).
    pub fn split(packs: Vec<IndexPack>) -> Vec<IndexFile> {
        let mut out = Vec::new();
        let mut cur = IndexFile::default();
        let mut n = 0;
        for p in packs {
            if n > 0 && n + p.blobs.len() > MAX_BLOBS_PER_FILE {
                out.push(std::mem::take(&mut cur));
                n = 0;
            }
            n += p.blobs.len();
            cur.packs.push(p);
        }
        if !cur.packs.is_empty() {
            out.push(cur);
        }
        out
    }
}

/// Loads every index file not yet in `index`. Unreadable index files are skipped with a warning
/// (their packs can be re-indexed with [`rebuild`]); they are returned so callers can report them.
pub async fn load_new(
    store: &dyn ObjectStore,
    keys: &MasterKeys,
    index: &std::sync::RwLock<Index>,
) -> Result<Vec<(ObjectName, String)>, RepoError> {
    let listed = store.list(ObjectKind::Index).await?;
    let mut bad = Vec::new();
    for meta in listed {
        if index.read().unwrap_or_else(|p| p.into_inner()).has_file(&meta.name.id) {
            continue;
        }
        let parsed = match store.get(&meta.name).await {
            Ok(bytes) => IndexFile::open(keys, &meta.name, &bytes).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let mut idx = index.write().unwrap_or_else(|p| p.into_inner());
        match parsed.and_then(|f| idx.add_file(&f).map_err(|e| e.to_string())) {
            Ok(()) => idx.mark_file(meta.name.id),
            Err(why) => {
                tracing::warn!(index = %meta.name, %why, "skipping unreadable index file");
                bad.push((meta.name, why));
            }
        }
    }
    Ok(bad)
}

/// Reads the header of every pack in the store: the index they imply, for rebuilding or comparing.
/// Packs whose headers cannot be read are returned separately.
pub async fn rebuild(
    store: &dyn ObjectStore,
    keys: &MasterKeys,
) -> Result<(Vec<IndexPack>, Vec<(ObjectName, String)>), RepoError> {
    let mut packs = Vec::new();
    let mut bad = Vec::new();
    for meta in store.list(ObjectKind::Pack).await? {
        match pack::read_header(store, keys, &meta.name).await {
            Ok(blobs) => packs.push(IndexPack { pack: meta.name.id.to_hex(), blobs }),
            Err(e) => bad.push((meta.name, e.to_string())),
        }
    }
    Ok((packs, bad))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u8) -> BlobEntry {
        BlobEntry {
            id: ChunkId([i; 32]),
            blob_type: BlobType::Data,
            offset: i as u64 * 10,
            length: 10,
            raw_length: 20,
        }
    }

    #[test]
    fn index_file_round_trip_and_lookup() {
        let keys = MasterKeys::from_bytes([1; 32], [2; 32]);
        let p1 = ObjectId([9; 32]);
        let file =
            IndexFile { packs: vec![IndexPack { pack: p1.to_hex(), blobs: vec![entry(1), entry(2)] }] };
        let (name, bytes) = file.seal(&keys, 3).unwrap();
        name.verify(&bytes).unwrap();
        let back = IndexFile::open(&keys, &name, &bytes).unwrap();
        assert_eq!(back, file);
        let mut idx = Index::default();
        idx.add_file(&back).unwrap();
        let loc = idx.get(&ChunkId([2; 32])).unwrap();
        assert_eq!(idx.pack_name(loc.pack), ObjectName { kind: ObjectKind::Pack, id: p1 });
        assert_eq!((loc.offset, loc.length, loc.raw_length), (20, 10, 20));
        assert!(!idx.contains(&ChunkId([3; 32])));
        let mut wrong = bytes.clone();
        wrong[30] ^= 1;
        assert!(IndexFile::open(&keys, &name, &wrong).is_err());
    }

    #[test]
    fn split_respects_limit() {
        let big = |n: usize| IndexPack { pack: ObjectId([1; 32]).to_hex(), blobs: vec![entry(0); n] };
        let files = IndexFile::split(vec![big(40_000), big(40_000), big(10_000)]);
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].packs.len(), 1);
        assert_eq!(files[1].packs.len(), 2);
        assert!(IndexFile::split(vec![]).is_empty());
    }
}
