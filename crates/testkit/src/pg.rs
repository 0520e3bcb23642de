//! `TempPg`: a throwaway PostgreSQL cluster for tests, run as the `postgres` system user.
//!
//! Each `TempPg` runs `initdb` into its own temporary directory, listens on a Unix socket in
//! that directory (and, if asked, on a free TCP port of 127.0.0.1), and is stopped on drop.
//! PostgreSQL refuses to run as root, so when the tests run as root every server-side command
//! goes through `runuser -u postgres --` and the directories are handed to that user.

use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// The superuser's name in every `TempPg`.
pub const SUPERUSER: &str = "postgres";

/// How to set up a [`TempPg`].
#[derive(Clone, Debug, Default)]
pub struct TempPgOptions {
    /// Also listen on 127.0.0.1 (on a free port).
    pub tcp: bool,
    /// Extra `postgresql.conf` settings, as (name, value) with the value written verbatim.
    pub settings: Vec<(String, String)>,
    /// Extra `pg_hba.conf` lines, put before initdb's defaults.
    pub hba_lines: Vec<String>,
    /// Environment of the server's processes (e.g. [`crate::clock::ShiftedClock`]'s).
    pub env: Vec<(String, String)>,
}

impl TempPgOptions {
    /// Adds a `postgresql.conf` setting (`value` is written verbatim, quote strings yourself).
    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Also listen on TCP 127.0.0.1.
    pub fn with_tcp(mut self) -> Self {
        self.tcp = true;
        self
    }

    /// Adds a `pg_hba.conf` line ahead of the defaults.
    pub fn hba(mut self, line: &str) -> Self {
        self.hba_lines.push(line.to_owned());
        self
    }

    /// Sets an environment variable of the server (at every start).
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// A running PostgreSQL cluster in a temporary directory; stopped (fast) on drop.
#[derive(Debug)]
pub struct TempPg {
    root: tempfile::TempDir,
    data: PathBuf,
    port: u16,
    tcp: bool,
    password: String,
    running: bool,
    env: Vec<(String, String)>,
}

/// The directory holding `initdb`, `postgres`, `pg_ctl`, `psql`, `pg_waldump`…
pub fn bindir() -> Result<PathBuf> {
    static BINDIR: OnceLock<Result<PathBuf, PgNotFound>> = OnceLock::new();
    Ok(BINDIR.get_or_init(find_bindir).clone()?)
}

/// PostgreSQL's server programs: where `pg_config --bindir` says (Debian's pg_config may belong
/// to libpq-dev alone), else on `PATH`, else the newest `/usr/lib/postgresql/*/bin`.
fn find_bindir() -> Result<PathBuf, PgNotFound> {
    let has_server = |d: &Path| d.join("initdb").exists() && d.join("pg_ctl").exists();
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let on_path = std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).find(|d| has_server(d)));
    let debian = std::fs::read_dir("/usr/lib/postgresql").ok().and_then(|rd| {
        let mut v: Vec<PathBuf> =
            rd.flatten().map(|e| e.path().join("bin")).filter(|p| has_server(p)).collect();
        v.sort();
        v.pop()
    });
    from_pg_config.filter(|d| has_server(d)).or(on_path).or(debian).ok_or(PgNotFound)
}

/// PostgreSQL's server programs are not installed where they were looked for.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error(
    "PostgreSQL's server programs (initdb, pg_ctl, postgres) were not found via pg_config, PATH or \
     /usr/lib/postgresql/*/bin: install them (Debian/Ubuntu: apt-get install postgresql-15, or run \
     ./run demo, which installs what is missing) or put their directory on PATH"
)]
pub struct PgNotFound;

