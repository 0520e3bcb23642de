//! Choosing what to restore: pure, no IO, unit-tested.

use pgfmt::Lsn;
use vault_api::status::{Incident, Inventory, InventoryBackup, RestorePoint, WalRun, Window};
use vault_api::window::Interval;
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
    /// The restorable interval the restore stays in: from the backup's consistency point to the
    /// end of the unbroken WAL after it.
    pub window: Window,
    /// Every restorable interval of the cluster (to say where else a target may lie).
    pub intervals: Vec<Interval>,
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
        "{target} is outside the restorable window of cluster {cluster}{}: restorable are {}",
        if *in_gap { " (it lies in a WAL gap: WAL the vault never stored)" } else { "" },
        vault_api::window::describe(intervals)
    )]
    OutsideWindow { cluster: String, target: String, intervals: Vec<Interval>, in_gap: bool },
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
    #[error(
        "restore point {name:?} occurs {} times in the WAL the vault holds for cluster {cluster}: {}. PostgreSQL would \
         stop at the first one, whichever was meant (a name created again, or planted early to mislead a restore). \
         Restore to the one you mean by its LSN (recovery then stops right after that record): {}",
        occurrences.len(),
        describe_points(occurrences),
        occurrences.iter().map(|p| format!("--lsn {}", p.lsn)).collect::<Vec<_>>().join(" or ")
    )]
    RestorePointAmbiguous { cluster: String, name: String, occurrences: Vec<RestorePoint> },
    #[error(
        "restore point {name:?} is not in the WAL the vault holds for cluster {cluster} (its restore points: {}); \
         list them with `holdfast restore-points --cluster {cluster}`",
        if known.is_empty() { "none".to_string() } else { describe_points(known) }
    )]
    RestorePointUnknown { cluster: String, name: String, known: Vec<RestorePoint> },
    #[error(
        "{target} cannot be restored for cluster {cluster}: the database server's clock lied in the WAL this \
         restore would replay ({}). A time target stops at the first commit stamped later than it, and those \
         stamps come from the server's clock: set back around a destruction, the destruction is applied; set \
         forward, recovery stops early and leaves out rows committed before the time. Restore by position \
         instead: --before-incident N, --lsn or --xid (`holdfast incidents --cluster {cluster}` names them), or \
         --backup a backup taken after the lie",
        lies.iter().map(|(n, l)| format!("server_clock incident {n} at {l}")).collect::<Vec<_>>().join(", ")
    )]
    ClockLied { cluster: String, target: String, lies: Vec<(usize, Lsn)> },
    #[error("the vault's inventory of cluster {0} names no WAL segment size (no WAL stored yet)")]
    NoWal(String),
    #[error(
        "backup {backup} cannot be used for {target}: it is not a complete backup of cluster {cluster} whose \
         restorable interval holds the target (the complete backups: {available}; restorable: {})",
        vault_api::window::describe(intervals)
    )]
    BackupUnusable {
        cluster: String,
        backup: String,
        target: String,
        available: String,
        intervals: Vec<Interval>,
    },
}

