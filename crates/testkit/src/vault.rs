//! `TempVault`: a real `holdfast vault` process in a temporary directory, for tests.
//!
//! It runs `holdfast escrow-keygen`, `holdfast vault init` and `holdfast vault serve` as child
//! processes (the binary's path is passed in by the test, e.g. `env!("CARGO_BIN_EXE_holdfast")`),
//! listens on a free port chosen by the kernel (`--listen 127.0.0.1:0`, address read back from
//! `--ready-file`), and kills the server on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The replication role [`TempVault::protect`] has the vault connect as.
pub const REPLICATION_ROLE: &str = "holdfast_rep";
/// Its password.
pub const REPLICATION_PASSWORD: &str = "rep-secret";

/// How to create the vault.
#[derive(Debug, Clone)]
pub struct TempVaultOptions {
    /// `(name, hex public key)` of enrolled keyholders.
    pub keyholders: Vec<(String, String)>,
    pub threshold: Option<usize>,
    pub retention_days: u32,
    pub wait_hours: u64,
    /// A file with a `[store]` table for `vault init --store-config` (an S3 bucket, or a local
    /// directory written through to one); `None`: a local `store/` directory.
    pub store_config: Option<PathBuf>,
}

impl Default for TempVaultOptions {
    fn default() -> Self {
        TempVaultOptions {
            keyholders: Vec::new(),
            threshold: None,
            retention_days: 30,
            wait_hours: 72,
            store_config: None,
        }
    }
}

/// A vault server process in a temporary directory.
#[derive(Debug)]
pub struct TempVault {
    dir: tempfile::TempDir,
    bin: PathBuf,
    child: Option<Child>,
    url: String,
    admin_token: String,
    /// Extra arguments for `vault serve` (e.g. `--identity`), kept across restarts.
    serve_args: Vec<String>,
}

impl TempVault {
    /// Creates and starts a vault with default options.
    pub fn start(bin: &Path) -> Result<TempVault> {
        TempVault::start_with(bin, TempVaultOptions::default())
    }

