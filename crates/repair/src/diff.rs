//! The three-way comparison, pure: rows as they were just before the incident, just after it,
//! and now in the live database → what to re-insert, what to revert, what to leave alone.
//!
//! Rows are compared as PostgreSQL prints them (`COPY … TO STDOUT` text of the key and of the
//! whole row, read from every side with the same session settings), so any column type
//! compares exactly as the server renders it, without this crate knowing the type.

use std::collections::BTreeMap;

/// One row as read: its key (the primary key's columns as a row, or empty for a table without
/// one) and the whole row, both in COPY text form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub key: String,
    pub row: String,
}

/// Splits `COPY (SELECT key, row …) TO STDOUT` output into lines. COPY escapes tabs and
/// newlines inside values, so the split is exact.
pub fn parse_copy(text: &str) -> Vec<Line> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| match l.split_once('\t') {
            Some((k, r)) => Line { key: k.to_string(), row: r.to_string() },
            None => Line { key: String::new(), row: l.to_string() },
        })
        .collect()
}

/// What a fix does to the live table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// The row (or, without a key, `want − now` more copies of it) goes back in.
    Insert,
    /// The row with this key is set back to its state before the incident, provided it still
    /// reads `expect` when the repair runs.
    Revert,
}

/// One change the repair makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fix {
    pub op: Op,
    pub key: String,
    /// The row as it was just before the incident (COPY text).
    pub row: String,
    /// For a revert: the live row's text the plan saw (the update applies only if it still
    /// reads so).
    pub expect: Option<String>,
    /// Without a key: copies of `row` to insert now (`want` is the count afterwards).
    pub copies: u64,
    pub want: u64,
}

/// A row the incident changed that ordinary traffic changed again since: left alone (unless
/// the table prefers the state before), reported with its key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Conflict {
    pub key: String,
    pub reason: String,
    /// Resolved by `--prefer before` (the row was set back anyway).
    pub resolved_before: bool,
}

/// The outcome for one table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    pub fixes: Vec<Fix>,
    pub conflicts: Vec<Conflict>,
    /// Rows present just after the incident but not before it (written inside the incident's
    /// transaction or window): never touched, counted.
    pub added_by_incident: u64,
}

impl Diff {
    pub fn reinserted(&self) -> u64 {
        self.fixes.iter().filter(|f| f.op == Op::Insert).map(|f| f.copies).sum()
    }
    pub fn reverted(&self) -> u64 {
        self.fixes.iter().filter(|f| f.op == Op::Revert).count() as u64
    }
}

/// Compares one table's rows. `keyed`: the lines carry a primary key; otherwise whole rows are
/// compared as multisets (a table without a primary key cannot pair an old row with a new one:
/// missing copies go back, changed copies are conflicts). `prefer_before`: conflicts are
/// resolved by the state before the incident instead of being left alone.
pub fn three_way(keyed: bool, before: &[Line], after: &[Line], live: &[Line], prefer_before: bool) -> Diff {
    if keyed {
        keyed_diff(before, after, live, prefer_before)
    } else {
        multiset_diff(before, after, live, prefer_before)
    }
}

fn keyed_diff(before: &[Line], after: &[Line], live: &[Line], prefer_before: bool) -> Diff {
    let index = |rows: &[Line]| -> BTreeMap<String, String> {
        rows.iter().map(|l| (l.key.clone(), l.row.clone())).collect()
    };
    let (b, a, l) = (index(before), index(after), index(live));
    let mut d = Diff::default();
    for (key, row) in &b {
        let (was, now) = (a.get(key), l.get(key));
        // The incident did not touch it (whatever happened since is ordinary traffic), or it
        // already reads as before.
        if was == Some(row) || now == Some(row) {
            continue;
        }
        let insert =
            Fix { op: Op::Insert, key: key.clone(), row: row.clone(), expect: None, copies: 1, want: 1 };
        let revert = |expect: &String| Fix {
            op: Op::Revert,
            key: key.clone(),
            row: row.clone(),
            expect: Some(expect.clone()),
            copies: 0,
            want: 1,
        };
        let conflict = |reason: &str| Conflict {
            key: key.clone(),
            reason: reason.to_string(),
            resolved_before: prefer_before,
        };
        match (was, now) {
            (None, None) => d.fixes.push(insert),
            (Some(was), Some(now)) if was == now => d.fixes.push(revert(now)),
            (Some(_), Some(now)) => {
                d.conflicts.push(conflict("changed by the incident, and changed again since by other work"));
                if prefer_before {
                    d.fixes.push(revert(now));
                }
            }
            (None, Some(now)) => {
                d.conflicts
                    .push(conflict("deleted by the incident, and a row with this key was written since"));
                if prefer_before {
                    d.fixes.push(revert(now));
                }
            }
            (Some(_), None) => {
                d.conflicts.push(conflict("changed by the incident, and deleted since by other work"));
                if prefer_before {
                    d.fixes.push(insert);
                }
            }
        }
    }
    d.added_by_incident = a.keys().filter(|k| !b.contains_key(*k)).count() as u64;
    d
}

