//! A WAL piece: a run of WAL bytes exactly as PostgreSQL streamed them, stored as one object.
//!
//! The plaintext of a `wal/<hash>` object is one JSON header line, a newline, then the raw WAL
//! bytes. The header names the system, timeline and LSN range, so a piece is self-describing:
//! the WAL archive can be rebuilt by reading pieces alone, without any catalog record. A piece
//! never crosses a segment boundary, which keeps reassembling a segment file trivial.

use pgfmt::{Lsn, TimelineId};

/// Header line of a piece.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PieceHeader {
    /// Always 1.
    pub version: u32,
    /// The cluster's name in the vault's config.
    pub cluster: String,
    /// `IDENTIFY_SYSTEM`'s system identifier: pieces of another cluster never mix.
    pub system_id: String,
    /// Timeline the bytes belong to.
    pub timeline: u32,
    /// LSN of the first byte.
    pub start: Lsn,
    /// LSN just past the last byte (`start + len`).
    pub end: Lsn,
    /// WAL segment size of the cluster, in bytes.
    pub segment_size: u64,
    /// The server's clock when it sent the last byte of this piece.
    pub server_time: store::Timestamp,
}

/// A decoded piece.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub header: PieceHeader,
    pub data: Vec<u8>,
}

/// Why a piece could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum PieceError {
    #[error("WAL piece has no header line")]
    NoHeader,
    #[error("WAL piece header is not valid: {0}")]
    BadHeader(#[from] serde_json::Error),
    #[error("WAL piece claims {claimed} bytes ({start}..{end}) but holds {actual}")]
    LengthMismatch { start: Lsn, end: Lsn, claimed: u64, actual: u64 },
    #[error("WAL piece {start}..{end} crosses a segment boundary")]
    CrossesSegment { start: Lsn, end: Lsn },
    #[error("unsupported WAL piece version {0}")]
    Version(u32),
}

impl Piece {
    /// The timeline as a typed id.
    pub fn timeline(&self) -> TimelineId {
        TimelineId(self.header.timeline)
    }

    /// Encodes header line + bytes.
    pub fn encode(&self) -> Vec<u8> {
        Piece::encode_parts(&self.header, &self.data)
    }

    /// Encodes a piece from its parts, without assembling a [`Piece`] first (one copy of the
    /// bytes, not two).
    pub fn encode_parts(header: &PieceHeader, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + data.len());
        serde_json::to_writer(&mut out, header).expect("header serialises");
        out.push(b'\n');
        out.extend_from_slice(data);
        out
    }

    /// Decodes and checks internal consistency.
    pub fn decode(bytes: &[u8]) -> Result<Piece, PieceError> {
        let nl = bytes.iter().position(|&b| b == b'\n').ok_or(PieceError::NoHeader)?;
        let header: PieceHeader = serde_json::from_slice(&bytes[..nl])?;
        if header.version != 1 {
            return Err(PieceError::Version(header.version));
        }
        let data = bytes[nl + 1..].to_vec();
        let claimed = header.end.0.saturating_sub(header.start.0);
        if header.end < header.start || claimed != data.len() as u64 {
            return Err(PieceError::LengthMismatch {
                start: header.start,
                end: header.end,
                claimed,
                actual: data.len() as u64,
            });
        }
        if header.segment_size == 0
            || (claimed > 0
                && header.start.0 / header.segment_size != (header.end.0 - 1) / header.segment_size)
        {
            return Err(PieceError::CrossesSegment { start: header.start, end: header.end });
        }
        Ok(Piece { header, data })
    }
}

/// The header of a test piece of cluster `main`, timeline 1, covering `start..end`.
#[cfg(test)]
pub(crate) fn test_header(start: u64, end: u64) -> PieceHeader {
    PieceHeader {
        version: 1,
        cluster: "main".into(),
        system_id: "7000000000000000001".into(),
        timeline: 1,
        start: Lsn(start),
        end: Lsn(end),
        segment_size: 16 << 20,
        server_time: store::Timestamp(1_700_000_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(start: u64, len: usize) -> Piece {
        Piece { header: test_header(start, start + len as u64), data: vec![7; len] }
    }

    #[test]
    fn round_trip() {
        let p = piece(0x300_0000, 8192);
        assert_eq!(Piece::decode(&p.encode()).unwrap(), p);
    }

    #[test]
    fn lies_are_caught() {
        let mut p = piece(0x300_0000, 100);
        p.header.end = Lsn(0x300_0000 + 99);
        assert!(matches!(Piece::decode(&p.encode()), Err(PieceError::LengthMismatch { .. })));
        let p = piece((16 << 20) - 10, 20);
        assert!(matches!(Piece::decode(&p.encode()), Err(PieceError::CrossesSegment { .. })));
        assert!(matches!(Piece::decode(b"no newline"), Err(PieceError::NoHeader)));
    }
}