/// The path of a PostgreSQL program, e.g. `bin("pg_waldump")`.
pub fn bin(name: &str) -> Result<PathBuf> {
    Ok(bindir()?.join(name))
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

fn postgres_ids() -> Result<(u32, u32)> {
    let id = |flag: &str| -> Result<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output().context("running id postgres")?;
        if !out.status.success() {
            bail!("there is no `postgres` system user to run PostgreSQL as");
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    Ok((id("-u")?, id("-g")?))
}

/// A command that runs `program` as the `postgres` user when we are root, directly otherwise.
pub fn command_as_postgres(program: &Path) -> Command {
    if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut cmd: Command, what: &str) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// The server's port: only a name for its Unix socket (in a directory of its own) unless it
/// listens on TCP too; then one the kernel will not hand out as an ephemeral port between now
/// and the server's (re)starts (see [`crate::net`]).
fn free_port(tcp: bool) -> Result<u16> {
    if tcp { crate::net::port_to_reuse() } else { Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()) }
}

fn give_to_postgres(path: &Path) -> Result<()> {
    if running_as_root() {
        let (uid, gid) = postgres_ids()?;
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .with_context(|| format!("chown {} to postgres", path.display()))?;
    }
    Ok(())
}

impl TempPg {
    /// Initialises and starts a cluster with default options.
    pub fn start() -> Result<TempPg> {
        Self::start_with(TempPgOptions::default())
    }

    /// Initialises and starts a cluster.
    pub fn start_with(opts: TempPgOptions) -> Result<TempPg> {
        let root = tempfile::Builder::new().prefix("holdfast-pg-").tempdir()?;
        give_to_postgres(root.path())?;
        let data = root.path().join("data");
        let password = format!("pw-{}", std::process::id());
        let pwfile = root.path().join("pwfile");
        std::fs::write(&pwfile, format!("{password}\n"))?;
        give_to_postgres(&pwfile)?;
        let mut initdb = command_as_postgres(&bin("initdb")?);
        initdb
            .arg("-D")
            .arg(&data)
            .args(["--no-sync", "-A", "scram-sha-256", "-U", SUPERUSER, "-E", "UTF8"])
            .args(["--locale=C"])
            .arg(format!("--pwfile={}", pwfile.display()));
        run(initdb, "initdb")?;
        std::fs::remove_file(&pwfile)?;

        let pg = TempPg {
            root,
            data,
            port: free_port(opts.tcp)?,
            tcp: opts.tcp,
            password,
            running: false,
            env: opts.env.clone(),
        };
        pg.write_config(&opts)?;
        let mut pg = pg;
        pg.start_server()?;
        Ok(pg)
    }

    /// An empty directory, owned by the `postgres` user, to restore a data directory into
    /// (`<dir>/data`) before [`TempPg::start_restored`].
    pub fn restore_root() -> Result<tempfile::TempDir> {
        let root = tempfile::Builder::new().prefix("holdfast-pg-").tempdir()?;
        give_to_postgres(root.path())?;
        Ok(root)
    }

    /// Starts a server on a data directory restored into `<root>/data` (e.g. a base backup
    /// plus WAL and recovery settings), with this process's superuser password, on a fresh
    /// socket and port. `settings` are appended to `postgresql.conf`.
    pub fn start_restored(root: tempfile::TempDir, settings: &[(&str, &str)]) -> Result<TempPg> {
        let data = root.path().join("data");
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&data)
            .status()
            .context("running chown")?;
        if running_as_root() && !status.success() {
            bail!("chown -R postgres {} failed", data.display());
        }
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))?;
        let password = format!("pw-{}", std::process::id());
        let mut pg = TempPg {
            root,
            data,
            port: free_port(false)?,
            tcp: false,
            password,
            running: false,
            env: Vec::new(),
        };
        let mut conf = String::from("\n# Written by holdfast's testkit for a restored cluster.\n");
        conf.push_str("listen_addresses = ''\n");
        conf.push_str(&pg.port_settings());
        for (k, v) in settings {
            conf.push_str(&format!("{k} = {v}\n"));
        }
        append(&pg.data.join("postgresql.conf"), &conf)?;
        pg.start_server()?;
        Ok(pg)
    }

    fn write_config(&self, opts: &TempPgOptions) -> Result<()> {
        let mut conf = String::from("\n# Written by holdfast's testkit.\n");
        let listen = if self.tcp { "127.0.0.1" } else { "" };
        conf.push_str(&format!("listen_addresses = '{listen}'\n"));
        conf.push_str(&self.port_settings());
        for line in [
            "wal_level = replica",
            "max_wal_senders = 10",
            "max_replication_slots = 10",
            "fsync = off",
            "shared_buffers = 16MB",
            "max_connections = 30",
            "log_min_messages = warning",
        ] {
            conf.push_str(line);
            conf.push('\n');
        }
        for (k, v) in &opts.settings {
            conf.push_str(&format!("{k} = {v}\n"));
        }
        append(&self.data.join("postgresql.conf"), &conf)?;
        if !opts.hba_lines.is_empty() {
            let path = self.data.join("pg_hba.conf");
            let old = std::fs::read_to_string(&path)?;
            let mut new = opts.hba_lines.join("\n");
            new.push('\n');
            new.push_str(&old);
            std::fs::write(&path, new)?;
        }
        Ok(())
    }

    fn port_settings(&self) -> String {
        format!("port = {}\nunix_socket_directories = '{}'\n", self.port, self.socket_dir().display())
    }

    fn start_server(&mut self) -> Result<()> {
        let mut cmd = command_as_postgres(&bin("pg_ctl")?);
        cmd.arg("-D").arg(&self.data).arg("-l").arg(self.log_path()).args(["-w", "-t", "60", "start"]);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Err(e) = run(cmd, "pg_ctl start") {
            let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            bail!("{e}\nserver log:\n{log}");
        }
        self.running = true;
        Ok(())
    }

    /// The directory holding the server's Unix socket (`host` for libpq).
    pub fn socket_dir(&self) -> PathBuf {
        self.root.path().to_path_buf()
    }

    /// The socket file itself: `<socket_dir>/.s.PGSQL.<port>`.
    pub fn socket_path(&self) -> PathBuf {
        self.socket_dir().join(format!(".s.PGSQL.{}", self.port))
    }

    /// The port (of the TCP listener if any; it also names the Unix socket).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>` when started with TCP.
    pub fn tcp_addr(&self) -> Option<String> {
        self.tcp.then(|| format!("127.0.0.1:{}", self.port))
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The superuser (`postgres`) password.
    pub fn superuser_password(&self) -> &str {
        &self.password
    }

    /// The server log file.
    pub fn log_path(&self) -> PathBuf {
        self.root.path().join("server.log")
    }

    /// A scratch directory inside the cluster's temp dir, owned by `postgres`.
    pub fn scratch_dir(&self, name: &str) -> Result<PathBuf> {
        let p = self.root.path().join(name);
        std::fs::create_dir_all(&p)?;
        give_to_postgres(&p)?;
        Ok(p)
    }

    /// Writes a file into the data directory, owned by `postgres` with `mode` (e.g. a TLS key
    /// with 0o600).
    pub fn write_data_file(&self, name: &str, contents: &[u8], mode: u32) -> Result<PathBuf> {
        let path = self.data.join(name);
        std::fs::write(&path, contents)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        give_to_postgres(&path)?;
        Ok(path)
    }

    /// Runs SQL through psql as the superuser; returns unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> Result<String> {
        self.psql_db("postgres", sql)
    }

    /// Runs SQL through psql in database `db`.
    pub fn psql_db(&self, db: &str, sql: &str) -> Result<String> {
        psql_at(&self.socket_dir(), self.port, &self.password, db, sql)
    }

    /// Creates a login role with the REPLICATION attribute.
    pub fn create_replication_role(&self, name: &str, password: &str) -> Result<()> {
        self.psql(&format!(
            "CREATE ROLE {} LOGIN REPLICATION PASSWORD {}",
            quote_ident(name),
            quote_literal(password)
        ))
        .map(drop)
    }

    /// Creates a login role without REPLICATION.
    pub fn create_login_role(&self, name: &str, password: &str) -> Result<()> {
        self.psql(&format!("CREATE ROLE {} LOGIN PASSWORD {}", quote_ident(name), quote_literal(password)))
            .map(drop)
    }

    /// `pg_controldata` output for the data directory.
    pub fn controldata(&self) -> Result<String> {
        let mut cmd = command_as_postgres(&bin("pg_controldata")?);
        cmd.arg("-D").arg(&self.data);
        let out = run(cmd, "pg_controldata")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The "Database system identifier" `pg_controldata` prints.
    pub fn system_identifier(&self) -> Result<u64> {
        let text = self.controldata()?;
        let line = text
            .lines()
            .find(|l| l.starts_with("Database system identifier:"))
            .context("pg_controldata printed no system identifier")?;
        Ok(line.rsplit(' ').next().unwrap_or_default().trim().parse()?)
    }

    /// Whether the server is running (as far as this handle knows).
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Stops the server (fast shutdown) and waits.
    pub fn stop(&mut self) -> Result<()> {
        if !self.running {
            return Ok(());
        }
        let mut cmd = command_as_postgres(&bin("pg_ctl")?);
        cmd.arg("-D").arg(&self.data).args(["-m", "fast", "-w", "-t", "60", "stop"]);
        run(cmd, "pg_ctl stop")?;
        self.running = false;
        Ok(())
    }

    /// Starts a stopped server again.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.start_server()
    }

    /// Kills the postmaster with SIGKILL, as a crash would; `restart` recovers it.
    pub fn kill(&mut self) -> Result<()> {
        if !self.running {
            return Ok(());
        }
        let pidfile = std::fs::read_to_string(self.data.join("postmaster.pid"))?;
        let pid: u32 = pidfile.lines().next().unwrap_or_default().trim().parse()?;
        let mut cmd = Command::new("kill");
        cmd.args(["-KILL", &pid.to_string()]);
        run(cmd, "kill postmaster")?;
        // Wait for the postmaster to go, then for its children, which exit when they notice:
        // an orphaned backend keeps the shared memory segment, and a restart before it is gone
        // fails. Every server process runs in the data directory.
        let every = Duration::from_millis(10);
        crate::wait::until(Duration::from_secs(5), every, "the killed postmaster exiting", || {
            (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
        })?;
        self.running = false;
        let data = self.data.canonicalize()?;
        crate::wait::until(Duration::from_secs(10), every, "the killed server's backends exiting", || {
            (!processes_in(&data)).then_some(())
        })?;
        let _ = std::fs::remove_file(self.data.join("postmaster.pid"));
        Ok(())
    }

    /// A streaming standby of `primary`, cloned with `pg_basebackup -R` and started.
    pub fn standby_of(primary: &TempPg) -> Result<TempPg> {
        let root = tempfile::Builder::new().prefix("holdfast-pg-").tempdir()?;
        give_to_postgres(root.path())?;
        let data = root.path().join("data");
        let mut cmd = command_as_postgres(Path::new("env"));
        cmd.arg(format!("PGPASSWORD={}", primary.password))
            .arg(bin("pg_basebackup")?)
            .arg("-h")
            .arg(primary.socket_dir())
            .arg("-p")
            .arg(primary.port.to_string())
            .args(["-U", SUPERUSER, "-R", "-X", "stream", "--no-sync", "-c", "fast"])
            .arg("-D")
            .arg(&data);
        run(cmd, "pg_basebackup")?;
        let mut pg = TempPg {
            root,
            data,
            port: free_port(primary.tcp)?,
            tcp: primary.tcp,
            password: primary.password.clone(),
            running: false,
            env: Vec::new(),
        };
        // The copied config names the primary's port and socket directory: override them.
        let listen = if pg.tcp { "127.0.0.1" } else { "" };
        append(
            &pg.data.join("postgresql.conf"),
            &format!(
                "\n# Standby of {}.\nlisten_addresses = '{listen}'\n{}",
                primary.data.display(),
                pg.port_settings()
            ),
        )?;
        pg.start_server()?;
        Ok(pg)
    }

    /// Promotes a standby to primary and waits for it.
    pub fn promote(&self) -> Result<()> {
        let mut cmd = command_as_postgres(&bin("pg_ctl")?);
        cmd.arg("-D").arg(&self.data).args(["-w", "promote"]);
        run(cmd, "pg_ctl promote").map(drop)
    }
}

