//! The self-check after recovery: was the target really reached? Checked against the restored
//! server and the vault's own WAL (decoded with PostgreSQL's `pg_waldump`), not taken on
//! PostgreSQL's word that it stopped where asked. "Reached" is reported only when a check ran
//! and passed; otherwise the outcome says what could not be checked.
//!
//! What each target kind is checked by:
//! - LSN: the last replayed record starts at or after the LSN (inclusive), or the next record
//!   does and the last one does not (exclusive);
//! - time: the last replayed transaction ended at or before the time (before, exclusive), and
//!   the next transaction record in the WAL ends after it (at or after) — so recovery stopped
//!   at the boundary, not early;
//! - xid: the transaction's commit status on the restored server (`txid_status`): committed
//!   (inclusive) or not (exclusive);
//! - restore point: the last replayed record is that restore point's record;
//! - latest: no complete record of the WAL the plan covered lies after the replay position.

use std::path::Path;
use std::process::Command;

use pgfmt::Lsn;

use crate::plan::Target;

/// Whether the target was reached, and how that was established.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Outcome {
    pub reached: bool,
    /// What was checked and what it showed, or what could not be checked.
    pub detail: String,
}

fn yes(detail: String) -> Outcome {
    Outcome { reached: true, detail }
}

fn no(detail: String) -> Outcome {
    Outcome { reached: false, detail }
}

/// One record as `pg_waldump` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub rmgr: String,
    pub lsn: Lsn,
    /// Total length (header and data).
    pub len: u64,
    pub xid: u32,
    pub desc: String,
}

impl Record {
    /// A transaction's end (what `recovery_target_time` looks at): commit or abort, prepared
    /// or not.
    pub fn is_xact_end(&self) -> bool {
        self.rmgr == "Transaction" && ["COMMIT", "ABORT"].iter().any(|k| self.desc.starts_with(k))
    }

    /// The end time of a commit/abort record, in microseconds since the epoch (`pg_waldump`
    /// prints it in its `TZ`, which [`waldump`] sets to UTC).
    pub fn xact_time_us(&self) -> Option<i64> {
        let rest = self.desc.split_once(' ')?.1;
        let text = rest.get(..26)?; // 2026-12-03 22:41:05.123456
        let (date, clock) = text.split_once(' ')?;
        let (hms, frac) = clock.split_once('.')?;
        let us: i64 = frac.parse().ok()?;
        let secs = format!("{date}T{hms}Z").parse::<vault_types::Timestamp>().ok()?.0;
        Some(secs * 1_000_000 + us)
    }
}

/// Parses `pg_waldump` output (one record per line).
pub fn parse_waldump(out: &str) -> Vec<Record> {
    out.lines()
        .filter_map(|l| {
            let rmgr = l.strip_prefix("rmgr: ")?.split_whitespace().next()?.to_string();
            let len = l
                .split_once("len (rec/tot):")?
                .1
                .split_once('/')?
                .1
                .split(',')
                .next()?
                .trim()
                .parse()
                .ok()?;
            let xid = l.split_once("tx:")?.1.split(',').next()?.trim().parse().ok()?;
            let lsn = l.split_once(" lsn: ")?.1.split(',').next()?.trim().parse().ok()?;
            let desc = l.split_once("desc: ")?.1.trim().to_string();
            Some(Record { rmgr, lsn, len, xid, desc })
        })
        .collect()
}

/// Runs `pg_waldump` on the segment files in `dir` (timeline `tli`) from `start` to `end`,
/// in UTC. Its error at the end of the available WAL is expected; only records count.
pub fn waldump(
    bindir: &Path,
    dir: &Path,
    tli: u32,
    start: Lsn,
    end: Lsn,
) -> Result<Vec<Record>, WaldumpError> {
    let out = Command::new(bindir.join("pg_waldump"))
        .env("TZ", "UTC")
        .arg("--path")
        .arg(dir)
        .args(["--timeline", &tli.to_string(), "--start", &start.to_string(), "--end", &end.to_string()])
        .output()
        .map_err(WaldumpError::Spawn)?;
    let records = parse_waldump(&String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr);
    if records.is_empty() && err.contains("could not find a valid record") {
        // Nothing but the end of the WAL (or a switched segment's zeroed tail) there.
        return Ok(records);
    }
    if records.is_empty() && !out.status.success() {
        return Err(WaldumpError::Failed(err.trim().to_string()));
    }
    Ok(records)
}

