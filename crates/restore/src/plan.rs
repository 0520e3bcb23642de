//! Choosing what to restore: pure, no IO, unit-tested.

use pgfmt::Lsn;
use vault_api::status::{Inventory, InventoryBackup, WalRun, Window};
use vault_types::Timestamp;

/// Where recovery stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The end of the WAL the vault holds.
    Latest,
    /// The last transaction committed at or before this time (server clock, whole seconds).
    Time(Timestamp),
    /// This WAL position.
    Lsn(Lsn),
    /// The commit of this transaction.
    Xid(u32),
    /// A restore point made with `pg_create_restore_point(name)`.
    Name(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Latest => write!(f, "the latest WAL in the vault"),
            Target::Time(t) => write!(f, "time {t}"),
            Target::Lsn(l) => write!(f, "LSN {l}"),
            Target::Xid(x) => write!(f, "transaction {x}"),
            Target::Name(n) => write!(f, "restore point {n:?}"),
        }
    }
}

/// What a restore will do.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub cluster: String,
    pub backup: InventoryBackup,
    pub target: Target,
    pub segment_size: u64,
    /// WAL segment files recovery needs, in replay order (timeline-qualified names).
    pub segments: Vec<String>,
    /// History files of the timelines involved.
    pub histories: Vec<String>,
    pub window: Window,
}

/// Why a restore is refused before anything is written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "cluster {0} has no complete base backup in the vault: take one with `holdfast backup --cluster {0}`"
    )]
    NoBackup(String),
    #[error(
        "cluster {cluster} has no restorable window yet (no complete base backup with unbroken WAL after it): \
         take a base backup with `holdfast backup --cluster {cluster}`"
    )]
    NoWindow { cluster: String },
    #[error(
        "{target} is outside the restorable window of cluster {cluster}: [{} ({}), {} ({})]",
        window.earliest_time, window.earliest_lsn, window.latest_time, window.latest_lsn
    )]
    OutsideWindow { cluster: String, target: String, window: Window },
    #[error(
        "WAL segment {segment} of cluster {cluster} is missing from the vault: WAL {from}..{to} on timeline {timeline} \
         is not stored, so {target} cannot be reached from backup {backup}; restore to a point before {from}"
    )]
    WalGap {
        cluster: String,
        segment: String,
        timeline: u32,
        from: Lsn,
        to: Lsn,
        target: String,
        backup: String,
    },
    #[error("the vault's inventory of cluster {0} names no WAL segment size (no WAL stored yet)")]
    NoWal(String),
    #[error(
        "backup {backup} cannot be used for {target}: it is not a complete backup of cluster {cluster} that ends before \
         the target (the complete backups: {available})"
    )]
    BackupUnusable { cluster: String, backup: String, target: String, available: String },
}

/// Plans a restore of `target` from what the vault holds.
pub fn plan(inv: &Inventory, target: &Target) -> Result<Plan, PlanError> {
    plan_from(inv, target, None)
}

