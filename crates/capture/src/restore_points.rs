//! The index of restore points in the stored WAL: every `XLOG_RESTORE_POINT` record, by
//! timeline and LSN, with its name and time. PostgreSQL's `recovery_target_name` stops at the
//! *first* record of a name, so a name planted early would make a later restore by that name
//! stop there; `restore` resolves names through this index and refuses one that occurs twice.
//!
//! Built lazily and incrementally: the first request after the vault starts reads all WAL the
//! vault stores (every timeline, every run), later ones only what was stored since. WAL the
//! index cannot read is an error, never skipped: a restore point in it would be missing.

use std::collections::BTreeMap;

use pgfmt::wal::WalReader;
use pgfmt::{Lsn, TimelineId};
use store::Timestamp;
use vault_api::status::RestorePoint;

use crate::CaptureError;
use crate::runtime::ClusterRuntime;

/// Stored WAL read per step: bounds memory.
const STEP: u64 = 16 << 20;
const PAGE: u64 = 8192;

/// What the index holds for one timeline: the restore points found and where reading goes on.
#[derive(Debug, Default)]
pub struct TimelineIndex {
    next: Lsn,
    points: Vec<RestorePoint>,
}

/// Restore points of one timeline, per timeline.
pub type Index = BTreeMap<TimelineId, TimelineIndex>;

/// The restore points in `wal` (stored WAL of `tli` starting at page `page`) at or after
/// `from`, and where the next record starts (a record cut off by the buffer's end is read
/// next time).
pub fn scan(
    wal: &[u8],
    page: Lsn,
    from: Lsn,
    seg_size: u64,
    tli: TimelineId,
) -> Result<(Vec<RestorePoint>, Lsn), pgfmt::wal::WalError> {
    let mut reader = WalReader::new(wal, page, seg_size);
    let mut found = Vec::new();
    let mut next = from;
    for rec in reader.by_ref() {
        let rec = rec?;
        if rec.lsn < from {
            continue;
        }
        if let Some(rp) = rec.restore_point()? {
            found.push(RestorePoint {
                name: rp.name.clone(),
                timeline: tli.0,
                lsn: rec.lsn,
                // MAXALIGNed, as `pg_create_restore_point()` returns it.
                end_lsn: rec.end_lsn.align_up(8),
                time: Timestamp(rp.unix_micros().div_euclid(1_000_000)),
            });
        }
    }
    // After an XLOG_SWITCH the reader itself goes on at the next segment.
    if let Some(n) = reader.next_lsn() {
        next = next.max(n);
    }
    Ok((found, next))
}

/// Stored WAL that does not decode fails the request: a restore point it hides could be the
/// duplicate that makes a name ambiguous.
fn unreadable(tli: TimelineId, e: pgfmt::wal::WalError) -> CaptureError {
    CaptureError::Internal(format!(
        "the stored WAL of timeline {} cannot be read for restore points: {e}",
        tli.0
    ))
}

impl ClusterRuntime {
    /// Every restore point in the WAL the vault stores, by timeline then LSN.
    pub async fn restore_points(&self) -> Result<Vec<RestorePoint>, CaptureError> {
        let mut index = self.restore_point_index.lock().await;
        let Some(seg_size) = self.archive.segment_size() else { return Ok(Vec::new()) };
        let map = self.archive.map();
        for tli in map.timelines() {
            let ix = index.entry(tli).or_default();
            for (start, end, _, _) in map.runs(tli) {
                let mut from = ix.next.max(start);
                while from < end {
                    let mut page = Lsn(from.0 - from.0 % PAGE);
                    if page < start {
                        page = Lsn(start.0.div_ceil(PAGE) * PAGE);
                        from = page;
                    }
                    let stop = Lsn(end.0.min(page.0 + STEP));
                    if stop <= page {
                        break;
                    }
                    let wal = self.archive.read_range(tli, page, stop).await?;
                    let (found, next) =
                        scan(&wal, page, from, seg_size, tli).map_err(|e| unreadable(tli, e))?;
                    ix.points.extend(found);
                    if next <= from {
                        // One record larger than a step, or the run's last record cut off:
                        // read a larger step, or wait for more WAL.
                        if stop >= end {
                            break;
                        }
                        let wal = self.archive.read_range(tli, page, end).await?;
                        let (found, next) =
                            scan(&wal, page, from, seg_size, tli).map_err(|e| unreadable(tli, e))?;
                        ix.points.extend(found);
                        if next <= from {
                            break;
                        }
                        from = next;
                    } else {
                        from = next;
                    }
                    ix.next = from;
                }
                ix.next = ix.next.max(from);
            }
        }
        Ok(index.values().flat_map(|ix| ix.points.iter().cloned()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_buffer_has_no_restore_points() {
        let (found, next) = scan(&[], Lsn(0x100_0000), Lsn(0x100_0000), 16 << 20, TimelineId(1)).unwrap();
        assert!(found.is_empty());
        assert_eq!(next, Lsn(0x100_0000));
    }
}