impl Drop for TempPg {
    fn drop(&mut self) {
        if self.running {
            let _ = self.stop();
        }
    }
}

fn append(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// Runs SQL through psql as the superuser on any server's Unix socket (e.g. one that
/// `holdfast restore --start` started); unaligned, tuples-only output.
pub fn psql_at(socket_dir: &Path, port: u16, password: &str, db: &str, sql: &str) -> Result<String> {
    let mut cmd = command_as_postgres(Path::new("env"));
    cmd.arg(format!("PGPASSWORD={password}"))
        .arg(bin("psql")?)
        .arg("-h")
        .arg(socket_dir)
        .arg("-p")
        .arg(port.to_string())
        .args(["-U", SUPERUSER, "-d", db, "-X", "-A", "-t", "-q"])
        .args(["-v", "ON_ERROR_STOP=1", "-c", sql]);
    let out = run(cmd, &format!("psql -c {sql:?}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
}

/// Quotes an SQL identifier: `"a""b"`.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes an SQL string literal: `'it''s'`.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Makes `path` readable by everyone (for files tests hand to PostgreSQL tools).
pub fn make_world_readable(path: &Path) -> Result<()> {
    let mut perms = std::fs::metadata(path)?.permissions();
    perms.set_mode(perms.mode() | 0o444 | if path.is_dir() { 0o111 } else { 0 });
    std::fs::set_permissions(path, perms)?;
    Ok(())
}

/// Whether any process runs with `dir` as its working directory (Linux `/proc`).
fn processes_in(dir: &Path) -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else { return false };
    procs.flatten().any(|p| std::fs::read_link(p.path().join("cwd")).is_ok_and(|cwd| cwd == dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_queries_restarts_and_stops() -> Result<()> {
        let mut pg = TempPg::start_with(TempPgOptions::default().with_tcp())?;
        assert_eq!(pg.psql("select 1 + 1")?, "2");
        assert_eq!(pg.psql("show wal_level")?, "replica");
        assert!(pg.socket_path().exists());
        assert!(pg.tcp_addr().is_some());
        assert!(pg.system_identifier()? > 0);
        pg.create_replication_role("rep", "s3cret'")?;
        assert_eq!(pg.psql("select rolreplication from pg_roles where rolname = 'rep'")?, "t");
        pg.psql("create table t (x int); insert into t values (1)")?;
        pg.kill()?;
        assert!(pg.psql("select 1").is_err());
        pg.restart()?;
        assert_eq!(pg.psql("select count(*) from t")?, "1");
        pg.stop()?;
        assert!(!pg.socket_path().exists());
        Ok(())
    }

    #[test]
    fn bad_sql_is_an_error() -> Result<()> {
        let pg = TempPg::start()?;
        let err = pg.psql("select * from no_such_table").unwrap_err();
        assert!(err.to_string().contains("no_such_table"), "{err}");
        Ok(())
    }

    #[test]
    fn standby_follows_primary() -> Result<()> {
        let primary = TempPg::start()?;
        primary.psql("create table t (x int); insert into t values (42)")?;
        let standby = TempPg::standby_of(&primary)?;
        assert_eq!(standby.psql("select pg_is_in_recovery()")?, "t");
        assert_eq!(standby.psql("select x from t")?, "42");
        standby.promote()?;
        assert_eq!(standby.psql("select pg_is_in_recovery()")?, "f");
        Ok(())
    }
}
