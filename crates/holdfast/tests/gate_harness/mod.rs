//! The gate test harness shared by `gate.rs` and `gate_attacks.rs`: a real PostgreSQL with an
//! `orders` table, `holdfast gate serve` as its own process in front, psql and the CLI as people
//! use them, and a raw protocol client that sends any sequence of frontend messages.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use testkit::pg::TempPg;

pub fn holdfast() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_holdfast"))
}

pub const BOB_TOTP: &str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
pub const ALICE_TOTP: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";

pub struct Gate {
    _dir: tempfile::TempDir,
    pub dir: PathBuf,
    child: Child,
    pub addr: String,
    pub control: String,
    pub pg: TempPg,
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn totp(secret: &str) -> String {
    let key = gate::totp::base32_decode(secret).unwrap();
    format!("{:06}", gate::totp::code_at(&key, gate::approvals::unix_now() / 30))
}

impl Gate {
    /// A cluster with an `orders` table, and a gate in front of it.
    pub fn start(extra: &str, policy: &str) -> Gate {
        Gate::start_with(extra, policy, true)
    }

    /// As `start`; without `approver`, nobody can approve alice's statements (bob is no
    /// approver), so whatever needs approval is refused at once.
    pub fn start_with(extra: &str, policy: &str, approver: bool) -> Gate {
        let pg = TempPg::start().unwrap();
        pg.psql(
            "CREATE ROLE gate_app LOGIN PASSWORD 'app-secret';
             CREATE ROLE dba LOGIN PASSWORD 'dba-secret' CREATEROLE;
             CREATE TABLE orders (id int PRIMARY KEY, merchant int NOT NULL, total numeric NOT NULL);
             INSERT INTO orders SELECT g, g % 7, g * 1.5 FROM generate_series(1, 100) g;
             CREATE TABLE scratch AS SELECT g AS id FROM generate_series(1, 20) g;
             GRANT ALL ON orders, scratch TO gate_app;
             ALTER TABLE scratch OWNER TO gate_app;
             GRANT CREATE ON SCHEMA public TO gate_app, dba;
             GRANT ALL ON orders, scratch TO dba;",
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        std::fs::write(d.join("app.pw"), "app-secret\n").unwrap();
        std::fs::write(d.join("dba.pw"), "dba-secret\n").unwrap();
        std::fs::write(d.join("policy.toml"), policy).unwrap();
        let v = |pw: &str| gate::scram::Verifier::generate(pw).to_string();
        let config = format!(
            r#"listen = "127.0.0.1:0"
control_listen = "127.0.0.1:0"
state_dir = "{state}"
policy = "policy.toml"
{timeout}{extra}
[upstream]
host = "{sock}"
port = {port}
user = "gate_app"
password_file = "app.pw"
sslmode = "disable"
[[upstream.login]]
user = "dba"
password_file = "dba.pw"

[[person]]
name = "alice"
scram = "{alice}"
totp_secret = "{ALICE_TOTP}"
may_request = ["dba"]

[[person]]
name = "bob"
scram = "{bob}"
approver = {approver}
totp_secret = "{BOB_TOTP}"

[[person]]
name = "carol"
scram = "{carol}"
networks = ["10.0.0.0/8"]

[[grant_role]]
name = "dba"
db_user = "dba"
"#,
            // `extra` may set its own approval_timeout (a browser needs longer than psql). 15 s:
            // an approval is a race against it — a psql, a `pending` poll and two or three CLI
            // runs, each a debug process doing TLS and SCRAM, which on a loaded 2-core CI
            // machine can take seconds each — and the timeout itself is waited out only twice.
            timeout = if extra.contains("approval_timeout") { "" } else { "approval_timeout = \"15s\"\n" },
            state = d.join("state").display(),
            sock = pg.socket_dir().display(),
            port = pg.port(),
            alice = v("alice-password"),
            bob = v("bob-password"),
            carol = v("carol-password"),
        );
        std::fs::write(d.join("gate.toml"), config).unwrap();
        let (child, addr, control) = serve(&d);
        Gate { _dir: dir, dir: d, child, addr, control, pg }
    }

    /// Stops the gate process (SIGKILL) and starts it again on the same state directory (new
    /// ports); sessions through it end.
    pub fn restart(&mut self) {
        self.restart_after(|_| {});
    }

    /// As `restart`, running `between` on the state directory while the gate is stopped.
    pub fn restart_after(&mut self, between: impl FnOnce(&Path)) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        between(&self.dir.join("state"));
        let (child, addr, control) = serve(&self.dir);
        (self.child, self.addr, self.control) = (child, addr, control);
    }
}

/// `holdfast gate serve` on `dir/gate.toml`: the process and its two addresses once listening.
fn serve(d: &Path) -> (Child, String, String) {
    let mut child = Command::new(holdfast())
        .args(["gate", "serve", "--config"])
        .arg(d.join("gate.toml"))
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut said = Vec::new();
    let (addr, control) = loop {
        let line = match lines.next() {
            Some(l) => l.unwrap(),
            None => panic!("gate exited before listening: {}", said.join("\n")),
        };
        said.push(line.clone());
        if let Some(rest) = line.strip_prefix("gate listening on ") {
            let (a, c) = rest.split_once(" (control API https://").unwrap();
            break (a.to_string(), c.trim_end_matches(')').to_string());
        }
    };
    // Keep draining the gate's log so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    (child, addr, control)
}

impl Gate {
    pub fn conninfo(&self, user: &str, ssl: &str) -> String {
        let (host, port) = self.addr.rsplit_once(':').unwrap();
        format!("host={host} port={port} user={user} dbname=postgres sslmode={ssl} connect_timeout=10")
    }

