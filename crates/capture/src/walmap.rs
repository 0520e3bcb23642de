//! Which WAL the vault holds: a map from timeline to the LSN ranges of stored pieces.
//!
//! Pure bookkeeping, no IO. The collector asks it where streaming must resume (the end of the
//! contiguous range, so there is never a gap nor a duplicate), `status` asks it for the
//! restorable window, and restore asks it which pieces make up a segment.

use std::collections::{BTreeMap, HashMap};

use pgfmt::{Lsn, TimelineId};
use store::ObjectName;

/// A stored piece as the map sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PieceRef {
    pub start: Lsn,
    pub end: Lsn,
    pub name: ObjectName,
    /// The server's clock when it sent the piece's last byte.
    pub server_time: store::Timestamp,
}

/// Stored WAL per timeline.
#[derive(Debug, Default, Clone)]
pub struct WalMap {
    timelines: HashMap<TimelineId, BTreeMap<Lsn, PieceRef>>,
}

impl WalMap {
    /// Records a stored piece. A piece with the same start replaces the entry only if longer.
    pub fn insert(&mut self, tli: TimelineId, piece: PieceRef) {
        let pieces = self.timelines.entry(tli).or_default();
        match pieces.get(&piece.start) {
            Some(p) if p.end >= piece.end => {}
            _ => {
                pieces.insert(piece.start, piece);
            }
        }
    }

    /// Timelines with any stored WAL, ascending.
    pub fn timelines(&self) -> Vec<TimelineId> {
        let mut t: Vec<_> = self.timelines.keys().copied().collect();
        t.sort();
        t
    }

    /// The earliest stored LSN of a timeline.
    pub fn earliest(&self, tli: TimelineId) -> Option<Lsn> {
        self.timelines.get(&tli)?.keys().next().copied()
    }

    /// The end of the contiguous run of WAL that starts at or covers `from`: everything in
    /// `[from, result)` is stored. Returns `from` itself if nothing covers it.
    pub fn contiguous_end(&self, tli: TimelineId, from: Lsn) -> Lsn {
        let Some(pieces) = self.timelines.get(&tli) else { return from };
        let mut end = from;
        // Pieces starting at or before `end` extend the run; the first later start is a gap.
        let before = pieces.range(..=end).next_back().map(|(_, p)| p);
        for p in before.into_iter().chain(pieces.range(end..).map(|(_, p)| p)) {
            if p.start > end {
                break;
            }
            end = end.max(p.end);
        }
        end
    }

    /// The end of the contiguous WAL from the earliest stored byte of the timeline.
    pub fn durable_end(&self, tli: TimelineId) -> Option<Lsn> {
        let first = self.earliest(tli)?;
        Some(self.contiguous_end(tli, first))
    }

    /// The newest piece of a timeline (the one ending last).
    pub fn last(&self, tli: TimelineId) -> Option<PieceRef> {
        self.timelines.get(&tli)?.values().max_by_key(|p| p.end).copied()
    }

    /// The first piece of a timeline.
    pub fn first(&self, tli: TimelineId) -> Option<PieceRef> {
        self.timelines.get(&tli)?.values().next().copied()
    }

    /// The start of the contiguous run that ends at the timeline's newest byte.
    pub fn last_run_start(&self, tli: TimelineId) -> Option<Lsn> {
        let pieces = self.timelines.get(&tli)?;
        let mut start = None;
        let mut end: Option<Lsn> = None;
        for p in pieces.values() {
            match end {
                Some(e) if p.start <= e => end = Some(e.max(p.end)),
                _ => {
                    start = Some(p.start);
                    end = Some(p.end);
                }
            }
        }
        start
    }

    /// The contiguous runs of stored WAL of a timeline, in LSN order: (start, end, server time
    /// of the run's first piece, server time of its last).
    pub fn runs(&self, tli: TimelineId) -> Vec<(Lsn, Lsn, store::Timestamp, store::Timestamp)> {
        let Some(pieces) = self.timelines.get(&tli) else { return Vec::new() };
        let mut runs: Vec<(Lsn, Lsn, store::Timestamp, store::Timestamp)> = Vec::new();
        for p in pieces.values() {
            match runs.last_mut() {
                Some(r) if p.start <= r.1 => {
                    if p.end > r.1 {
                        r.1 = p.end;
                        r.3 = p.server_time;
                    }
                }
                _ => runs.push((p.start, p.end, p.server_time, p.server_time)),
            }
        }
        runs
    }

    /// Gaps between the earliest and the latest stored byte of a timeline.
    pub fn gaps(&self, tli: TimelineId) -> Vec<(Lsn, Lsn)> {
        let Some(pieces) = self.timelines.get(&tli) else { return Vec::new() };
        let mut gaps = Vec::new();
        let mut end: Option<Lsn> = None;
        for p in pieces.values() {
            if let Some(e) = end
                && p.start > e
            {
                gaps.push((e, p.start));
            }
            end = Some(end.map_or(p.end, |e| e.max(p.end)));
        }
        gaps
    }

    /// The pieces, in LSN order, that overlap `[start, end)`.
    pub fn pieces_in(&self, tli: TimelineId, start: Lsn, end: Lsn) -> Vec<PieceRef> {
        let Some(pieces) = self.timelines.get(&tli) else { return Vec::new() };
        let before = pieces.range(..start).next_back().map(|(_, p)| *p).filter(|p| p.end > start);
        before.into_iter().chain(pieces.range(start..end).map(|(_, p)| *p)).collect()
    }

    /// Number of pieces stored.
    pub fn len(&self) -> usize {
        self.timelines.values().map(|p| p.len()).sum()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use store::ObjectKind;

    fn p(start: u64, end: u64) -> PieceRef {
        PieceRef {
            start: Lsn(start),
            end: Lsn(end),
            name: ObjectName::for_bytes(ObjectKind::Wal, &start.to_le_bytes()),
            server_time: store::Timestamp(start as i64),
        }
    }

    #[test]
    fn contiguous_runs_and_gaps() {
        let t = TimelineId(1);
        let mut m = WalMap::default();
        assert_eq!(m.durable_end(t), None);
        m.insert(t, p(100, 200));
        m.insert(t, p(200, 300));
        m.insert(t, p(250, 320)); // overlap after a resend is harmless
        m.insert(t, p(400, 500));
        assert_eq!(m.durable_end(t), Some(Lsn(320)));
        assert_eq!(m.contiguous_end(t, Lsn(150)), Lsn(320));
        assert_eq!(m.contiguous_end(t, Lsn(450)), Lsn(500));
        assert_eq!(m.contiguous_end(t, Lsn(350)), Lsn(350));
        assert_eq!(m.gaps(t), vec![(Lsn(320), Lsn(400))]);
        assert_eq!(m.last_run_start(t), Some(Lsn(400)));
        assert_eq!(m.last(t).unwrap().end, Lsn(500));
        m.insert(t, p(320, 400));
        assert!(m.gaps(t).is_empty());
        assert_eq!(m.last_run_start(t), Some(Lsn(100)));
        assert_eq!(m.durable_end(t), Some(Lsn(500)));
        assert_eq!(m.pieces_in(t, Lsn(150), Lsn(260)).len(), 3);
        assert_eq!(m.len(), 5);
        assert_eq!(m.durable_end(TimelineId(2)), None);
    }
}
