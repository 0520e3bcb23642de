//! Cumulative row budgets: rows updated and deleted per person and per table over a sliding
//! window, counted together across statements and sessions — twenty DELETEs of 100 rows are
//! held like one of 2,000. Fed with what the database itself counted for each measured write.
//!
//! The consumption survives a restart of the gate: each kept write is appended (one JSON line,
//! written before the client sees the statement's answers; not fsynced, so a process kill loses
//! nothing and a host crash at most what the OS had not written) to `state_dir/budgets.jsonl`,
//! which is read back at start — entries older than the window are dropped and the file
//! rewritten — so restarting the gate does not hand anyone a fresh budget.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// The limits, from the guard's policy.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub window: Duration,
    /// Rows per person and table within the window.
    pub rows: u64,
    /// Share of a table's rows per person within the window (percent), for tables of at
    /// least `min_table_rows` rows; `None`: no share limit.
    pub table_percent: Option<f64>,
    pub min_table_rows: u64,
}

impl Limits {
    pub fn from_policy(p: &guard::Policy) -> Limits {
        Limits {
            window: Duration::from_secs(p.budget_window_seconds),
            rows: p.budget_rows,
            table_percent: p.budget_table_percent,
            min_table_rows: p.budget_min_table_rows,
        }
    }

    /// The most rows of a table of `table_rows` rows one person may change in a window.
    pub fn limit_for(&self, table_rows: u64) -> u64 {
        match self.table_percent {
            Some(pct) if table_rows >= self.min_table_rows => {
                let share = ((table_rows as f64) * pct / 100.0).floor() as u64;
                self.rows.min(share.max(1))
            }
            _ => self.rows,
        }
    }
}

struct Use {
    at: Instant,
    rows: u64,
    sql: String,
}

/// One line of `budgets.jsonl`.
#[derive(Serialize, serde::Deserialize)]
struct Line {
    /// Unix seconds.
    at: u64,
    person: String,
    table: String,
    rows: u64,
    sql: String,
}

/// Consumption per (person, table).
#[derive(Default)]
pub struct Budgets {
    used: Mutex<HashMap<(String, String), VecDeque<Use>>>,
    /// Where each kept write is appended (None: memory only), and lines appended since the
    /// file was last rewritten.
    file: Mutex<Option<(PathBuf, std::fs::File, u64)>>,
}

/// Lines appended before the file is rewritten from what is still within the window.
const COMPACT_AFTER: u64 = 100_000;

/// One table's consumption, for `holdfast gate status` and approval requests.
#[derive(Debug, Clone, Serialize)]
pub struct Consumption {
    pub person: String,
    pub table: String,
    pub rows: u64,
    pub statements: usize,
    /// The statements that consumed it, newest last (at most 5, truncated).
    pub recent: Vec<String>,
}

