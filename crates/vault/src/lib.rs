//! The vault service: an immutable, content-addressed backup store that no single insider can
//! destroy.
//!
//! The vault holds a [`store::Repository`] on a backend without `delete`, serves it over HTTPS
//! to holders of scoped tokens, rebuilds all its state (tokens, retention policy, deletion
//! proposals) from catalog records at start, and removes objects only in [`retention`]: when
//! their retention has passed, or under an M-of-N keyholder warrant after a waiting period.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! let config = vault::config::Config::load(std::path::Path::new("/etc/holdfast/vault.toml"))?;
//! let handle = vault::serve(config, Arc::new(vault::clock::SystemClock)).await?;
//! println!("listening on {}", handle.addr());
//! handle.shutdown().await;
//! # Ok(()) }
//! ```

pub use serve::alerts;
pub mod api;
pub mod clock;
pub mod config;
pub mod drill;
pub mod keyfile;
pub mod retention;
pub mod service;
pub mod standby;
pub mod state;
pub mod store_watch;
pub mod window_metrics;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use store::{Expunge, LocalDir, ObjectStore, Repository, Timestamp};
use tokio::sync::watch;
use vault_api::{BackupSummary, Scope, Token};

use crate::clock::Clock;
use crate::config::{Config, ConfigFile, KeyholderFile, QuorumFile, StoreConfig, StoreFile, TlsFile};
use crate::keyfile::{AgeKey, KeyFileError};
use crate::state::{VaultState, kinds};

