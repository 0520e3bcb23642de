//! `holdfast repair`: bring one incident's destruction back into the live database, per table
//! or per tenant, without rewinding anything else (the work is in the `repair` crate).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use clap::Args;
use repair::{Damage, Prefer, Tenant, Triggers};
use restore::Target;

/// Arguments of `holdfast repair`.
#[derive(Args)]
#[command(group(clap::ArgGroup::new("damage").required(true).args(["incident", "before"])))]
pub struct RepairArgs {
    #[command(flatten)]
    pub remote: crate::Remote,
    /// The cluster's name in the vault's config.
    #[arg(long)]
    pub cluster: String,
    /// Repair incident N (`holdfast incidents`): its transaction, its tables.
    #[arg(long)]
    pub incident: Option<usize>,
    /// Instead of an incident: the good state, at this time (RFC 3339; with --after).
    #[arg(long, requires = "after")]
    pub before: Option<store::Timestamp>,
    /// The state just after the damage (with --before).
    #[arg(long, requires = "before")]
    pub after: Option<store::Timestamp>,
    /// Only these tables (db.schema.table, schema.table or table; repeatable). With
    /// --incident they must be among its tables (or tables its cascades changed).
    #[arg(long = "table")]
    pub tables: Vec<String>,
    /// Only this tenant's rows: column=value, e.g. merchant_id=42.
    #[arg(long)]
    pub tenant: Option<Tenant>,
    /// The live database (a libpq connection string or URI; through the gate when one is
    /// configured), e.g. "host=db1 dbname=shop user=alice".
    #[arg(long, env = "HOLDFAST_REPAIR_DSN")]
    pub dsn: String,
    /// Conflicts (rows changed again since the damage): `live` leaves them (default),
    /// `before` sets them back; per table as TABLE=before|live (repeatable).
    #[arg(long = "prefer")]
    pub prefer: Vec<String>,
    /// Let user triggers fire (default: off via session_replication_role = replica when the
    /// login may set it, else on).
    #[arg(long, conflicts_with = "without_triggers")]
    pub with_triggers: bool,
    /// Triggers off, or refuse when the login may not set session_replication_role.
    #[arg(long)]
    pub without_triggers: bool,
    /// Recreate a dropped table under this name (one --table).
    #[arg(long = "as")]
    pub rename: Option<String>,
    /// statement_timeout of the repair's transaction, in seconds.
    #[arg(long, default_value_t = 300)]
    pub statement_timeout: u64,
    /// Print the plan and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Write the scope as of before the damage (CSV per table) here instead of repairing.
    #[arg(long, conflicts_with = "dry_run")]
    pub export: Option<PathBuf>,
    /// Where the two scratch copies go (default: a new directory in the temp dir); removed
    /// at the end.
    #[arg(long)]
    pub scratch: Option<PathBuf>,
    /// Minutes each scratch restore may take.
    #[arg(long, default_value_t = 60)]
    pub timeout_minutes: u64,
    /// Print the report as one JSON object (the plan is not printed).
    #[arg(long)]
    pub json: bool,
    /// Also write the report as JSON to this file (a record of what was repaired).
    #[arg(long)]
    pub report: Option<PathBuf>,
}

fn side(s: &str) -> Result<Prefer> {
    match s {
        "before" => Ok(Prefer::Before),
        "live" => Ok(Prefer::Live),
        other => Err(anyhow!("--prefer {other:?}: expected before or live (optionally TABLE=before|live)")),
    }
}

pub async fn repair(a: RepairArgs) -> Result<u8> {
    let damage = match (a.incident, a.before, a.after) {
        (Some(n), ..) => Damage::Incident(n),
        (None, Some(b), Some(t)) => Damage::Window { before: Target::Time(b), after: Target::Time(t) },
        _ => anyhow::bail!("name the damage: --incident N, or --before T --after T2"),
    };
    let mut prefer = Prefer::Live;
    let mut prefer_table = Vec::new();
    for p in &a.prefer {
        match p.rsplit_once('=') {
            Some((t, s)) => prefer_table.push((t.to_string(), side(s)?)),
            None => prefer = side(p)?,
        }
    }
    let ca_pem = std::fs::read_to_string(&a.remote.ca)
        .with_context(|| format!("reading the vault certificate {}", a.remote.ca.display()))?;
    let token = std::fs::read_to_string(&a.remote.token_file)
        .with_context(|| format!("reading the token file {}", a.remote.token_file.display()))?
        .trim()
        .to_string();
    let opts = repair::Options {
        cluster: a.cluster.clone(),
        damage,
        tables: a.tables.clone(),
        tenant: a.tenant.clone(),
        dsn: a.dsn.clone(),
        prefer,
        prefer_table,
        triggers: if a.with_triggers {
            Triggers::On
        } else if a.without_triggers {
            Triggers::Off
        } else {
            Triggers::Auto
        },
        rename: a.rename.clone(),
        statement_timeout: Duration::from_secs(a.statement_timeout),
        scratch: a.scratch.clone(),
        restore_timeout: Duration::from_secs(a.timeout_minutes * 60),
        url: a.remote.url.clone(),
        ca_pem,
        token,
        holdfast_exe: std::env::current_exe().context("locating the holdfast binary for restore_command")?,
    };
    let tty = std::io::stderr().is_terminal();
    let progress = move |line: &str| {
        if tty {
            eprintln!("\x1b[2m{line}\x1b[0m");
        } else {
            eprintln!("{line}");
        }
    };
    // Ctrl-C drops the work in progress: the scratch copies are stopped and removed, and a
    // transaction under way is rolled back (its psql is killed before COMMIT).
    let work = async {
        let prepared = repair::prepare(&opts, &progress).await?;
        if !a.json {
            print!("{}", prepared.report().plan_text());
        }
        if let Some(dir) = &a.export {
            prepared.export(dir).await
        } else if a.dry_run {
            Ok(prepared.dry_run())
        } else {
            progress("applying the repair in one transaction");
            prepared.apply().await
        }
    };
    let report = tokio::select! {
        r = work => r.map_err(|e| anyhow!("{e}"))?,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("\ninterrupted: nothing was committed; the scratch copies are removed");
            return Ok(130);
        }
    };
    if let Some(path) = &a.report {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing the report to {}", path.display()))?;
    }
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        for v in &report.verified {
            println!("{v}");
        }
        println!("{}", report.verdict);
    }
    Ok(0)
}
