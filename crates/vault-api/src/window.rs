//! The restorable window as a list of intervals, computed from an inventory (pure, no IO).
//!
//! One interval per stretch of unbroken stored WAL that a complete base backup starts in: a
//! WAL gap (WAL the server recycled before the vault stored it) ends one interval and a backup
//! taken after it begins the next, and everything before the gap stays restorable from the
//! backups before it. The vault computes this for `status` and the inventory, and `restore`
//! plans with the same functions, so what status advertises is what a restore can reach. Both
//! read only the inventory's backups and WAL runs: a backup taken out of the inventory (a
//! quorum deletion) is out of every interval with it.

use pgfmt::Lsn;

use store::Timestamp;

use crate::status::{BackupSummary, Inventory, InventoryBackup, WalRun, Window};

/// How far recovery from one backup can go on unbroken stored WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reach {
    /// The timeline recovery ends on.
    pub timeline: u32,
    /// The end of the stored WAL it can replay to (exclusive).
    pub lsn: Lsn,
    /// The server's clock when that WAL was sent.
    pub time: Timestamp,
}

/// One restorable interval: every point from `earliest` to `latest` can be restored from one
/// of `backups`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Interval {
    /// `earliest_*`: the consistency point (stop LSN, and the server's clock there) of the
    /// oldest backup in it; `latest_*`: the end of the unbroken WAL after it.
    #[serde(flatten)]
    pub window: Window,
    /// The timeline the interval ends on.
    pub timeline: u32,
    /// The backups a restore inside the interval can start from, oldest first.
    pub backups: Vec<String>,
}

/// Recovery from `b` follows the stored WAL from its start LSN, upwards through the timelines
/// (a later timeline's stored WAL begins at the segment of its switch point, at or before the
/// end of its parent's); it ends where a run ends with nothing to continue it. `None` when the
/// WAL from the backup's start to its stop is not all stored (the backup cannot be used).
pub fn reach(wal: &[WalRun], b: &BackupSummary) -> Option<Reach> {
    let mut timelines: Vec<u32> = wal.iter().map(|r| r.timeline).filter(|t| *t >= b.timeline).collect();
    timelines.sort_unstable();
    timelines.dedup();
    let mut from = b.start_lsn;
    let mut reached: Option<Reach> = None;
    for tli in timelines {
        let Some(run) = wal.iter().find(|r| r.timeline == tli && r.start <= from && from <= r.end) else {
            if tli == b.timeline {
                return None;
            }
            // Nothing on this timeline continues the WAL: recovery ends on the previous one.
            break;
        };
        if reached.is_some_and(|r| run.end <= r.lsn) && tli != b.timeline {
            // A later timeline that adds nothing past the switch point.
            break;
        }
        reached = Some(Reach { timeline: tli, lsn: run.end, time: run.end_time });
        from = run.end;
    }
    reached.filter(|r| r.timeline != b.timeline || r.lsn >= b.stop_lsn)
}

/// The restorable intervals, oldest first: each complete backup whose WAL is stored (and whose
/// consistency point's time is known) opens `[its stop LSN, the end of the unbroken WAL after
/// it]`; backups that reach the same end share one interval, which starts at the oldest.
pub fn intervals(backups: &[InventoryBackup], wal: &[WalRun]) -> Vec<Interval> {
    let mut out: Vec<Interval> = Vec::new();
    for ib in backups {
        let b = &ib.backup;
        let (Some(consistent), Some(r)) = (ib.consistent_time, reach(wal, b)) else { continue };
        match out.iter_mut().find(|i| i.timeline == r.timeline && i.window.latest_lsn == r.lsn) {
            Some(i) => {
                if b.stop_lsn < i.window.earliest_lsn {
                    i.window.earliest_lsn = b.stop_lsn;
                    i.window.earliest_time = consistent;
                }
                i.backups.push(b.id.clone());
            }
            None => out.push(Interval {
                window: Window {
                    earliest_lsn: b.stop_lsn,
                    earliest_time: consistent,
                    latest_lsn: r.lsn,
                    latest_time: r.time,
                },
                timeline: r.timeline,
                backups: vec![b.id.clone()],
            }),
        }
    }
    out.sort_by_key(|i| (i.window.earliest_lsn, i.window.latest_lsn));
    out
}

