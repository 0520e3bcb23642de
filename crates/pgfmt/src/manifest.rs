//! The backup manifest (`backup_manifest`, PostgreSQL 13+): files, sizes, checksums, WAL ranges.
//!
//! The manifest checksum is SHA-256 over the manifest text up to and including the newline
//! before its last line (the last line holds the checksum itself), exactly as PostgreSQL's
//! `verify_manifest_checksum` in `src/common/parse_manifest.c` computes it.

use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::{FormatError, Lsn, TimelineId};

/// A parsed backup manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupManifest {
    /// `PostgreSQL-Backup-Manifest-Version`: 1 (PostgreSQL 13–16) or 2 (17+).
    pub version: u32,
    /// `System-Identifier` (version 2 only).
    pub system_identifier: Option<u64>,
    /// One entry per file in the backup.
    pub files: Vec<ManifestFile>,
    /// The WAL needed to make the backup consistent.
    pub wal_ranges: Vec<WalRange>,
    /// `Manifest-Checksum`: hex SHA-256 of the text before the last line.
    pub manifest_checksum: String,
}

/// One `Files` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// The path relative to the data directory (decoded from `Encoded-Path` when needed).
    pub path: Vec<u8>,
    /// The size in bytes.
    pub size: u64,
    /// `Last-Modified`, as PostgreSQL wrote it (`2026-11-22 10:00:00 GMT`).
    pub last_modified: Option<String>,
    /// The checksum algorithm, [`ChecksumAlgorithm::None`] when absent.
    pub algorithm: ChecksumAlgorithm,
    /// The raw checksum bytes (decoded from hex).
    pub checksum: Vec<u8>,
}

impl ManifestFile {
    /// The path as text, with invalid UTF-8 replaced.
    pub fn path_lossy(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }

    /// Checks a file's whole content against this entry's size and checksum.
    pub fn verify(&self, content: &[u8]) -> Result<(), FormatError> {
        let mut c = self.algorithm.hasher();
        c.update(content);
        self.verify_digest(content.len() as u64, &c.finish())
    }

    /// Checks a size and a digest computed with [`ChecksumAlgorithm::hasher`].
    pub fn verify_digest(&self, size: u64, digest: &[u8]) -> Result<(), FormatError> {
        if size != self.size {
            return Err(FormatError::FileMismatch {
                path: self.path_lossy(),
                why: format!("size is {size}, manifest says {}", self.size),
            });
        }
        if self.algorithm != ChecksumAlgorithm::None && digest != self.checksum.as_slice() {
            return Err(FormatError::FileMismatch {
                path: self.path_lossy(),
                why: format!(
                    "{} checksum is {}, manifest says {}",
                    self.algorithm.name(),
                    hex::encode(digest),
                    hex::encode(&self.checksum)
                ),
            });
        }
        Ok(())
    }
}

/// One `WAL-Ranges` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalRange {
    /// The timeline of the range.
    pub timeline: TimelineId,
    /// The first position needed.
    pub start_lsn: Lsn,
    /// The position at which the backup becomes consistent.
    pub end_lsn: Lsn,
}

