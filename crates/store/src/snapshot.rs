//! Backups: the "backup" catalog record and the manifest (the list of files) it points to.
//!
//! The manifest is JSON Lines — one [`FileEntry`] per line — stored as a sequence of "tree"
//! blobs of at most 1 MiB each, cut at arbitrary byte positions. Readers concatenate the tree
//! blobs in the order the record lists them. Writers and readers stream it, so no manifest is
//! ever held whole in memory.

use crate::error::RepoError;
use crate::keys::ChunkId;
use crate::timestamp::Timestamp;

/// Size of one tree blob.
pub const TREE_BLOB_SIZE: usize = 1 << 20;

/// Body of a catalog record of kind "backup".
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackupRecord {
    /// Random 32-hex-digit id.
    pub id: String,
    /// Free text from the operator or collector.
    pub label: String,
    /// The protected cluster, if known.
    pub cluster: Option<String>,
    /// When the backup started (vault clock).
    pub started: Timestamp,
    /// When the record was written (vault clock).
    pub finished: Timestamp,
    /// Every pack this backup uses is retained at least until this instant.
    pub retain_until: Timestamp,
    /// The manifest's tree blobs, in order.
    pub tree: Vec<ChunkId>,
    /// Entries in the manifest.
    pub files: u64,
    /// Bytes of file content.
    pub bytes: u64,
    /// Bytes of new objects this backup stored (packs and index files).
    pub stored_bytes: u64,
}

/// What a manifest entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A regular file.
    #[default]
    File,
    /// A directory (restored even when empty: PostgreSQL needs its empty directories).
    Dir,
    /// A symbolic link (`pg_tblspc/` entries).
    Symlink,
}

/// One manifest line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative `/`-separated UTF-8 path.
    pub path: String,
    /// File, directory or symlink.
    #[serde(default)]
    pub kind: EntryKind,
    /// Content length in bytes.
    pub size: u64,
    /// Unix permission bits.
    pub mode: u32,
    /// Modification time, Unix seconds.
    pub mtime: i64,
    /// Symlink target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Content chunks in order.
    #[serde(default)]
    pub chunks: Vec<ChunkId>,
}

/// Checks that a path is relative, UTF-8, and has no empty, `.`, `..` or NUL components.
pub fn check_rel_path(path: &str) -> Result<(), RepoError> {
    let ok = !path.is_empty()
        && !path.starts_with('/')
        && path.len() <= 4096
        && path.split('/').all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'));
    if ok { Ok(()) } else { Err(RepoError::BadPath(path.chars().take(200).collect())) }
}

/// Splits the concatenated manifest stream into lines, holding only an unfinished line.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    /// Feeds bytes, returning the entries completed by them.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<FileEntry>, RepoError> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
            self.partial.extend_from_slice(&rest[..nl]);
            rest = &rest[nl + 1..];
            let line = std::mem::take(&mut self.partial);
            let entry: FileEntry =
                serde_json::from_slice(&line).map_err(|e| RepoError::malformed("backup manifest", e))?;
            check_rel_path(&entry.path)?;
            out.push(entry);
        }
        self.partial.extend_from_slice(rest);
        Ok(out)
    }

    /// Ends the stream: an unfinished line is an error.
    pub fn finish(&self) -> Result<(), RepoError> {
        if self.partial.is_empty() {
            Ok(())
        } else {
            Err(RepoError::malformed("backup manifest", "truncated last line"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        for ok in ["a", "base/1/16384", "pg_wal/x.partial"] {
            check_rel_path(ok).unwrap();
        }
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a//b", "a/./b", "a/\0", "a/"] {
            assert!(check_rel_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn splitter_handles_any_cut() {
        let e = |p: &str| FileEntry {
            path: p.into(),
            kind: EntryKind::File,
            size: 1,
            mode: 0o600,
            mtime: 5,
            target: None,
            chunks: vec![ChunkId([3; 32])],
        };
        let mut stream = Vec::new();
        for p in ["a", "b/c", "d"] {
            serde_json::to_writer(&mut stream, &e(p)).unwrap();
            stream.push(b'\n');
        }
        for cut in [1, 7, 50, stream.len() - 1] {
            let mut s = LineSplitter::default();
            let mut got = s.feed(&stream[..cut]).unwrap();
            got.extend(s.feed(&stream[cut..]).unwrap());
            s.finish().unwrap();
            assert_eq!(got, vec![e("a"), e("b/c"), e("d")]);
        }
        let mut s = LineSplitter::default();
        s.feed(&stream[..5]).unwrap();
        assert!(s.finish().is_err());
        let mut s = LineSplitter::default();
        assert!(s.feed(b"{\"path\":\"../x\",\"size\":0,\"mode\":0,\"mtime\":0}\n").is_err());
    }
}