    /// Creates (with an escrow key in `escrow.key`) and starts a vault.
    pub fn start_with(bin: &Path, opts: TempVaultOptions) -> Result<TempVault> {
        let dir =
            tempfile::Builder::new().prefix("holdfast-vault-").tempdir().context("creating a temp dir")?;
        let escrow = dir.path().join("escrow.key");
        let out = run_ok(bin, &["escrow-keygen", "--out", path_str(&escrow)?])?;
        let recipient = String::from_utf8(out.stdout)?.trim().to_string();
        let vault_dir = dir.path().join("vault");
        let token_file = dir.path().join("admin.token");
        let mut args: Vec<String> = vec![
            "vault".into(),
            "init".into(),
            "--dir".into(),
            path_str(&vault_dir)?.into(),
            "--escrow-recipient".into(),
            recipient,
            "--admin-token-file".into(),
            path_str(&token_file)?.into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--retention-days".into(),
            opts.retention_days.to_string(),
            "--wait-hours".into(),
            opts.wait_hours.to_string(),
        ];
        for (name, key) in &opts.keyholders {
            args.push("--keyholder".into());
            args.push(format!("{name}={key}"));
        }
        if let Some(t) = opts.threshold {
            args.push("--threshold".into());
            args.push(t.to_string());
        }
        if let Some(f) = &opts.store_config {
            args.push("--store-config".into());
            args.push(path_str(f)?.into());
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        run_ok(bin, &argv)?;
        let admin_token = std::fs::read_to_string(&token_file)?.trim().to_string();
        let mut v = TempVault {
            dir,
            bin: bin.to_path_buf(),
            child: None,
            url: String::new(),
            admin_token,
            serve_args: Vec::new(),
        };
        v.serve()?;
        Ok(v)
    }

    /// Starts `holdfast vault serve` and waits until it is listening.
    fn serve(&mut self) -> Result<()> {
        let ready = self.dir.path().join("ready.json");
        let _ = std::fs::remove_file(&ready);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path())?;
        // A free port chosen by the kernel, unless the extra arguments name one.
        let listen: &[&str] =
            if self.serve_args.iter().any(|a| a == "--listen") { &[] } else { &["--listen", "127.0.0.1:0"] };
        let mut child = Command::new(&self.bin)
            .args(["vault", "serve", "--config", path_str(&self.config_path())?])
            .args(listen)
            .args(["--ready-file", path_str(&ready)?])
            .args(&self.serve_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting holdfast vault serve")?;
        let limit = crate::wait::budget(Duration::from_secs(60));
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                let v: serde_json::Value = serde_json::from_str(&text).context("parsing the ready file")?;
                self.url = v["url"].as_str().context("ready file has no url")?.to_string();
                self.child = Some(child);
                return Ok(());
            }
            if let Some(status) = child.try_wait()? {
                bail!("holdfast vault serve exited with {status} before listening; log:\n{}", self.log());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!(
                    "holdfast vault serve did not become ready within {} s; log:\n{}",
                    limit.as_secs(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Restarts with extra `vault serve` arguments (kept for later restarts).
    pub fn restart_with(&mut self, args: &[&str]) -> Result<()> {
        self.serve_args = args.iter().map(|a| a.to_string()).collect();
        self.restart()
    }

    /// SIGKILLs the server (no chance to clean up) and waits for it to die.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits up to 20 s for a clean exit; returns whether it exited cleanly.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else { return false };
        // std has no SIGTERM and the workspace forbids unsafe code: use kill(1).
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        let deadline = Instant::now() + crate::wait::budget(Duration::from_secs(20));
        while Instant::now() < deadline {
            if let Ok(Some(s)) = c.try_wait() {
                return s.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    /// Kills the server if running and starts it again (on a new port).
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.serve()
    }

    /// Protects `pg` as cluster `main`: the vault connects as the replication role
    /// [`REPLICATION_ROLE`] with [`REPLICATION_PASSWORD`] (create it first with
    /// `pg.create_replication_role(REPLICATION_ROLE, REPLICATION_PASSWORD)`), whose password file
    /// is written to the scratch directory. `extra` holds more lines of that `[[cluster]]`
    /// table (e.g. `"catalog_refresh_seconds = 2\n"`). The vault is restarted to read it.
    pub fn protect(&mut self, pg: &crate::pg::TempPg, extra: &str) -> Result<()> {
        let pw = self.scratch().join("rep.password");
        std::fs::write(&pw, format!("{REPLICATION_PASSWORD}\n"))?;
        let table = format!(
            "\n[[cluster]]\nname = \"main\"\nhosts = [\"{}:{}\"]\nuser = \"{REPLICATION_ROLE}\"\npassword_file = \"{}\"\nsslmode = \"disable\"\n{extra}",
            pg.socket_dir().display(),
            pg.port(),
            pw.display()
        );
        use std::io::Write as _;
        std::fs::OpenOptions::new().append(true).open(self.config_path())?.write_all(table.as_bytes())?;
        self.restart()
    }

    /// Puts top-level `lines` (e.g. `alert_command = …`) at the head of `vault.toml`, where
    /// TOML wants them (before the tables); read at the next restart.
    pub fn prepend_config(&self, lines: &str) -> Result<()> {
        let text = std::fs::read_to_string(self.config_path())?;
        std::fs::write(self.config_path(), format!("{lines}\n{text}"))?;
        Ok(())
    }

    /// Creates a token of `scope` (`read`, `append`, `admin`) labelled `label` with the first
    /// admin token (`admin.token` in the scratch directory), written to `out`.
    pub fn create_token(&self, scope: &str, label: &str, out: &Path) -> Result<()> {
        let admin = self.scratch().join("admin.token");
        let out_arg = out.display().to_string();
        let args = ["vault", "token", "create", "--scope", scope, "--label", label, "--out", &out_arg];
        let o = self.cli(&admin, &args)?;
        if !o.status.success() {
            bail!("vault token create --scope {scope}: {}", String::from_utf8_lossy(&o.stderr));
        }
        Ok(())
    }

    /// Whether the server process is still alive.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Runs `holdfast` with `args` (e.g. `["vault", "check", "--config", …]`) and returns its output.
    /// `--url … --ca … --token-file <token>`: how remote commands reach this vault.
    pub fn remote_args(&self, token: &Path) -> Vec<String> {
        vec![
            "--url".into(),
            self.url.clone(),
            "--ca".into(),
            self.ca_path().display().to_string(),
            "--token-file".into(),
            token.display().to_string(),
        ]
    }

    /// A remote `holdfast` command against this vault with `token`.
    pub fn cli(&self, token: &Path, args: &[&str]) -> Result<Output> {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend(self.remote_args(token));
        self.holdfast(&all.iter().map(String::as_str).collect::<Vec<_>>())
    }

    pub fn holdfast(&self, args: &[&str]) -> Result<Output> {
        Ok(Command::new(&self.bin).args(args).stdin(Stdio::null()).output()?)
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The first admin token.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The vault's self-signed certificate (PEM), to pin in clients.
    pub fn ca_path(&self) -> PathBuf {
        self.vault_dir().join("tls/cert.pem")
    }

    /// The CA certificate's bytes.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.ca_path()).unwrap_or_default()
    }

    /// The vault directory (config, key, store, tls).
    pub fn vault_dir(&self) -> PathBuf {
        self.dir.path().join("vault")
    }

    /// `vault.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.vault_dir().join("vault.toml")
    }

    /// The object store directory.
    pub fn store_dir(&self) -> PathBuf {
        self.vault_dir().join("store")
    }

    /// The offline escrow identity the repository keys are also wrapped to.
    pub fn escrow_key_path(&self) -> PathBuf {
        self.dir.path().join("escrow.key")
    }

    /// A scratch directory for the test's own files.
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("serve.log")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for TempVault {
    fn drop(&mut self) {
        self.kill();
    }
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("temp path is not UTF-8")
}

fn run_ok(bin: &Path, args: &[&str]) -> Result<Output> {
    let out = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "holdfast {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}
