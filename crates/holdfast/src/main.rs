//! `holdfast`: the one command-line tool — vault setup, serving, checks, backups, tokens and
//! quorum deletion. Glue only: the work happens in the `vault`, `vault-api` and `store` crates.
//!
//! Exit codes:
//! - 0: success;
//! - 1: an error (the message says what failed, why, and what to do);
//! - 2: bad usage (unknown flag, missing argument);
//! - 3: `vault check` found damaged or missing objects, or `audit verify|search` found the audit
//!   log damaged;
//! - 4: `drill` ran and the drill failed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use ed25519_dalek::{Signer, SigningKey};
use store::{ObjectName, Timestamp};
use vault::clock::{Clock, SystemClock};
use vault::config::{Config, KeyholderFile};
use vault_api::{ProposeRequest, Scope, SignRequest, VaultClient};

mod audit_cmd;
mod check;
#[cfg(feature = "demo")]
mod demo;
mod drill_cmd;
mod gate_cmd;
mod repair_cmd;
mod restore_cmd;
mod standby_cmd;
mod status;

/// Exit code when `vault check` finds damage.
pub const EXIT_DAMAGE: u8 = 3;

#[derive(Parser)]
#[command(name = "holdfast", version, about = "No single insider can destroy your PostgreSQL backups.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Set up, run and use a vault.
    #[command(subcommand)]
    Vault(VaultCommand),
    /// The gate: the only door to production SQL (serve, pending, approve, reject, request…).
    #[command(subcommand)]
    Gate(gate_cmd::GateCommand),
    /// Create an ed25519 keyholder key (for signing or vetoing deletions); prints the public key.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Create an age escrow identity (kept offline); prints the recipient for `vault init`.
    EscrowKeygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Replay the 2020 incident on this machine: a shop behind a gate, a standby, a vault, the
    /// insider's attack, the incident, the restore, and a merchant-by-merchant verdict.
    Demo {
        /// Merchants in the shop (each with 40 customers, 100 orders, 10 gift cards).
        #[arg(long, default_value_t = 300)]
        merchants: i64,
        /// Seconds of ordinary business (orders through the gate) before the insider strikes.
        #[arg(long, default_value_t = 10)]
        business_seconds: u64,
        /// Concurrent shop sessions placing orders.
        #[arg(long, default_value_t = 4)]
        workers: usize,
        /// Also print the verdict as one JSON object, on the last line.
        #[arg(long)]
        json: bool,
        /// Where to write the HTML report.
        #[arg(long, default_value = "holdfast-demo-report.html")]
        report: PathBuf,
        /// The vault's store: `local` (a directory), or `s3` (a directory written through to a
        /// bucket with Object Lock on a Ceph RGW the demo starts; adds an act where root erases
        /// the local store and the restore comes from the bucket). `s3` needs Ceph installed.
        #[arg(long, default_value = "local", value_parser = ["local", "s3"])]
        store: String,
        /// Keep the work files (vault tokens, gate config and log, the restored data) here
        /// instead of a temporary directory removed at the end.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Instead of destroying everything, the insider bulk-deletes one merchant's orders
        /// while the shop keeps trading, and `holdfast repair` puts them back without rewinding
        /// anything else (no full restore, no warm standby).
        #[arg(long)]
        repair: bool,
        /// After the verdict, keep the gate and the vault running (their consoles too) until
        /// Ctrl-C; the addresses and how to sign in are printed.
        #[arg(long)]
        linger: bool,
    },
    /// Show each protected cluster: WAL stream, lag, last base backup, restorable window.
    Status {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        json: bool,
    },
    /// Point-in-time restore from the vault (read token): to a time, LSN, xid, restore point
    /// or the latest WAL; optionally start PostgreSQL and wait until it reached the target.
    Restore(Box<restore_cmd::RestoreArgs>),
    /// Repair one incident's destruction in the live database, per table or per tenant,
    /// without rewinding anything else: re-insert what it deleted, revert what it changed,
    /// leave what changed since (conflicts, reported).
    Repair(Box<repair_cmd::RepairArgs>),
    /// PostgreSQL's restore_command during a holdfast restore (written by `holdfast restore`).
    #[command(hide = true)]
    RestoreWal {
        #[arg(long)]
        config: PathBuf,
        /// %f
        file: String,
        /// %p
        dest: PathBuf,
    },
    /// Restore drills: have the vault restore a cluster into a scratch directory, start and
    /// check it, and keep a signed report (admin token); or list the history (`--list`).
    Drill {
        /// The cluster to drill now (waits for the report; exit code 4 if it fails).
        #[arg(long, required_unless_present = "list")]
        cluster: Option<String>,
        /// Show the stored drill reports and each cluster's drill state instead.
        #[arg(long)]
        list: bool,
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        json: bool,
    },
    /// The vault's warm standbys: status, promote one stopped before an incident, resume.
    #[command(subcommand)]
    Standby(standby_cmd::StandbyCommand),
    /// Incidents: destruction found in the WAL (with the restore target just before it), lost
    /// slots, WAL gaps, lost connections. Numbered per cluster for `restore --before-incident`.
    Incidents {
        /// Only this cluster (default: every one).
        #[arg(long)]
        cluster: Option<String>,
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        json: bool,
    },
    /// Restore points (`pg_create_restore_point`) the vault decoded from its WAL: name, LSN,
    /// time, timeline. A name listed more than once is refused by `restore --restore-point`.
    RestorePoints {
        #[arg(long)]
        cluster: String,
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        json: bool,
    },
    /// The gate's audit log as the vault holds it: verify the chain, search it, create a key.
    #[command(subcommand)]
    Audit(audit_cmd::AuditCommand),
    /// Have the vault take a base backup of a cluster now; waits until it is complete.
    Backup {
        /// The cluster's name in the vault's config.
        #[arg(long)]
        cluster: String,
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum VaultCommand {
    /// Create a vault in a new directory: config, key, store, TLS pair, first admin token.
    Init(InitArgs),
    /// Serve the vault's HTTPS API until SIGTERM or ctrl-c.
    Serve {
        #[arg(long)]
        config: PathBuf,
        /// Listen here instead of the config's `listen` (port 0 picks a free port).
        #[arg(long)]
        listen: Option<String>,
        /// Write `{"addr":…,"url":…,"pid":…}` here once listening.
        #[arg(long)]
        ready_file: Option<PathBuf>,
        /// Open the repository with this age identity (an escrow key) instead of the vault key:
        /// serve restores after the vault key was lost or destroyed.
        #[arg(long)]
        identity: Option<PathBuf>,
    },
    /// Verify every object in the store (exit code 3 if anything is damaged or missing).
    Check {
        #[arg(long)]
        config: PathBuf,
        /// Open the repository with this age identity (e.g. an escrow key) instead of the vault key.
        #[arg(long)]
        identity: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Remove packs whose retention passed and that no retained backup needs.
    Prune {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Back up a directory into the vault's store.
    Ingest {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        label: String,
        path: PathBuf,
    },
    /// List backups.
    Backups {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        identity: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Restore a backup into a directory.
    Restore {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        backup: String,
        #[arg(long)]
        target: PathBuf,
        /// An age identity (escrow key) to open the repository without the vault key.
        #[arg(long)]
        identity: Option<PathBuf>,
    },
    /// Create, list or revoke tokens (admin token needed).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Propose an early deletion (alerts every keyholder; runs only after M signatures and the wait).
    Propose {
        #[command(flatten)]
        remote: Remote,
        /// Objects to delete (`pack/<hex>`), repeatable.
        #[arg(long = "object")]
        objects: Vec<ObjectName>,
        /// Or a backup id: its record and the packs no other backup uses.
        #[arg(long)]
        backup: Option<String>,
        #[arg(long)]
        reason: String,
    },
    /// Sign a deletion proposal with a keyholder key: shows what would be deleted (objects by
    /// kind, backups, WAL ranges) and asks for confirmation first.
    Sign {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        proposal: String,
        /// The keyholder key file from `holdfast keygen`.
        #[arg(long)]
        key: PathBuf,
        /// Sign without asking (scripts); what would be deleted is still printed.
        #[arg(long)]
        yes: bool,
    },
    /// Offline recovery when no admin token is left: on the vault host, with the config and the
    /// vault key (or an escrow identity), mint a new admin token. Recorded in the catalog and
    /// alerted; a running vault accepts it when it is first presented.
    RecoverAdmin {
        #[arg(long)]
        config: PathBuf,
        /// Open the repository with this age identity (an escrow key) instead of the vault key.
        #[arg(long)]
        identity: Option<PathBuf>,
        /// Who is recovering and why (kept in the catalog and in the alert).
        #[arg(long)]
        reason: String,
        /// Write the token to this file (mode 0600) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Veto a deletion proposal (one keyholder is enough).
    Veto {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        proposal: String,
        #[arg(long)]
        key: PathBuf,
    },
    /// Execute a deletion proposal once a quorum signed and the waiting period passed.
    Execute {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        proposal: String,
    },
}

#[derive(Args)]
struct InitArgs {
    #[arg(long)]
    dir: PathBuf,
    /// age recipient (`age1…`) of an offline escrow key; repeatable. At least one is required.
    #[arg(long = "escrow-recipient")]
    escrow_recipients: Vec<String>,
    /// Proceed without escrow: losing vault.key then loses every backup.
    #[arg(long)]
    no_escrow_i_accept_key_loss: bool,
    /// Enrol a keyholder as NAME=HEXPUBKEY (from `holdfast keygen`); repeatable.
    #[arg(long = "keyholder")]
    keyholders: Vec<String>,
    /// A TOML file holding only a `[store]` table, e.g. an S3 bucket with Object Lock
    /// (`kind = "s3"`, see the README "Vault on S3"); default: a local `store/` directory.
    #[arg(long)]
    store_config: Option<PathBuf>,
    /// Signatures needed for an early deletion (default: 2, or 1 with a single keyholder).
    #[arg(long)]
    threshold: Option<usize>,
    #[arg(long, default_value_t = 30)]
    retention_days: u32,
    /// Hours keyholders have to veto a deletion (at least 24).
    #[arg(long, default_value_t = 72)]
    wait_hours: u64,
    /// Allow --wait-hours below 24. For tests only: the vault alerts at every start.
    #[arg(long)]
    testing_allow_short_wait: bool,
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: String,
    /// Also write the first admin token to this file (mode 0600).
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
}

/// How to reach a running vault.
#[derive(Args)]
pub(crate) struct Remote {
    /// e.g. https://127.0.0.1:8443
    #[arg(long, env = "HOLDFAST_VAULT_URL")]
    pub(crate) url: String,
    /// The vault's certificate (tls/cert.pem in its directory).
    #[arg(long, env = "HOLDFAST_VAULT_CA")]
    pub(crate) ca: PathBuf,
    /// File holding the token.
    #[arg(long, env = "HOLDFAST_TOKEN_FILE")]
    pub(crate) token_file: PathBuf,
}

impl Remote {
    pub(crate) fn client(&self) -> Result<VaultClient> {
        let ca = std::fs::read(&self.ca)
            .with_context(|| format!("reading the vault certificate {}", self.ca.display()))?;
        let token = std::fs::read_to_string(&self.token_file)
            .with_context(|| format!("reading the token file {}", self.token_file.display()))?
            .trim()
            .to_string();
        Ok(VaultClient::new(&self.url, &ca, Some(token))?)
    }
}

#[derive(Subcommand)]
enum TokenCommand {
    Create {
        #[command(flatten)]
        remote: Remote,
        /// append, read or admin
        #[arg(long)]
        scope: Scope,
        #[arg(long)]
        label: String,
        /// Write the new token here (mode 0600) instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    List {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        json: bool,
    },
    Revoke {
        #[command(flatten)]
        remote: Remote,
        id: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo narrates what happens; its services log only when RUST_LOG asks them to.
    let default_filter = if matches!(cli.command, Command::Demo { .. }) { "off" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // HOLDFAST_RUNTIME=current runs the main runtime on one thread. Kept so that issue 19's
    // measurement can be repeated (README, "What the gate costs"); the gate's sessions run on
    // runtimes of their own (`session_threads` in gate.toml) whichever this is.
    let current = std::env::var("HOLDFAST_RUNTIME").is_ok_and(|v| v == "current");
    let built = if current {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().enable_all().build()
    };
    let rt = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(1)
        }
    }
}

/// The error and its causes on one line.
fn one_line(e: &anyhow::Error) -> String {
    e.chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": ")
}

async fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Keygen { out } => keygen(&out).map(|_| 0),
        Command::EscrowKeygen { out } => {
            let key = vault::keyfile::AgeKey::generate();
            key.write_new(&out, &Timestamp::now().to_string())?;
            println!("{}", key.recipient());
            eprintln!(
                "escrow identity written to {}: keep it offline, away from the vault host",
                out.display()
            );
            Ok(0)
        }
        Command::Vault(v) => vault_command(v).await,
        Command::Gate(g) => gate_cmd::run(g).await,
        #[cfg(feature = "demo")]
        Command::Demo { merchants, business_seconds, workers, json, report, dir, store, repair, linger } => {
            let s3 = store == "s3";
            let opts =
                demo::Options { merchants, business_seconds, workers, json, report, dir, s3, repair, linger };
            demo::run(opts).await
        }
        #[cfg(not(feature = "demo"))]
        Command::Demo { .. } => anyhow::bail!(
            "this holdfast was built without the demo (cargo's --no-default-features, as for production hosts); \
             build it with the default features to run the demo"
        ),
        Command::Status { remote, json } => status::show(&remote.client()?, json).await,
        Command::Backup { cluster, remote, json } => status::backup(&remote.client()?, &cluster, json).await,
        Command::Restore(a) => restore_cmd::restore(*a).await,
        Command::Repair(a) => repair_cmd::repair(*a).await,
        Command::Incidents { cluster, remote, json } => {
            status::incidents(&remote.client()?, cluster.as_deref(), json).await
        }
        Command::RestorePoints { cluster, remote, json } => {
            status::restore_points(&remote.client()?, &cluster, json).await
        }
        Command::Drill { cluster, list, remote, json } => {
            let client = remote.client()?;
            match (list, cluster) {
                (true, c) => drill_cmd::list(&client, c.as_deref(), json).await,
                (false, Some(c)) => drill_cmd::run(&client, &c, json).await,
                (false, None) => bail!("say which cluster to drill (--cluster NAME) or --list"),
            }
        }
        Command::Audit(a) => audit_cmd::run(a).await,
        Command::Standby(c) => standby_cmd::run(c).await,
        Command::RestoreWal { config, file, dest } => {
            Ok(restore_cmd::restore_wal(&config, &file, &dest).await)
        }
    }
}

fn keygen(out: &Path) -> Result<()> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| anyhow!("the random number generator failed: {e}"))?;
    let key = SigningKey::from_bytes(&seed);
    let public = hex::encode(key.verifying_key().as_bytes());
    let text = format!("# holdfast keyholder key (ed25519)\n# public key: {public}\n{}\n", hex::encode(seed));
    vault::keyfile::write_private(out, text.as_bytes())?;
    println!("{public}");
    Ok(())
}

