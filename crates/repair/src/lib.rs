//! Repair without rewinding the world: bring one incident's destruction back into the live
//! database, per table or per tenant, while everything else keeps running.
//!
//! In the operator's trust domain, like `restore`: a read token for the vault and a login for
//! the live database (through the gate when one is configured). The steps:
//!
//! 1. **Pick the damage** ([`Damage`]): an incident (its transaction, its objects, the restore
//!    target just before it) or a window `--before T --after T2`; optionally narrowed to
//!    tables and to one tenant (`merchant_id=42`). Bad input is refused before anything is
//!    restored: an unknown incident, a table outside the incident's objects, a tenant column a
//!    table lacks, a live login without the rights the repair needs.
//! 2. **Restore two scratch copies** at once with the `restore` crate: just *before* the
//!    incident (exclusive; promoted there, so that a DROP's or TRUNCATE's replayed lock is
//!    released) and just *after* it (inclusive, paused), reachable only through private
//!    sockets, stopped and removed at the end.
//! 3. **Three-way** ([`diff`]): per row (by primary key; whole rows as a multiset for a table
//!    without one), before vs after vs live: absent now but present before → re-insert;
//!    present now and still as the incident left it → revert; changed again since → conflict,
//!    left alone unless the table prefers `before`. Rows created after the incident are never
//!    touched. Tables dropped by the incident (absent live) are recreated with `pg_dump` of
//!    the *before* copy: columns, defaults, constraints, indexes, grants, sequences and their
//!    positions, and the foreign keys of other tables that pointed at them.
//! 4. **Apply** ([`Prepared::apply`]): one psql script, one transaction: recreated tables,
//!    then re-inserts and reverts in foreign-key order (parents first), sequences moved past
//!    re-inserted ids, a statement and lock timeout, triggers off (`session_replication_role
//!    = replica`) only where the login may and unless `--with-triggers`; at the end, inside the
//!    transaction, a verification (every repaired row and its checksum equal the state before;
//!    recreated tables' counts and checksums equal) that raises an error — rolling everything
//!    back — before COMMIT.
//!
//! Or **export** ([`Prepared::export`]): the scope as of before the incident, one CSV per
//! table, for a merchant who wants their data or for merging by hand.

pub mod db;
pub mod diff;
mod plan;

pub use plan::{Prepared, Report, TableReport};

use std::path::PathBuf;
use std::time::Duration;

use restore::Target;

/// Errors of a repair, each saying what was wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    /// Bad input, refused before anything was changed.
    #[error("{0} (nothing was changed)")]
    Refused(String),
    #[error("the vault: {0}")]
    Vault(#[from] vault_api::ClientError),
    #[error("restoring the {which} copy: {source}")]
    Restore { which: &'static str, source: restore::RestoreError },
    #[error("{on}: {message}")]
    Postgres { on: String, message: String },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    /// The repair's transaction failed (an error or the final verification) and was rolled
    /// back.
    #[error(
        "the repair failed and was rolled back, the live database is unchanged: {0}\n(rerun to plan again against the rows as they are now)"
    )]
    RolledBack(String),
}

/// What to repair.
#[derive(Debug, Clone)]
pub enum Damage {
    /// Incident N of the cluster (1-based, as `holdfast incidents` numbers them).
    Incident(usize),
    /// The state at `before` is the good one; `after` is the state just after the damage.
    Window { before: Target, after: Target },
}

/// `column=value`: only this tenant's rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub column: String,
    pub value: String,
}

/// A tenant that is not `column=value` (the text as given).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?}: expected column=value, e.g. merchant_id=42")]
pub struct TenantError(pub String);

impl std::str::FromStr for Tenant {
    type Err = TenantError;
    fn from_str(s: &str) -> Result<Tenant, TenantError> {
        match s.split_once('=') {
            Some((c, v)) if !c.trim().is_empty() && !v.is_empty() => {
                Ok(Tenant { column: c.trim().to_string(), value: v.to_string() })
            }
            _ => Err(TenantError(s.to_string())),
        }
    }
}

/// How the repair treats triggers on the repaired tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Triggers {
    /// Off (`session_replication_role = replica`) when the login may set it, else on.
    Auto,
    /// On: user triggers fire as for any write.
    On,
    /// Off, or refuse when the login may not.
    Off,
}

/// Which side wins a conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Prefer {
    /// Leave the row as it is now (the default): reported only.
    Live,
    /// Set it back to its state before the incident anyway.
    Before,
}

/// One repair.
#[derive(Debug, Clone)]
pub struct Options {
    pub cluster: String,
    pub damage: Damage,
    /// `db.schema.table`, `schema.table` or `table` (schema `public`); empty: every table of
    /// the incident in the live database (and tables whose rows a cascade from them removes).
    pub tables: Vec<String>,
    pub tenant: Option<Tenant>,
    /// The live database's connection string (libpq), e.g. through the gate.
    pub dsn: String,
    /// Default side for conflicts, and per table (`schema.table` → side).
    pub prefer: Prefer,
    pub prefer_table: Vec<(String, Prefer)>,
    pub triggers: Triggers,
    /// Recreate a dropped table under this name instead of its own.
    pub rename: Option<String>,
    pub statement_timeout: Duration,
    /// Where the scratch copies go (default: a new directory under the system's temp dir).
    pub scratch: Option<PathBuf>,
    /// How long each scratch restore may take.
    pub restore_timeout: Duration,
    pub url: String,
    pub ca_pem: String,
    pub token: String,
    /// The holdfast binary the scratch restores' `restore_command` runs.
    pub holdfast_exe: PathBuf,
}

/// The environment variable naming SQL that [`Prepared::apply`] runs on the live database
/// right before the repair's transaction: a test hook that plays a concurrent writer changing
/// a row between the plan and the repair (the verification must then roll back).
pub const TEST_HOOK_ENV: &str = "HOLDFAST_REPAIR_TEST_BEFORE_APPLY_SQL";

pub use plan::prepare;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_is_column_equals_value() {
        let t: Tenant = " merchant_id=42".parse().unwrap();
        assert_eq!(t, Tenant { column: "merchant_id".into(), value: "42".into() });
        for bad in ["merchant_id", "=42", "merchant_id="] {
            let e = bad.parse::<Tenant>().unwrap_err();
            assert_eq!(e, TenantError(bad.into()));
            assert!(e.to_string().contains("expected column=value"), "{e}");
        }
    }
}