/// Errors starting or setting up a vault.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Key(#[from] KeyFileError),
    #[error("opening the store failed: {0}")]
    Store(#[from] store::StoreError),
    #[error("the repository could not be opened: {0}")]
    Repo(#[from] store::RepoError),
    #[error("cannot listen on {addr}: {source} (is another vault running? pick another `listen` address)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the collector failed: {0}")]
    Capture(#[from] capture::CaptureError),
    #[error("{0}")]
    Setup(String),
}

/// Opens the configured object store with its removal capability (used only by `retention`).
/// An S3 bucket without Object Lock is refused unless the config says `object_lock = false`.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Expunge>, VaultError> {
    Ok(open_store_parts(config).await?.0)
}

/// [`open_store`], also giving the write-through store itself (for its queue's status).
pub async fn open_store_parts(
    config: &Config,
) -> Result<(Arc<dyn Expunge>, Option<store::MirrorStore>), VaultError> {
    match &config.store {
        StoreConfig::S3(cfg) => Ok((Arc::new(open_s3(cfg).await?), None)),
        StoreConfig::Mirror { local, remote, .. } => {
            // A missing local directory is not fatal: root may have erased it, and the bucket
            // still holds everything; it is re-created and refilled by new writes.
            if !local.is_dir() {
                tracing::error!(
                    dir = %local.display(),
                    "the local copy of the store is missing: serving from the bucket; if nobody moved it, someone with root on this host erased it"
                );
            }
            let m = store::MirrorStore::open(LocalDir::open(local)?, open_s3(remote).await?);
            Ok((Arc::new(m.clone()), Some(m)))
        }
        StoreConfig::Local(path) => {
            if !path.is_dir() {
                return Err(VaultError::Setup(format!(
                    "the store directory {} does not exist: run `holdfast vault init` first, or fix store.path",
                    path.display()
                )));
            }
            Ok((Arc::new(LocalDir::open(path)?), None))
        }
    }
}

/// Opens an S3 store, logging loudly when only software keeps the objects.
async fn open_s3(cfg: &store::S3Config) -> Result<store::S3Store, VaultError> {
    let s = store::S3Store::open(cfg.clone()).await?;
    match s.protection() {
        store::Protection::SoftwareOnly => tracing::warn!(
            bucket = %cfg.bucket,
            "S3 bucket without Object Lock (object_lock = false): anyone holding the S3 credential can delete backups"
        ),
        p => tracing::info!(bucket = %cfg.bucket, protection = ?p, "S3 store with Object Lock"),
    }
    Ok(s)
}

/// Opens the repository with the vault's key, or with `identities` instead (escrow keys: G5).
pub async fn open_repository(
    config: &Config,
    identities: Option<Vec<age::x25519::Identity>>,
) -> Result<(Repository, Arc<dyn Expunge>), VaultError> {
    let (repo, store, _) = open_repository_parts(config, identities).await?;
    Ok((repo, store))
}

/// [`open_repository`], also giving the write-through store, if any.
async fn open_repository_parts(
    config: &Config,
    identities: Option<Vec<age::x25519::Identity>>,
) -> Result<(Repository, Arc<dyn Expunge>, Option<store::MirrorStore>), VaultError> {
    let (store, mirror) = open_store_parts(config).await?;
    let ids = match identities {
        Some(ids) => ids,
        None => vec![AgeKey::load(&config.key_file)?.identity().clone()],
    };
    let plain: Arc<dyn ObjectStore> = store.clone();
    let repo = Repository::open(plain, &ids).await?;
    Ok((repo, store, mirror))
}

/// Folds every catalog record into the vault's state.
pub async fn load_state(repo: &Repository) -> Result<VaultState, VaultError> {
    let mut state = VaultState::default();
    for (name, rec) in repo.records().await? {
        state.apply_authored(&name, &rec.kind, rec.written_at, &rec.body, rec.author.as_deref());
    }
    Ok(state)
}

/// A fresh random token.
pub fn new_token() -> Result<Token, VaultError> {
    let mut id = [0u8; 8];
    let mut secret = [0u8; vault_api::token::SECRET_LEN];
    getrandom::getrandom(&mut id)
        .and_then(|_| getrandom::getrandom(&mut secret))
        .map_err(|e| VaultError::Setup(format!("the random number generator failed: {e}")))?;
    Token::new(hex::encode(id), secret).map_err(|e| VaultError::Setup(e.to_string()))
}

/// The `token.created` body for `token`: only the hash of its secret.
pub fn token_record(token: &Token, scope: Scope, label: &str, created_by: &str) -> state::TokenCreated {
    state::TokenCreated {
        id: token.id().to_string(),
        scope,
        hash: blake3::hash(token.secret()).to_hex().to_string(),
        label: label.to_string(),
        created_by: created_by.to_string(),
    }
}

/// The listing form of a backup record.
pub fn backup_summary(b: &store::BackupRecord, now: Timestamp) -> BackupSummary {
    BackupSummary {
        id: b.id.clone(),
        label: b.label.clone(),
        started: b.started,
        finished: b.finished,
        retain_until: b.retain_until,
        files: b.files,
        bytes: b.bytes,
        stored_bytes: b.stored_bytes,
        expired: b.retain_until <= now,
    }
}

/// Options for [`init`].
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub dir: PathBuf,
    pub listen: String,
    /// Escrow recipients the repository keys are also wrapped to (G5). May be empty only if the
    /// caller accepted losing everything with the vault key.
    pub escrow: Vec<age::x25519::Recipient>,
    pub keyholders: Vec<KeyholderFile>,
    pub threshold: usize,
    pub retention_days: u32,
    pub wait_hours: u64,
    /// Allow `wait_hours` below [`config::MIN_WAIT_HOURS`] (tests only; alerted at each start).
    pub testing_allow_short_wait: bool,
    /// Protected clusters written into the config as `[[cluster]]` tables.
    pub clusters: Vec<capture::ClusterConfig>,
}

/// What [`init`] created.
#[derive(Debug)]
pub struct Initialized {
    pub config_path: PathBuf,
    pub repository: String,
    /// The first admin token: shown once, stored nowhere but as a hash in the catalog.
    pub admin_token: Token,
    pub ca_path: PathBuf,
}

/// Creates a vault in `opts.dir`: `vault.toml`, `vault.key` (0600), `store/`, a self-signed TLS
/// pair, the repository (keys wrapped to the vault key and every escrow recipient), and a first
/// admin token. Refuses to touch a directory that already holds a vault.
pub async fn init(opts: InitOptions, clock: &dyn Clock) -> Result<Initialized, VaultError> {
    init_with_store(opts, StoreFile::local("store"), clock).await
}

