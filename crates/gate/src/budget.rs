//! Cumulative row budgets: rows updated and deleted per person and per table over a sliding
//! window, counted together across statements and sessions — twenty DELETEs of 100 rows are
//! held like one of 2,000. Fed with what the database itself counted for each measured write.

use std::collections::{BTreeMap, HashMap, VecDeque};
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

/// Consumption per (person, table).
#[derive(Default)]
pub struct Budgets {
    used: Mutex<HashMap<(String, String), VecDeque<Use>>>,
}

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
        q.push_back(Use { at: Instant::now(), rows, sql });
        // Bounded memory: very many tiny statements fold into the oldest entry kept.
        if q.len() > 4096
            && let Some(a) = q.pop_front()
            && let Some(b) = q.front_mut()
        {
            b.rows += a.rows;
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