/// `[a (lsn), b (lsn)], …` for messages.
pub fn describe(intervals: &[Interval]) -> String {
    if intervals.is_empty() {
        return "none".into();
    }
    intervals
        .iter()
        .map(|i| {
            let w = &i.window;
            format!("[{} ({}), {} ({})]", w.earliest_time, w.earliest_lsn, w.latest_time, w.latest_lsn)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl Inventory {
    /// Recomputes `windows` and `window` (the newest interval) from `backups` and `wal`: call
    /// after changing either (e.g. taking out a deleted backup).
    pub fn refresh_windows(&mut self) {
        self.windows = intervals(&self.backups, &self.wal);
        self.window = newest(&self.windows);
    }
}

/// The interval that ends last (what a `--latest` restore reaches), as a plain window.
pub fn newest(intervals: &[Interval]) -> Option<Window> {
    intervals.iter().max_by_key(|i| (i.timeline, i.window.latest_lsn)).map(|i| i.window.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    fn backup(id: &str, tli: u32, start: u64, stop: u64, t: i64) -> InventoryBackup {
        InventoryBackup {
            backup: BackupSummary {
                id: id.into(),
                cluster: "shop".into(),
                system_id: "1".into(),
                timeline: tli,
                start_lsn: Lsn(start),
                stop_lsn: Lsn(stop),
                started: Timestamp(t - 1),
                finished: Timestamp(t),
                bytes: 0,
                stored_bytes: 0,
            },
            consistent_time: Some(Timestamp(t)),
        }
    }

    fn run(tli: u32, start: u64, end: u64, t0: i64, t1: i64) -> WalRun {
        WalRun {
            timeline: tli,
            start: Lsn(start),
            end: Lsn(end),
            start_time: Timestamp(t0),
            end_time: Timestamp(t1),
        }
    }

    #[test]
    fn a_gap_splits_the_window_and_keeps_what_lies_before_it() {
        // WAL 1..3.5 segments, a gap, then 6..9; backups b1, b2 before the gap, b3 after it.
        let wal = vec![run(1, SEG, 3 * SEG + 500, 900, 1500), run(1, 6 * SEG, 9 * SEG, 2000, 3000)];
        let backups = vec![
            backup("b1", 1, 2 * SEG, 2 * SEG + 100, 1000),
            backup("b2", 1, 3 * SEG, 3 * SEG + 100, 1200),
            backup("b3", 1, 7 * SEG, 7 * SEG + 100, 2500),
        ];
        let i = intervals(&backups, &wal);
        assert_eq!(i.len(), 2, "{i:?}");
        assert_eq!(i[0].backups, ["b1", "b2"]);
        assert_eq!(
            (i[0].window.earliest_lsn, i[0].window.latest_lsn),
            (Lsn(2 * SEG + 100), Lsn(3 * SEG + 500))
        );
        assert_eq!((i[0].window.earliest_time, i[0].window.latest_time), (Timestamp(1000), Timestamp(1500)));
        assert_eq!(i[1].backups, ["b3"]);
        assert_eq!((i[1].window.earliest_lsn, i[1].window.latest_lsn), (Lsn(7 * SEG + 100), Lsn(9 * SEG)));
        assert_eq!(newest(&i).unwrap().latest_lsn, Lsn(9 * SEG));
        assert!(describe(&i).contains("0/30001F4") && describe(&i).contains("0/9000000"), "{}", describe(&i));
    }

    #[test]
    fn a_backup_whose_wal_is_not_stored_or_that_was_taken_out_opens_nothing() {
        let wal = vec![run(1, 4 * SEG, 9 * SEG, 2000, 3000)];
        // b1's start is not stored (the gap is before it); b2 is fine.
        let mut inv = Inventory {
            cluster: "shop".into(),
            system_id: Some("1".into()),
            segment_size: Some(SEG),
            backups: vec![
                backup("b1", 1, 2 * SEG, 2 * SEG + 100, 1000),
                backup("b2", 1, 5 * SEG, 5 * SEG + 9, 2500),
            ],
            wal,
            histories: vec![],
            window: None,
            windows: vec![],
        };
        inv.refresh_windows();
        assert_eq!(inv.windows.len(), 1);
        assert_eq!(inv.windows[0].backups, ["b2"]);
        // The only usable backup deleted (by a quorum): nothing is restorable, and it says so.
        inv.backups.retain(|b| b.backup.id != "b2");
        inv.refresh_windows();
        assert!(inv.windows.is_empty() && inv.window.is_none());
    }

    #[test]
    fn follows_a_timeline_switch() {
        let wal = vec![run(1, SEG, 3 * SEG + 40, 900, 1500), run(2, 3 * SEG, 5 * SEG, 1500, 2000)];
        let backups = vec![backup("b1", 1, 2 * SEG, 2 * SEG + 100, 1000)];
        let i = intervals(&backups, &wal);
        assert_eq!(i.len(), 1);
        assert_eq!((i[0].timeline, i[0].window.latest_lsn), (2, Lsn(5 * SEG)));
        assert_eq!(reach(&wal, &backups[0].backup).unwrap().time, Timestamp(2000));
    }
}
