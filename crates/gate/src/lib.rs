//! The gate: the only door to production SQL.
//!
//! People connect with psql or any driver to the gate, as themselves (SCRAM-SHA-256 against
//! the gate's own verifiers, over TLS). The gate logs in to PostgreSQL with credentials only it
//! holds, then looks at every statement before the database does: `guard` classifies it with
//! PostgreSQL's own grammar; destructive ones wait for a second person (`holdfast gate
//! approve`), DELETE/UPDATE run under a row-count guard, and everything is written to the
//! `audit` log — before it takes effect — which ships to the vault.
//!
//! Modules: [`wire`] (server side of the protocol, sans-IO), [`scram`], [`totp`], [`config`],
//! [`approvals`], [`server`] (accept, TLS, login), [`session`] (the relay), [`workers`] (the
//! single-threaded runtimes sessions are pinned to), [`control`] (the HTTPS API for approvals,
//! grants, status and metrics), [`console`] (the same in a browser).

pub mod approvals;
pub mod budget;
pub mod config;
pub mod console;
pub mod control;
pub mod scram;
pub mod server;
pub mod session;
pub mod totp;
pub mod wire;
pub mod workers;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use config::Config;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

/// A client byte stream: TCP or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("{0}")]
    Invalid(String),
    #[error("listening on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("audit log: {0}")]
    Audit(#[from] audit::AuditError),
    #[error("TLS: {0}")]
    Tls(String),
}

/// A Prometheus counter.
#[derive(Default)]
pub struct Counter(AtomicU64);
impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A Prometheus histogram of durations: fixed buckets, lock-free. An observation adds to its
/// own bucket and the sum (two relaxed atomic adds); the cumulative counts Prometheus wants are
/// summed when scraped.
pub struct Histogram {
    /// Observations per bucket (the last one: above every bound).
    counts: [AtomicU64; Histogram::BOUNDS_US.len() + 1],
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { counts: std::array::from_fn(|_| AtomicU64::new(0)), sum_ns: AtomicU64::new(0) }
    }
}

impl Histogram {
    /// Upper bounds of the buckets, in microseconds: 25 µs to 1 s.
    pub const BOUNDS_US: [u64; 15] = [
        25, 50, 100, 200, 400, 800, 1_600, 3_200, 6_400, 12_800, 25_600, 51_200, 102_400, 409_600, 1_000_000,
    ];