/// Why `pg_waldump` gave no records.
#[derive(Debug, thiserror::Error)]
pub enum WaldumpError {
    #[error("running pg_waldump: {0}")]
    Spawn(#[source] std::io::Error),
    /// Its standard error.
    #[error("pg_waldump failed: {0}")]
    Failed(String),
}

/// The last record before `at` and the first at or after it.
fn around(records: &[Record], at: Lsn) -> (Option<&Record>, Option<&Record>) {
    (records.iter().rev().find(|r| r.lsn < at), records.iter().find(|r| r.lsn >= at))
}

/// The 64-bit form of `xid` given the restored server's snapshot xmax, or `None` when the
/// xid lies at or after xmax (not yet started when recovery stopped).
pub fn full_xid(xid: u32, xmax: u64) -> Option<u64> {
    let ahead = xid.wrapping_sub(xmax as u32);
    if ahead < 1 << 31 {
        return None;
    }
    Some(xmax - u64::from(0u32.wrapping_sub(ahead)))
}

/// Judges an xid target from `txid_status` on the restored server (`None`: the transaction
/// had not started when recovery stopped).
pub fn judge_xid(xid: u32, exclusive: bool, status: Option<&str>) -> Outcome {
    let status = status.unwrap_or("not started");
    match (exclusive, status) {
        (false, "committed") => yes(format!("transaction {xid} is committed on the restored server")),
        (true, "committed") => {
            no(format!("transaction {xid} is committed on the restored server: recovery went past it"))
        }
        (true, "in progress" | "aborted" | "not started") => yes(format!(
            "transaction {xid} is not committed on the restored server ({status}): recovery stopped before it"
        )),
        (_, s) if s.is_empty() || s.contains("unknown") => {
            no(format!("could not check transaction {xid}: its commit status is no longer known ({s})"))
        }
        (false, s) => no(format!("transaction {xid} is not committed on the restored server ({s})")),
        (true, s) => no(format!("transaction {xid} has status {s} on the restored server")),
    }
}

/// How far a transaction end's stamp may be behind an earlier one in the WAL before the
/// server's clock is taken to have lied (as the vault's detector judges it).
const STAMP_TOLERANCE_US: i64 = 10_000_000;

/// The first transaction end whose stamp is more than [`STAMP_TOLERANCE_US`] behind one
/// earlier in `records`, with that earlier stamp.
fn stamp_goes_back(records: &[Record]) -> Option<(&Record, i64)> {
    let mut newest: Option<i64> = None;
    for r in records.iter().filter(|r| r.is_xact_end()) {
        let Some(t) = r.xact_time_us() else { continue };
        if let Some(n) = newest
            && t < n - STAMP_TOLERANCE_US
        {
            return Some((r, n));
        }
        newest = Some(newest.map_or(t, |n| n.max(t)));
    }
    None
}

/// Judges a target from the WAL records around the replay position. `last_commit_us`: the
/// restored server's last replayed transaction end; `planned_end`: where the plan's WAL ends.
pub fn judge_wal(
    target: &Target,
    point: Option<Lsn>,
    exclusive: bool,
    replay: Lsn,
    last_commit_us: Option<i64>,
    planned_end: Lsn,
    records: &[Record],
) -> Outcome {
    let (before, after) = around(records, replay);
    let show = |r: Option<&Record>| {
        r.map(|r| format!("{} at {} ({})", r.rmgr, r.lsn, r.desc)).unwrap_or_else(|| "none".into())
    };
    match target {
        Target::Lsn(t) => {
            // Inclusive: the last replayed record is the first at or after the target.
            let prev = before.and_then(|b| records.iter().rev().find(|r| r.lsn < b.lsn));
            let ok = if exclusive {
                before.is_none_or(|b| b.lsn < *t) && after.is_some_and(|a| a.lsn >= *t)
            } else {
                before.is_some_and(|b| b.lsn >= *t) && prev.is_none_or(|p| p.lsn < *t)
            };
            let what =
                format!("replayed to {replay}: last replayed record {}, next {}", show(before), show(after));
            if ok {
                yes(format!("LSN {t} reached exactly: {what}"))
            } else {
                no(format!("LSN {t} not reached as asked: {what}"))
            }
        }
        Target::Time(t) => {
            let t_us = t.0 * 1_000_000;
            let last_ok = last_commit_us.is_none_or(|c| if exclusive { c < t_us } else { c <= t_us });
            let next = records.iter().find(|r| r.lsn >= replay && r.is_xact_end());
            let next_ok = next
                .and_then(Record::xact_time_us)
                .is_some_and(|n| if exclusive { n >= t_us } else { n > t_us });
            let what = format!(
                "last replayed transaction end {}, next transaction end in the WAL {}",
                last_commit_us.map_or("none since the backup".into(), fmt_us),
                next.map_or("not found".into(), |n| format!(
                    "{} ({})",
                    n.lsn,
                    n.xact_time_us().map_or("?".into(), fmt_us)
                ))
            );
            // The stamps come from the database server's clock: where they go back, the clock
            // lied (set back for a destruction, or forward for one commit) and a time names no
            // one point: not confirmed, whatever the stamps around the stop say.
            if let Some((r, newest)) = stamp_goes_back(records) {
                return no(format!(
                    "time {t} not confirmed: the commit stamps in the vault's WAL around the replay position go \
                     back — {} at {} is stamped {}, after a transaction end stamped {} — so the database server's \
                     clock lied and a time does not name one point; restore by --lsn, --xid or --before-incident \
                     ({what})",
                    r.rmgr,
                    r.lsn,
                    r.xact_time_us().map_or("?".into(), fmt_us),
                    fmt_us(newest)
                ));
            }
            match (last_ok, next_ok, next.is_some()) {
                (true, true, _) => yes(format!("time {t} reached: {what}")),
                (true, false, false) => no(format!(
                    "could not check that recovery stopped at time {t}, not earlier: no transaction end found in the \
                     WAL after the replay position {replay} ({what})"
                )),
                _ => no(format!("time {t} not reached as asked: {what}")),
            }
        }
        Target::Name(n) => {
            let is_point =
                |r: &Record| r.rmgr == "XLOG" && r.desc.strip_prefix("RESTORE_POINT ") == Some(n.as_str());
            match before {
                // The vault's index named the one record of that name: it must be that one.
                Some(b) if is_point(b) && point.is_some_and(|p| p != b.lsn) => no(format!(
                    "restore point {n:?} not reached: recovery stopped at a record of that name at {}, not the one at {}",
                    b.lsn,
                    point.map_or_else(String::new, |p| p.to_string())
                )),
                Some(b) if is_point(b) => yes(format!(
                    "restore point {n:?} reached: its record at {} is the last replayed{}",
                    b.lsn,
                    if point.is_some() { " and the only one of that name in the vault's WAL" } else { "" }
                )),
                _ => no(format!(
                    "restore point {n:?} not reached: the last replayed record is {}",
                    show(before)
                )),
            }
        }
        Target::Latest => {
            // A record after the replay position that the plan's WAL holds whole: missed.
            let missed = records.iter().filter(|r| r.lsn >= replay && r.lsn < planned_end).find(|r| {
                let end = r.lsn.0 + r.len;
                end <= planned_end.0 && r.lsn.0 / 8192 == end / 8192
                    || records.iter().any(|n| n.lsn > r.lsn && n.lsn < planned_end)
            });
            match missed {
                Some(m) => no(format!(
                    "not the latest: the vault's WAL holds a record at {} (up to {planned_end}) after the replay position {replay}",
                    m.lsn
                )),
                None if replay >= planned_end => {
                    yes(format!("replayed to {replay}, the end of the vault's WAL ({planned_end})"))
                }
                None => yes(format!(
                    "replayed to {replay}; the vault's WAL up to its end {planned_end} holds no further complete record"
                )),
            }
        }
        Target::Xid(x) => no(format!("transaction {x} is checked on the server, not in the WAL")),
    }
}

fn fmt_us(us: i64) -> String {
    let t = vault_types::Timestamp(us.div_euclid(1_000_000)).to_string();
    format!("{}.{:06}Z", t.trim_end_matches('Z'), us.rem_euclid(1_000_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "\
rmgr: Heap        len (rec/tot):     54/   54, tx:        735, lsn: 0/03000100, prev 0/030000C8, desc: INSERT off 3 flags 0x00, blkref #0: rel 1663/5/16384 blk 0
rmgr: Transaction len (rec/tot):     34/    34, tx:        735, lsn: 0/03000138, prev 0/03000100, desc: COMMIT 2026-12-03 22:41:05.250000 UTC
rmgr: XLOG        len (rec/tot):     98/    98, tx:          0, lsn: 0/03000160, prev 0/03000138, desc: RESTORE_POINT after-first-round
rmgr: Transaction len (rec/tot):     34/    34, tx:        736, lsn: 0/030001C8, prev 0/03000160, desc: COMMIT 2026-12-03 22:41:07.000001 UTC
";

    #[test]
    fn reads_pg_waldump() {
        let r = parse_waldump(DUMP);
        assert_eq!(r.len(), 4);
        assert_eq!(
            (r[1].rmgr.as_str(), r[1].xid, r[1].lsn, r[1].len),
            ("Transaction", 735, Lsn(0x3000138), 34)
        );
        assert!(r[1].is_xact_end() && !r[0].is_xact_end());
        let t = vault_types::Timestamp("2026-12-03T22:41:05Z".parse::<vault_types::Timestamp>().unwrap().0);
        assert_eq!(r[1].xact_time_us(), Some(t.0 * 1_000_000 + 250_000));
    }

    #[test]
    fn judges_each_target_and_refuses_an_early_stop() {
        let r = parse_waldump(DUMP);
        let t = |s: &str| s.parse::<vault_types::Timestamp>().unwrap();
        let at_point = Lsn(0x3000160 + 98);
        // Stopped right after the restore point: reached; one record earlier: not.
        let name = Target::Name("after-first-round".into());
        assert!(judge_wal(&name, None, false, at_point, None, Lsn(0x4000000), &r).reached);
        // The vault resolved the name to its record: reached there, not at another of that name.
        assert!(judge_wal(&name, Some(Lsn(0x3000160)), false, at_point, None, Lsn(0x4000000), &r).reached);
        assert!(!judge_wal(&name, Some(Lsn(0x5000160)), false, at_point, None, Lsn(0x4000000), &r).reached);
        assert!(!judge_wal(&name, None, false, Lsn(0x3000138 + 34), None, Lsn(0x4000000), &r).reached);
        // Time 22:41:06: stopped before the 22:41:07 commit, after the 22:41:05 one.
        let time = Target::Time(t("2026-12-03T22:41:06Z"));
        let c1 = r[1].xact_time_us();
        assert!(judge_wal(&time, None, false, at_point, c1, Lsn(0x4000000), &r).reached);
        // Stopped early (before the 22:41:05 commit although it is before the target): not reached.
        assert!(!judge_wal(&time, None, false, Lsn(0x3000138), None, Lsn(0x4000000), &r).reached);
        // LSN: inclusive stops after the record at the target, exclusive before it.
        let lsn = Target::Lsn(Lsn(0x3000160));
        assert!(judge_wal(&lsn, None, false, at_point, None, Lsn(0x4000000), &r).reached);
        assert!(judge_wal(&lsn, None, true, Lsn(0x3000138 + 34), None, Lsn(0x4000000), &r).reached);
        assert!(!judge_wal(&lsn, None, true, at_point, None, Lsn(0x4000000), &r).reached);
        // Latest: a whole record left unreplayed before the planned end is a miss.
        assert!(!judge_wal(&Target::Latest, None, false, at_point, None, Lsn(0x3000200), &r).reached);
        assert!(
            judge_wal(&Target::Latest, None, false, Lsn(0x30001C8 + 34), None, Lsn(0x3000200), &r).reached
        );
    }

    #[test]
    fn a_time_is_not_confirmed_where_the_servers_clock_went_back() {
        // The DROP at 18:56 committed with the clock set back a day, then the clock put right:
        // recovery to 18:55:30 applies it (its stamp is earlier) and stops before the next
        // commit — last replayed end before the time, the next after it, as the check wants.
        let dump = "\
rmgr: Transaction len (rec/tot):     34/    34, tx:        735, lsn: 0/03000138, prev 0/03000100, desc: COMMIT 2026-12-03 18:55:00.000000 UTC
rmgr: Transaction len (rec/tot):     34/    34, tx:        736, lsn: 0/03000160, prev 0/03000138, desc: COMMIT 2026-12-02 18:56:00.000000 UTC
rmgr: Transaction len (rec/tot):     34/    34, tx:        737, lsn: 0/03000188, prev 0/03000160, desc: COMMIT 2026-12-03 18:56:05.000000 UTC
";
        let r = parse_waldump(dump);
        let time = Target::Time("2026-12-03T18:55:30Z".parse().unwrap());
        let o = judge_wal(&time, None, false, Lsn(0x3000188), r[1].xact_time_us(), Lsn(0x4000000), &r);
        assert!(!o.reached, "{o:?}");
        assert!(o.detail.contains("0/3000160") && o.detail.contains("lied"), "{}", o.detail);
        // Stamps a few seconds out of order (commits racing for the WAL) are not a lie.
        let honest = dump.replace("2026-12-02 18:56:00", "2026-12-03 18:54:58");
        let r = parse_waldump(&honest);
        let o = judge_wal(&time, None, false, Lsn(0x3000188), r[1].xact_time_us(), Lsn(0x4000000), &r);
        assert!(o.reached, "{o:?}");
    }

    #[test]
    fn xids() {
        assert_eq!(full_xid(735, 740), Some(735));
        assert_eq!(full_xid(740, 740), None);
        assert_eq!(full_xid(u32::MAX, (1 << 32) + 5), Some(u64::from(u32::MAX)));
        assert!(judge_xid(7, false, Some("committed")).reached);
        assert!(!judge_xid(7, true, Some("committed")).reached);
        assert!(judge_xid(7, true, None).reached);
        assert!(judge_xid(7, true, Some("in progress")).reached);
        assert!(!judge_xid(7, false, Some("aborted")).reached);
    }
}
