//! The guard's policy: which classes of statement run, wait for approval or never run; row-guard
//! limits; size limits; which functions are trusted. Read from TOML with unknown fields refused.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Class;

/// What happens to a statement of some class or kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Runs (a DELETE/UPDATE with a WHERE clause still goes through the row guard).
    Allow,
    /// Needs a second person's approval.
    Approve,
    /// Never runs.
    Deny,
}

/// A per-kind override can only make a statement stricter than its class does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KindRule {
    /// Needs a second person's approval.
    Approve,
    /// Never runs.
    Deny,
}

impl From<KindRule> for Rule {
    fn from(k: KindRule) -> Rule {
        match k {
            KindRule::Approve => Rule::Approve,
            KindRule::Deny => Rule::Deny,
        }
    }
}

/// How a call to a function the guard does not know is classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownFunctions {
    /// A user-defined or unlisted function may write: class `write`.
    Write,
    /// Treat it like a known-dangerous one: class `destructive`.
    Destructive,
}

impl UnknownFunctions {
    pub(crate) fn class(self) -> Class {
        match self {
            UnknownFunctions::Write => Class::Write,
            UnknownFunctions::Destructive => Class::Destructive,
        }
    }
}

/// What each class of statement needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassRules {
    pub read: Rule,
    pub write: Rule,
    pub ddl: Rule,
    /// `allow` is refused: destruction always needs a second person (G3).
    pub destructive: Rule,
}

impl Default for ClassRules {
    fn default() -> Self {
        ClassRules { read: Rule::Allow, write: Rule::Allow, ddl: Rule::Allow, destructive: Rule::Approve }
    }
}

impl ClassRules {
    /// The rule for `class`.
    pub fn rule(&self, class: Class) -> Rule {
        match class {
            Class::Read => self.read,
            Class::Write => self.write,
            Class::Ddl => self.ddl,
            Class::Destructive => self.destructive,
        }
    }
}

/// The guard's policy (`crates/guard/policy.example.toml` shows every field).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// A Query or Parse message longer than this is denied unparsed (default 1 MiB).
    pub max_statement_bytes: usize,
    /// A Query message holding more statements than this is denied (default 256).
    pub max_statements: usize,
    /// Prepared statements one session may hold (default 10 000); more are denied, which keeps
    /// the gate's memory per connection bounded.
    pub max_prepared_statements: usize,
    /// A write (measured by the gate: DML, upserts, MERGE, calls) that updates or deletes more
    /// rows than this, all tables together, is rolled back and goes to approval.
    pub row_guard_max_rows: u64,
    /// Per-table row limits, keyed by the table (`orders`, `public.orders`), applied to the rows
    /// of that table each write changed (cascades and triggers included).
    pub row_guard_tables: BTreeMap<String, u64>,
    /// Cumulative budget: rows one person may update and delete in one table within
    /// `budget_window_seconds`, across statements and sessions (default 50 000, a safety net;
    /// set it to what one person may change alone). Over it, the
    /// statement that would cross it is rolled back and held for approval.
    pub budget_rows: u64,
    /// Cumulative budget as a share of a table (percent of its rows), for tables of at least
    /// `budget_min_table_rows` rows; the stricter of this and `budget_rows` applies. Default off.
    pub budget_table_percent: Option<f64>,
    /// Tables smaller than this are limited by `budget_rows` only (default 1000).
    pub budget_min_table_rows: u64,
    /// The sliding window of the budgets, in seconds (default 600).
    pub budget_window_seconds: u64,
    /// Calls to functions the guard does not know: `write` (default) or `destructive`.
    pub unknown_functions: UnknownFunctions,
    /// Functions treated as destructive in addition to the built-in list (`name` or
    /// `schema.name`, matched case-insensitively).
    pub dangerous_functions: Vec<String>,
    /// Functions treated as read-only (`name` or `schema.name`, matched exactly as PostgreSQL
    /// resolves them: lower case unless created with a quoted name).
    pub safe_functions: Vec<String>,
    /// What each class needs.
    pub classes: ClassRules,
    /// Per statement kind, stricter than the class: `alter_system = "deny"`. Keys are kinds in
    /// snake case (`drop_table`, `truncate`, `delete`, `copy`, `set_role`…).
    pub kinds: BTreeMap<String, KindRule>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_statement_bytes: 1024 * 1024,
            max_statements: 256,
            max_prepared_statements: 10_000,
            row_guard_max_rows: 1000,
            row_guard_tables: BTreeMap::new(),
            budget_rows: 50_000,
            budget_table_percent: None,
            budget_min_table_rows: 1000,
            budget_window_seconds: 600,
            unknown_functions: UnknownFunctions::Write,
            dangerous_functions: Vec::new(),
            safe_functions: Vec::new(),
            classes: ClassRules::default(),
            kinds: BTreeMap::new(),
        }
    }
}

