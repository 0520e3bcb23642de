//! The WAL archive of one cluster inside the vault's repository.
//!
//! Pieces are sealed and stored as `wal/<hash>` objects as they arrive. When a segment is
//! complete a `wal.segment` catalog record lists its pieces, so that opening the archive reads
//! those records and opens only the pieces of unfinished segments, not every byte of WAL.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use bytes::Bytes;
use pgfmt::{Lsn, TimelineId};
use store::{ObjectKind, ObjectName, Repository, Timestamp};

use crate::CaptureError;
use crate::piece::{Piece, PieceHeader};
use crate::walmap::{PieceRef, WalMap};

/// Catalog record kind listing the pieces of a completed segment.
pub const SEGMENT_RECORD: &str = "wal.segment";
/// Catalog record kind holding a timeline history file.
pub const TIMELINE_RECORD: &str = "timeline";

/// Body of a `wal.segment` record.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SegmentRecord {
    pub cluster: String,
    pub system_id: String,
    pub timeline: u32,
    /// The segment's file name, e.g. `000000010000000000000003`.
    pub segment: String,
    pub start: Lsn,
    pub end: Lsn,
    pub pieces: Vec<SegmentPiece>,
    /// The cluster's WAL segment size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_size: Option<u64>,
}

/// One piece in a `wal.segment` record.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SegmentPiece {
    pub name: ObjectName,
    pub start: Lsn,
    pub end: Lsn,
    pub server_time: Timestamp,
}

/// Body of a `timeline` record.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TimelineRecord {
    pub cluster: String,
    pub system_id: String,
    pub timeline: u32,
    /// The history file's name and text as the server sent them.
    pub filename: String,
    pub content: String,
}

/// Stored WAL of one cluster.
#[derive(Debug)]
pub struct WalArchive {
    repo: Repository,
    cluster: String,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    map: WalMap,
    system_id: Option<String>,
    segment_size: Option<u64>,
    /// Segments already summarised by a `wal.segment` record: (timeline, start LSN).
    summarised: BTreeSet<(u32, Lsn)>,
    /// Stored history files by timeline: (file name, content).
    histories: BTreeMap<u32, (String, String)>,
}