/// [`init`] with another store, e.g. an S3 bucket (`StoreFile { kind: Some("s3"), .. }`), which
/// must exist and have Object Lock unless `object_lock = false`.
pub async fn init_with_store(
    opts: InitOptions,
    store_file: StoreFile,
    clock: &dyn Clock,
) -> Result<Initialized, VaultError> {
    let dir = &opts.dir;
    std::fs::create_dir_all(dir)
        .map_err(|e| VaultError::Setup(format!("cannot create {}: {e}", dir.display())))?;
    let dir = dir
        .canonicalize()
        .map_err(|e| VaultError::Setup(format!("cannot resolve {}: {e}", dir.display())))?;
    let config_path = dir.join("vault.toml");
    for existing in [config_path.clone(), dir.join("vault.key"), dir.join("store")] {
        if existing.exists() {
            return Err(VaultError::Setup(format!(
                "{} already exists: this directory already holds a vault; pick an empty directory",
                existing.display()
            )));
        }
    }
    let file = ConfigFile {
        listen: opts.listen.clone(),
        key_file: "vault.key".into(),
        retention_days: opts.retention_days,
        alert_command: None,
        max_body_bytes: None,
        store: store_file,
        tls: TlsFile { cert: "tls/cert.pem".into(), key: "tls/key.pem".into() },
        quorum: QuorumFile {
            threshold: opts.threshold,
            wait_hours: opts.wait_hours,
            keyholders: opts.keyholders.clone(),
            testing_allow_short_wait: opts.testing_allow_short_wait,
        },
        clusters: opts.clusters.clone(),
        drills: Vec::new(),
        standbys: Vec::new(),
        webhooks: Vec::new(),
        limits: None,
        audit_trust_keys: Vec::new(),
        console_session: None,
    };
    // Validate before creating anything.
    let config = file.validate(&dir)?;
    // The store first: an S3 bucket without Object Lock is refused before anything is written.
    let store: Arc<dyn ObjectStore> = match &config.store {
        StoreConfig::Local(store_dir) => {
            std::fs::create_dir_all(store_dir)
                .map_err(|e| VaultError::Setup(format!("cannot create {}: {e}", store_dir.display())))?;
            Arc::new(LocalDir::open(store_dir)?)
        }
        StoreConfig::S3(cfg) => Arc::new(open_s3(cfg).await?),
        StoreConfig::Mirror { local, remote, .. } => {
            let remote = open_s3(remote).await?;
            std::fs::create_dir_all(local)
                .map_err(|e| VaultError::Setup(format!("cannot create {}: {e}", local.display())))?;
            Arc::new(store::MirrorStore::open(LocalDir::open(local)?, remote))
        }
    };
    let now = clock.now();
    let key = AgeKey::generate();
    key.write_new(&config.key_file, &now.to_string())?;
    let mut recipients = vec![key.recipient()];
    recipients.extend(opts.escrow.iter().cloned());
    let repo = Repository::init(store, &recipients, now, Timestamp::FOREVER).await?;
    let token = new_token()?;
    let until = now.plus(Duration::from_secs(u64::from(opts.retention_days) * 86_400));
    let body =
        serde_json::to_value(token_record(&token, Scope::Admin, "first admin (vault init)", "vault init"))
            .map_err(|e| VaultError::Setup(e.to_string()))?;
    repo.append_record(kinds::TOKEN_CREATED, body, now, until).await?;
    keyfile::ensure_tls(&config.tls.cert, &config.tls.key)?;
    let text = toml::to_string(&file).map_err(|e| VaultError::Setup(format!("encoding the config: {e}")))?;
    let header = "# holdfast vault configuration (created by `holdfast vault init`).\n# Unknown keys are refused. Paths are relative to this file.\n";
    std::fs::write(&config_path, format!("{header}{text}"))
        .map_err(|e| VaultError::Setup(format!("cannot write {}: {e}", config_path.display())))?;
    Ok(Initialized {
        config_path,
        repository: repo.id().to_string(),
        admin_token: token,
        ca_path: config.tls.cert.clone(),
    })
}

/// A running vault.
#[derive(Debug)]
pub struct VaultHandle {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    shared: Arc<service::Shared>,
}

impl VaultHandle {
    /// The address the vault listens on (useful when the config asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The shared state (for in-process tests and the CLI).
    pub fn shared(&self) -> &Arc<service::Shared> {
        &self.shared
    }

    /// Stops accepting connections, lets requests in flight finish (up to 10 s), stores the
    /// WAL still in memory, and returns.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
        if let Some(c) = self.shared.collector.get() {
            c.shutdown().await;
        }
    }
}