impl Budgets {
    /// Budgets kept in `path`: what was consumed within `window` before (by earlier runs of the
    /// gate) counts again. Unreadable lines are skipped with a warning; a file that cannot be
    /// written is an error (the gate would otherwise forget consumption silently).
    pub fn open(path: &Path, window: Duration) -> std::io::Result<Budgets> {
        let b = Budgets::default();
        let now_unix = crate::approvals::unix_now();
        let now = Instant::now();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let mut m = b.used.lock().unwrap_or_else(|e| e.into_inner());
                for (i, l) in text.lines().enumerate() {
                    let Ok(line) = serde_json::from_str::<Line>(l) else {
                        if !l.trim().is_empty() {
                            tracing::warn!(path = %path.display(), line = i + 1, "skipping an unreadable budget line");
                        }
                        continue;
                    };
                    let age = Duration::from_secs(now_unix.saturating_sub(line.at));
                    if age > window {
                        continue;
                    }
                    let at = now.checked_sub(age).unwrap_or(now);
                    m.entry((line.person, line.table)).or_default().push_back(Use {
                        at,
                        rows: line.rows,
                        sql: line.sql,
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        b.rewrite(path)?;
        Ok(b)
    }

    /// Rewrites the file from memory (atomically) and keeps it open for appending.
    fn rewrite(&self, path: &Path) -> std::io::Result<()> {
        let now_unix = crate::approvals::unix_now();
        let now = Instant::now();
        let mut text = String::new();
        {
            let m = self.used.lock().unwrap_or_else(|e| e.into_inner());
            for ((person, table), q) in m.iter() {
                for u in q {
                    let line = Line {
                        at: now_unix.saturating_sub(now.duration_since(u.at).as_secs()),
                        person: person.clone(),
                        table: table.clone(),
                        rows: u.rows,
                        sql: u.sql.clone(),
                    };
                    text.push_str(&serde_json::to_string(&line).unwrap_or_default());
                    text.push('\n');
                }
            }
        }
        let tmp = path.with_extension("jsonl.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)?;
        let f = std::fs::OpenOptions::new().append(true).open(path)?;
        *self.file.lock().unwrap_or_else(|e| e.into_inner()) = Some((path.to_path_buf(), f, 0));
        Ok(())
    }

    fn prune(q: &mut VecDeque<Use>, window: Duration, now: Instant) {
        while q.front().is_some_and(|u| now.duration_since(u.at) > window) {
            q.pop_front();
        }
    }

    /// Rows `person` changed in `table` within the window.
    pub fn used(&self, person: &str, table: &str, window: Duration) -> u64 {
        let mut m = self.used.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match m.get_mut(&(person.to_string(), table.to_string())) {
            Some(q) => {
                Self::prune(q, window, now);
                q.iter().map(|u| u.rows).sum()
            }
            None => 0,
        }
    }

    /// Records rows a statement changed (kept, not rolled back).
    pub fn record(&self, person: &str, table: &str, rows: u64, sql: &str) {
        if rows == 0 {
            return;
        }
        let mut m = self.used.lock().unwrap_or_else(|e| e.into_inner());
        let q = m.entry((person.to_string(), table.to_string())).or_default();
        let sql = if sql.len() > 120 {
            let mut end = 120;
            while !sql.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}…", &sql[..end])
        } else {
            sql.to_string()
        };
        let line = Line {
            at: crate::approvals::unix_now(),
            person: person.to_string(),
            table: table.to_string(),
            rows,
            sql: sql.clone(),
        };
        q.push_back(Use { at: Instant::now(), rows, sql });
        // Bounded memory: very many tiny statements fold into the oldest entry kept.
        if q.len() > 4096
            && let Some(a) = q.pop_front()
            && let Some(b) = q.front_mut()
        {
            b.rows += a.rows;
        }
        drop(m);
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let mut compact = None;
        if let Some((path, file, appended)) = f.as_mut() {
            let mut l = serde_json::to_string(&line).unwrap_or_default();
            l.push('\n');
            if let Err(e) = file.write_all(l.as_bytes()) {
                tracing::warn!(path = %path.display(), error = %e, "recording a budget's consumption failed; it counts until the gate restarts");
            }
            *appended += 1;
            if *appended > COMPACT_AFTER {
                compact = Some(path.clone());
            }
        }
        drop(f);
        if let Some(path) = compact
            && let Err(e) = self.rewrite(&path)
        {
            tracing::warn!(path = %path.display(), error = %e, "rewriting the budgets file failed");
        }
    }

    /// Everything consumed within the window, by person and table.
    pub fn snapshot(&self, window: Duration) -> Vec<Consumption> {
        let mut m = self.used.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let mut out = BTreeMap::new();
        for ((person, table), q) in m.iter_mut() {
            Self::prune(q, window, now);
            if q.is_empty() {
                continue;
            }
            out.insert(
                (person.clone(), table.clone()),
                Consumption {
                    person: person.clone(),
                    table: table.clone(),
                    rows: q.iter().map(|u| u.rows).sum(),
                    statements: q.len(),
                    recent: q.iter().rev().take(5).rev().map(|u| u.sql.clone()).collect(),
                },
            );
        }
        m.retain(|_, q| !q.is_empty());
        out.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumption_adds_up_per_person_and_table() {
        let b = Budgets::default();
        let w = Duration::from_secs(600);
        for _ in 0..20 {
            b.record("alice", "public.orders", 100, "DELETE FROM orders WHERE …");
        }
        b.record("bob", "public.orders", 7, "x");
        assert_eq!(b.used("alice", "public.orders", w), 2000);
        assert_eq!(b.used("alice", "public.customers", w), 0);
        assert_eq!(b.used("bob", "public.orders", w), 7);
        let s = b.snapshot(w);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].statements, 20);
        // Outside the window nothing counts.
        assert_eq!(b.used("alice", "public.orders", Duration::ZERO), 0);
    }

    #[test]
    fn consumption_survives_a_restart_within_its_window() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("budgets.jsonl");
        let w = Duration::from_secs(600);
        let b = Budgets::open(&path, w).unwrap();
        b.record("alice", "public.orders", 300, "DELETE FROM orders WHERE id < 300");
        b.record("alice", "public.orders", 200, "DELETE FROM orders WHERE id < 500");
        drop(b);
        // An entry from before the window, and a torn last line (a crash mid-write).
        let mut text = std::fs::read_to_string(&path).unwrap();
        let old = crate::approvals::unix_now() - 3600;
        text.push_str(&format!(
            "{{\"at\":{old},\"person\":\"alice\",\"table\":\"public.orders\",\"rows\":999,\"sql\":\"x\"}}\n{{\"at\":1"
        ));
        std::fs::write(&path, text).unwrap();
        let b = Budgets::open(&path, w).unwrap();
        assert_eq!(b.used("alice", "public.orders", w), 500);
        assert_eq!(b.snapshot(w)[0].recent.len(), 2);
        b.record("alice", "public.orders", 1, "y");
        drop(b);
        let b = Budgets::open(&path, w).unwrap();
        assert_eq!(b.used("alice", "public.orders", w), 501);
        // The file was rewritten without the old entry and the torn line.
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 3);
    }

    #[test]
    fn share_limits_apply_to_big_tables_only() {
        let l = Limits {
            window: Duration::from_secs(600),
            rows: 1000,
            table_percent: Some(5.0),
            min_table_rows: 1000,
        };
        assert_eq!(l.limit_for(100), 1000);
        assert_eq!(l.limit_for(4000), 200);
        assert_eq!(l.limit_for(1_000_000), 1000);
    }
}