impl WalArchive {
    /// Reads what the repository holds for `cluster`.
    pub async fn open(repo: &Repository, cluster: &str) -> Result<WalArchive, CaptureError> {
        let mut inner = Inner::default();
        let mut listed: BTreeSet<ObjectName> = BTreeSet::new();
        for (_, rec) in repo.records().await? {
            match rec.kind.as_str() {
                SEGMENT_RECORD => {
                    let Ok(seg) = serde_json::from_value::<SegmentRecord>(rec.body.clone()) else { continue };
                    if seg.cluster != cluster {
                        continue;
                    }
                    inner.system_id.get_or_insert(seg.system_id.clone());
                    inner.summarised.insert((seg.timeline, seg.start));
                    if let Some(size) = seg.segment_size {
                        inner.segment_size.get_or_insert(size);
                    }
                    for p in seg.pieces {
                        listed.insert(p.name);
                        inner.map.insert(
                            TimelineId(seg.timeline),
                            PieceRef { start: p.start, end: p.end, name: p.name, server_time: p.server_time },
                        );
                    }
                }
                TIMELINE_RECORD => {
                    if let Ok(t) = serde_json::from_value::<TimelineRecord>(rec.body.clone())
                        && t.cluster == cluster
                    {
                        inner.histories.insert(t.timeline, (t.filename, t.content));
                    }
                }
                _ => {}
            }
        }
        // Pieces of segments not yet summarised must be opened to learn their range.
        for meta in repo.store().list(ObjectKind::Wal).await? {
            if listed.contains(&meta.name) {
                continue;
            }
            let piece = match read_piece(repo, &meta.name).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(object = %meta.name, error = %e, "unreadable WAL piece skipped; run `holdfast vault check`");
                    continue;
                }
            };
            if piece.header.cluster != cluster {
                continue;
            }
            inner.system_id.get_or_insert(piece.header.system_id.clone());
            inner.segment_size.get_or_insert(piece.header.segment_size);
            inner.map.insert(
                piece.timeline(),
                PieceRef {
                    start: piece.header.start,
                    end: piece.header.end,
                    name: meta.name,
                    server_time: piece.header.server_time,
                },
            );
        }
        Ok(WalArchive { repo: repo.clone(), cluster: cluster.to_string(), inner: Mutex::new(inner) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cluster this archive belongs to.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The system identifier of the stored WAL, if any is stored.
    pub fn system_id(&self) -> Option<String> {
        self.lock().system_id.clone()
    }

    /// A copy of the coverage map.
    pub fn map(&self) -> WalMap {
        self.lock().map.clone()
    }

    /// Reads the coverage map without copying it (the detector asks at every step).
    pub fn with_map<R>(&self, f: impl FnOnce(&WalMap) -> R) -> R {
        f(&self.lock().map)
    }

    /// Whether the history file of `tli` is stored.
    pub fn has_history(&self, tli: TimelineId) -> bool {
        self.lock().histories.contains_key(&tli.0)
    }

    /// Seals and stores one piece; it is durable when this returns.
    pub async fn store_piece(
        &self,
        header: PieceHeader,
        data: &[u8],
        retain_until: Timestamp,
    ) -> Result<ObjectName, CaptureError> {
        let tli = TimelineId(header.timeline);
        let (start, end, server_time) = (header.start, header.end, header.server_time);
        let piece = Piece { header, data: data.to_vec() };
        let plain = piece.encode();
        let repo = self.repo.clone();
        let t0 = std::time::Instant::now();
        // Sealing a few MiB is CPU work: keep it off the async workers.
        let sealed = tokio::task::spawn_blocking(move || repo.keys().seal(&plain, 1))
            .await
            .map_err(|e| CaptureError::Internal(e.to_string()))?
            .map_err(|e| CaptureError::Internal(format!("sealing a WAL piece: {e}")))?;
        let name = ObjectName::for_bytes(ObjectKind::Wal, &sealed);
        let sealed_len = sealed.len();
        let t1 = std::time::Instant::now();
        self.repo.store().put_if_absent(&name, Bytes::from(sealed), retain_until).await?;
        // Where a piece's time goes (`RUST_LOG=capture::archive=debug`): what the synchronous
        // mode's commit latency is made of.
        tracing::debug!(
            bytes = data.len(),
            sealed = sealed_len,
            seal_us = (t1 - t0).as_micros() as u64,
            put_us = t1.elapsed().as_micros() as u64,
            "WAL piece stored"
        );
        let mut inner = self.lock();
        inner.system_id.get_or_insert(piece.header.system_id.clone());
        inner.segment_size.get_or_insert(piece.header.segment_size);
        inner.map.insert(tli, PieceRef { start, end, name, server_time });
        Ok(name)
    }

    /// Writes the `wal.segment` record for the segment starting at `seg_start` if it is fully
    /// stored and not yet summarised.
    pub async fn summarise_segment(
        &self,
        tli: TimelineId,
        seg_start: Lsn,
        segment_size: u64,
        system_id: &str,
        now: Timestamp,
        retain_until: Timestamp,
    ) -> Result<bool, CaptureError> {
        let seg_end = Lsn(seg_start.0 + segment_size);
        let pieces = {
            let inner = self.lock();
            if inner.summarised.contains(&(tli.0, seg_start)) {
                return Ok(false);
            }
            // A segment that begins mid-way (the first one streamed, or a timeline's first) is
            // summarised from its first stored byte.
            let pieces = inner.map.pieces_in(tli, seg_start, seg_end);
            let Some(first) = pieces.first() else { return Ok(false) };
            let from = first.start.max(seg_start);
            if inner.map.contiguous_end(tli, from) < seg_end {
                return Ok(false);
            }
            pieces
        };
        let segno = seg_start.0 / segment_size;
        let body = SegmentRecord {
            cluster: self.cluster.clone(),
            system_id: system_id.to_string(),
            timeline: tli.0,
            segment: pgfmt::segment_name(tli, segno, segment_size),
            start: seg_start,
            end: seg_end,
            pieces: pieces
                .iter()
                .map(|p| SegmentPiece {
                    name: p.name,
                    start: p.start,
                    end: p.end,
                    server_time: p.server_time,
                })
                .collect(),
            segment_size: Some(segment_size),
        };
        self.repo
            .append_record(
                SEGMENT_RECORD,
                serde_json::to_value(&body).expect("serialises"),
                now,
                retain_until,
            )
            .await?;
        self.lock().summarised.insert((tli.0, seg_start));
        Ok(true)
    }

    /// Writes the missing `wal.segment` records of segments that are fully stored: a collector
    /// that stopped between storing a segment's last piece and its record leaves one behind.
    /// Returns how many records were written.
    pub async fn summarise_pending(
        &self,
        segment_size: u64,
        system_id: &str,
        now: Timestamp,
        retain_until: Timestamp,
    ) -> Result<usize, CaptureError> {
        let candidates: BTreeSet<(TimelineId, Lsn)> = {
            let inner = self.lock();
            let mut c = BTreeSet::new();
            for tli in inner.map.timelines() {
                let Some(first) = inner.map.earliest(tli) else { continue };
                let end = inner.map.last(tli).map_or(first, |p| p.end);
                for p in inner.map.pieces_in(tli, first, end) {
                    let seg_start = Lsn(p.start.0 - p.start.0 % segment_size);
                    if !inner.summarised.contains(&(tli.0, seg_start)) {
                        c.insert((tli, seg_start));
                    }
                }
            }
            c
        };
        let mut written = 0;
        for (tli, seg_start) in candidates {
            if self.summarise_segment(tli, seg_start, segment_size, system_id, now, retain_until).await? {
                written += 1;
            }
        }
        Ok(written)
    }

    /// Stores a timeline history file (once per timeline).
    pub async fn store_history(
        &self,
        rec: TimelineRecord,
        now: Timestamp,
        retain_until: Timestamp,
    ) -> Result<(), CaptureError> {
        if self.has_history(TimelineId(rec.timeline)) {
            return Ok(());
        }
        self.repo
            .append_record(
                TIMELINE_RECORD,
                serde_json::to_value(&rec).expect("serialises"),
                now,
                retain_until,
            )
            .await?;
        self.lock().histories.insert(rec.timeline, (rec.filename, rec.content));
        Ok(())
    }

    /// The stored history file of `tli`: (file name, content).
    pub fn history(&self, tli: TimelineId) -> Option<(String, String)> {
        self.lock().histories.get(&tli.0).cloned()
    }

    /// Timelines whose history file is stored.
    pub fn histories(&self) -> Vec<u32> {
        self.lock().histories.keys().copied().collect()
    }

    /// The WAL segment starting at `seg_start` on `tli`, as PostgreSQL's `restore_command`
    /// expects it: always a whole segment. When the vault holds only its beginning (the
    /// newest, still growing segment), the rest is zeros — replay stops at the first record
    /// that is not there, as with a `.partial` file. Returns the bytes and how many are real.
    /// Fails if the segment's first byte is not stored.
    ///
    /// The segment in which a timeline began holds its parent's WAL up to the switch point
    /// (PostgreSQL copies it there at promotion); the vault streamed the new timeline from the
    /// switch point, so that prefix is read from the parent, as the history file says.
    pub async fn segment(
        &self,
        tli: TimelineId,
        seg_start: Lsn,
        seg_size: u64,
    ) -> Result<(Vec<u8>, u64), CaptureError> {
        let seg_end = Lsn(seg_start.0 + seg_size);
        let missing = || CaptureError::MissingWal { timeline: tli, start: seg_start, end: seg_end };
        let (from, parent) = {
            let inner = self.lock();
            let covered = inner.map.contiguous_end(tli, seg_start) > seg_start;
            let first = inner.map.pieces_in(tli, seg_start, seg_end).first().map(|p| p.start);
            match first {
                _ if covered => (seg_start, None),
                Some(f) if f > seg_start => {
                    // Begins inside this segment: allowed only where the timeline itself begins.
                    let entry = inner
                        .histories
                        .get(&tli.0)
                        .and_then(|(_, text)| pgfmt::TimelineHistory::parse(text).ok())
                        .and_then(|h| h.entries.last().cloned())
                        .filter(|e| e.switchpoint == f)
                        .ok_or_else(missing)?;
                    (f, Some(entry.parent))
                }
                _ => return Err(missing()),
            }
        };
        let end = self.lock().map.contiguous_end(tli, from).min(seg_end);
        let mut bytes = match parent {
            Some(parent) => self.read_range(parent, seg_start, from).await?,
            None => Vec::with_capacity(seg_size as usize),
        };
        bytes.extend(self.read_range(tli, from, end).await?);
        let valid = bytes.len() as u64;
        bytes.resize(seg_size as usize, 0);
        Ok((bytes, valid))
    }

    /// The segment size of the stored WAL, once any is stored.
    pub fn segment_size(&self) -> Option<u64> {
        self.lock().segment_size
    }

    /// The stored bytes of `[start, end)` on `tli`; fails if any byte is missing.
    pub async fn read_range(&self, tli: TimelineId, start: Lsn, end: Lsn) -> Result<Vec<u8>, CaptureError> {
        let pieces = self.lock().map.pieces_in(tli, start, end);
        let mut out = Vec::with_capacity(end.0.saturating_sub(start.0) as usize);
        let mut pos = start;
        for p in pieces {
            if p.end <= pos {
                continue;
            }
            if p.start > pos {
                break;
            }
            let piece = read_piece(&self.repo, &p.name).await?;
            let from = (pos.0 - p.start.0) as usize;
            let to = (end.0.min(p.end.0) - p.start.0) as usize;
            out.extend_from_slice(&piece.data[from..to]);
            pos = Lsn(p.start.0 + to as u64);
            if pos >= end {
                break;
            }
        }
        if pos < end {
            return Err(CaptureError::MissingWal { timeline: tli, start: pos, end });
        }
        Ok(out)
    }
}

/// Reads and decodes one stored piece.
pub async fn read_piece(repo: &Repository, name: &ObjectName) -> Result<Piece, CaptureError> {
    let sealed = repo.store().get(name).await?;
    name.verify(&sealed).map_err(store::StoreError::from)?;
    let plain =
        repo.keys().open(&sealed).map_err(|e| CaptureError::Internal(format!("opening {name}: {e}")))?;
    Ok(Piece::decode(&plain)?)
}

/// WAL that damage has made unusable: what `vault check` reports for broken `wal/` objects.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AffectedWal {
    pub cluster: String,
    pub timeline: u32,
    pub object: ObjectName,
    /// The LSN range the object held, when a `wal.segment` record names it.
    pub start: Option<Lsn>,
    pub end: Option<Lsn>,
    /// The server's clock when the range was sent: points in time around it cannot be reached.
    pub server_time: Option<Timestamp>,
    /// Complete base backups whose WAL span overlaps the range: they cannot be made consistent.
    pub backups: Vec<String>,
}