/// `name` at LSN, time, timeline, for each restore point.
pub fn describe_points(points: &[RestorePoint]) -> String {
    points
        .iter()
        .map(|p| format!("{:?} at {} ({}, timeline {})", p.name, p.lsn, p.time, p.timeline))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The one restore point of `name` among `points` (the vault's index, every timeline), or why
/// a restore to it is refused: PostgreSQL's `recovery_target_name` stops at the *first* record
/// of a name, so a name that occurs more than once could silently stop at another than meant.
/// The same record stored on two timelines (the WAL before a switch) counts once.
pub fn resolve_restore_point(
    cluster: &str,
    points: &[RestorePoint],
    name: &str,
) -> Result<RestorePoint, PlanError> {
    let mut found: Vec<RestorePoint> = points.iter().filter(|p| p.name == name).cloned().collect();
    found.sort_by_key(|p| (p.lsn, p.timeline));
    found.dedup_by_key(|p| p.lsn);
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(PlanError::RestorePointUnknown {
            cluster: cluster.to_string(),
            name: name.to_string(),
            known: points.to_vec(),
        }),
        _ => Err(PlanError::RestorePointAmbiguous {
            cluster: cluster.to_string(),
            name: name.to_string(),
            occurrences: found,
        }),
    }
}

/// Plans a restore of `target` from what the vault holds.
pub fn plan(inv: &Inventory, target: &Target) -> Result<Plan, PlanError> {
    plan_from(inv, target, None)
}

/// [`plan`], from backup `only` when given (e.g. an older backup, when the newest is damaged).
pub fn plan_from(inv: &Inventory, target: &Target, only: Option<&str>) -> Result<Plan, PlanError> {
    plan_near(inv, target, only, None)
}

/// [`plan_from`], with where an xid or restore point target lies when that is known (e.g. an
/// incident's LSN): the backup is then chosen in the interval holding it, which matters after
/// a WAL gap. Without it, such targets are planned in the newest interval (their position is
/// known only once replayed); if PostgreSQL then stops short, its message says so.
pub fn plan_near(
    inv: &Inventory,
    target: &Target,
    only: Option<&str>,
    near: Option<Lsn>,
) -> Result<Plan, PlanError> {
    let cluster = inv.cluster.clone();
    if inv.backups.is_empty() {
        return Err(PlanError::NoBackup(cluster));
    }
    // Computed here from the backups and WAL runs, as the vault does: an inventory from an
    // older vault (one window) is planned the same way.
    let intervals = vault_api::window::intervals(&inv.backups, &inv.wal);
    if intervals.is_empty() {
        return Err(PlanError::NoWindow { cluster });
    }
    let seg_size = inv.segment_size.ok_or_else(|| PlanError::NoWal(cluster.clone()))?;
    let newest = intervals.iter().max_by_key(|i| (i.timeline, i.window.latest_lsn)).cloned();
    // Every usable backup with the interval it opens, newest first.
    let usable: Vec<(&InventoryBackup, Window, u32)> = inv
        .backups
        .iter()
        .rev()
        .filter_map(|b| {
            let r = vault_api::window::reach(&inv.wal, &b.backup)?;
            Some((
                b,
                Window {
                    earliest_lsn: b.backup.stop_lsn,
                    earliest_time: b.consistent_time?,
                    latest_lsn: r.lsn,
                    latest_time: r.time,
                },
                r.timeline,
            ))
        })
        .collect();
    let holds_lsn = |w: &Window, l: Lsn| w.earliest_lsn <= l && l <= w.latest_lsn;
    let holds = |w: &Window| match target {
        Target::Lsn(l) => holds_lsn(w, *l),
        Target::Time(t) => w.earliest_time <= *t && *t <= w.latest_time,
        Target::Xid(_) | Target::Name(_) => match near {
            Some(l) => holds_lsn(w, l),
            None => newest.as_ref().is_some_and(|n| n.window.latest_lsn == w.latest_lsn),
        },
        Target::Latest => newest.as_ref().is_some_and(|n| n.window.latest_lsn == w.latest_lsn),
    };
    let chosen = match only {
        // An explicit backup: a target its interval holds; `--latest`, or an xid or restore
        // point of unknown position: the end of its own interval.
        Some(id) => usable.iter().find(|(b, w, _)| {
            b.backup.id == id
                && match target {
                    Target::Latest => true,
                    Target::Xid(_) | Target::Name(_) if near.is_none() => true,
                    _ => holds(w),
                }
        }),
        None => usable.iter().find(|(_, w, _)| holds(w)),
    };
    let Some((backup, window, last_tli)) = chosen.cloned() else {
        return Err(match only {
            Some(id) => PlanError::BackupUnusable {
                cluster: cluster.clone(),
                backup: id.to_string(),
                target: target.to_string(),
                available: inv.backups.iter().map(|b| b.backup.id.as_str()).collect::<Vec<_>>().join(", "),
                intervals,
            },
            None => {
                // Between the first interval's start and the last one's end: in a gap.
                let first = intervals.first().map(|i| &i.window);
                let in_gap = match (target, first, &newest) {
                    (Target::Lsn(l), Some(f), Some(n)) => f.earliest_lsn <= *l && *l <= n.window.latest_lsn,
                    (Target::Time(t), Some(f), Some(n)) => {
                        f.earliest_time <= *t && *t <= n.window.latest_time
                    }
                    _ => false,
                };
                PlanError::OutsideWindow {
                    cluster: cluster.clone(),
                    target: target.to_string(),
                    intervals,
                    in_gap,
                }
            }
        });
    };
    let backup = backup.clone();
    // Recovery needs every byte from the backup's start to the target, or, when the target's
    // position is unknown, to the end of the backup's interval — never across a gap.
    let need_to = match target {
        Target::Lsn(l) => *l,
        _ => window.latest_lsn,
    };
    let (segments, histories) = wal_needed(inv, &backup, need_to, last_tli, seg_size, target)?;
    Ok(Plan {
        cluster,
        backup,
        target: target.clone(),
        segment_size: seg_size,
        segments,
        histories,
        window,
        intervals,
    })
}

/// The kind of the vault's incident for commit times the database server's clock made up.
pub const SERVER_CLOCK: &str = "server_clock";

/// Refuses a time target whose replay would cross commit times the database server's clock
/// made up (the vault's `server_clock` incidents, numbered as `holdfast incidents` lists them):
/// `recovery_target_time` goes by those stamps, so from the primary's clock root on its host
/// can make a restore "to just before 18:56" apply the 18:56 DROP (clock set back for it) or
/// stop minutes early (one commit dated ahead) — and the self-check, reading the same stamps,
/// would call either reached. Other targets are positions and pass.
pub fn check_time_target(plan: &Plan, incidents: &[Incident]) -> Result<(), PlanError> {
    if !matches!(plan.target, Target::Time(_)) {
        return Ok(());
    }
    let (from, to) = (plan.backup.backup.start_lsn, plan.window.latest_lsn);
    let lies: Vec<(usize, Lsn)> = incidents
        .iter()
        .enumerate()
        .filter(|(_, i)| i.kind == SERVER_CLOCK)
        .filter_map(|(n, i)| Some((n + 1, i.lsn?)))
        .filter(|(_, l)| from <= *l && *l <= to)
        .collect();
    if lies.is_empty() {
        return Ok(());
    }
    Err(PlanError::ClockLied { cluster: plan.cluster.clone(), target: plan.target.to_string(), lies })
}

/// The segment files from the backup's start to `to`, following timelines upwards; a gap is
/// an error naming the first missing segment.
fn wal_needed(
    inv: &Inventory,
    backup: &InventoryBackup,
    to: Lsn,
    last_tli: u32,
    seg_size: u64,
    target: &Target,
) -> Result<(Vec<String>, Vec<String>), PlanError> {
    let b = &backup.backup;
    // Up to the timeline the backup's interval ends on (not one recovery cannot get onto).
    let mut timelines: Vec<u32> =
        inv.wal.iter().map(|r| r.timeline).filter(|t| *t >= b.timeline && *t <= last_tli).collect();
    timelines.sort_unstable();
    timelines.dedup();
    let runs = |tli: u32| inv.wal.iter().filter(move |r| r.timeline == tli);
    let mut segments = Vec::new();
    let mut histories = Vec::new();
    let mut from = b.start_lsn;
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
            // Deliberately stale: the plan computes the intervals itself from backups and WAL.
            window: None,
            windows: vec![],
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
    fn a_time_target_across_a_lying_server_clock_is_refused() {
        let inv = inventory(vec![(SEG, 7 * SEG + 10)]);
        let incident = |kind: &str, lsn: u64| Incident {
            cluster: "shop".into(),
            kind: kind.into(),
            detected_at: Timestamp(2100),
            message: String::new(),
            lsn: Some(Lsn(lsn)),
            xid: None,
            restore_target: None,
            first_lsn: None,
            timeline: None,
            objects: vec![],
        };
        // Incident 2: the clock lied at 6 × SEG, in the WAL both backups replay to the end.
        let incidents = vec![
            incident("relations_dropped", 3 * SEG),
            incident(SERVER_CLOCK, 6 * SEG),
            incident("wal_gap", SEG),
        ];
        for t in [Timestamp(1500), Timestamp(2500)] {
            let p = plan(&inv, &Target::Time(t)).unwrap();
            let e = check_time_target(&p, &incidents).unwrap_err();
            assert_eq!(
                e,
                PlanError::ClockLied {
                    cluster: "shop".into(),
                    target: format!("time {t}"),
                    lies: vec![(2, Lsn(6 * SEG))]
                }
            );
            assert!(
                e.to_string().contains("server_clock incident 2 at 0/6000000")
                    && e.to_string().contains("--lsn"),
                "{e}"
            );
        }
        // Positions are not stamps: they pass; so does a time whose replay starts after the lie.
        for t in [Target::Lsn(Lsn(6 * SEG + 5)), Target::Xid(900), Target::Latest] {
            assert_eq!(check_time_target(&plan(&inv, &t).unwrap(), &incidents), Ok(()), "{t}");
        }
        let before = vec![incident(SERVER_CLOCK, 4 * SEG)];
        assert_eq!(check_time_target(&plan(&inv, &Target::Time(Timestamp(2500))).unwrap(), &before), Ok(()));
        assert!(check_time_target(&plan(&inv, &Target::Time(Timestamp(1500))).unwrap(), &before).is_err());
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
            assert!(e.to_string().contains("0/2000064") && e.to_string().contains("0/700000A"), "{e}");
        }
    }

    #[test]
    fn a_target_in_a_gap_is_refused_and_before_the_gap_is_restored_from_a_backup_before_it() {
        // WAL 3..4 segments missing; b1 before the gap, b2 after it (newer).
        let mut inv = inventory(vec![(SEG, 3 * SEG + 5), (4 * SEG, 7 * SEG + 10)]);
        inv.wal[0].end_time = Timestamp(1400);
        inv.wal[1].start_time = Timestamp(1600);
        let e = plan(&inv, &Target::Lsn(Lsn(4 * SEG - 50))).unwrap_err();
        match &e {
            PlanError::OutsideWindow { in_gap, intervals, .. } => {
                assert!(in_gap, "{e}");
                assert_eq!(intervals.len(), 2, "{e}");
            }
            other => panic!("{other}"),
        }
        assert!(e.to_string().contains("WAL gap") && e.to_string().contains("0/3000005"), "{e}");
        // Before the gap: from b1, although b2 is newer, and no segment past the gap.
        for t in [Target::Lsn(Lsn(3 * SEG)), Target::Time(Timestamp(1300))] {
            let p = plan(&inv, &t).unwrap();
            assert_eq!(p.backup.backup.id, "b1", "{t}");
            assert!(
                p.segments.iter().all(|s| s.as_str() <= "000000010000000000000003"),
                "{t}: {:?}",
                p.segments
            );
        }
        // A time in the gap is refused; one after it comes from b2.
        assert!(matches!(
            plan(&inv, &Target::Time(Timestamp(1500))).unwrap_err(),
            PlanError::OutsideWindow { in_gap: true, .. }
        ));
        assert_eq!(plan(&inv, &Target::Time(Timestamp(2500))).unwrap().backup.backup.id, "b2");
        // An xid whose commit is known to lie before the gap (an incident's LSN): b1, WAL to the gap.
        let p = plan_near(&inv, &Target::Xid(7), None, Some(Lsn(3 * SEG))).unwrap();
        assert_eq!(p.backup.backup.id, "b1");
        assert_eq!(p.segments.last().unwrap(), "000000010000000000000003");
        // Without the hint: the newest interval. `--backup b1 --latest`: the end of b1's interval.
        assert_eq!(plan(&inv, &Target::Xid(7)).unwrap().backup.backup.id, "b2");
        let p = plan_from(&inv, &Target::Latest, Some("b1")).unwrap();
        assert_eq!(p.window.latest_lsn, Lsn(3 * SEG + 5));
        // `--backup b2` for a point before the gap: refused, naming both intervals.
        let e = plan_from(&inv, &Target::Lsn(Lsn(3 * SEG)), Some("b2")).unwrap_err();
        assert!(matches!(e, PlanError::BackupUnusable { .. }), "{e}");
        assert!(e.to_string().contains("0/3000005") && e.to_string().contains("0/700000A"), "{e}");
    }

    #[test]
    fn a_deleted_backup_is_not_offered() {
        let mut inv = inventory(vec![(SEG, 7 * SEG + 10)]);
        // The vault took b2 out of the inventory (a quorum deletion): b1 serves every target.
        inv.backups.retain(|b| b.backup.id != "b2");
        assert_eq!(plan(&inv, &Target::Latest).unwrap().backup.backup.id, "b1");
        assert_eq!(plan(&inv, &Target::Time(Timestamp(2500))).unwrap().backup.backup.id, "b1");
        assert!(plan_from(&inv, &Target::Latest, Some("b2")).is_err());
    }

    #[test]
    fn a_restore_point_name_resolves_only_when_it_occurs_once() {
        let rp = |name: &str, tli: u32, lsn: u64| RestorePoint {
            name: name.into(),
            timeline: tli,
            lsn: Lsn(lsn),
            end_lsn: Lsn(lsn + 98),
            time: Timestamp(1_800_000_000),
        };
        // The planted one early, the real one later; the same record stored on two timelines.
        let points = [
            rp("before-migration", 1, 0x3000160),
            rp("nightly", 1, 0x3000400),
            rp("nightly", 2, 0x3000400),
            rp("before-migration", 2, 0x5000160),
        ];
        assert_eq!(resolve_restore_point("c", &points, "nightly").unwrap().lsn, Lsn(0x3000400));
        let e = resolve_restore_point("c", &points, "before-migration").unwrap_err();
        assert!(matches!(&e, PlanError::RestorePointAmbiguous { occurrences, .. } if occurrences.len() == 2));
        let msg = e.to_string();
        assert!(msg.contains("0/3000160") && msg.contains("0/5000160"), "{msg}");
        assert!(msg.contains("--lsn 0/5000160"), "{msg}");
        let e = resolve_restore_point("c", &points, "before-migraton").unwrap_err().to_string();
        assert!(e.contains("not in the WAL") && e.contains("\"nightly\""), "{e}");
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
