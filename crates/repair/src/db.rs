//! Talking to PostgreSQL through its own client programs (`psql`, `pg_dump`): the live
//! database by the operator's connection string (through the gate when one is configured — a
//! repair is audited like any person's work), the restored scratch copies by their private
//! socket.
//!
//! Every session reads with the same settings, so that the same row prints the same text on
//! every side (time zone, date and interval styles, float digits, bytea format).

use std::path::{Path, PathBuf};

use crate::RepairError;

/// Settings every session of a repair runs with, before anything else.
pub const SESSION_SETTINGS: &[&str] = &[
    "SET TimeZone = 'UTC'",
    "SET DateStyle = 'ISO, MDY'",
    "SET IntervalStyle = 'postgres'",
    "SET extra_float_digits = 3",
    "SET bytea_output = 'hex'",
];

/// Field separator of `query` results (a control character no identifier we read holds).
pub const SEP: char = '\u{1f}';

/// A database to run client programs against.
#[derive(Debug, Clone)]
pub enum Conn {
    /// The live database: a libpq connection string or URI.
    Live { dsn: String },
    /// A restored scratch copy: trust on its private socket.
    Scratch { socket_dir: PathBuf, port: u16, user: String, db: String },
}

impl Conn {
    pub fn describe(&self) -> String {
        match self {
            Conn::Live { .. } => "the live database".to_string(),
            Conn::Scratch { socket_dir, port, db, .. } => {
                format!("the restored copy (database {db}, port {port}, socket {})", socket_dir.display())
            }
        }
    }

    fn command(&self, bindir: &Path, program: &str) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(bindir.join(program));
        match self {
            Conn::Live { dsn } => {
                c.arg("-d").arg(dsn);
            }
            Conn::Scratch { socket_dir, port, user, db } => {
                c.arg("-h").arg(socket_dir).args(["-p", &port.to_string(), "-U", user, "-d", db]);
            }
        }
        c.kill_on_drop(true);
        c
    }

    /// Runs `sql` (one statement) and returns its rows, fields split at [`SEP`].
    pub async fn query(&self, bindir: &Path, sql: &str) -> Result<Vec<Vec<String>>, RepairError> {
        self.query_in(bindir, None, sql).await
    }

    /// [`Conn::query`] with `search_path` set first (`pg_catalog` alone makes
    /// `pg_get_constraintdef` and `::regclass` qualify every name).
    pub async fn query_in(
        &self,
        bindir: &Path,
        search_path: Option<&str>,
        sql: &str,
    ) -> Result<Vec<Vec<String>>, RepairError> {
        let set = search_path.map(|p| format!("SET search_path = {p}"));
        let out = self.psql_with(bindir, set.as_deref(), sql, &["-At", "-F", &SEP.to_string()]).await?;
        Ok(out.lines().map(|l| l.split(SEP).map(str::to_string).collect()).collect())
    }

    /// `COPY (select) TO STDOUT` in text format, or with `csv` as CSV with a header.
    pub async fn copy_out(&self, bindir: &Path, select: &str, csv: bool) -> Result<String, RepairError> {
        let fmt = if csv { " WITH (FORMAT csv, HEADER)" } else { "" };
        self.psql(bindir, &format!("COPY ({select}) TO STDOUT{fmt}"), &[]).await
    }

    async fn psql(&self, bindir: &Path, sql: &str, extra: &[&str]) -> Result<String, RepairError> {
        self.psql_with(bindir, None, sql, extra).await
    }

    async fn psql_with(
        &self,
        bindir: &Path,
        set: Option<&str>,
        sql: &str,
        extra: &[&str],
    ) -> Result<String, RepairError> {
        let mut c = self.command(bindir, "psql");
        c.args(["-X", "-q", "-v", "ON_ERROR_STOP=1"]).args(extra);
        // Reads never wait long behind a lock (an application's, or a replayed one).
        for s in SESSION_SETTINGS.iter().copied().chain(["SET lock_timeout = '60s'"]).chain(set) {
            c.arg("-c").arg(s);
        }
        c.arg("-c").arg(sql);
        let out = c.output().await.map_err(|e| RepairError::Io { what: "running psql".into(), source: e })?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        Err(RepairError::Postgres {
            on: self.describe(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }

    /// Runs a script file with psql, stopping at the first error (the script's transaction is
    /// then never committed: psql exits and the server rolls it back). Returns psql's stderr
    /// (notices) on success.
    pub async fn run_script(&self, bindir: &Path, script: &Path) -> Result<String, RepairError> {
        let mut c = self.command(bindir, "psql");
        c.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f"]).arg(script);
        let out = c.output().await.map_err(|e| RepairError::Io { what: "running psql".into(), source: e })?;
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if out.status.success() {
            return Ok(stderr);
        }
        Err(RepairError::Postgres { on: self.describe(), message: stderr })
    }

    /// `pg_dump` of one table in plain SQL, the given sections.
    pub async fn dump_table(
        &self,
        bindir: &Path,
        table: &str,
        sections: &[&str],
        no_owner: bool,
    ) -> Result<String, RepairError> {
        let mut c = self.command(bindir, "pg_dump");
        c.arg("-t").arg(table).arg("--lock-wait-timeout=60s");
        for s in sections {
            c.arg(format!("--section={s}"));
        }
        if no_owner {
            c.arg("--no-owner");
        }
        let out =
            c.output().await.map_err(|e| RepairError::Io { what: "running pg_dump".into(), source: e })?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        Err(RepairError::Postgres {
            on: format!("pg_dump of {table} from {}", self.describe()),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// `"ident"` with quotes doubled.
pub fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `'literal'` with quotes doubled (`standard_conforming_strings` is on in every supported
/// PostgreSQL by default; the gate refuses sessions where it is off).
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