    /// psql through the gate as `user`.
    pub fn psql_as(&self, user: &str, password: &str, sql: &str) -> Output {
        Command::new(testkit::pg::bin("psql").unwrap())
            .arg(self.conninfo(user, "require"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGPASSWORD", password)
            .output()
            .unwrap()
    }

    pub fn alice(&self, sql: &str) -> Output {
        self.psql_as("alice", "alice-password", sql)
    }

    pub fn spawn_alice(&self, sql: &str) -> Child {
        Command::new(testkit::pg::bin("psql").unwrap())
            .arg(self.conninfo("alice", "require"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGPASSWORD", "alice-password")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// `holdfast gate …` as `user`.
    pub fn cli(&self, user: &str, password: &str, totp_secret: Option<&str>, args: &[&str]) -> Output {
        let mut c = Command::new(holdfast());
        c.arg("gate")
            .args(args)
            .env("HOLDFAST_GATE_URL", format!("https://{}", self.control))
            .env("HOLDFAST_GATE_CA", self.dir.join("state/tls/cert.pem"))
            .env("HOLDFAST_GATE_USER", user)
            .env("HOLDFAST_GATE_PASSWORD", password);
        if let Some(s) = totp_secret {
            c.env("HOLDFAST_GATE_TOTP", totp(s));
        }
        c.output().unwrap()
    }

    pub fn bob(&self, args: &[&str]) -> Output {
        self.cli("bob", "bob-password", Some(BOB_TOTP), args)
    }

    /// Waits for the one pending request and returns its id.
    pub fn pending_id(&self) -> String {
        let deadline = Instant::now() + testkit::wait::budget(Duration::from_secs(30));
        loop {
            let out = self.cli("alice", "alice-password", None, &["pending", "--json"]);
            assert!(out.status.success(), "{}", text(&out));
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            if let Some(r) =
                v["requests"].as_array().unwrap().iter().find(|r| r["state"]["state"] == "pending")
            {
                return r["id"].as_str().unwrap().to_string();
            }
            assert!(Instant::now() < deadline, "no pending request appeared");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn count(&self, table: &str) -> i64 {
        self.pg.psql(&format!("SELECT count(*) FROM {table}")).unwrap().parse().unwrap()
    }
}

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A frontend message the raw client sends.
#[derive(Debug, Clone)]
pub enum Msg {
    Query(String),
    Parse {
        name: String,
        sql: String,
    },
    Bind {
        portal: String,
        statement: String,
    },
    /// Parse declaring its parameters' type OIDs (what a driver that knows them sends).
    ParseTyped {
        name: String,
        sql: String,
        types: Vec<u32>,
    },
    /// Bind with binary-format parameter values (None: NULL).
    BindBinary {
        portal: String,
        statement: String,
        values: Vec<Option<Vec<u8>>>,
    },
    /// Describe of a prepared statement (the other `Describe` is of a portal).
    DescribeStatement(String),
    /// Bind with text-format parameter values (None: NULL).
    BindParams {
        portal: String,
        statement: String,
        values: Vec<Option<String>>,
    },
    Execute {
        portal: String,
        max_rows: i32,
    },
    Describe {
        portal: String,
    },
    ClosePortal(String),
    CloseStatement(String),
    Sync,
    Flush,
    /// COPY sub-protocol: a chunk of data, its end, or the client giving up.
    CopyData(Vec<u8>),
    CopyDone,
    CopyFail(String),
    /// FunctionCall by OID, text-format arguments (None: NULL), text result.
    FunctionCall {
        oid: u32,
        args: Vec<Option<Vec<u8>>>,
    },
}

impl Msg {
    fn encode(&self, out: &mut Vec<u8>) {
        fn frame(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
            out.push(tag);
            out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
            out.extend_from_slice(body);
        }
        fn cstr(b: &mut Vec<u8>, s: &str) {
            b.extend_from_slice(s.as_bytes());
            b.push(0);
        }
        let mut b = Vec::new();
        match self {
            Msg::Query(sql) => {
                cstr(&mut b, sql);
                frame(out, b'Q', &b)
            }
            Msg::Parse { name, sql } => {
                cstr(&mut b, name);
                cstr(&mut b, sql);
                b.extend_from_slice(&0i16.to_be_bytes());
                frame(out, b'P', &b)
            }
            Msg::ParseTyped { name, sql, types } => {
                cstr(&mut b, name);
                cstr(&mut b, sql);
                b.extend_from_slice(&(types.len() as i16).to_be_bytes());
                for t in types {
                    b.extend_from_slice(&t.to_be_bytes());
                }
                frame(out, b'P', &b)
            }
            Msg::BindBinary { portal, statement, values } => {
                cstr(&mut b, portal);
                cstr(&mut b, statement);
                b.extend_from_slice(&1i16.to_be_bytes());
                b.extend_from_slice(&1i16.to_be_bytes());
                b.extend_from_slice(&(values.len() as i16).to_be_bytes());
                for v in values {
                    match v {
                        Some(v) => {
                            b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                            b.extend_from_slice(v);
                        }
                        None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                    }
                }
                b.extend_from_slice(&0i16.to_be_bytes());
                frame(out, b'B', &b)
            }
            Msg::DescribeStatement(n) => {
                b.push(b'S');
                cstr(&mut b, n);
                frame(out, b'D', &b)
            }
            Msg::Bind { portal, statement } => {
                cstr(&mut b, portal);
                cstr(&mut b, statement);
                b.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
                frame(out, b'B', &b)
            }
            Msg::BindParams { portal, statement, values } => {
                cstr(&mut b, portal);
                cstr(&mut b, statement);
                b.extend_from_slice(&0i16.to_be_bytes());
                b.extend_from_slice(&(values.len() as i16).to_be_bytes());
                for v in values {
                    match v {
                        Some(v) => {
                            b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                            b.extend_from_slice(v.as_bytes());
                        }
                        None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                    }
                }
                b.extend_from_slice(&0i16.to_be_bytes());
                frame(out, b'B', &b)
            }
            Msg::Execute { portal, max_rows } => {
                cstr(&mut b, portal);
                b.extend_from_slice(&max_rows.to_be_bytes());
                frame(out, b'E', &b)
            }
            Msg::Describe { portal } => {
                b.push(b'P');
                cstr(&mut b, portal);
                frame(out, b'D', &b)
            }
            Msg::ClosePortal(n) => {
                b.push(b'P');
                cstr(&mut b, n);
                frame(out, b'C', &b)
            }
            Msg::CloseStatement(n) => {
                b.push(b'S');
                cstr(&mut b, n);
                frame(out, b'C', &b)
            }
            Msg::FunctionCall { oid, args } => {
                b.extend_from_slice(&oid.to_be_bytes());
                b.extend_from_slice(&0i16.to_be_bytes());
                b.extend_from_slice(&(args.len() as i16).to_be_bytes());
                for a in args {
                    match a {
                        Some(v) => {
                            b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                            b.extend_from_slice(v);
                        }
                        None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                    }
                }
                b.extend_from_slice(&0i16.to_be_bytes());
                frame(out, b'F', &b)
            }
            Msg::Sync => frame(out, b'S', &[]),
            Msg::Flush => frame(out, b'H', &[]),
            Msg::CopyData(d) => frame(out, b'd', d),
            Msg::CopyDone => frame(out, b'c', &[]),
            Msg::CopyFail(why) => {
                cstr(&mut b, why);
                frame(out, b'f', &b)
            }
        }
    }
}

/// One backend message as the raw client saw it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Reply {
    /// The message of an ErrorResponse / NoticeResponse.
    pub fn message(&self) -> String {
        let mut i = 0;
        while i < self.body.len() && self.body[i] != 0 {
            let t = self.body[i];
            let end =
                self.body[i + 1..].iter().position(|b| *b == 0).map(|p| i + 1 + p).unwrap_or(self.body.len());
            if t == b'M' {
                return String::from_utf8_lossy(&self.body[i + 1..end]).into_owned();
            }
            i = end + 1;
        }
        String::new()
    }
}

/// A client that speaks the protocol message by message, logged in through the gate (TLS,
/// SCRAM) — what an attacker's own driver would do.
pub struct Raw {
    rt: tokio::runtime::Runtime,
    io: Box<dyn pgproto::conn::Io>,
    buf: Vec<u8>,
    /// The BackendKeyData the gate sent: process id and cancel secret.
    pub backend_pid: i32,
    pub backend_key: Vec<u8>,
}

impl Raw {
    pub fn connect(g: &Gate, user: &str, password: &str) -> Raw {
        Raw::try_connect(g, user, password, &[]).expect("log in through the gate")
    }

    /// Logs in with extra startup parameters; the error the gate answered with, if any.
    pub fn try_connect(g: &Gate, user: &str, password: &str, extra: &[(&str, &str)]) -> Result<Raw, String> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (host, port) = g.addr.rsplit_once(':').unwrap();
        let mut cfg = pgproto::conn::Config::new(
            pgproto::conn::Host::Tcp { host: host.to_string(), port: port.parse().unwrap() },
            user,
        )
        .password(password, "the test");
        cfg.ssl = pgproto::conn::SslMode::Require;
        let mut params = vec![("database", "postgres"), ("client_encoding", "UTF8")];
        params.extend_from_slice(extra);
        let s = rt.block_on(pgproto::conn::connect_raw(&cfg, &params)).map_err(|e| e.to_string())?;
        Ok(Raw { rt, io: s.io, buf: Vec::new(), backend_pid: s.backend_pid, backend_key: s.backend_key })
    }

    pub fn send(&mut self, msgs: &[Msg]) {
        use tokio::io::AsyncWriteExt;
        let mut out = Vec::new();
        for m in msgs {
            m.encode(&mut out);
        }
        self.rt.block_on(self.io.write_all(&out)).unwrap();
    }

    /// Reads messages until `n` ReadyForQuery have come (30 s at most).
    pub fn until_ready(&mut self, n: usize) -> Vec<Reply> {
        self.until(b'Z', n)
    }

    /// Reads messages until `n` messages tagged `want` have come (30 s at most): `b'G'` waits
    /// for the CopyInResponse of a COPY FROM STDIN.
    pub fn until(&mut self, want: u8, n: usize) -> Vec<Reply> {
        use tokio::io::AsyncReadExt;
        let mut out = Vec::new();
        let mut seen = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while seen < n {
            while self.buf.len() >= 5 {
                let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
                if self.buf.len() < 1 + len {
                    break;
                }
                let tag = self.buf[0];
                let body = self.buf[5..1 + len].to_vec();
                self.buf.drain(..1 + len);
                if tag == want {
                    seen += 1;
                }
                out.push(Reply { tag, body });
                if seen == n {
                    return out;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {:?} in 30 s; got {out:?}", want as char);
            let mut chunk = vec![0u8; 65536];
            let read = self.rt.block_on(async { tokio::time::timeout(left, self.io.read(&mut chunk)).await });
            match read {
                Ok(Ok(0)) | Ok(Err(_)) => panic!("the gate closed the connection; got {out:?}"),
                Ok(Ok(k)) => self.buf.extend_from_slice(&chunk[..k]),
                Err(_) => panic!("no {:?} in 30 s; got {out:?}", want as char),
            }
        }
        out
    }

    /// Sends and waits for as many ReadyForQuery as the messages ask (Query and Sync).
    pub fn exchange(&mut self, msgs: &[Msg]) -> Vec<Reply> {
        let n =
            msgs.iter().filter(|m| matches!(m, Msg::Query(_) | Msg::Sync | Msg::FunctionCall { .. })).count();
        self.send(msgs);
        self.until_ready(n)
    }

    /// A simple Query; its replies.
    pub fn query(&mut self, sql: &str) -> Vec<Reply> {
        self.exchange(&[Msg::Query(sql.to_string())])
    }
}

/// The error messages among replies.
pub fn errors(r: &[Reply]) -> Vec<String> {
    r.iter().filter(|m| m.tag == b'E').map(Reply::message).collect()
}

/// Sends a CancelRequest to the gate (plain TCP, as libpq does).
pub fn cancel(g: &Gate, pid: i32, key: &[u8]) {
    let (host, port) = g.addr.rsplit_once(':').unwrap();
    let cfg = pgproto::conn::Config::new(
        pgproto::conn::Host::Tcp { host: host.to_string(), port: port.parse().unwrap() },
        "nobody",
    );
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(pgproto::conn::send_cancel(&cfg, pid, key)).unwrap();
}

pub fn q(s: &str) -> Msg {
    Msg::Query(s.to_string())
}
pub fn parse(name: &str, sql: &str) -> Msg {
    Msg::Parse { name: name.into(), sql: sql.into() }
}
pub fn bind(portal: &str, statement: &str) -> Msg {
    Msg::Bind { portal: portal.into(), statement: statement.into() }
}
pub fn execute(portal: &str) -> Msg {
    Msg::Execute { portal: portal.into(), max_rows: 0 }
}