fn load_signing_key(path: &Path) -> Result<SigningKey> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading keyholder key {}", path.display()))?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or_else(|| anyhow!("{} holds no key (create one with `holdfast keygen`)", path.display()))?;
    let mut seed = [0u8; 32];
    hex::decode_to_slice(line, &mut seed).map_err(|_| {
        anyhow!("{} is not a holdfast keyholder key (64 hex digits expected)", path.display())
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

fn load_identity(path: &Option<PathBuf>) -> Result<Option<Vec<age::x25519::Identity>>> {
    match path {
        None => Ok(None),
        Some(p) => Ok(Some(vec![vault::keyfile::AgeKey::load(p)?.identity().clone()])),
    }
}

fn load_config(path: &Path) -> Result<Config> {
    Ok(Config::load(path)?)
}

async fn vault_command(cmd: VaultCommand) -> Result<u8> {
    match cmd {
        VaultCommand::Init(a) => init(a).await,
        VaultCommand::Serve { config, listen, ready_file, identity } => {
            let mut cfg = load_config(&config)?;
            if let Some(l) = listen {
                cfg.listen =
                    l.parse().map_err(|_| anyhow!("--listen {l:?} is not an address: use IP:PORT"))?;
            }
            let handle =
                vault::serve_with_identity(cfg, Arc::new(SystemClock), load_identity(&identity)?).await?;
            let addr = handle.addr();
            let ready = serde_json::json!({"addr": addr.to_string(), "url": format!("https://{addr}"), "pid": std::process::id()});
            println!("{ready}");
            if let Some(f) = ready_file {
                // Write then rename, so a reader never sees half a file.
                let tmp = f.with_extension("tmp");
                std::fs::write(&tmp, ready.to_string())
                    .with_context(|| format!("writing {}", tmp.display()))?;
                std::fs::rename(&tmp, &f).with_context(|| format!("writing {}", f.display()))?;
            }
            vault::shutdown_signal().await;
            tracing::info!("shutting down");
            handle.shutdown().await;
            Ok(0)
        }
        VaultCommand::Check { config, identity, json } => {
            check::run(&load_config(&config)?, load_identity(&identity)?, json).await
        }
        VaultCommand::Prune { config, dry_run, json } => {
            let cfg = load_config(&config)?;
            let (repo, store) = vault::open_repository(&cfg, None).await?;
            let report = vault::retention::prune(&repo, store.as_ref(), SystemClock.now(), dry_run).await?;
            if !dry_run {
                let body = serde_json::json!({"removed": report.removed.len(), "removed_bytes": report.removed_bytes, "extended": report.extended});
                let now = SystemClock.now();
                repo.append_record(
                    vault::state::kinds::PRUNE,
                    body,
                    now,
                    now.plus(Duration::from_secs(u64::from(cfg.retention_days) * 86_400)),
                )
                .await?;
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                let verb = if dry_run { "would remove" } else { "removed" };
                println!(
                    "{verb} {} expired pack(s), {} bytes; kept {} pack(s) needed by {} retained backup(s); lengthened retention of {}",
                    report.removed.len(),
                    report.removed_bytes,
                    report.kept_referenced,
                    report.retained_backups,
                    report.extended
                );
            }
            Ok(0)
        }
        VaultCommand::Ingest { config, label, path } => ingest(&load_config(&config)?, &label, &path).await,
        VaultCommand::Backups { config, identity, json } => {
            let cfg = load_config(&config)?;
            let (repo, _) = vault::open_repository(&cfg, load_identity(&identity)?).await?;
            let now = SystemClock.now();
            let list: Vec<_> = repo.backups().await?.iter().map(|b| vault::backup_summary(b, now)).collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for b in list {
                    println!(
                        "{}  {}  {} files  {} bytes  retained until {}{}  {}",
                        b.id,
                        b.finished,
                        b.files,
                        b.bytes,
                        b.retain_until,
                        if b.expired { " (expired)" } else { "" },
                        b.label
                    );
                }
            }
            Ok(0)
        }
        VaultCommand::Restore { config, backup, target, identity } => {
            let cfg = load_config(&config)?;
            let (repo, _) = vault::open_repository(&cfg, load_identity(&identity)?)
                .await
                .context("opening the repository (with the vault key unless --identity is given)")?;
            let stats =
                repo.restore(&backup, &target).await.with_context(|| format!("restoring backup {backup}"))?;
            println!(
                "restored backup {backup} into {}: {} files, {} directories, {} bytes",
                target.display(),
                stats.files,
                stats.dirs,
                stats.bytes
            );
            Ok(0)
        }
        VaultCommand::Token(t) => token(t).await,
        VaultCommand::RecoverAdmin { config, identity, reason, out } => {
            let cfg = load_config(&config)?;
            let ids = load_identity(&identity)?;
            let r = vault::recover_admin(&cfg, ids, &reason, &SystemClock).await?;
            match out {
                Some(f) => {
                    vault::keyfile::write_private(&f, format!("{}\n", r.token.expose()).as_bytes())?;
                    println!("{}", r.token.id());
                }
                None => println!("{}", r.token.expose()),
            }
            eprintln!(
                "admin token {} minted offline and recorded in the catalog as {}; alert {}.\n  \
                 a running vault accepts it when it is first presented (give it up to 10 s)",
                r.token.id(),
                r.record,
                if r.alerted {
                    "sent"
                } else {
                    "NOT delivered (no alert_command/webhook answered): tell the other admins yourself"
                }
            );
            Ok(0)
        }
        VaultCommand::Propose { remote, objects, backup, reason } => {
            let view = remote.client()?.propose(&ProposeRequest { objects, backup, reason }).await?;
            println!("{}", serde_json::to_string_pretty(&view)?);
            eprintln!(
                "proposal {} recorded; it can execute after {} once {} keyholder(s) sign (`holdfast vault sign --proposal {}`)",
                view.id, view.statement.not_before, view.threshold, view.id
            );
            Ok(0)
        }
        VaultCommand::Sign { remote, proposal, key, yes } => {
            let client = remote.client()?;
            let key = load_signing_key(&key)?;
            let view = client.proposal(&proposal).await?;
            // Sign what we can read, never bytes the server chose: they must be the statement.
            let bytes = view.statement.canonical_bytes();
            if hex::encode(&bytes) != view.canonical_hex {
                bail!(
                    "the vault sent bytes to sign that do not match the proposal's statement: refusing to sign"
                );
            }
            eprintln!("{}", describe_proposal(&view));
            if !yes && !confirm("sign this deletion?")? {
                eprintln!("not signed");
                return Ok(1);
            }
            let req = SignRequest {
                public_key: hex::encode(key.verifying_key().as_bytes()),
                signature: hex::encode(key.sign(&bytes).to_bytes()),
            };
            let view = client.sign(&proposal, &req).await?;
            println!("{} of {} signature(s) collected", view.signed_by.len(), view.threshold);
            Ok(0)
        }
        VaultCommand::Veto { remote, proposal, key } => {
            let key = load_signing_key(&key)?;
            let req = SignRequest {
                public_key: hex::encode(key.verifying_key().as_bytes()),
                signature: hex::encode(key.sign(&vault_api::veto_message(&proposal)).to_bytes()),
            };
            remote.client()?.veto(&proposal, &req).await?;
            println!("proposal {proposal} vetoed: it can never execute");
            Ok(0)
        }
        VaultCommand::Execute { remote, proposal } => {
            let r = remote.client()?.execute(&proposal).await?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(0)
        }
    }
}

/// What a proposal would delete, for a keyholder deciding whether to sign.
fn describe_proposal(view: &vault_api::ProposalView) -> String {
    use std::fmt::Write;
    let st = &view.statement;
    let mut out = format!(
        "proposal {} on repository {}\n  reason (the proposer's words): {}\n  proposed {}, can execute after {}\n  deletes {} object(s)",
        view.id,
        st.repository,
        st.reason,
        st.proposed_at,
        st.not_before,
        st.objects.len()
    );
    match &view.effects {
        None => {
            out.push_str("\n  (this vault did not say what the objects hold: do not sign unless you know)")
        }
        Some(e) => {
            let kinds: Vec<String> = e.objects_by_kind.iter().map(|(k, n)| format!("{n} {k}")).collect();
            let _ = write!(out, ": {} ({} bytes)", kinds.join(", "), e.bytes);
            if !e.records_by_kind.is_empty() {
                let recs: Vec<String> = e.records_by_kind.iter().map(|(k, n)| format!("{n} {k}")).collect();
                let _ = write!(out, "\n  catalog records: {}", recs.join(", "));
            }
            if e.backups.is_empty() {
                out.push_str("\n  backups affected: none");
            }
            for b in &e.backups {
                let _ = write!(
                    out,
                    "\n  backup {} {:?} of cluster {} taken {}: {}",
                    b.id,
                    b.label,
                    b.cluster.as_deref().unwrap_or("-"),
                    b.started,
                    if b.how == "record" { "removed (no longer restorable)" } else { "loses data it uses" }
                );
            }
            if e.wal.is_empty() {
                out.push_str("\n  WAL affected: none");
            }
            for w in &e.wal {
                let _ = write!(
                    out,
                    "\n  WAL of cluster {} timeline {}: {}..{} (points in time inside it become unrestorable)",
                    w.cluster, w.timeline, w.start, w.end
                );
            }
            if e.absent > 0 {
                let _ = write!(out, "\n  {} named object(s) are already gone", e.absent);
            }
        }
    }
    out
}

/// Asks on the terminal; anything but y/yes is no. Without a terminal, no.
fn confirm(question: &str) -> Result<bool> {
    use std::io::{BufRead, IsTerminal};
    if !std::io::stdin().is_terminal() {
        bail!(
            "{question} needs an answer: run it in a terminal, or pass --yes once you have read the list above"
        );
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(matches!(line.trim().to_lowercase().as_str(), "y" | "yes"))
}

async fn init(a: InitArgs) -> Result<u8> {
    let escrow = a
        .escrow_recipients
        .iter()
        .map(|r| {
            r.parse::<age::x25519::Recipient>()
                .map_err(|e| anyhow!("--escrow-recipient {r:?} is not an age recipient (age1…): {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    if escrow.is_empty() && !a.no_escrow_i_accept_key_loss {
        bail!(
            "no --escrow-recipient given: without an offline escrow key, losing vault.key makes every backup unreadable; \
             create one with `holdfast escrow-keygen --out escrow.key` (keep it offline), or pass --no-escrow-i-accept-key-loss"
        );
    }
    let keyholders = a
        .keyholders
        .iter()
        .map(|k| {
            let (name, key) =
                k.split_once('=').ok_or_else(|| anyhow!("--keyholder {k:?} must be NAME=HEXPUBKEY"))?;
            Ok(KeyholderFile { name: name.to_string(), public_key: key.to_string() })
        })
        .collect::<Result<Vec<_>>>()?;
    let threshold = a.threshold.unwrap_or(if keyholders.len() == 1 { 1 } else { 2 });
    let opts = vault::InitOptions {
        dir: a.dir.clone(),
        listen: a.listen,
        escrow,
        keyholders,
        threshold,
        retention_days: a.retention_days,
        wait_hours: a.wait_hours,
        testing_allow_short_wait: a.testing_allow_short_wait,
        clusters: Vec::new(),
    };
    let done = match &a.store_config {
        Some(p) => {
            let store = vault::config::StoreFile::from_file(p).map_err(|e| anyhow!("--store-config: {e}"))?;
            vault::init_with_store(opts, store, &SystemClock).await?
        }
        None => vault::init(opts, &SystemClock).await?,
    };
    let token = done.admin_token.expose();
    if let Some(f) = &a.admin_token_file {
        vault::keyfile::write_private(f, format!("{token}\n").as_bytes())?;
    }
    println!("{token}");
    eprintln!(
        "vault {} created in {}\n  config: {}\n  certificate (give to clients as --ca): {}\n  the line above is the first admin token: it is shown only once",
        done.repository,
        a.dir.display(),
        done.config_path.display(),
        done.ca_path.display()
    );
    Ok(0)
}

async fn ingest(cfg: &Config, label: &str, path: &Path) -> Result<u8> {
    if !path.is_dir() {
        bail!("{} is not a directory: ingest backs up a directory tree", path.display());
    }
    let (repo, _) = vault::open_repository(cfg, None).await?;
    let state = vault::load_state(&repo).await?;
    let now = SystemClock.now();
    let until = now.plus(Duration::from_secs(u64::from(state.retention_days(cfg.retention_days)) * 86_400));
    eprint!("ingesting {} …", path.display());
    let _ = std::io::stderr().flush();
    let (repo2, root, label) = (repo.clone(), path.to_path_buf(), label.to_string());
    let rec = tokio::task::spawn_blocking(move || {
        let mut w = repo2.backup_writer(&label, until);
        w.add_tree(&root)?;
        w.finish(SystemClock.now())
    })
    .await
    .map_err(|e| anyhow!("the backup task failed: {e}"))??;
    eprintln!("\r{} files, {} bytes ({} bytes newly stored)", rec.files, rec.bytes, rec.stored_bytes);
    println!("{}", rec.id);
    Ok(0)
}

async fn token(cmd: TokenCommand) -> Result<u8> {
    match cmd {
        TokenCommand::Create { remote, scope, label, out } => {
            let t = remote.client()?.create_token(scope, &label).await?;
            match out {
                Some(f) => {
                    vault::keyfile::write_private(&f, format!("{}\n", t.token).as_bytes())?;
                    println!("{}", t.id);
                }
                None => println!("{}", t.token),
            }
            Ok(0)
        }
        TokenCommand::List { remote, json } => {
            let list = remote.client()?.list_tokens().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for t in list.tokens {
                    let revoked = t.revoked_at.map(|r| format!(" revoked {r}")).unwrap_or_default();
                    println!("{}  {:<6}  created {}{}  {}", t.id, t.scope, t.created_at, revoked, t.label);
                }
            }
            Ok(0)
        }
        TokenCommand::Revoke { remote, id } => {
            remote.client()?.revoke_token(&id).await?;
            println!("token {id} revoked");
            Ok(0)
        }
    }
}