/// Why a policy file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Not valid TOML, or a field that does not exist, or a value of the wrong type.
    #[error("guard policy: {0}")]
    Toml(String),
    /// Valid TOML, but a value that would weaken the guard or cannot be right.
    #[error("guard policy: {0}")]
    Invalid(String),
}

impl Policy {
    /// Parses and validates a policy file.
    pub fn from_toml(text: &str) -> Result<Policy, PolicyError> {
        let policy: Policy =
            toml::from_str(text).map_err(|e| PolicyError::Toml(e.to_string().trim().to_string()))?;
        policy.validate()?;
        Ok(policy)
    }

    /// Checks the values: destruction can never be allowed without approval, limits are
    /// non-zero, kind overrides name real kinds, function names are well-formed.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.classes.destructive == Rule::Allow {
            return Err(PolicyError::Invalid(
                "classes.destructive = \"allow\" is refused: destructive statements need a second \
                 person's approval; use \"approve\" or \"deny\""
                    .into(),
            ));
        }
        for (name, v) in [
            ("max_statement_bytes", self.max_statement_bytes),
            ("max_statements", self.max_statements),
            ("max_prepared_statements", self.max_prepared_statements),
        ] {
            if v == 0 {
                return Err(PolicyError::Invalid(format!(
                    "{name} = 0 would refuse every statement; remove it to use the default"
                )));
            }
        }
        if self.budget_rows == 0 || self.budget_window_seconds == 0 {
            return Err(PolicyError::Invalid(
                "budget_rows and budget_window_seconds must be at least 1 (a budget of 0 would hold every write)".into(),
            ));
        }
        if let Some(p) = self.budget_table_percent
            && !(p > 0.0 && p <= 100.0)
        {
            return Err(PolicyError::Invalid(format!(
                "budget_table_percent = {p}: write a share between 0 and 100 (e.g. 5.0), or remove it"
            )));
        }
        let known = crate::classify::known_kinds();
        for kind in self.kinds.keys() {
            if !known.contains(kind.as_str()) {
                let mut near: Vec<&String> =
                    known.iter().filter(|k| k.contains(kind.as_str()) || kind.contains(k.as_str())).collect();
                near.truncate(5);
                let hint = if near.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (did you mean one of: {})",
                        near.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                    )
                };
                return Err(PolicyError::Invalid(format!(
                    "kinds.{kind}: no statement has this kind{hint}; kinds are snake case, e.g. \
                     alter_system, drop_table, truncate, delete, copy, set_role"
                )));
            }
        }
        for (field, list) in
            [("dangerous_functions", &self.dangerous_functions), ("safe_functions", &self.safe_functions)]
        {
            for f in list {
                let parts: Vec<&str> = f.split('.').collect();
                if f.is_empty() || parts.len() > 2 || parts.iter().any(|p| p.is_empty()) {
                    return Err(PolicyError::Invalid(format!(
                        "{field}: {f:?} is not a function name; write `name` or `schema.name`"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The row limit for a DELETE/UPDATE on `table` (as written in the statement): the strictest
    /// of the per-table entries that name it, else `row_guard_max_rows`.
    pub fn max_rows_for(&self, table: &str) -> u64 {
        let bare = table.rsplit('.').next().unwrap_or(table);
        let candidates = [table.to_string(), bare.to_string(), format!("public.{bare}")];
        let qualified_elsewhere = table.contains('.') && !table.starts_with("public.");
        candidates
            .iter()
            .enumerate()
            // `public.orders` in the policy says nothing about `app.orders`.
            .filter(|(i, _)| !(qualified_elsewhere && *i == 2))
            .filter_map(|(_, k)| self.row_guard_tables.get(k).copied())
            .min()
            .unwrap_or(self.row_guard_max_rows)
    }
}
