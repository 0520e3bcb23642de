//! `holdfast audit verify|search|keygen`: check the gate's audit chain as the vault holds it,
//! answer "who did what from where", and create a gate's audit signing key.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use audit::{AuditTime, EventKind, Filter, Record, StoredBatch, Trust, VerifyReport};
use clap::{Args, Subcommand};
use ed25519_dalek::VerifyingKey;
use vault_api::VaultClient;

use crate::{EXIT_DAMAGE, Remote};

#[derive(Subcommand)]
pub(crate) enum AuditCommand {
    /// Check every audit batch the vault holds: trusted signatures, each record's hash, the
    /// chain from seq 1 with no gap, reordering or conflicting duplicate. Exit 3 naming the
    /// first bad record of each damaged gate.
    Verify {
        #[command(flatten)]
        scope: Scope,
        #[arg(long)]
        json: bool,
    },
    /// Who did what from where: verified records filtered by person, time, kind and text.
    /// Exit 3 (results still printed) if the log fails verification.
    Search {
        #[command(flatten)]
        scope: Scope,
        /// Exactly this person (gate user).
        #[arg(long)]
        person: Option<String>,
        /// From this time on: RFC 3339 (2026-11-23T09:00:00Z) or a duration ago (90s, 15m, 24h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Before this time (same forms as --since).
        #[arg(long)]
        until: Option<String>,
        /// Only this kind of event (statement, verdict, approved, connect…); repeatable.
        #[arg(long = "kind")]
        kinds: Vec<String>,
        /// This text (case-insensitive) in the SQL, any detail, or the client address.
        #[arg(long)]
        text: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Create a gate's audit signing key (file mode 0600); prints the public key to give to
    /// whoever runs `audit verify --trust-key`.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
}

/// Which records to check, and against which keys.
#[derive(Args)]
pub(crate) struct Scope {
    #[command(flatten)]
    remote: Remote,
    /// A gate's public audit key (64 hex digits, or a file holding it); repeatable. Without
    /// one, each gate's first stored batch's key is trusted and the chain is only shown to be
    /// self-consistent.
    #[arg(long = "trust-key")]
    trust_keys: Vec<String>,
    /// Only this gate's chain.
    #[arg(long)]
    gate: Option<String>,
}

pub(crate) async fn run(cmd: AuditCommand) -> Result<u8> {
    match cmd {
        AuditCommand::Keygen { out } => {
            let key = audit::keyfile::generate(&out)?;
            println!("{}", audit::key_hex(&key.verifying_key()));
            eprintln!(
                "audit signing key written to {} (mode 0600): keep it on the gate host only; give the public key above to the auditors",
                out.display()
            );
            Ok(0)
        }
        AuditCommand::Verify { scope, json } => {
            let report = fetch_and_verify(&scope).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_report(&report);
            }
            Ok(if report.intact { 0 } else { EXIT_DAMAGE })
        }
        AuditCommand::Search { scope, person, since, until, kinds, text, json } => {
            let filter = Filter {
                person,
                since: since.as_deref().map(|s| parse_when("--since", s)).transpose()?,
                until: until.as_deref().map(|s| parse_when("--until", s)).transpose()?,
                kind: kinds
                    .iter()
                    .map(|k| k.parse::<EventKind>().map_err(|e| anyhow!("--kind: {e}")))
                    .collect::<Result<_>>()?,
                text,
            };
            let report = fetch_and_verify(&scope).await?;
            if !report.intact {
                eprintln!(
                    "WARNING: the audit log failed verification ({}); the results below come only from batches that verified — run `holdfast audit verify`",
                    report.first_problem().map(|p| p.to_string()).unwrap_or_default()
                );
            }
            let multi_gate = report.gates.len() > 1;
            let mut hits: Vec<(&str, Record)> = Vec::new();
            for g in &report.gates {
                hits.extend(audit::search(&g.accepted, &filter).into_iter().map(|r| (g.gate.as_str(), r)));
            }
            hits.sort_by_key(|(g, r)| (r.time, *g, r.seq));
            if json {
                let rows: Vec<serde_json::Value> = hits
                    .iter()
                    .map(|(g, r)| {
                        serde_json::json!({
                            "gate": g, "seq": r.seq, "time": r.time, "person": r.event.person,
                            "client": r.event.client, "session": r.event.session, "kind": r.event.kind,
                            "detail": r.event.detail, "hash": r.hash,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print_table(&hits, multi_gate);
            }
            Ok(if report.intact { 0 } else { EXIT_DAMAGE })
        }
    }
}

/// RFC 3339, or a duration before now.
fn parse_when(flag: &str, text: &str) -> Result<AuditTime> {
    if let Ok(t) = text.parse::<AuditTime>() {
        return Ok(t);
    }
    match vault::config::parse_duration(text) {
        Ok(d) => Ok(AuditTime::now().minus(d)),
        Err(_) => bail!(
            "{flag} {text:?} is neither a time (RFC 3339, e.g. 2026-11-23T09:00:00Z) nor a duration ago (e.g. 90s, 15m, 24h, 7d)"
        ),
    }
}

fn trusted_keys(args: &[String]) -> Result<Vec<VerifyingKey>> {
    args.iter().map(|a| audit::keyfile::load_public(a).map_err(|e| anyhow!("--trust-key: {e}"))).collect()
}

async fn fetch_and_verify(scope: &Scope) -> Result<VerifyReport> {
    let keys = trusted_keys(&scope.trust_keys)?;
    if let Some(g) = &scope.gate {
        audit::validate_gate_id(g).map_err(|e| anyhow!("--gate: {e}"))?;
    }
    let client: VaultClient = scope.remote.client()?;
    let listed = client
        .list_records(Some(audit::BATCH_KIND))
        .await
        .context("listing the audit batches (a token with scope read is needed)")?;
    let batches: Vec<StoredBatch> = listed
        .records
        .into_iter()
        .map(|r| StoredBatch { name: r.name.to_string(), written_at: r.written_at.to_string(), body: r.body })
        .filter(|b| scope.gate.as_deref().is_none_or(|g| b.gate() == Some(g)))
        .collect();
    if batches.is_empty() {
        match &scope.gate {
            Some(g) => bail!(
                "the vault holds no audit batches of gate {g:?}: check the gate id (`--gate`), or whether that gate ships its audit log to this vault"
            ),
            None => {
                bail!("the vault holds no audit batches: no gate has shipped its audit log to this vault yet")
            }
        }
    }
    let report = audit::verify(&batches, &keys);
    if matches!(report.trust, Trust::FirstBatch) {
        eprintln!(
            "WARNING: no --trust-key given: each gate's first stored batch's key was trusted, so this only shows the chain is \
             self-consistent — someone who rewrote the whole log with their own key would pass. Pass the gate's public key \
             (`holdfast audit keygen` printed it) with --trust-key."
        );
    }
    Ok(report)
}

fn print_report(r: &VerifyReport) {
    for g in &r.gates {
        let span = match (g.first_seq, g.last_seq, g.first_time, g.last_time) {
            (Some(a), Some(b), Some(t0), Some(t1)) => format!("seq {a}–{b}, {t0} to {t1}"),
            _ => "no usable records".into(),
        };
        let keys = if g.keys.is_empty() { "-".to_string() } else { g.keys.join(", ") };
        if g.intact {
            println!(
                "gate {}: intact — {} records ({span}) in {} batches ({} resent duplicates), signed by {keys}{}",
                g.gate,
                g.records,
                g.batches,
                g.duplicate_batches,
                if g.self_consistent_only { " (self-consistent only: no key given)" } else { "" }
            );
        } else {
            println!(
                "gate {}: DAMAGED — {} records accepted ({span}) from {} batches",
                g.gate, g.records, g.batches
            );
            if let Some(p) = &g.first_problem {
                println!("  first bad record: {p}");
            }
            for p in g.problems.iter().skip(1).take(20) {
                println!("  also: {p}");
            }
            if g.problems.len() > 21 {
                println!("  … and {} more", g.problems.len() - 21);
            }
        }
    }
    for p in &r.unattributed {
        println!("unreadable batch: {p}");
    }
    match r.first_problem() {
        None => println!(
            "audit log intact (a chain cut short at its end leaves no trace: compare each gate's last seq with the gate's own status)"
        ),
        Some(p) => println!("audit log DAMAGED: {p}"),
    }
}

fn print_table(hits: &[(&str, Record)], multi_gate: bool) {
    if hits.is_empty() {
        eprintln!("no matching records");
        return;
    }
    let dash = || "-".to_string();
    let rows: Vec<[String; 6]> = hits
        .iter()
        .map(|(g, r)| {
            [
                if multi_gate { format!("{g}#{}", r.seq) } else { r.seq.to_string() },
                r.time.to_string(),
                r.event.person.clone().unwrap_or_else(dash),
                r.event.client.clone().unwrap_or_else(dash),
                r.event.kind.to_string(),
                truncate(&r.event.summary(), 120),
            ]
        })
        .collect();
    let header = [if multi_gate { "GATE#SEQ" } else { "SEQ" }, "TIME", "PERSON", "CLIENT", "KIND", "WHAT"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: [&str; 6]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i == 5 {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header);
    for r in &rows {
        line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]]);
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(max - 1).collect::<String>())
    }
}
