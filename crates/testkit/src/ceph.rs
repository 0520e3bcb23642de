//! `TempCeph`: a real single-node Ceph cluster (one MON, one memstore OSD, the RADOS Gateway on
//! loopback) started as a process tree in a temp directory, with one S3 user; stopped on Drop.
//!
//! vstart-style and without containers, cephadm, systemd or ceph-mgr (RGW does not need the
//! mgr; leaving it out saves ~300 MB RSS). The settings that make it start in seconds and the
//! pitfalls are recorded in `../shared/DEPENDENCIES.md` (Ceph section). The daemons run in the
//! foreground as children of the test, with PR_SET_PDEATHSIG so that a test killed before its
//! Drop runs does not leave a cluster behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The S3 access key of the user every TempCeph creates.
pub const ACCESS_KEY: &str = "HOLDFASTTESTACCESS01";
/// Its secret key.
pub const SECRET_KEY: &str = "holdfast-test-secret-key-0123456789abcdef";

/// A running throw-away Ceph cluster with an S3 endpoint.
pub struct TempCeph {
    dir: tempfile::TempDir,
    rgw_port: u16,
    /// The HTTPS port, if started with TLS.
    tls_port: Option<u16>,
    /// Children in start order (MON, OSD, RGW); stopped in reverse (RGW first: stopping the
    /// OSD under a running RGW hangs the RGW).
    children: Vec<(&'static str, Child)>,
}

/// The Debian packages that provide the daemons (`./run test` installs them).
pub const PACKAGES: &str = "ceph-mon ceph-osd radosgw ceph-common";

/// A port for one of Ceph's daemons, which binds it seconds later (see [`crate::net`]).
fn free_port() -> Result<u16> {
    crate::net::port_to_reuse()
}

fn run(cmd: &mut Command, what: &str) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {what} (is Ceph installed? {PACKAGES})"))?;
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

fn uuid() -> String {
    let mut b = [0u8; 16];
    getrandom(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

fn getrandom(buf: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(buf)).expect("reading /dev/urandom");
}

impl TempCeph {
    /// Creates and starts the cluster and the S3 user; returns once RGW answers HTTP.
    pub fn start() -> Result<TempCeph> {
        Self::start_with_tls(None)
    }

    /// As [`TempCeph::start`], RGW also serving HTTPS with `(certificate, private key)` PEM
    /// files (see [`TempCeph::tls_endpoint`]).
    pub fn start_with_tls(tls: Option<(&Path, &Path)>) -> Result<TempCeph> {
        if Command::new("radosgw").arg("--version").output().is_err() {
            bail!("radosgw not found: install Ceph ({PACKAGES}); `./run test` does it as root");
        }
        let dir = tempfile::Builder::new().prefix("holdfast-ceph-").tempdir()?;
        let d = dir.path().to_path_buf();
        for sub in ["mon", "osd", "rgw", "run"] {
            std::fs::create_dir_all(d.join(sub))?;
        }
        let mon_port = free_port()?;
        let rgw_port = free_port()?;
        let tls_port = tls.map(|_| free_port()).transpose()?;
        let ssl = match (tls, tls_port) {
            (Some((cert, key)), Some(p)) => format!(
                " ssl_endpoint=127.0.0.1:{p} ssl_certificate={} ssl_private_key={}",
                cert.display(),
                key.display()
            ),
            _ => String::new(),
        };
        let fsid = uuid();
        let ds = d.display();
        let conf = format!(
            "[global]
fsid = {fsid}
mon host = [v2:127.0.0.1:{mon_port}]
mon initial members = a
keyring = {ds}/keyring
run dir = {ds}/run
admin socket = {ds}/run/$name.asok
pid file = {ds}/run/$name.pid
log file = {ds}/$name.log
mon cluster log file = {ds}/mon-cluster.log
ms bind ipv4 = true
public network = 127.0.0.0/8
cluster network = 127.0.0.0/8
ms bind ipv6 = false
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
mon allow pool size one = true
mon allow pool delete = true
mon max pg per osd = 1000
osd crush chooseleaf type = 0
paxos propose interval = 0.1
bdev aio poll ms = 10
auth allow insecure global id reclaim = false
[mon]
mon data = {ds}/mon
# A throw-away cluster: the MON must not refuse to start because the machine's disk is 95 %
# full (its default), which a shared CI box often is; the data here is a few MB.
mon data avail crit = 0
mon data avail warn = 0
[osd]
osd data = {ds}/osd
public addr = 127.0.0.1
cluster addr = 127.0.0.1
osd objectstore = memstore
memstore device bytes = 1073741824
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}{ssl}
rgw data = {ds}/rgw
rgw dns name = localhost
"
        );
        let conf_path = d.join("ceph.conf");
        std::fs::write(&conf_path, conf)?;
        let keyring = d.join("keyring");
        let auth = |args: &[&str]| -> Result<()> {
            run(Command::new("ceph-authtool").arg(&keyring).args(args), "ceph-authtool").map(|_| ())
        };
        auth(&["--create-keyring", "--gen-key", "-n", "mon.", "--cap", "mon", "allow *"])?;
        auth(&[
            "--gen-key",
            "-n",
            "client.admin",
            "--cap",
            "mon",
            "allow *",
            "--cap",
            "osd",
            "allow *",
            "--cap",
            "mgr",
            "allow *",
        ])?;
        auth(&["--gen-key", "-n", "osd.0", "--cap", "mon", "allow profile osd", "--cap", "osd", "allow *"])?;
        auth(&["--gen-key", "-n", "client.rgw.a", "--cap", "mon", "allow rw", "--cap", "osd", "allow rwx"])?;
        let monmap = d.join("monmap");
        run(
            Command::new("monmaptool")
                .args(["--create", "--fsid", &fsid, "--addv", "a"])
                .arg(format!("[v2:127.0.0.1:{mon_port}]"))
                .arg(&monmap),
            "monmaptool",
        )?;
        let c = |prog: &str| {
            let mut cmd = Command::new(prog);
            cmd.arg("-c").arg(&conf_path);
            cmd
        };
        run(
            c("ceph-mon").args(["--mkfs", "-i", "a", "--monmap"]).arg(&monmap).arg("--keyring").arg(&keyring),
            "ceph-mon --mkfs",
        )?;
        let mut ceph = TempCeph { dir, rgw_port, tls_port, children: Vec::new() };
        ceph.spawn("ceph-mon", &["-f", "-i", "a"])?;

        let osd_uuid = uuid();
        let id = ceph.ceph(&["osd", "new", &osd_uuid]).map_err(|e| {
            let log = |f: &str| std::fs::read_to_string(ceph.dir().join(f)).unwrap_or_default();
            let tail = |t: String| {
                t.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
            };
            anyhow::anyhow!(
                "{e}\n--- mon.a.log (tail):\n{}\n--- ceph-mon.stdout:\n{}",
                tail(log("mon.a.log")),
                tail(log("ceph-mon.stdout"))
            )
        })?;
        if id.trim() != "0" {
            bail!("expected OSD id 0, got {id:?}");
        }
        run(c("ceph-osd").args(["-i", "0", "--mkfs", "--osd-uuid", &osd_uuid]), "ceph-osd --mkfs")?;
        ceph.spawn("ceph-osd", &["-f", "-i", "0"])?;
        ceph.spawn("radosgw", &["-f", "-n", "client.rgw.a"])?;

        // radosgw-admin waits for the OSD itself; the user exists once this returns.
        run(
            c("radosgw-admin").args([
                "user",
                "create",
                "--uid=holdfast",
                "--display-name=holdfast tests",
                &format!("--access-key={ACCESS_KEY}"),
                &format!("--secret-key={SECRET_KEY}"),
            ]),
            "radosgw-admin user create",
        )?;
        ceph.wait_http(crate::wait::budget(Duration::from_secs(60)))?;
        Ok(ceph)
    }

    fn spawn(&mut self, name: &'static str, args: &[&str]) -> Result<()> {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.stdout")))?;
        // setpriv (util-linux) sets PR_SET_PDEATHSIG without unsafe code here: the daemon dies
        // with the test process that started it even if Drop never runs.
        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "KILL", "--", name]).arg("-c").arg(self.conf_path()).args(args);
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        self.children.push((name, child));
        Ok(())
    }

    /// Runs the `ceph` CLI as client.admin against this cluster; returns stdout.
    pub fn ceph(&self, args: &[&str]) -> Result<String> {
        let out = run(
            Command::new("ceph").arg("-c").arg(self.conf_path()).args(["--connect-timeout", "30"]).args(args),
            &format!("ceph {}", args.join(" ")),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `radosgw-admin` (which acts on RADOS directly, beneath S3 and its Object Lock).
    pub fn radosgw_admin(&self, args: &[&str]) -> Result<String> {
        let out = run(
            Command::new("radosgw-admin").arg("-c").arg(self.conf_path()).args(args),
            &format!("radosgw-admin {}", args.join(" ")),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn wait_http(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.rgw_port)) {
                use std::io::{Read, Write};
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                let _ = s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n");
                let mut buf = [0u8; 12];
                if s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.") {
                    return Ok(());
                }
            }
            for (name, child) in &mut self.children {
                if let Some(st) = child.try_wait()? {
                    bail!("{name} exited ({st}) during start; logs in {}", self.dir.path().display());
                }
            }
            if Instant::now() > deadline {
                bail!("RGW did not answer on 127.0.0.1:{} within {limit:?}", self.rgw_port);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:PORT`: the S3 endpoint (path-style addressing).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.rgw_port)
    }

    /// `https://localhost:PORT` when started with TLS.
    pub fn tls_endpoint(&self) -> Option<String> {
        self.tls_port.map(|p| format!("https://localhost:{p}"))
    }

    /// The cluster's config file (for `ceph -c` / `radosgw-admin -c`).
    pub fn conf_path(&self) -> PathBuf {
        self.dir.path().join("ceph.conf")
    }

    /// The directory holding config, keyring, logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops RGW (SIGTERM, then SIGKILL after 10 s), so a test can see the store go away.
    pub fn stop_rgw(&mut self) -> Result<()> {
        if let Some(i) = self.children.iter().position(|(n, _)| *n == "radosgw") {
            let (_, mut child) = self.children.remove(i);
            stop(&mut child);
        }
        Ok(())
    }

    /// Starts RGW again after [`TempCeph::stop_rgw`], on the same ports with the same data
    /// (MON and OSD kept running); returns once it answers HTTP.
    pub fn start_rgw(&mut self) -> Result<()> {
        if self.children.iter().any(|(n, _)| *n == "radosgw") {
            bail!("RGW is already running");
        }
        // The port was just released by the stopped RGW; beast binds with SO_REUSEADDR.
        self.spawn("radosgw", &["-f", "-n", "client.rgw.a"])?;
        self.wait_http(Duration::from_secs(60))
    }

    /// Whether RGW is running (not stopped by [`TempCeph::stop_rgw`]).
    pub fn rgw_running(&self) -> bool {
        self.children.iter().any(|(n, _)| *n == "radosgw")
    }
}

fn stop(child: &mut Child) {
    // std has no SIGTERM and the workspace forbids unsafe code: use kill(1).
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let deadline = Instant::now() + crate::wait::budget(Duration::from_secs(10));
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for TempCeph {
    fn drop(&mut self) {
        while let Some((_, mut child)) = self.children.pop() {
            stop(&mut child);
        }
    }
}