/// Maps damaged or missing `wal/` objects to the WAL ranges and backups they break, using the
/// `wal.segment` and `backup.complete` records.
pub async fn affected_wal(
    repo: &Repository,
    broken: &BTreeSet<ObjectName>,
) -> Result<Vec<AffectedWal>, CaptureError> {
    let broken: BTreeSet<ObjectName> = broken.iter().filter(|n| n.kind == ObjectKind::Wal).copied().collect();
    if broken.is_empty() {
        return Ok(Vec::new());
    }
    let mut out: Vec<AffectedWal> = Vec::new();
    let mut backups: Vec<crate::status::BackupSummary> = Vec::new();
    for (_, rec) in repo.records().await? {
        match rec.kind.as_str() {
            SEGMENT_RECORD => {
                let Ok(seg) = serde_json::from_value::<SegmentRecord>(rec.body) else { continue };
                for p in seg.pieces.iter().filter(|p| broken.contains(&p.name)) {
                    out.push(AffectedWal {
                        cluster: seg.cluster.clone(),
                        timeline: seg.timeline,
                        object: p.name,
                        start: Some(p.start),
                        end: Some(p.end),
                        server_time: Some(p.server_time),
                        backups: Vec::new(),
                    });
                }
            }
            crate::BACKUP_COMPLETE_RECORD => {
                if let Ok(b) = serde_json::from_value(rec.body) {
                    backups.push(b);
                }
            }
            _ => {}
        }
    }
    for name in &broken {
        if !out.iter().any(|a| a.object == *name) {
            // Not yet summarised in a segment record and unreadable: the range is unknown.
            out.push(AffectedWal {
                cluster: "?".into(),
                timeline: 0,
                object: *name,
                start: None,
                end: None,
                server_time: None,
                backups: Vec::new(),
            });
        }
    }
    for a in &mut out {
        if let (Some(s), Some(e)) = (a.start, a.end) {
            a.backups = backups
                .iter()
                .filter(|b| {
                    b.cluster == a.cluster && b.timeline == a.timeline && b.start_lsn < e && s < b.stop_lsn
                })
                .map(|b| b.id.clone())
                .collect();
        }
    }
    Ok(out)
}