/// What the collector needs from the vault: its clock, its retention policy, its alerts.
struct CollectorHost(std::sync::Weak<service::Shared>, Arc<dyn Clock>);

impl capture::VaultHost for CollectorHost {
    fn now(&self) -> Timestamp {
        self.1.now()
    }

    fn retain_until(&self) -> Timestamp {
        // The vault outlives its collector; if it is gone, retain forever rather than guess.
        self.0.upgrade().map(|s| s.retain_until_now()).unwrap_or(Timestamp::FOREVER)
    }

    fn alert(&self, incident: &capture::Incident) {
        if let Some(s) = self.0.upgrade() {
            s.alert(serde_json::json!({ "alert": "incident", "incident": incident }));
        }
    }
}

/// Raises this process's soft limit on open files to its hard limit and returns the new soft
/// limit. The common default of 1,024 let 2,000 idle connections starve WAL capture of
/// descriptors; the hard limit (often 524,288 under systemd) does not.
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let cur = getrlimit(Resource::Nofile);
    let target = cur.maximum;
    if cur.current == target || target.is_none() && cur.current.is_none() {
        return cur.current;
    }
    match setrlimit(Resource::Nofile, Rlimit { current: target, maximum: cur.maximum }) {
        Ok(()) => {
            tracing::info!(from = ?cur.current, to = ?target, "raised the open-files limit to its hard limit");
            target
        }
        Err(e) => {
            tracing::warn!(error = %e, soft = ?cur.current, "could not raise the open-files limit");
            cur.current
        }
    }
}

/// What [`recover_admin`] did.
#[derive(Debug)]
pub struct Recovered {
    pub token: Token,
    /// The `token.created` catalog record.
    pub record: store::ObjectName,
    /// Whether an alert command or a webhook accepted the alert.
    pub alerted: bool,
}

/// Offline recovery when every admin token is lost or revoked: with the config and the vault
/// key (or an escrow identity) on the vault host — what no API token can reach — mints a new
/// admin token, records it in the catalog (`created_by` says it was recovered offline, and why)
/// and sends an alert through `alert_command` and the webhooks, waiting for delivery. A running
/// vault accepts the token once it is presented (it re-reads token records for an unknown id).
pub async fn recover_admin(
    config: &Config,
    identities: Option<Vec<age::x25519::Identity>>,
    reason: &str,
    clock: &dyn Clock,
) -> Result<Recovered, VaultError> {
    let reason = reason.trim();
    if reason.is_empty() || reason.len() > 500 || reason.chars().any(char::is_control) {
        return Err(VaultError::Setup(
            "--reason must say who is recovering and why (1 to 500 printable characters)".into(),
        ));
    }
    let (repo, _) = open_repository(config, identities).await?;
    let state = load_state(&repo).await?;
    let token = new_token()?;
    let now = clock.now();
    let until =
        now.plus(Duration::from_secs(u64::from(state.retention_days(config.retention_days)) * 86_400));
    let host = std::process::Command::new("hostname")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let created_by = format!("recover-admin (offline on {host}): {reason}");
    let body = serde_json::to_value(token_record(&token, Scope::Admin, "recovered admin", &created_by))
        .map_err(|e| VaultError::Setup(e.to_string()))?;
    let record = repo.append_record(kinds::TOKEN_CREATED, body, now, until).await?;
    let event = serde_json::json!({
        "alert": "admin.recovered",
        "token": token.id(),
        "record": record.to_string(),
        "by": created_by,
        "live_admin_tokens_before": state.live_admins(),
        "what_to_do": "an admin token was minted offline on the vault host; if nobody you know did this, the vault host is compromised",
    });
    tracing::warn!(alert = %event, "ALERT");
    let alerted = alerts::deliver_now(config.alert_command.as_deref(), &config.webhooks, &event).await;
    Ok(Recovered { token, record, alerted })
}

/// Starts the vault: opens the store and repository, rebuilds state from the catalog, creates
/// the TLS pair if missing, and serves HTTPS until [`VaultHandle::shutdown`].
pub async fn serve(config: Config, clock: Arc<dyn Clock>) -> Result<VaultHandle, VaultError> {
    serve_with_identity(config, clock, None).await
}

