//! Chunking policy by path, and chunkers that stream from any `Read` in bounded memory.
//!
//! - PostgreSQL relation files (`base/`, `global/`, `pg_tblspc/`; names like `16384`,
//!   `16384.1`, `16384_fsm`, `16384_vm`, `16384_init`): fixed chunks of 8 KiB pages ×
//!   `pages_per_chunk`. Pages change in place, so a changed page changes exactly one chunk;
//!   content-defined chunking would re-store a whole ~1 MiB chunk around every changed page.
//! - WAL (`pg_wal/`): fixed 1 MiB chunks. Segments are written once and never edited.
//! - Everything else: FastCDC (2020), min 256 KiB, average 1 MiB, max 4 MiB.
//!
//! Every chunker holds at most one chunk (plus FastCDC's max-size read buffer) in memory.

use std::io::{self, Read};

/// PostgreSQL's page size.
pub const PAGE_SIZE: usize = 8192;

/// Chunker parameters, stored in the repository config.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkerConfig {
    /// Pages per chunk for relation files (default 16).
    pub pages_per_chunk: u32,
    /// Chunk size for WAL files (default 1 MiB).
    pub wal_chunk: u32,
    /// FastCDC minimum chunk size (default 256 KiB).
    pub cdc_min: u32,
    /// FastCDC average chunk size (default 1 MiB).
    pub cdc_avg: u32,
    /// FastCDC maximum chunk size (default 4 MiB).
    pub cdc_max: u32,
}

impl Default for ChunkerConfig {
    fn default() -> Self {
        ChunkerConfig {
            // 16 pages (128 KiB), measured (docs/vault-format.md §chunking) on a 2.3 GB pgbench
            // data directory against restic: 1 page stored 1.83× restic's bytes (per-chunk
            // metadata, per-page compression), 4 pages 1.16×, 16 pages 0.99× and ran fastest;
            // after 1 % of pages changed, 16 pages still stored 3× less new data than restic.
            pages_per_chunk: 16,
            wal_chunk: 1 << 20,
            cdc_min: 256 << 10,
            cdc_avg: 1 << 20,
            cdc_max: 4 << 20,
        }
    }
}

/// Chunker parameters that would make chunking fail or memory explode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chunker parameters out of range: {0}")]
pub struct ChunkerOutOfRange(pub String);

impl ChunkerConfig {
    /// Rejects parameters that would make chunking fail or memory explode.
    pub fn validate(&self) -> Result<(), ChunkerOutOfRange> {
        let ok = (1..=512).contains(&self.pages_per_chunk)
            && (4096..=(16 << 20)).contains(&self.wal_chunk)
            && fastcdc::v2020::MINIMUM_MIN <= self.cdc_min
            && self.cdc_min <= self.cdc_avg
            && self.cdc_avg <= self.cdc_max
            && self.cdc_max <= fastcdc::v2020::MAXIMUM_MAX.min(16 << 20)
            && fastcdc::v2020::AVERAGE_MIN <= self.cdc_avg
            && self.cdc_avg <= fastcdc::v2020::AVERAGE_MAX;
        if ok { Ok(()) } else { Err(ChunkerOutOfRange(format!("{self:?}"))) }
    }

    /// The policy for a file at `rel_path` (relative to the data directory, `/`-separated).
    pub fn policy_for(&self, rel_path: &str) -> Policy {
        if is_relation_file(rel_path) {
            Policy::Fixed { size: PAGE_SIZE * self.pages_per_chunk as usize }
        } else if rel_path.starts_with("pg_wal/") {
            Policy::Fixed { size: self.wal_chunk as usize }
        } else {
            Policy::Cdc { min: self.cdc_min, avg: self.cdc_avg, max: self.cdc_max }
        }
    }
}

/// How one file is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Fixed-size chunks (the last may be shorter).
    Fixed { size: usize },
    /// Content-defined chunks.
    Cdc { min: u32, avg: u32, max: u32 },
}

