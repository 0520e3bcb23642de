//! Cancel requests against a real PostgreSQL: `send_cancel` returns only once the server acted
//! on the request, so the caller's next statement is never the one a late cancel hits (the
//! guarantee libpq's `PQcancel` gives, and the gate relays).

use anyhow::{Result, bail};
use pgproto::BackendMessage;
use pgproto::conn::{Config, Host, RawSession, connect_raw, send_cancel};
use pgproto::message::{Decoder, frontend};
use testkit::pg::TempPg;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends one simple query.
async fn send(s: &mut RawSession, sql: &str) -> Result<()> {
    let mut out = Vec::new();
    frontend::query(&mut out, sql);
    Ok(s.io.write_all(&out).await?)
}

/// The server's errors until the next ReadyForQuery.
async fn errors_until_ready(s: &mut RawSession, dec: &mut Decoder) -> Result<Vec<String>> {
    let mut errors = Vec::new();
    loop {
        while let Some(m) = dec.next_message()? {
            match m {
                BackendMessage::ErrorResponse(e) => errors.push(e.message),
                BackendMessage::ReadyForQuery(_) => return Ok(errors),
                _ => {}
            }
        }
        if s.io.read_buf(dec.buffer_mut()).await? == 0 {
            bail!("the server closed the session");
        }
    }
}

/// A cancel sent while the session is idle is dropped by the server — provided it has been acted
/// on before the next statement starts. Were `send_cancel` to return as soon as its bytes were
/// written, the server's cancel process (forked per request) would often signal the backend
/// while the statement sent right after is running, and cancel that one.
#[tokio::test(flavor = "current_thread")]
async fn a_cancel_has_been_acted_on_when_send_cancel_returns() -> Result<()> {
    let pg = TempPg::start()?;
    pg.create_login_role("canceller", "pw")?;
    let cfg = Config::new(Host::Unix { dir: pg.socket_dir(), port: pg.port() }, "canceller")
        .password("pw", "the test");
    let mut s = connect_raw(&cfg, &[("database", "postgres")]).await?;
    let mut dec = Decoder::new();
    for round in 0..10 {
        send_cancel(&cfg, s.backend_pid, &s.backend_key).await?;
        send(&mut s, "SELECT pg_sleep(0.1)").await?;
        let errors = errors_until_ready(&mut s, &mut dec).await?;
        assert!(
            errors.is_empty(),
            "round {round}: an idle session's cancel hit the next statement: {errors:?}"
        );
    }
    // And a cancel does reach a running statement.
    send(&mut s, "SELECT pg_sleep(60)").await?;
    let pid = s.backend_pid;
    testkit::wait::until(
        std::time::Duration::from_secs(15),
        std::time::Duration::from_millis(20),
        "the statement to run",
        || {
            pg.psql(&format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} AND state = 'active'"))
                .ok()
                .filter(|n| n == "1")
        },
    )?;
    send_cancel(&cfg, s.backend_pid, &s.backend_key).await?;
    let errors = errors_until_ready(&mut s, &mut dec).await?;
    assert!(errors.iter().any(|e| e.contains("canceling statement")), "{errors:?}");
    Ok(())
}