/// [`plan`], from backup `only` when given (e.g. an older backup, when the newest is damaged).
pub fn plan_from(inv: &Inventory, target: &Target, only: Option<&str>) -> Result<Plan, PlanError> {
    let cluster = inv.cluster.clone();
    if inv.backups.is_empty() {
        return Err(PlanError::NoBackup(cluster));
    }
    let window = inv.window.clone().ok_or_else(|| PlanError::NoWindow { cluster: cluster.clone() })?;
    let seg_size = inv.segment_size.ok_or_else(|| PlanError::NoWal(cluster.clone()))?;
    let outside = || PlanError::OutsideWindow {
        cluster: cluster.clone(),
        target: target.to_string(),
        window: window.clone(),
    };
    // The newest backup that reaches the target.
    let candidates = inv
        .backups
        .iter()
        .rev()
        .filter(|b| b.backup.start_lsn >= window.earliest_lsn)
        .filter(|b| only.is_none_or(|id| b.backup.id == id));
    let backup = match target {
        Target::Lsn(l) => {
            if *l < window.earliest_lsn || *l > window.latest_lsn {
                return Err(outside());
            }
            candidates.clone().find(|b| b.backup.stop_lsn <= *l)
        }
        Target::Time(t) => {
            if *t < window.earliest_time || *t > window.latest_time {
                return Err(outside());
            }
            candidates.clone().find(|b| b.consistent_time.is_some_and(|c| c <= *t))
        }
        // Where an xid committed or a restore point lies is known only once replayed: the
        // newest backup, as pgBackRest does; PostgreSQL refuses if the target precedes it.
        Target::Latest | Target::Xid(_) | Target::Name(_) => candidates.clone().next(),
    }
    .ok_or_else(|| match only {
        Some(id) => PlanError::BackupUnusable {
            cluster: cluster.clone(),
            backup: id.to_string(),
            target: target.to_string(),
            available: inv.backups.iter().map(|b| b.backup.id.as_str()).collect::<Vec<_>>().join(", "),
        },
        None => outside(),
    })?
    .clone();
    // Recovery needs every byte from the backup's start to the target (or, when the target's
    // position is unknown, to the newest byte).
    let need_to = match target {
        Target::Lsn(l) => *l,
        _ => window.latest_lsn,
    };
    let (segments, histories) = wal_needed(inv, &backup, need_to, seg_size, target)?;
    Ok(Plan { cluster, backup, target: target.clone(), segment_size: seg_size, segments, histories, window })
}