fn multiset_diff(before: &[Line], after: &[Line], live: &[Line], prefer_before: bool) -> Diff {
    let count = |rows: &[Line]| -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for l in rows {
            *m.entry(l.row.clone()).or_insert(0) += 1;
        }
        m
    };
    let (b, a, l) = (count(before), count(after), count(live));
    let mut d = Diff::default();
    for (row, &nb) in &b {
        let na = a.get(row).copied().unwrap_or(0);
        let nl = l.get(row).copied().unwrap_or(0);
        if nb <= na || nl >= nb {
            continue;
        }
        let fix = |copies| Fix {
            op: Op::Insert,
            key: String::new(),
            row: row.clone(),
            expect: None,
            copies,
            want: nb,
        };
        if nl == na {
            d.fixes.push(fix(nb - na));
        } else {
            d.conflicts.push(Conflict {
                key: row.clone(),
                reason: format!(
                    "the incident left {na} of {nb} copies of this row (no primary key), and other work changed that to {nl} since"
                ),
                resolved_before: prefer_before,
            });
            if prefer_before {
                d.fixes.push(fix(nb - nl));
            }
        }
    }
    d.added_by_incident =
        a.iter().map(|(row, &na)| na.saturating_sub(b.get(row).copied().unwrap_or(0))).sum();
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(v: &[(&str, &str)]) -> Vec<Line> {
        v.iter().map(|(k, r)| Line { key: k.to_string(), row: r.to_string() }).collect()
    }

    #[test]
    fn deleted_rows_go_back_untouched_since_are_reverted_changed_since_are_conflicts() {
        let before = rows(&[
            ("1", "(1,a)"),
            ("2", "(2,b)"),
            ("3", "(3,c)"),
            ("4", "(4,d)"),
            ("5", "(5,e)"),
            ("6", "(6,f)"),
        ]);
        // The incident deletes 1 and 2, zeroes 3, 4 and 6; 5 it leaves alone.
        let after = rows(&[("3", "(3,0)"), ("4", "(4,0)"), ("5", "(5,e)"), ("6", "(6,0)")]);
        // Since: 2 re-created with other data, 4 topped up, 5 changed by ordinary work, 6
        // deleted, 7 is a new row.
        let live = rows(&[("2", "(2,z)"), ("3", "(3,0)"), ("4", "(4,9)"), ("5", "(5,x)"), ("7", "(7,n)")]);
        let d = three_way(true, &before, &after, &live, false);
        let ops: Vec<(Op, &str)> = d.fixes.iter().map(|f| (f.op, f.key.as_str())).collect();
        assert_eq!(ops, vec![(Op::Insert, "1"), (Op::Revert, "3")]);
        assert_eq!(d.fixes[1].expect.as_deref(), Some("(3,0)"));
        let keys: Vec<&str> = d.conflicts.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, vec!["2", "4", "6"]);
        assert_eq!((d.reinserted(), d.reverted(), d.added_by_incident), (1, 1, 0));

        let d = three_way(true, &before, &after, &live, true);
        let ops: Vec<(Op, &str)> = d.fixes.iter().map(|f| (f.op, f.key.as_str())).collect();
        assert_eq!(
            ops,
            vec![
                (Op::Insert, "1"),
                (Op::Revert, "2"),
                (Op::Revert, "3"),
                (Op::Revert, "4"),
                (Op::Insert, "6")
            ]
        );
        assert!(d.conflicts.iter().all(|c| c.resolved_before));
    }

    #[test]
    fn rows_the_incident_added_are_counted_and_never_touched() {
        let before = rows(&[("1", "(1,a)")]);
        let after = rows(&[("1", "(1,a)"), ("9", "(9,junk)")]);
        let d = three_way(true, &before, &after, &after, false);
        assert!(d.fixes.is_empty() && d.conflicts.is_empty());
        assert_eq!(d.added_by_incident, 1);
    }

    #[test]
    fn without_a_key_missing_copies_go_back_and_changed_counts_conflict() {
        let before = rows(&[("", "(1,a)"), ("", "(1,a)"), ("", "(2,b)"), ("", "(3,c)")]);
        let after = rows(&[("", "(1,a)"), ("", "(3,c)")]);
        let live = rows(&[("", "(1,a)"), ("", "(3,c)"), ("", "(3,c)")]);
        let d = three_way(false, &before, &after, &live, false);
        let fixes: Vec<(&str, u64, u64)> =
            d.fixes.iter().map(|f| (f.row.as_str(), f.copies, f.want)).collect();
        assert_eq!(fixes, vec![("(1,a)", 1, 2), ("(2,b)", 1, 1)]);
        assert!(d.conflicts.is_empty());
        let live = rows(&[("", "(3,c)")]);
        let d = three_way(false, &before, &after, &live, false);
        assert_eq!(d.fixes.iter().map(|f| f.row.as_str()).collect::<Vec<_>>(), vec!["(2,b)"]);
        assert_eq!(d.conflicts.len(), 1, "{d:?}");
    }

    #[test]
    fn copy_output_splits_at_the_first_tab_only_outside_values() {
        let l = parse_copy("(1)\t(1,\"a\\tb\")\n(2)\t(2,x)\n");
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].row, "(1,\"a\\tb\")");
    }
}
