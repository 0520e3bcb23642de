//! Bad input on the wire: malformed, oversized and unexpected messages — before login and after —
//! end only the connection that sent them, with an error saying what was wrong; a session running
//! alongside is not disturbed. The gate runs in-process in front of a real PostgreSQL.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use testkit::pg::TempPg;

struct Env {
    _pg: TempPg,
    _dir: tempfile::TempDir,
    gate: gate::GateHandle,
}

async fn start() -> Env {
    let pg = TempPg::start().unwrap();
    pg.psql("CREATE ROLE gate_app LOGIN PASSWORD 'app'; CREATE TABLE t AS SELECT g FROM generate_series(1, 10) g; GRANT SELECT ON t TO gate_app").unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.pw"), "app\n").unwrap();
    let text = format!(
        r#"listen = "127.0.0.1:0"
control_listen = "127.0.0.1:0"
state_dir = "state"
require_tls = false
max_message_bytes = 1048576
[upstream]
host = "{}"
port = {}
user = "gate_app"
password_file = "app.pw"
sslmode = "disable"
[[person]]
name = "alice"
scram = "{}"
"#,
        pg.socket_dir().display(),
        pg.port(),
        gate::scram::Verifier::generate("alice-pw")
    );
    let cfg = gate::Config::parse(&text, dir.path()).unwrap();
    let gate = gate::start(cfg).await.unwrap();
    Env { _pg: pg, _dir: dir, gate }
}

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// Reads backend messages until one with `tag`, returning its body (or None at EOF).
fn read_until(s: &mut TcpStream, tag: u8) -> Option<Vec<u8>> {
    loop {
        let mut head = [0u8; 5];
        s.read_exact(&mut head).ok()?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        s.read_exact(&mut body).ok()?;
        if head[0] == tag {
            return Some(body);
        }
    }
}

/// A logged-in plain-TCP session as alice (SCRAM by hand, as a driver does).
fn login(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut startup = Vec::new();
    pgproto::message::frontend::startup(&mut startup, &[("user", "alice"), ("database", "postgres")]);
    s.write_all(&startup).unwrap();
    read_until(&mut s, b'R').unwrap(); // AuthenticationSASL
    let mut scram = ScramSha256::new(b"alice-pw", ChannelBinding::unsupported());
    let mut first = b"SCRAM-SHA-256\0".to_vec();
    first.extend_from_slice(&(scram.message().len() as i32).to_be_bytes());
    first.extend_from_slice(scram.message());
    s.write_all(&msg(b'p', &first)).unwrap();
    let cont = read_until(&mut s, b'R').unwrap();
    scram.update(&cont[4..]).unwrap();
    s.write_all(&msg(b'p', scram.message())).unwrap();
    read_until(&mut s, b'Z').unwrap();
    s
}

fn query(s: &mut TcpStream, sql: &str) -> Result<Vec<u8>, String> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    s.write_all(&msg(b'Q', &body)).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    loop {
        let mut head = [0u8; 5];
        s.read_exact(&mut head).map_err(|e| e.to_string())?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut b = vec![0u8; len - 4];
        s.read_exact(&mut b).map_err(|e| e.to_string())?;
        match head[0] {
            b'D' => out.extend_from_slice(&b),
            b'E' => return Err(String::from_utf8_lossy(&b).into_owned()),
            b'Z' => return Ok(out),
            _ => {}
        }
    }
}

/// Sends `bytes` and returns the FATAL error text the gate answered before closing.
fn fatal_after(s: &mut TcpStream, bytes: &[u8]) -> String {
    s.write_all(bytes).unwrap();
    let e = read_until(s, b'E').expect("an ErrorResponse before the close");
    let text = String::from_utf8_lossy(&e).into_owned();
    assert!(text.contains("FATAL"), "{text}");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_end_only_their_own_connection() {
    let env = start().await;
    let addr = env.gate.addr;
    tokio::task::spawn_blocking(move || {
        let mut good = login(addr);
        assert!(query(&mut good, "SELECT count(*) FROM t").unwrap().ends_with(b"10"));

        // Before login: an absurd startup length, a wrong protocol version, garbage.
        for (bytes, want) in [
            (vec![0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0], "over the limit"),
            (vec![0, 0, 0, 8, 0, 9, 0, 0], "protocol version"),
            (vec![0, 0, 0, 16, 0, 3, 0, 0, b'u', b's', b'e', b'r', 0, b'x', b'y', b'z'], "missing NUL"),
        ] {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let t = fatal_after(&mut s, &bytes);
            assert!(t.contains(want), "{want}: {t}");
        }
        // After login: oversized, unknown type, a Parse without its NUL, a length under 4.
        let cases: Vec<(Vec<u8>, &str)> = vec![
            ([&[b'Q'][..], &(64u32 << 20).to_be_bytes()].concat(), "over the limit"),
            (msg(b'z', b"??"), "unexpected message type"),
            (msg(b'P', b"name-without-nul"), "missing NUL"),
            (vec![b'Q', 0, 0, 0, 2], "invalid message length"),
        ];
        for (bytes, want) in cases {
            let mut s = login(addr);
            let t = fatal_after(&mut s, &bytes);
            assert!(t.contains(want), "{want}: {t}");
        }
        // The session that behaved is still there.
        assert!(query(&mut good, "SELECT count(*) FROM t").unwrap().ends_with(b"10"));
        // An unknown person, and a wrong password, get the same answer.
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut startup = Vec::new();
        pgproto::message::frontend::startup(&mut startup, &[("user", "mallory")]);
        s.write_all(&startup).unwrap();
        read_until(&mut s, b'R').unwrap();
        let mut scram = ScramSha256::new(b"guess", ChannelBinding::unsupported());
        let mut first = b"SCRAM-SHA-256\0".to_vec();
        first.extend_from_slice(&(scram.message().len() as i32).to_be_bytes());
        first.extend_from_slice(scram.message());
        s.write_all(&msg(b'p', &first)).unwrap();
        let cont = read_until(&mut s, b'R').unwrap();
        scram.update(&cont[4..]).unwrap();
        s.write_all(&msg(b'p', scram.message())).unwrap();
        let e = read_until(&mut s, b'E').unwrap();
        assert!(String::from_utf8_lossy(&e).contains("password authentication failed for user \"mallory\""));
    })
    .await
    .unwrap();
    env.gate.stop().await;
}