/// Per-file checksum algorithms PostgreSQL offers (`MANIFEST_CHECKSUMS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChecksumAlgorithm {
    /// No per-file checksum.
    None,
    /// CRC-32C, the default; the digest is the CRC in little-endian byte order.
    Crc32c,
    /// SHA-224.
    Sha224,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl ChecksumAlgorithm {
    /// Parses the manifest's `Checksum-Algorithm` name (case-insensitive, as PostgreSQL does).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name.to_ascii_uppercase().as_str() {
            "NONE" => Self::None,
            "CRC32C" => Self::Crc32c,
            "SHA224" => Self::Sha224,
            "SHA256" => Self::Sha256,
            "SHA384" => Self::Sha384,
            "SHA512" => Self::Sha512,
            _ => return None,
        })
    }

    /// The name PostgreSQL writes.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::Crc32c => "CRC32C",
            Self::Sha224 => "SHA224",
            Self::Sha256 => "SHA256",
            Self::Sha384 => "SHA384",
            Self::Sha512 => "SHA512",
        }
    }

    /// A streaming hasher for this algorithm.
    pub fn hasher(self) -> FileHasher {
        FileHasher(match self {
            Self::None => HasherInner::None,
            Self::Crc32c => HasherInner::Crc32c(0),
            Self::Sha224 => HasherInner::Sha224(sha2::Sha224::new()),
            Self::Sha256 => HasherInner::Sha256(sha2::Sha256::new()),
            Self::Sha384 => HasherInner::Sha384(sha2::Sha384::new()),
            Self::Sha512 => HasherInner::Sha512(sha2::Sha512::new()),
        })
    }
}

/// Computes a file's manifest checksum incrementally, for files streamed out of a tar archive.
#[derive(Clone, Debug)]
pub struct FileHasher(HasherInner);