/// Whether `rel_path` names a PostgreSQL relation segment file.
pub fn is_relation_file(rel_path: &str) -> bool {
    let under = ["base/", "global/", "pg_tblspc/"].iter().any(|p| rel_path.starts_with(p));
    if !under {
        return false;
    }
    let name = rel_path.rsplit('/').next().unwrap_or("");
    let (stem, seg) = match name.split_once('.') {
        Some((s, seg)) => (s, Some(seg)),
        None => (name, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let stem_ok = match stem.split_once('_') {
        Some((oid, fork)) => digits(oid) && matches!(fork, "fsm" | "vm" | "init"),
        None => digits(stem),
    };
    stem_ok && seg.is_none_or(digits)
}

/// Cuts a reader into chunks according to a policy. Yields owned chunk buffers.
pub enum Chunker<R: Read> {
    /// Fixed-size cutting.
    Fixed { reader: R, size: usize, done: bool },
    /// FastCDC streaming.
    Cdc(Box<fastcdc::v2020::StreamCDC<R>>),
}

impl<R: Read> Chunker<R> {
    /// A chunker over `reader` with `policy`.
    pub fn new(reader: R, policy: Policy) -> Chunker<R> {
        match policy {
            Policy::Fixed { size } => Chunker::Fixed { reader, size, done: false },
            Policy::Cdc { min, avg, max } => {
                Chunker::Cdc(Box::new(fastcdc::v2020::StreamCDC::new(reader, min, avg, max)))
            }
        }
    }
}

/// Reads until `buf` is full or end of input; returns bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<io::Result<Vec<u8>>> {
        match self {
            Chunker::Fixed { reader, size, done } => {
                if *done {
                    return None;
                }
                let mut buf = vec![0u8; *size];
                match read_full(reader, &mut buf) {
                    Ok(0) => {
                        *done = true;
                        None
                    }
                    Ok(n) => {
                        if n < *size {
                            *done = true;
                            buf.truncate(n);
                        }
                        Some(Ok(buf))
                    }
                    Err(e) => {
                        *done = true;
                        Some(Err(e))
                    }
                }
            }
            Chunker::Cdc(cdc) => match cdc.next()? {
                Ok(c) => Some(Ok(c.data)),
                Err(fastcdc::v2020::Error::IoError(e)) => Some(Err(e)),
                Err(e) => Some(Err(io::Error::other(e.to_string()))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_files_are_recognised() {
        for yes in [
            "base/1/16384",
            "base/16384/16385.1",
            "global/1262",
            "base/5/2619_fsm",
            "base/5/2619_vm",
            "base/5/16384_init",
            "pg_tblspc/16390/PG_15_202209061/5/16391",
            "base/5/2619_fsm.2",
        ] {
            assert!(is_relation_file(yes), "{yes}");
        }
        for no in [
            "base/1/PG_VERSION",
            "base/1/pg_filenode.map",
            "global/pg_control",
            "pg_wal/000000010000000000000001",
            "postgresql.conf",
            "base/1/16384_xx",
            "base/1/16384.",
            "base/1/16384.a",
            "16384",
            "base/1/",
        ] {
            assert!(!is_relation_file(no), "{no}");
        }
        let c = ChunkerConfig::default();
        assert_eq!(c.policy_for("base/1/16384"), Policy::Fixed { size: 16 * 8192 });
        assert_eq!(c.policy_for("pg_wal/000000010000000000000001"), Policy::Fixed { size: 1 << 20 });
        assert!(matches!(c.policy_for("postgresql.conf"), Policy::Cdc { .. }));
        c.validate().unwrap();
        assert!(ChunkerConfig { pages_per_chunk: 0, ..c.clone() }.validate().is_err());
    }

    /// A reader that returns data in small, odd-sized pieces, like a pipe.
    struct Trickle<'a>(&'a [u8]);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.0.len()).min(1000);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn fixed_chunks_cover_input() {
        let data: Vec<u8> = (0..(8192 * 3 + 100)).map(|i| (i % 251) as u8).collect();
        let chunks: Vec<Vec<u8>> =
            Chunker::new(Trickle(&data), Policy::Fixed { size: 8192 }).map(|c| c.unwrap()).collect();
        assert_eq!(chunks.iter().map(|c| c.len()).collect::<Vec<_>>(), vec![8192, 8192, 8192, 100]);
        assert_eq!(chunks.concat(), data);
        assert_eq!(Chunker::new(&b""[..], Policy::Fixed { size: 8192 }).count(), 0);
    }

    #[test]
    fn cdc_is_content_defined_and_bounded() {
        let mut data = vec![0u8; 6 << 20];
        let mut x: u64 = 1;
        for b in data.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let c = ChunkerConfig::default();
        let p = c.policy_for("pg_xact/0000-notes");
        let a: Vec<Vec<u8>> = Chunker::new(Trickle(&data), p).map(|c| c.unwrap()).collect();
        assert_eq!(a.concat(), data);
        assert!(a.iter().all(|c| c.len() <= 4 << 20));
        // Inserting bytes near the start leaves later chunks unchanged.
        let mut shifted = b"inserted".to_vec();
        shifted.extend_from_slice(&data);
        let b: Vec<Vec<u8>> = Chunker::new(&shifted[..], p).map(|c| c.unwrap()).collect();
        assert_eq!(a.last(), b.last());
    }
}
