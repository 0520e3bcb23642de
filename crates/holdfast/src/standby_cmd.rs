//! `holdfast standby status|promote|resume`: the vault's warm standbys.

use anyhow::{Context, Result};
use clap::Subcommand;
use vault_api::standby::{StandbyState, StandbyStatus};

use crate::Remote;

#[derive(Subcommand)]
pub(crate) enum StandbyCommand {
    /// Each warm standby: state, replay position, lag, delay, readiness (read token).
    Status {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        json: bool,
    },
    /// Open the standby, stopped just before an incident, for writes (`pg_promote()`; admin
    /// token). The answer says how to reach it and how to copy its data to production.
    Promote {
        #[arg(long)]
        cluster: String,
        /// The incident it is stopped before (as `holdfast incidents` numbers them).
        #[arg(long)]
        before_incident: usize,
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        json: bool,
    },
    /// Make the standby follow the vault again (admin token): clears its stop; a promoted one
    /// is replaced by a fresh standby from the newest backup (its data directory is kept, renamed).
    Resume {
        #[arg(long)]
        cluster: String,
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        json: bool,
    },
}

fn state(s: StandbyState) -> &'static str {
    match s {
        StandbyState::Creating => "creating",
        StandbyState::Following => "following",
        StandbyState::Stopping => "STOPPING before an incident",
        StandbyState::Paused => "PAUSED before an incident",
        StandbyState::Promoted => "promoted",
        StandbyState::Overrun => "OVERRUN",
        StandbyState::Failed => "FAILED",
    }
}

/// One line per standby, for `standby status`.
pub(crate) fn line(b: &StandbyStatus) -> String {
    let mut parts = vec![format!("{}: {}", b.cluster, state(b.state))];
    parts.push(if b.ready { format!("ready on 127.0.0.1:{}", b.port) } else { "not answering".into() });
    parts.push(format!("delay {} s", b.apply_delay_seconds));
    if let Some(l) = b.replay_lsn {
        parts.push(format!("replayed {l}"));
    }
    if let Some(t) = b.last_replayed_commit {
        parts.push(format!("last commit applied {t}"));
    }
    if let Some(l) = b.lag_bytes {
        parts.push(format!("{} KiB behind the vault", l >> 10));
    }
    if let Some(s) = b.behind_seconds {
        parts.push(format!("oldest unreplayed WAL {s} s old"));
    }
    let mut out = parts.join(", ");
    if let Some(m) = &b.message {
        out += &format!("\n  {m}");
    }
    out
}

pub(crate) async fn run(cmd: StandbyCommand) -> Result<u8> {
    match cmd {
        StandbyCommand::Status { remote, json } => {
            let all = remote.client()?.standbys().await.context("reading standby status")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else if all.standbys.is_empty() {
                println!("no warm standby is configured ([[standby]] in vault.toml)");
            } else {
                for b in &all.standbys {
                    println!("{}", line(b));
                }
            }
            // Exit 3 when a standby is not where it should be: something for a person.
            Ok(
                if all
                    .standbys
                    .iter()
                    .any(|b| matches!(b.state, StandbyState::Failed | StandbyState::Overrun))
                {
                    3
                } else {
                    0
                },
            )
        }
        StandbyCommand::Promote { cluster, before_incident, remote, json } => {
            let r = remote
                .client()?
                .promote_standby(&cluster, before_incident)
                .await
                .with_context(|| format!("promoting the standby of {cluster}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!("{}", r.message);
            }
            Ok(0)
        }
        StandbyCommand::Resume { cluster, remote, json } => {
            let r = remote
                .client()?
                .resume_standby(&cluster)
                .await
                .with_context(|| format!("resuming the standby of {cluster}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!("{}", r.message);
            }
            Ok(0)
        }
    }
}