#[derive(Clone, Debug)]
enum HasherInner {
    None,
    Crc32c(u32),
    Sha224(sha2::Sha224),
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl FileHasher {
    /// Feeds more of the file.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.0 {
            HasherInner::None => {}
            HasherInner::Crc32c(c) => *c = crc32c::crc32c_append(*c, data),
            HasherInner::Sha224(h) => h.update(data),
            HasherInner::Sha256(h) => h.update(data),
            HasherInner::Sha384(h) => h.update(data),
            HasherInner::Sha512(h) => h.update(data),
        }
    }

    /// The digest, in the byte order the manifest's hex uses.
    pub fn finish(self) -> Vec<u8> {
        match self.0 {
            HasherInner::None => Vec::new(),
            // PostgreSQL copies the in-memory uint32 into the output: little-endian on every
            // platform it ships manifests from in practice (`pg_checksum_final`).
            HasherInner::Crc32c(c) => c.to_le_bytes().to_vec(),
            HasherInner::Sha224(h) => h.finalize().to_vec(),
            HasherInner::Sha256(h) => h.finalize().to_vec(),
            HasherInner::Sha384(h) => h.finalize().to_vec(),
            HasherInner::Sha512(h) => h.finalize().to_vec(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[serde(rename = "PostgreSQL-Backup-Manifest-Version")]
    version: u32,
    #[serde(rename = "System-Identifier")]
    system_identifier: Option<u64>,
    #[serde(rename = "Files")]
    files: Vec<RawFile>,
    #[serde(rename = "WAL-Ranges", default)]
    wal_ranges: Vec<RawWalRange>,
    #[serde(rename = "Manifest-Checksum")]
    manifest_checksum: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(rename = "Path")]
    path: Option<String>,
    #[serde(rename = "Encoded-Path")]
    encoded_path: Option<String>,
    #[serde(rename = "Size")]
    size: u64,
    #[serde(rename = "Last-Modified")]
    last_modified: Option<String>,
    #[serde(rename = "Checksum-Algorithm")]
    algorithm: Option<String>,
    #[serde(rename = "Checksum")]
    checksum: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWalRange {
    #[serde(rename = "Timeline")]
    timeline: u32,
    #[serde(rename = "Start-LSN")]
    start_lsn: Lsn,
    #[serde(rename = "End-LSN")]
    end_lsn: Lsn,
}

impl BackupManifest {
    /// Parses a manifest and verifies its `Manifest-Checksum`.
    ///
    /// ```
    /// let body = "{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [],\n\"WAL-Ranges\": [],\n";
    /// let sum = pgfmt::manifest::manifest_checksum(body.as_bytes());
    /// let text = format!("{body}\"Manifest-Checksum\": \"{sum}\"}}\n");
    /// let m = pgfmt::BackupManifest::parse(text.as_bytes()).unwrap();
    /// assert_eq!(m.version, 1);
    /// assert!(pgfmt::BackupManifest::parse(text.replace("[]", "[ ]").as_bytes()).is_err());
    /// ```
    pub fn parse(text: &[u8]) -> Result<Self, FormatError> {
        let m = Self::parse_unverified(text)?;
        let actual = manifest_checksum(checksummed_part(text)?);
        if !actual.eq_ignore_ascii_case(&m.manifest_checksum) {
            return Err(FormatError::Manifest(format!(
                "manifest checksum mismatch: computed {actual}, manifest says {}",
                m.manifest_checksum
            )));
        }
        Ok(m)
    }

    /// Parses a manifest without checking its `Manifest-Checksum`.
    pub fn parse_unverified(text: &[u8]) -> Result<Self, FormatError> {
        let bad = |why: String| FormatError::Manifest(why);
        let raw: RawManifest =
            serde_json::from_slice(text).map_err(|e| bad(format!("not a backup manifest: {e}")))?;
        if raw.version != 1 && raw.version != 2 {
            return Err(bad(format!("unsupported manifest version {}", raw.version)));
        }
        let mut files = Vec::with_capacity(raw.files.len());
        for f in raw.files {
            let path = match (f.path, f.encoded_path) {
                (Some(p), None) => p.into_bytes(),
                (None, Some(e)) => hex::decode(&e).map_err(|_| bad(format!("bad Encoded-Path {e:?}")))?,
                _ => return Err(bad("a file needs exactly one of Path and Encoded-Path".into())),
            };
            let algorithm = match &f.algorithm {
                None => ChecksumAlgorithm::None,
                Some(a) => ChecksumAlgorithm::from_name(a)
                    .ok_or_else(|| bad(format!("unknown checksum algorithm {a:?}")))?,
            };
            let checksum = match &f.checksum {
                None => Vec::new(),
                Some(c) => hex::decode(c).map_err(|_| bad(format!("bad checksum {c:?}")))?,
            };
            if algorithm != ChecksumAlgorithm::None && checksum.is_empty() {
                return Err(bad("a checksum algorithm without a checksum".into()));
            }
            files.push(ManifestFile {
                path,
                size: f.size,
                last_modified: f.last_modified,
                algorithm,
                checksum,
            });
        }
        let wal_ranges = raw
            .wal_ranges
            .into_iter()
            .map(|r| WalRange {
                timeline: TimelineId(r.timeline),
                start_lsn: r.start_lsn,
                end_lsn: r.end_lsn,
            })
            .collect();
        Ok(BackupManifest {
            version: raw.version,
            system_identifier: raw.system_identifier,
            files,
            wal_ranges,
            manifest_checksum: raw.manifest_checksum,
        })
    }

    /// The entry for `path`, if the manifest lists it.
    pub fn file(&self, path: &[u8]) -> Option<&ManifestFile> {
        self.files.iter().find(|f| f.path == path)
    }
}

/// What [`edit_files`] does with one file entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileEdit {
    /// Left as the server wrote it.
    Keep,
    /// Left out of the manifest (the file is not in the backup).
    Drop,
    /// The file was stored with other content: this size and checksum (same algorithm).
    Replace {
        /// The new size in bytes.
        size: u64,
        /// The new raw checksum bytes.
        checksum: Vec<u8>,
    },
}

/// A manifest as PostgreSQL writes it (one `Files` entry per line), with entries left out or
/// their size and checksum replaced as `edit` says, and its `Manifest-Checksum` computed
/// again. The input's own checksum is verified first; every other line is kept byte for byte,
/// so the result is what PostgreSQL would have written for the edited backup.
pub fn edit_files(
    text: &[u8],
    mut edit: impl FnMut(&ManifestFile) -> FileEdit,
) -> Result<Vec<u8>, FormatError> {
    let bad = |why: String| FormatError::Manifest(why);
    BackupManifest::parse(text)?;
    let text = std::str::from_utf8(text).map_err(|_| bad("the manifest is not UTF-8".into()))?;
    let body = std::str::from_utf8(checksummed_part(text.as_bytes())?).expect("a prefix at a newline");
    let mut out = String::with_capacity(text.len());
    let mut entries: Vec<String> = Vec::new();
    let mut in_files = false;
    for line in body.split_inclusive('\n') {
        let content = line.trim_end_matches('\n');
        let entry = content.trim_end_matches(',');
        if in_files && (entry.starts_with("{ \"Path\":") || entry.starts_with("{ \"Encoded-Path\":")) {
            let one = format!(
                "{{ \"PostgreSQL-Backup-Manifest-Version\": 1, \"Files\": [{entry}], \"Manifest-Checksum\": \"\"}}"
            );
            let parsed = BackupManifest::parse_unverified(one.as_bytes())?;
            let file = parsed.files.into_iter().next().ok_or_else(|| bad(format!("no file in {entry:?}")))?;
            match edit(&file) {
                FileEdit::Keep => entries.push(entry.to_string()),
                FileEdit::Drop => {}
                FileEdit::Replace { size, checksum } => {
                    let mut e =
                        entry.replacen(&format!("\"Size\": {}", file.size), &format!("\"Size\": {size}"), 1);
                    if !file.checksum.is_empty() {
                        e = e.replacen(
                            &format!("\"Checksum\": \"{}\"", hex::encode(&file.checksum)),
                            &format!("\"Checksum\": \"{}\"", hex::encode(&checksum)),
                            1,
                        );
                    }
                    entries.push(e);
                }
            }
            continue;
        }
        if in_files {
            // The first line after the entries (`],`): they go before it, one per line.
            out += &entries.join(",\n");
            if !entries.is_empty() {
                out.push('\n');
            }
            in_files = false;
        }
        out += line;
        if content.starts_with("\"Files\": [") {
            if content != "\"Files\": [" {
                return Err(bad(format!("unexpected Files line {content:?}")));
            }
            in_files = true;
        }
    }
    if in_files {
        return Err(bad("the Files list does not end".into()));
    }
    let sum = manifest_checksum(out.as_bytes());
    out += &format!("\"Manifest-Checksum\": \"{sum}\"}}\n");
    Ok(out.into_bytes())
}

/// The part of a manifest its checksum covers: everything up to and including the second-last
/// newline. The text must end with a newline and have at least two lines.
pub fn checksummed_part(text: &[u8]) -> Result<&[u8], FormatError> {
    let bad = |why: &str| FormatError::Manifest(why.to_owned());
    if text.last() != Some(&b'\n') {
        return Err(bad("last line not newline-terminated"));
    }
    let body = &text[..text.len() - 1];
    let cut = body.iter().rposition(|&b| b == b'\n').ok_or_else(|| bad("expected at least 2 lines"))?;
    Ok(&text[..=cut])
}

/// Lowercase hex SHA-256 of `bytes`, the form `Manifest-Checksum` takes.
pub fn manifest_checksum(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(files: &str) -> String {
        let body = format!(
            "{{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [\n{files}],\n\"WAL-Ranges\": [\n{{ \"Timeline\": 1, \"Start-LSN\": \"0/2000028\", \"End-LSN\": \"0/2000100\" }}\n],\n"
        );
        let sum = manifest_checksum(body.as_bytes());
        format!("{body}\"Manifest-Checksum\": \"{sum}\"}}\n")
    }

    #[test]
    fn parses_and_verifies() {
        let crc = hex::encode(crc32c::crc32c(b"hello").to_le_bytes());
        let text = manifest(&format!(
            "{{ \"Path\": \"base/1/1259\", \"Size\": 5, \"Last-Modified\": \"2026-11-22 10:00:00 GMT\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"{crc}\" }},\n\
             {{ \"Encoded-Path\": \"6162ff\", \"Size\": 0, \"Last-Modified\": \"2026-11-22 10:00:00 GMT\" }}\n"
        ));
        let m = BackupManifest::parse(text.as_bytes()).unwrap();
        assert_eq!(m.files.len(), 2);
        assert_eq!(m.files[1].path, b"ab\xff");
        assert_eq!(m.wal_ranges[0].start_lsn, Lsn(0x200_0028));
        let f = m.file(b"base/1/1259").unwrap();
        f.verify(b"hello").unwrap();
        assert!(f.verify(b"hellO").is_err());
        assert!(f.verify(b"hello!").is_err());
        m.files[1].verify(b"").unwrap();
    }

    #[test]
    fn edited_files_leave_a_manifest_postgresql_accepts() {
        let crc = |b: &[u8]| hex::encode(crc32c::crc32c(b).to_le_bytes());
        let line = |p: &str, c: &[u8]| {
            format!(
                "{{ \"Path\": \"{p}\", \"Size\": {}, \"Last-Modified\": \"2026-11-22 10:00:00 GMT\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"{}\" }}",
                c.len(),
                crc(c)
            )
        };
        let text = manifest(&format!(
            "{},\n{},\n{},\n{}\n",
            line("backup_label", b"label"),
            line("pg_hba.conf", b"local all all trust\nhost all all 0/0 md5\n"),
            line("holdfast_x", b"x"),
            line("global/pg_control", b"ctl")
        ));
        let edited = edit_files(text.as_bytes(), |f| match f.path.as_slice() {
            b"holdfast_x" | b"global/pg_control" => FileEdit::Drop,
            b"pg_hba.conf" => FileEdit::Replace {
                size: b"host all all 0/0 md5\n".len() as u64,
                checksum: crc32c::crc32c(b"host all all 0/0 md5\n").to_le_bytes().to_vec(),
            },
            _ => FileEdit::Keep,
        })
        .unwrap();
        let m = BackupManifest::parse(&edited).unwrap();
        let paths: Vec<_> = m.files.iter().map(|f| f.path_lossy()).collect();
        assert_eq!(paths, ["backup_label", "pg_hba.conf"]);
        m.file(b"pg_hba.conf").unwrap().verify(b"host all all 0/0 md5\n").unwrap();
        m.file(b"backup_label").unwrap().verify(b"label").unwrap();
        assert_eq!(m.wal_ranges[0].start_lsn, Lsn(0x200_0028));
        // Nothing edited: the same text.
        assert_eq!(edit_files(text.as_bytes(), |_| FileEdit::Keep).unwrap(), text.as_bytes());
        // Every entry dropped, as PostgreSQL writes an empty list.
        let none = edit_files(text.as_bytes(), |_| FileEdit::Drop).unwrap();
        assert!(BackupManifest::parse(&none).unwrap().files.is_empty());
        // A tampered input is refused, not re-signed.
        assert!(
            edit_files(text.replace("\"Size\": 5", "\"Size\": 6").as_bytes(), |_| FileEdit::Keep).is_err()
        );
    }

    #[test]
    fn detects_tampering() {
        let text = manifest("{ \"Path\": \"a\", \"Size\": 5 }\n");
        assert!(BackupManifest::parse(text.as_bytes()).is_ok());
        let tampered = text.replace("\"Size\": 5", "\"Size\": 6");
        let err = BackupManifest::parse(tampered.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        assert!(BackupManifest::parse(text.trim_end().as_bytes()).is_err());
        assert!(BackupManifest::parse(b"{}\n").is_err());
        assert!(BackupManifest::parse(b"").is_err());
    }

    #[test]
    fn crc32c_known_value() {
        // RFC 3720 test vector: 32 bytes of zeros.
        let mut h = ChecksumAlgorithm::Crc32c.hasher();
        h.update(&[0u8; 16]);
        h.update(&[0u8; 16]);
        assert_eq!(h.finish(), 0x8A91_36AAu32.to_le_bytes().to_vec());
    }
}