/// [`serve`], opening the repository with `identities` (an escrow key, G5) instead of the
/// vault's key file: how a vault whose key was destroyed is brought back to restore from.
pub async fn serve_with_identity(
    config: Config,
    clock: Arc<dyn Clock>,
    identities: Option<Vec<age::x25519::Identity>>,
) -> Result<VaultHandle, VaultError> {
    let fds = raise_fd_limit();
    let (repo, store, mirror) = open_repository_parts(&config, identities).await?;
    let upload_alerts = match &config.store {
        StoreConfig::Mirror { alerts, .. } => Some(*alerts),
        _ => None,
    };
    let state = load_state(&repo).await?;
    keyfile::ensure_tls(&config.tls.cert, &config.tls.key)?;
    let tls = keyfile::server_config(&config.tls.cert, &config.tls.key)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| VaultError::Bind { addr: config.listen, source: e })?;
    let addr = listener.local_addr().map_err(|e| VaultError::Bind { addr: config.listen, source: e })?;
    tracing::info!(%addr, repository = repo.id(), tokens = state.tokens.len(), "vault listening");
    let drills = drill::Drills::new(repo.keys());
    let shared = Arc::new(service::Shared {
        repo,
        store,
        clock,
        retention_days_now: std::sync::atomic::AtomicU32::new(state.retention_days(config.retention_days)),
        state: tokio::sync::RwLock::new(state),
        metrics: service::Metrics::default(),
        collector: std::sync::OnceLock::new(),
        entries_cache: std::sync::Mutex::new(None),
        drills,
        standbys: standby::Standbys::new(&config.standbys),
        webhooks: Arc::new(alerts::Webhooks::new(config.webhooks.clone())),
        writes: std::sync::Mutex::new(Default::default()),
        object_stats: tokio::sync::Mutex::new(None),
        token_reload: tokio::sync::Mutex::new(None),
        stores: store_watch::Stores::new(mirror, upload_alerts),
        config,
    });
    shared.drills.set_listen_addr(addr);
    shared.standbys.set_listen_addr(addr);
    tracing::info!(open_files_limit = ?fds, "file descriptors");
    if shared.config.quorum.short_wait_for_testing {
        shared.alert(serde_json::json!({
            "alert": "quorum.short_wait",
            "wait_hours": shared.config.quorum.wait.as_secs() / 3600,
            "what_to_do": "testing_allow_short_wait is set in [quorum]: deletions can execute before keyholders can react; never in production",
        }));
    }
    {
        let cfgs = shared.config.drills.clone();
        let repo_id = shared.repo.id().to_string();
        let _ = tokio::task::spawn_blocking(move || drill::clean_leftovers(&cfgs, &repo_id)).await;
    }
    if !shared.config.clusters.is_empty() {
        let host = Arc::new(CollectorHost(Arc::downgrade(&shared), shared.clock.clone()));
        let collector = capture::Collector::start(&shared.repo, shared.config.clusters.clone(), host).await?;
        let _ = shared.collector.set(collector);
    }
    let router = api::router(shared.clone());
    let (tx, rx) = watch::channel(false);
    if !shared.config.drills.is_empty() {
        tokio::spawn(drill::scheduler(shared.clone(), rx.clone()));
    }
    tokio::spawn(store_watch::watch(shared.clone(), rx.clone()));
    standby::start(&shared, &rx);
    let limits = serve::tls::ConnLimits {
        unauthenticated_per_address: shared.config.limits.unauthenticated_per_address as usize,
        handshake: shared.config.limits.tls_handshake,
    };
    let task = tokio::spawn(accept_loop(listener, tokio_rustls::TlsAcceptor::from(tls), router, rx, limits));
    Ok(VaultHandle { addr, shutdown: tx, task, shared })
}

/// Accepts TCP connections, completes TLS, and serves HTTP/1.1 on each until shutdown.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    router: axum::Router,
    shutdown: watch::Receiver<bool>,
    limits: serve::tls::ConnLimits,
) {
    serve::tls::serve_https_limited(listener, acceptor, router, shutdown, limits).await;
    tracing::info!("vault stopped");
}

/// Resolves when the process receives SIGTERM or ctrl-c.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The path of a file next to the config (for the CLI).
pub fn sibling(config_path: &Path, name: &str) -> PathBuf {
    config_path.parent().unwrap_or(Path::new(".")).join(name)
}