/// The segment files from the backup's start to `to`, following timelines upwards; a gap is
/// an error naming the first missing segment.
fn wal_needed(
    inv: &Inventory,
    backup: &InventoryBackup,
    to: Lsn,
    seg_size: u64,
    target: &Target,
) -> Result<(Vec<String>, Vec<String>), PlanError> {
    let b = &backup.backup;
    let mut timelines: Vec<u32> = inv.wal.iter().map(|r| r.timeline).filter(|t| *t >= b.timeline).collect();
    timelines.sort_unstable();
    timelines.dedup();
    let runs = |tli: u32| inv.wal.iter().filter(move |r| r.timeline == tli);
    let mut segments = Vec::new();
    let mut histories = Vec::new();
    let mut from = b.start_lsn;
    let last_tli = timelines.last().copied().unwrap_or(b.timeline);
    for &tli in &timelines {
        if tli != b.timeline && inv.histories.contains(&tli) {
            histories.push(pgfmt::history_file_name(pgfmt::TimelineId(tli)));
        }
        // On a later timeline the stored WAL starts at the segment of its switch point, at or
        // before `from` (the end of the parent timeline's WAL).
        let run: Option<&WalRun> = runs(tli).find(|r| r.start <= from && from <= r.end);
        let end_here = if tli == last_tli { to } else { run.map_or(from, |r| r.end) };
        let covered = run.map_or(from, |r| r.end);
        if covered < end_here || run.is_none() {
            let gap_from = covered.max(from);
            let next = runs(tli).map(|r| r.start).filter(|s| *s > gap_from).min().unwrap_or(end_here);
            return Err(PlanError::WalGap {
                cluster: inv.cluster.clone(),
                segment: pgfmt::segment_name(
                    pgfmt::TimelineId(tli),
                    pgfmt::lsn_to_segno(gap_from, seg_size),
                    seg_size,
                ),
                timeline: tli,
                from: gap_from,
                to: next,
                target: target.to_string(),
                backup: b.id.clone(),
            });
        }
        let first = pgfmt::lsn_to_segno(from, seg_size);
        let last = pgfmt::lsn_to_segno(Lsn(end_here.0.saturating_sub(1).max(from.0)), seg_size);
        for segno in first..=last {
            segments.push(pgfmt::segment_name(pgfmt::TimelineId(tli), segno, seg_size));
        }
        if tli == last_tli {
            break;
        }
        from = end_here;
    }
    Ok((segments, histories))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vault_api::status::BackupSummary;

    const SEG: u64 = 16 << 20;

    fn backup(id: &str, start: u64, stop: u64, t: i64) -> InventoryBackup {
        InventoryBackup {
            backup: BackupSummary {
                id: id.into(),
                cluster: "shop".into(),
                system_id: "1".into(),
                timeline: 1,
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

    fn inventory(runs: Vec<(u64, u64)>) -> Inventory {
        Inventory {
            cluster: "shop".into(),
            system_id: Some("1".into()),
            segment_size: Some(SEG),
            backups: vec![
                backup("b1", 2 * SEG, 2 * SEG + 100, 1000),
                backup("b2", 5 * SEG, 5 * SEG + 100, 2000),
            ],
            wal: runs
                .into_iter()
                .map(|(s, e)| WalRun {
                    timeline: 1,
                    start: Lsn(s),
                    end: Lsn(e),
                    start_time: Timestamp(900),
                    end_time: Timestamp(3000),
                })
                .collect(),
            histories: vec![],
            window: Some(Window {
                earliest_lsn: Lsn(2 * SEG),
                earliest_time: Timestamp(1000),
                latest_lsn: Lsn(7 * SEG + 10),
                latest_time: Timestamp(3000),
            }),
        }
    }

    #[test]
    fn picks_the_newest_backup_before_the_target() {
        let inv = inventory(vec![(SEG, 7 * SEG + 10)]);
        let p = plan(&inv, &Target::Lsn(Lsn(4 * SEG))).unwrap();
        assert_eq!(p.backup.backup.id, "b1");
        assert_eq!(p.segments.first().unwrap(), "000000010000000000000002");
        assert_eq!(p.segments.last().unwrap(), "000000010000000000000003");
        let p = plan(&inv, &Target::Lsn(Lsn(6 * SEG))).unwrap();
        assert_eq!(p.backup.backup.id, "b2");
        assert_eq!(plan(&inv, &Target::Time(Timestamp(1500))).unwrap().backup.backup.id, "b1");
        assert_eq!(plan(&inv, &Target::Time(Timestamp(2500))).unwrap().backup.backup.id, "b2");
        let p = plan(&inv, &Target::Latest).unwrap();
        assert_eq!(p.backup.backup.id, "b2");
        assert_eq!(
            p.segments,
            ["000000010000000000000005", "000000010000000000000006", "000000010000000000000007"]
        );
    }

    #[test]
    fn targets_outside_the_window_are_refused_naming_it() {
        let inv = inventory(vec![(SEG, 7 * SEG + 10)]);
        for t in [
            Target::Lsn(Lsn(SEG)),
            Target::Lsn(Lsn(8 * SEG)),
            Target::Time(Timestamp(999)),
            Target::Time(Timestamp(3001)),
        ] {
            let e = plan(&inv, &t).unwrap_err();
            assert!(matches!(e, PlanError::OutsideWindow { .. }), "{t}: {e}");
            assert!(e.to_string().contains("0/2000000") && e.to_string().contains("0/700000A"), "{e}");
        }
    }

    #[test]
    fn a_gap_is_refused_naming_the_segment() {
        // WAL 3..4 segments missing.
        let inv = inventory(vec![(SEG, 3 * SEG + 5), (4 * SEG, 7 * SEG + 10)]);
        let e = plan(&inv, &Target::Lsn(Lsn(4 * SEG + 50))).unwrap_err();
        match &e {
            PlanError::WalGap { segment, from, to, .. } => {
                assert_eq!(segment, "000000010000000000000003");
                assert_eq!((*from, *to), (Lsn(3 * SEG + 5), Lsn(4 * SEG)));
            }
            other => panic!("{other}"),
        }
        // Before the gap is fine.
        assert!(plan(&inv, &Target::Lsn(Lsn(3 * SEG))).is_ok());
    }

    #[test]
    fn no_backup_is_a_clear_error() {
        let mut inv = inventory(vec![(SEG, 7 * SEG)]);
        inv.backups.clear();
        assert!(
            plan(&inv, &Target::Latest).unwrap_err().to_string().contains("holdfast backup --cluster shop")
        );
    }
}