    pub fn observe(&self, d: std::time::Duration) {
        let us = d.as_micros() as u64;
        let i = Self::BOUNDS_US.iter().position(|&b| us <= b).unwrap_or(Self::BOUNDS_US.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The histogram in Prometheus' text format, in seconds.
    pub fn render(&self, name: &str, help: &str, out: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            match Self::BOUNDS_US.get(i) {
                Some(b) => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {cumulative}", *b as f64 / 1e6);
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let _ = writeln!(out, "{name}_sum {}", self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9);
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

#[derive(Default)]
pub struct Metrics {
    pub connections: Counter,
    pub auth_failures: Counter,
    pub allowed: Counter,
    pub held: Counter,
    pub refused: Counter,
    pub row_guarded: Counter,
    pub active_sessions: AtomicU64,
    /// Where each statement's time goes (one observation per ReadyForQuery the client gets,
    /// i.e. per Query or per extended-protocol batch up to its Sync; see `session::Timing`).
    pub timing: StatementTiming,
}

/// Per statement: the wait for its audit records to be durable, the server's time on the
/// client's own statements, the server's time on the gate's own (savepoint, counters read and
/// check, release, the BEGIN/COMMIT of a transaction the gate opened), and the whole, from the
/// gate taking up the client's first message to the client's ReadyForQuery; plus how many
/// flights went to the server and how many durable waits it took.
#[derive(Default)]
pub struct StatementTiming {
    pub audit_wait: Histogram,
    pub server: Histogram,
    pub own: Histogram,
    pub total: Histogram,
    /// Writes of queued messages to the server (each one a trip the client's statement waits
    /// for, unless pipelined behind another).
    pub server_flights: Counter,
    /// Waits for an audit record to be durable.
    pub audit_waits: Counter,
}

/// Where a cancel request for a gate session goes.
pub struct CancelTarget {
    pub upstream: pgproto::conn::Config,
    pub pid: i32,
    pub key: Vec<u8>,
    /// Wakes the session (withdraws a held statement).
    pub notify: Arc<tokio::sync::Notify>,
    /// The session is holding a statement: the cancel is the gate's alone (the database has
    /// nothing running; a forwarded cancel could hit the refusal the gate sends instead).
    pub holding: Arc<std::sync::atomic::AtomicBool>,
}

/// What every session and the control API share.
pub struct Shared {
    pub config: Config,
    pub guard: guard::Guard,
    pub approvals: approvals::Approvals,
    pub audit: audit::AuditLog,
    pub webhooks: Arc<serve::alerts::Webhooks>,
    pub metrics: Metrics,
    pub cancels: Mutex<HashMap<(i32, Vec<u8>), CancelTarget>>,
    /// Rows each person changed per table in the budget window (every session together).
    pub budgets: budget::Budgets,
    /// Console sign-ins (in memory: they end with the process).
    pub console: console::Sessions,
    next_session: AtomicU64,
    /// Bumped when a session may have changed the database's catalog (it sent DDL, an approved
    /// statement or code the guard does not know, and again when that transaction ended): a
    /// session whose knowledge of the catalog is older reads it again before its next
    /// statement (see `session::Session::catalog_current`).
    pub catalog_epoch: AtomicU64,
    /// Sessions to end when their person's grant or break-glass is revoked (unused for now).
    pub started_at: u64,
}

impl Shared {
    /// Appends to the audit log and waits until it is durable.
    pub async fn audit_event(&self, e: audit::Event) -> Result<(), audit::AuditError> {
        self.audit.append(e).await.map(|_| ())
    }

    /// Appends without waiting (what happened after an audited action: its outcome).
    pub fn audit_nowait(&self, e: audit::Event) {
        // Submitted now, in order; only the wait for the fsync is left to the writer.
        if let Err(err) = self.audit.submit_nowait(e) {
            tracing::warn!(error = %err, "audit record not accepted");
        }
    }

    pub fn on_audit_full(&self) -> config::OnAuditFull {
        self.config.audit.as_ref().map(|a| a.on_full).unwrap_or(config::OnAuditFull::RefuseAll)
    }

    /// Sends an alert to the log and every webhook.
    pub fn alert(&self, event: serde_json::Value) {
        tracing::warn!(alert = %event, "gate alert");
        self.webhooks.send(&event, vault_types::Timestamp::now);
    }

    pub fn next_session(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// A running gate.
pub struct GateHandle {
    pub addr: SocketAddr,
    pub control_addr: SocketAddr,
    pub shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl GateHandle {
    /// Stops accepting, ends sessions, and waits.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Starts the gate: audit log, listeners, shipper.
pub async fn start(config: Config) -> Result<GateHandle, GateError> {
    let policy = match &config.policy_text {
        Some(t) => guard::Policy::from_toml(t).map_err(|e| GateError::Invalid(format!("policy: {e}")))?,
        None => guard::Policy::default(),
    };
    std::fs::create_dir_all(&config.state_dir)
        .map_err(|e| GateError::Invalid(format!("creating {}: {e}", config.state_dir.display())))?;
    let key_path = config.state_dir.join("audit.key");
    let key = if key_path.exists() {
        audit::keyfile::load(&key_path)?
    } else {
        audit::keyfile::generate(&key_path)?
    };
    let mut opts = audit::SpoolOptions::default();
    if let Some(a) = &config.audit {
        opts.max_pending_bytes = a.max_pending_bytes;
    }
    let log = audit::AuditLog::open(&config.state_dir.join("audit"), key, opts)?;
    let tls = server::tls_config(&config)?;
    let webhooks = Arc::new(serve::alerts::Webhooks::new(config.webhooks.clone()));
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| GateError::Listen { addr: config.listen.clone(), source: e })?;
    let control_listener = tokio::net::TcpListener::bind(&config.control_listen)
        .await
        .map_err(|e| GateError::Listen { addr: config.control_listen.clone(), source: e })?;
    let addr =
        listener.local_addr().map_err(|e| GateError::Listen { addr: config.listen.clone(), source: e })?;
    let control_addr = control_listener
        .local_addr()
        .map_err(|e| GateError::Listen { addr: config.control_listen.clone(), source: e })?;
    let mut tasks = Vec::new();
    if let Some(a) = &config.audit {
        let client = vault_api::VaultClient::new(&a.vault, &a.ca_pem, Some(a.token.clone()))
            .map_err(|e| GateError::Invalid(format!("[audit] vault client: {e}")))?;
        tasks.push(log.spawn_shipper(client, gate_id(&config)));
    }
    let budgets_path = config.state_dir.join("budgets.jsonl");
    let budgets =
        budget::Budgets::open(&budgets_path, budget::Limits::from_policy(&policy).window).map_err(|e| {
            GateError::Invalid(format!(
                "the budgets file {}: {e} (the gate keeps what each person consumed there across restarts)",
                budgets_path.display()
            ))
        })?;
    let shared = Arc::new(Shared {
        guard: guard::Guard::new(policy),
        approvals: approvals::Approvals::default(),
        audit: log,
        webhooks,
        metrics: Metrics::default(),
        cancels: Mutex::new(HashMap::new()),
        budgets,
        console: console::Sessions::default(),
        next_session: AtomicU64::new(0),
        catalog_epoch: AtomicU64::new(0),
        started_at: approvals::unix_now(),
        config,
    });
    shared
        .audit_event(audit::Event::new(audit::EventKind::GateStart).detail(serde_json::json!({
            "listen": addr.to_string(), "control": control_addr.to_string(),
        })))
        .await?;
    let (tx, rx) = watch::channel(false);
    tasks.push(tokio::spawn(server::accept_loop(listener, tls.clone(), shared.clone(), rx.clone())));
    tasks.push(tokio::spawn(control::serve(control_listener, tls, shared.clone(), rx)));
    tracing::info!(%addr, %control_addr, "gate listening");
    Ok(GateHandle { addr, control_addr, shared, shutdown: tx, tasks })
}

/// The gate's name in the vault: the host's name and the listen address.
pub fn gate_id(config: &Config) -> String {
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    let raw = format!("{}-{}", if host.is_empty() { "gate" } else { &host }, config.listen);
    raw.chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c.to_ascii_lowercase() } else { '-' })
        .collect()
}
