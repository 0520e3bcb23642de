//! Accepting clients: TLS negotiation, the startup packet, SCRAM login as a person, the checks
//! that may need a second person before a session starts (hours, networks, grants), and the
//! upstream login with the gate's own credentials. Then [`crate::session`] takes over.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use audit::{Event, EventKind};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::approvals::{Ask, State};
use crate::wire::{self, FirstPacket, backend};
use crate::{GateError, Io, Shared};

/// The TLS config for PostgreSQL clients and the control API (self-signed if none given).
pub fn tls_config(config: &crate::Config) -> Result<Arc<rustls::ServerConfig>, GateError> {
    serve::tls::ensure_self_signed(&config.tls_cert, &config.tls_key)
        .map_err(|e| GateError::Tls(e.to_string()))?;
    let cfg = serve::tls::server_config(&config.tls_cert, &config.tls_key)
        .map_err(|e| GateError::Tls(e.to_string()))?;
    Ok(Arc::new(cfg))
}

pub async fn accept_loop(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let at_shutdown = serve::accept::AtShutdown::Abort;
    let workers = match shared.config.session_threads {
        0 => None,
        n => match crate::workers::Workers::start(n) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!(error = %e, threads = n, "cannot start the session runtimes; sessions run on the main runtime");
                None
            }
        },
    };
    serve::accept::accept_loop_on(listener, shutdown.clone(), at_shutdown, |tcp, peer| {
        let _ = tcp.set_nodelay(true);
        let (shared, acceptor, mut shutdown) = (shared.clone(), acceptor.clone(), shutdown.clone());
        let Some(workers) = &workers else {
            return Some((
                Box::pin(async move {
                    tokio::select! {
                        _ = connection(tcp, peer, acceptor, &shared) => {}
                        _ = shutdown.changed() => {}
                    }
                }) as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
                None,
            ));
        };
        // The socket moves to the session runtime's own IO driver.
        let tcp = match tcp.into_std() {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot hand a connection to a session runtime");
                return None;
            }
        };
        let (rt, pinned) = workers.pick();
        Some((
            Box::pin(async move {
                let _pinned = pinned;
                let tcp = match tokio::net::TcpStream::from_std(tcp) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "cannot register a connection with its session runtime");
                        return;
                    }
                };
                tokio::select! {
                    _ = connection(tcp, peer, acceptor, &shared) => {}
                    _ = shutdown.changed() => {}
                }
            }),
            Some(rt),
        ))
    })
    .await;
    // The sessions' tasks are gone (aborted above); `workers` stops the runtimes here.
    drop(workers);
}

async fn read_first(
    io: &mut (impl tokio::io::AsyncRead + Unpin),
    buf: &mut BytesMut,
) -> Result<FirstPacket, String> {
    loop {
        if let Some(p) = wire::decode_first(buf).map_err(|e| e.to_string())? {
            return Ok(p);
        }
        let n = io.read_buf(buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before the startup packet".into());
        }
    }
}

async fn send_fatal(
    io: &mut (impl tokio::io::AsyncWrite + Unpin),
    code: &str,
    message: &str,
    hint: Option<&str>,
) {
    let mut out = BytesMut::new();
    backend::error(&mut out, &backend::Fields { severity: "FATAL", code, message, detail: None, hint });
    let _ = io.write_all(&out).await;
    let _ = io.flush().await;
}

/// Answers an SSLRequest with 'S', completes the TLS handshake and reads the packet that
/// follows inside it (each step within 10 s). None: the client went away or failed.
async fn tls_upgrade(
    mut tcp: tokio::net::TcpStream,
    acceptor: &tokio_rustls::TlsAcceptor,
    buf: &mut BytesMut,
) -> Option<(Box<dyn Io>, FirstPacket)> {
    tcp.write_all(b"S").await.ok()?;
    let mut s = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await.ok()?.ok()?;
    let first = tokio::time::timeout(Duration::from_secs(10), read_first(&mut s, buf)).await.ok()?.ok()?;
    Some((Box::new(s), first))
}

/// One client connection from its first byte to its end.
async fn connection(
    mut tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: &Arc<Shared>,
) {
    shared.metrics.connections.inc();
    let mut buf = BytesMut::new();
    let first = match tokio::time::timeout(Duration::from_secs(10), read_first(&mut tcp, &mut buf)).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "bad first packet");
            send_fatal(&mut tcp, "08P01", &format!("invalid startup packet: {e}"), None).await;
            return;
        }
        Err(_) => return,
    };
    let (mut io, tls, first): (Box<dyn Io>, bool, FirstPacket) = match first {
        FirstPacket::Ssl | FirstPacket::GssEnc if !buf.is_empty() => {
            // Bytes after the SSLRequest before the handshake: a known injection trick (CVE-2021-23222 class).
            send_fatal(
                &mut tcp,
                "08P01",
                "data received after the SSL request before the TLS handshake",
                None,
            )
            .await;
            return;
        }
        FirstPacket::Ssl => match tls_upgrade(tcp, &acceptor, &mut buf).await {
            Some((s, first)) => (s, true, first),
            None => return,
        },
        FirstPacket::GssEnc => {
            if tcp.write_all(b"N").await.is_err() {
                return;
            }
            let first =
                match tokio::time::timeout(Duration::from_secs(10), read_first(&mut tcp, &mut buf)).await {
                    Ok(Ok(p)) => p,
                    _ => return,
                };
            if matches!(first, FirstPacket::Ssl) {
                // Client retries with SSL after GSS was refused.
                match tls_upgrade(tcp, &acceptor, &mut buf).await {
                    Some((s, first)) => (s, true, first),
                    None => return,
                }
            } else {
                (Box::new(tcp), false, first)
            }
        }
        other => (Box::new(tcp), false, other),
    };
    let params = match first {
        FirstPacket::Cancel { pid, key } => {
            cancel(shared, pid, key).await;
            return;
        }
        FirstPacket::Startup { params } => params,
        FirstPacket::Ssl | FirstPacket::GssEnc => {
            send_fatal(&mut io, "08P01", "SSL requested twice", None).await;
            return;
        }
    };
    let client = peer.to_string();
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let login = param("user").unwrap_or_default();
    let _ = shared
        .audit_event(Event::new(EventKind::Connect).client(client.clone()).detail(serde_json::json!({
            "user": login, "tls": tls, "database": param("database"), "application_name": param("application_name"),
        })))
        .await;
    if shared.config.require_tls && !tls {
        send_fatal(
            &mut io,
            "28000",
            "the holdfast gate accepts only TLS connections",
            Some("connect with sslmode=require (or verify-full with the gate's CA certificate)"),
        )
        .await;
        return;
    }
    if let Some(enc) = param("client_encoding")
        && !matches!(enc.to_ascii_uppercase().replace('-', "").as_str(), "UTF8" | "UNICODE")
    {
        send_fatal(
            &mut io,
            "22023",
            &format!("client_encoding {enc:?} is not accepted by the holdfast gate: only UTF8"),
            Some("set PGCLIENTENCODING=UTF8 (statements are checked as UTF-8 text)"),
        )
        .await;
        return;
    }
    let (person_name, role) = match login.split_once('@') {
        Some((p, r)) => (p.to_string(), Some(r.to_string())),
        None => (login.clone(), None),
    };
    let person = shared.config.person(&person_name).cloned();
    // SCRAM-SHA-256, also for unknown names (so the answer does not tell who exists).
    let ok = match scram_login(&mut io, &mut buf, person.as_ref().map(|p| &p.verifier), &person_name).await {
        Ok(ok) => ok,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "login aborted");
            false
        }
    };
    let _ = shared
        .audit_event(Event::new(EventKind::Auth).person(person_name.clone()).client(client.clone()).detail(
            serde_json::json!({"ok": ok && person.is_some(), "method": "scram-sha-256", "role": role, "tls": tls}),
        ))
        .await;
    let person = match (ok, person) {
        (true, Some(p)) => p,
        _ => {
            shared.metrics.auth_failures.inc();
            send_fatal(
                &mut io,
                "28P01",
                &format!("password authentication failed for user \"{login}\""),
                None,
            )
            .await;
            return;
        }
    };
    let mut out = BytesMut::new();
    backend::auth_ok(&mut out);
    if io.write_all(&out).await.is_err() {
        return;
    }
    // Which database login: a grant's role, the person's own role, or the gate's default.
    let (db_user, grant_until) = match &role {
        Some(r) => {
            let Some(gr) = shared.config.grant_roles.iter().find(|g| &g.name == r) else {
                send_fatal(
                    &mut io,
                    "28000",
                    &format!("no grant role {r:?} in the gate's configuration"),
                    None,
                )
                .await;
                return;
            };
            match shared.approvals.active_grant(&person.name, r) {
                Some(g) => (gr.db_user.clone(), Some(g.until)),
                None => {
                    send_fatal(
                        &mut io,
                        "28000",
                        &format!("{} holds no active grant of role {r}", person.name),
                        Some(&format!(
                            "request one: holdfast gate request --role {r} --for 1h --reason <why>; another approver must approve it"
                        )),
                    )
                    .await;
                    return;
                }
            }
        }
        None => (person.db_user.clone().unwrap_or_else(|| shared.config.upstream.user.clone()), None),
    };
    let session_id = shared.next_session();
    // Outside hours or from an unknown network: a second person lets the session start.
    if let Some(why) = access_exception(&person, peer) {
        let timeout = shared.config.approval_timeout;
        let (req, mut rx) = shared.approvals.open(
            &person.name,
            &client,
            Some(session_id),
            Ask::Access { why: why.clone() },
            None,
            timeout,
        );
        let _ = shared
            .audit_event(
                Event::new(EventKind::ApprovalRequested)
                    .person(person.name.clone())
                    .client(client.clone())
                    .detail(serde_json::json!({"approval": req.id, "access": why})),
            )
            .await;
        shared.alert(serde_json::json!({"alert": "access_approval_requested", "approval": req.id, "person": person.name, "client": client, "why": why}));
        let mut out = BytesMut::new();
        backend::notice(
            &mut out,
            &backend::Fields {
                severity: "NOTICE",
                code: "01000",
                message: &format!("holdfast gate: {why}: this session waits for approval {}", req.id),
                detail: None,
                hint: Some(&format!("an approver runs: holdfast gate approve {}", req.id)),
            },
        );
        let _ = io.write_all(&out).await;
        let decided = tokio::time::timeout(timeout, async {
            rx.wait_for(|s| *s != State::Pending).await.map(|s| s.clone()).ok()
        })
        .await
        .ok()
        .flatten();
        let state = match decided {
            Some(s) => s,
            None => shared.approvals.close(&req.id, false),
        };
        if !matches!(state, State::Approved { .. }) {
            send_fatal(&mut io, "28000", &format!("holdfast gate: access {} was not approved", req.id), None)
                .await;
            return;
        }
    }
    let app = param("application_name").unwrap_or_default();
    // The `options` startup parameter (`-c name=value`, as libpq's PGOPTIONS) sets session
    // settings before any statement: each goes through the guard as the SET it is, and the
    // session's guard view starts with them (a search_path there counts as one set later).
    let settings = match param("options").map(|o| parse_options(&o)).transpose() {
        Ok(s) => s.unwrap_or_default(),
        Err(e) => {
            send_fatal(
                &mut io,
                "22023",
                &format!("holdfast gate: startup options: {e}"),
                Some("pass settings as -c name=value"),
            )
            .await;
            return;
        }
    };
    for (k, v) in &settings {
        let d = shared.guard.check_query(&mut guard::Session::default(), &set_sql(k, v));
        if d.action != guard::Action::Allow {
            send_fatal(
                &mut io,
                "42501",
                &format!("holdfast gate: the startup option {k} is not accepted: {}", d.summary()),
                Some("set it with SET in the session, where it is checked (and held for approval if it must be)"),
            )
            .await;
            return;
        }
    }
    let upstream_cfg = shared.config.upstream.config_for(&db_user);
    let mut fwd: Vec<(&str, String)> = vec![
        ("database", param("database").unwrap_or_else(|| person_name.clone())),
        // The person's name reaches pg_stat_activity and the server log: a second witness.
        (
            "application_name",
            format!("holdfast:{}:{}", person.name, app.chars().take(40).collect::<String>()),
        ),
        ("client_encoding", "UTF8".into()),
    ];
    for k in ["DateStyle", "TimeZone", "extra_float_digits", "IntervalStyle"] {
        if let Some(v) = param(k) {
            fwd.push((k, v));
        }
    }
    if !settings.is_empty() {
        let opts: Vec<String> = settings
            .iter()
            .map(|(k, v)| format!("-c {k}={}", v.replace('\\', "\\\\").replace(' ', "\\ ")))
            .collect();
        fwd.push(("options", opts.join(" ")));
    }
    let fwd_ref: Vec<(&str, &str)> = fwd.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let upstream = match pgproto::conn::connect_raw(&upstream_cfg, &fwd_ref).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(person = %person.name, error = %e, "upstream login failed");
            // What the client is told names neither the gate's database login nor the
            // database's address (both are the gate's secrets); the gate's log has the cause.
            let msg = match &e {
                // The database the client asked for does not exist: its own name, its words.
                pgproto::Error::Server(se) if se.code == "3D000" => se.message.clone(),
                pgproto::Error::Server(_) => {
                    "holdfast gate: the database refused the gate's login for this session; the gate's operator can see why in its log".to_string()
                }
                _ => "holdfast gate: the database cannot be reached; the gate's operator can see why in its log".to_string(),
            };
            send_fatal(&mut io, e.sqlstate().unwrap_or("08006"), &msg, None).await;
            return;
        }
    };
    // The guard parses statements as PostgreSQL does with standard_conforming_strings on;
    // a server that says otherwise could read a string where the guard sees code.
    if upstream.params.iter().any(|(k, v)| k == "standard_conforming_strings" && v != "on") {
        send_fatal(
            &mut io,
            "55000",
            "the database has standard_conforming_strings off: the gate refuses to guard it",
            Some("set standard_conforming_strings = on for the database"),
        )
        .await;
        return;
    }
    let mut out = BytesMut::new();
    for (k, v) in &upstream.params {
        backend::parameter_status(&mut out, k, v);
    }
    // The client gets the server's own process id and cancel secret: pg_backend_pid(), the
    // pid in a NOTIFY and in pg_stat_activity agree with what the driver was told. A
    // CancelRequest reaches the gate, which looks the pair up in its map (pid AND secret must
    // match, so nobody cancels another person's session by guessing a pid) and forwards it;
    // unknown pairs are ignored.
    let (key_pid, key) = (upstream.backend_pid, upstream.backend_key.clone());
    backend::backend_key(&mut out, key_pid, &key);
    backend::ready(&mut out, b'I');
    if io.write_all(&out).await.is_err() {
        return;
    }
    let notify = Arc::new(tokio::sync::Notify::new());
    let holding = Arc::new(std::sync::atomic::AtomicBool::new(false));
    shared.cancels.lock().unwrap_or_else(|p| p.into_inner()).insert(
        (key_pid, key.clone()),
        crate::CancelTarget {
            upstream: upstream_cfg.clone(),
            pid: upstream.backend_pid,
            key: upstream.backend_key.clone(),
            notify: notify.clone(),
            holding: holding.clone(),
        },
    );
    shared.metrics.active_sessions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let identity = crate::session::Identity {
        session: session_id,
        person: person.clone(),
        client: client.clone(),
        db_user: db_user.clone(),
        application_name: app,
        grant_until,
        grant_role: role.clone(),
    };
    let _ = shared
        .audit_event(Event::new(EventKind::Other("session_started".into())).person(person.name.clone()).client(client.clone()).session(session_id).detail(
            serde_json::json!({"db_user": db_user, "role": role, "grant_until": grant_until, "tls": tls}),
        ))
        .await;
    let params = upstream.params.clone();
    let mut upstream_io = upstream.io;
    // Read before the catalog: a change after this moment makes the session read it again.
    let epoch = shared.catalog_epoch.load(std::sync::atomic::Ordering::SeqCst);
    let catalog = match builtins_shadowed(&mut upstream_io).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(person = %person.name, error = %e, "the database connection failed at the gate's catalog read");
            // Stricter: built-ins count as shadowed, and any declared parameter type as code.
            CatalogRow { shadowed: true, type_oids: vec![None], ..CatalogRow::default() }
        }
    };
    let why = crate::session::Session::new(shared, identity, io, upstream_io, buf, notify, holding)
        .with_server_parameters(&params)
        .with_startup_settings(&settings)
        .with_builtins_shadowed(epoch, catalog)
        .run()
        .await;
    shared.metrics.active_sessions.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    shared.cancels.lock().unwrap_or_else(|p| p.into_inner()).remove(&(key_pid, key));
    let _ = shared
        .audit_event(
            Event::new(EventKind::SessionEnded)
                .person(person.name)
                .client(client)
                .session(session_id)
                .detail(serde_json::json!({"why": why})),
        )
        .await;
}

/// Why this login needs approval before its session starts, if it does.
fn access_exception(person: &crate::config::Person, peer: SocketAddr) -> Option<String> {
    if !person.networks.is_empty() && !person.networks.iter().any(|n| n.contains(peer.ip())) {
        return Some(format!("{} connects from {}, outside their networks", person.name, peer.ip()));
    }
    if let Some(h) = person.hours
        && !h.contains(crate::approvals::unix_now())
    {
        return Some(format!("{} connects outside their hours (UTC)", person.name));
    }
    None
}

/// SCRAM-SHA-256 with the client. Returns whether the proof was right.
async fn scram_login(
    io: &mut Box<dyn Io>,
    buf: &mut BytesMut,
    verifier: Option<&crate::scram::Verifier>,
    name: &str,
) -> Result<bool, String> {
    let mut out = BytesMut::new();
    backend::auth_sasl(&mut out, &[crate::scram::MECHANISM]);
    io.write_all(&out).await.map_err(|e| e.to_string())?;
    let f = read_frame(io, buf).await?;
    if f.tag != b'p' {
        return Err("expected SASLInitialResponse".into());
    }
    let (mech, data) = wire::frontend::sasl_initial(&f.body).map_err(|e| e.to_string())?;
    if mech != crate::scram::MECHANISM {
        return Err(format!("unsupported SASL mechanism {mech:?}"));
    }
    let ex = match crate::scram::ServerExchange::start(verifier, name.as_bytes(), &data) {
        Ok(ex) => ex,
        Err(e) => return Err(e.to_string()),
    };
    let mut out = BytesMut::new();
    backend::auth_sasl_continue(&mut out, ex.server_first());
    io.write_all(&out).await.map_err(|e| e.to_string())?;
    let f = read_frame(io, buf).await?;
    if f.tag != b'p' {
        return Err("expected SASLResponse".into());
    }
    match ex.finish(&f.body) {
        Ok(final_msg) => {
            let mut out = BytesMut::new();
            backend::auth_sasl_final(&mut out, &final_msg);
            io.write_all(&out).await.map_err(|e| e.to_string())?;
            Ok(true)
        }
        Err(crate::scram::ScramError::WrongPassword) => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}

/// Whether the session's database holds, outside pg_catalog, a function or operator named like
/// one the guard takes for a built-in when written without a schema ([`guard::builtin_names`]):
/// PostgreSQL picks such an overload over the built-in when its argument types match better
/// (`SELECT lower(5)` runs `public.lower(int)`, `WHERE id = 'a'::text` an `=(int, text)`), so
/// the guard must count unqualified built-ins as unknown functions. One with the argument types
/// of a pg_catalog one of its name never wins while pg_catalog comes first in search_path (a
/// search_path that puts another schema first is the guard's own rule). One Query per server
/// connection, before the client's first statement (an object made later reaches the sessions
/// that connect after it). An error reads as `true` (stricter).
async fn builtins_shadowed<S>(io: &mut S) -> Result<CatalogRow, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
{
    let sql = builtins_shadowed_sql();
    let mut out = BytesMut::new();
    wire::frontend::encode_query(&mut out, &sql);
    io.write_all(&out).await.map_err(|e| e.to_string())?;
    let mut buf = BytesMut::new();
    let mut answer = None;
    let mut row = CatalogRow::default();
    let read = async {
        loop {
            while let Some(f) = wire::decode_frame(&mut buf, 1 << 20).map_err(|e| e.to_string())? {
                match f.tag {
                    // DataRow: `t` or `f`, then the domains' names.
                    b'D' => {
                        row = catalog_row(&data_row_text(&f.body));
                        answer = Some(!row.shadowed);
                    }
                    b'E' => answer = Some(false),
                    b'Z' => return Ok::<_, String>(()),
                    _ => {}
                }
            }
            if io.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                return Err("the database closed the connection".to_string());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read).await.map_err(|_| "timed out".to_string())??;
    // `answer` holds whether it is safe (a false EXISTS); anything else is stricter.
    row.shadowed = !answer.unwrap_or(false);
    Ok(row)
}

/// What the gate's catalog read found (the row of [`builtins_shadowed_sql`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatalogRow {
    /// A built-in name is overloaded (anything but `f` reads as yes: stricter).
    pub shadowed: bool,
    /// The types with CHECKs or code, by name.
    pub domains: Vec<String>,
    /// The relations whose reading, or whose columns' conversions, run code.
    pub relations: Vec<String>,
    /// The OIDs of the checked and code types (arrays included). An unreadable entry is
    /// kept as `None`: the gate then treats any declared parameter type as one (stricter).
    pub type_oids: Vec<Option<u32>>,
    /// The code types alone, by name (see `guard::Session::set_code_types`).
    pub code_types: Vec<String>,
}

/// The row of [`builtins_shadowed_sql`]: see [`CatalogRow`].
pub(crate) fn catalog_row(cols: &[String]) -> CatalogRow {
    let list = |i: usize| -> Vec<String> {
        cols.get(i)
            .map(|v| v.split(',').filter(|n| !n.is_empty()).map(str::to_string).collect())
            .unwrap_or_default()
    };
    CatalogRow {
        shadowed: cols.first().is_none_or(|v| v != "f"),
        domains: list(1),
        relations: list(2),
        type_oids: list(3).iter().map(|o| o.parse().ok()).collect(),
        code_types: list(4),
    }
}

/// The text columns of a DataRow (NULL as empty).
pub(crate) fn data_row_text(body: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let Some(n) = body.get(..2).map(|b| i16::from_be_bytes([b[0], b[1]])) else { return out };
    let mut p = 2;
    for _ in 0..n.max(0) {
        let Some(len) = body.get(p..p + 4).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]])) else {
            break;
        };
        p += 4;
        if len < 0 {
            out.push(String::new());
            continue;
        }
        let end = p + len as usize;
        out.push(String::from_utf8_lossy(body.get(p..end).unwrap_or(&[])).into_owned());
        p = end;
    }
    out
}

/// The edges of the catalog read's type closure, from a type to what holds it: a domain over
/// it, a table's row type with a column of it, a range over it and its multirange, an array of
/// it (user objects only). Both the checked types and the code types are closed over these.
const TYPE_EDGES: &str = "(WITH RECURSIVE e(parent, child) AS (SELECT t.typbasetype, t.oid FROM pg_catalog.pg_type t WHERE t.typtype OPERATOR(pg_catalog.=) 'd' \
         AND t.oid OPERATOR(pg_catalog.>=) '16384'::pg_catalog.oid \
         UNION ALL SELECT a.atttypid, r.reltype FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class r ON r.oid OPERATOR(pg_catalog.=) a.attrelid \
         WHERE a.attrelid OPERATOR(pg_catalog.>=) '16384'::pg_catalog.oid AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped \
         AND r.reltype OPERATOR(pg_catalog.<>) 0 \
         UNION ALL SELECT g.rngsubtype, g.rngtypid FROM pg_catalog.pg_range g WHERE g.rngtypid OPERATOR(pg_catalog.>=) '16384'::pg_catalog.oid \
         UNION ALL SELECT g.rngtypid, g.rngmultitypid FROM pg_catalog.pg_range g WHERE g.rngtypid OPERATOR(pg_catalog.>=) '16384'::pg_catalog.oid \
         UNION ALL SELECT t.typelem, t.oid FROM pg_catalog.pg_type t WHERE t.oid OPERATOR(pg_catalog.>=) '16384'::pg_catalog.oid AND t.typsubscript OPERATOR(pg_catalog.=) 'pg_catalog.array_subscript_handler'::pg_catalog.regproc), ";

/// The user domains whose CHECK constraints may run code that is not built in, the roots of the
/// checked types (`safe`: the guard's safe built-in names as an SQL array); a `UNION` follows.
/// A CHECK counts unless its stored expression tree (`conbin`) holds no OID of a user object
/// (no number of 16384 or more after any `:key`: a user's function, operator or type — a
/// nested domain, a cast through one) and calls only built-ins the guard takes for safe
/// (`:funcid`; a built-in operator's function runs built-in code): `VALUE > 0`, `VALUE ~ '…'`,
/// `length(VALUE) < 200` do not count; `tidy(VALUE) > 0`, `pg_terminate_backend(VALUE)`,
/// `VALUE::int8 > 0` (a cast function the guard does not list) do. Not information_schema's
/// (`cardinal_number`, `yes_or_no`: OIDs below 16384).
fn checked_roots(safe: &str) -> String {
    format!(
        "SELECT c.contypid FROM pg_catalog.pg_constraint c WHERE c.contypid OPERATOR(pg_catalog.>=) '16384'::pg_catalog.oid \
         AND c.contype OPERATOR(pg_catalog.=) 'c' AND (c.conbin IS NULL \
         OR EXISTS (SELECT FROM pg_catalog.regexp_matches(c.conbin::pg_catalog.text, ':[A-Za-z]+ ([0-9]+)', 'g') m(v) \
         WHERE v[1]::pg_catalog.numeric OPERATOR(pg_catalog.>=) '16384'::pg_catalog.numeric) \
         OR EXISTS (SELECT FROM pg_catalog.regexp_matches(c.conbin::pg_catalog.text, ':funcid ([0-9]+)', 'g') m(v) \
         LEFT JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) v[1]::pg_catalog.oid \
         WHERE p.oid IS NULL OR p.pronamespace OPERATOR(pg_catalog.<>) 'pg_catalog'::pg_catalog.regnamespace \
         OR p.proname OPERATOR(pg_catalog.<>) ALL ({safe}))) UNION "
    )
}

/// The types whose use runs a user's code with no function named: a range with a user's
/// subtype_diff or canonical, a type with a cast through a user's (non-internal) function, a
/// type whose default operator class uses a user's function or operator.
const CODE_TYPE_ROOTS: &str = "SELECT g.rngtypid FROM pg_catalog.pg_range g \
         WHERE g.rngsubdiff OPERATOR(pg_catalog.>=) '16384'::pg_catalog.oid OR g.rngcanonical OPERATOR(pg_catalog.>=) '16384'::pg_catalog.oid \
         UNION SELECT c.castsource FROM pg_catalog.pg_cast c JOIN pg_catalog.pg_proc cf ON cf.oid OPERATOR(pg_catalog.=) c.castfunc \
         WHERE c.castfunc OPERATOR(pg_catalog.>=) '16384'::pg_catalog.oid AND c.castsource OPERATOR(pg_catalog.>=) '16384'::pg_catalog.oid \
         AND cf.prolang OPERATOR(pg_catalog.<>) ALL (SELECT l.oid FROM pg_catalog.pg_language l WHERE l.lanname OPERATOR(pg_catalog.=) 'internal'::pg_catalog.name) \
         UNION SELECT c.casttarget FROM pg_catalog.pg_cast c JOIN pg_catalog.pg_proc cf ON cf.oid OPERATOR(pg_catalog.=) c.castfunc \
         WHERE c.castfunc OPERATOR(pg_catalog.>=) '16384'::pg_catalog.oid AND c.casttarget OPERATOR(pg_catalog.>=) '16384'::pg_catalog.oid \
         AND cf.prolang OPERATOR(pg_catalog.<>) ALL (SELECT l.oid FROM pg_catalog.pg_language l WHERE l.lanname OPERATOR(pg_catalog.=) 'internal'::pg_catalog.name) \
         UNION SELECT o.opcintype FROM pg_catalog.pg_opclass o WHERE o.opcdefault AND o.opcintype OPERATOR(pg_catalog.>=) '16384'::pg_catalog.oid AND (EXISTS (SELECT FROM pg_catalog.pg_amproc p \
         WHERE p.amprocfamily OPERATOR(pg_catalog.=) o.opcfamily AND p.amproc OPERATOR(pg_catalog.>=) '16384'::pg_catalog.oid) \
         OR EXISTS (SELECT FROM pg_catalog.pg_amop a WHERE a.amopfamily OPERATOR(pg_catalog.=) o.opcfamily AND a.amopopr OPERATOR(pg_catalog.>=) '16384'::pg_catalog.oid)) ";

/// The catalog read of [`builtins_shadowed`]: one row, the boolean and the names of the
/// types whose conversion may run code — domains with CHECK constraints, and the *code types*:
/// ranges whose `subtype_diff` or `canonical` is a user's function (OID ≥ 16384), user types
/// with a cast through a user's function or a default operator class with a user's support
/// function or operator (a plain `ORDER BY`, `DISTINCT` or `m::int` runs it) — and whatever
/// holds one (a domain over it, a composite type or table row with such a field, a range over
/// it, an array of it), comma-separated — but information_schema's own (`cardinal_number`,
/// `yes_or_no`: built-in checks) —, and the names of the relations whose reading may run code
/// that is not built in: views whose rules depend on a function or operator of a user's,
/// tables with such a policy, index (expression or predicate) or default (the rewriter adds a
/// default at Parse, the planner folds `DEFAULT one()` at Bind), tables and views with a
/// column of a checked or code type (or of a domain over one: PostgreSQL converts a literal
/// compared with or assigned to it through the type's input at parse analysis — record_in,
/// array_in, range_in running a field's domain CHECK —, and a parameter whose type it infers
/// from the column through domain_in at Bind), tables whose policy reads any of these, and
/// views over any of those, recursively; the OIDs of the checked and code types (arrays
/// included): a Parse declaring a parameter of one runs its input at Bind; and the names of
/// the code types alone (a new table's column of one is run by autovacuum's ANALYZE). Only user objects
/// (OID ≥ 16384) are looked at where a built-in one cannot be what runs the code.
pub fn builtins_shadowed_sql() -> String {
    let (safe, writes, operators) = guard::builtin_names();
    let array = |names: &mut dyn Iterator<Item = &&str>| {
        let quoted: Vec<String> = names
            .map(|n| format!("\"{}\"", n.replace('\\', "\\\\").replace('"', "\\\"").replace('\'', "''")))
            .collect();
        format!("'{{{}}}'::pg_catalog.name[]", quoted.join(","))
    };
    let checked_roots = checked_roots(&array(&mut safe.iter()));
    let checked_roots = checked_roots.as_str();
    format!(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_proc p WHERE p.pronamespace OPERATOR(pg_catalog.<>) 'pg_catalog'::pg_catalog.regnamespace \
         AND p.proname OPERATOR(pg_catalog.=) ANY ({}) AND NOT EXISTS (SELECT FROM pg_catalog.pg_proc b \
         WHERE b.pronamespace OPERATOR(pg_catalog.=) 'pg_catalog'::pg_catalog.regnamespace AND b.proname OPERATOR(pg_catalog.=) p.proname \
         AND b.proargtypes OPERATOR(pg_catalog.=) p.proargtypes)) OR EXISTS (SELECT FROM pg_catalog.pg_operator o \
         WHERE o.oprnamespace OPERATOR(pg_catalog.<>) 'pg_catalog'::pg_catalog.regnamespace AND o.oprname OPERATOR(pg_catalog.=) ANY ({}) \
         AND NOT EXISTS (SELECT FROM pg_catalog.pg_operator b WHERE b.oprnamespace OPERATOR(pg_catalog.=) 'pg_catalog'::pg_catalog.regnamespace \
         AND b.oprname OPERATOR(pg_catalog.=) o.oprname AND b.oprleft OPERATOR(pg_catalog.=) o.oprleft AND b.oprright OPERATOR(pg_catalog.=) o.oprright)), \
         {TYPE_EDGES}\
         d(oid) AS ({checked_roots}{CODE_TYPE_ROOTS}\
         UNION SELECT e.child FROM e JOIN d ON e.parent OPERATOR(pg_catalog.=) d.oid) SELECT COALESCE(pg_catalog.string_agg(DISTINCT t.typname::pg_catalog.text, ','), '') \
         FROM d JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) d.oid \
         WHERE t.typnamespace OPERATOR(pg_catalog.<>) 'information_schema'::pg_catalog.regnamespace \
         AND t.typsubscript OPERATOR(pg_catalog.<>) 'pg_catalog.array_subscript_handler'::pg_catalog.regproc), \
         {TYPE_EDGES}\
         k(oid) AS ({checked_roots}{CODE_TYPE_ROOTS}\
         UNION SELECT e.child FROM e JOIN k ON e.parent OPERATOR(pg_catalog.=) k.oid), \
         f AS (SELECT d.classid, d.objid FROM pg_catalog.pg_depend d \
         WHERE d.refclassid OPERATOR(pg_catalog.=) ANY (ARRAY['pg_catalog.pg_proc'::pg_catalog.regclass, 'pg_catalog.pg_operator'::pg_catalog.regclass]::pg_catalog.oid[]) \
         AND d.refobjid OPERATOR(pg_catalog.>=) '16384'::pg_catalog.oid), \
         direct AS (SELECT r.ev_class AS oid FROM f JOIN pg_catalog.pg_rewrite r ON f.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
         AND r.oid OPERATOR(pg_catalog.=) f.objid \
         UNION SELECT p.polrelid FROM f JOIN pg_catalog.pg_policy p ON f.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_policy'::pg_catalog.regclass \
         AND p.oid OPERATOR(pg_catalog.=) f.objid \
         UNION SELECT i.indrelid FROM f JOIN pg_catalog.pg_index i ON f.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass \
         AND i.indexrelid OPERATOR(pg_catalog.=) f.objid \
         UNION SELECT ad.adrelid FROM f JOIN pg_catalog.pg_attrdef ad ON f.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_attrdef'::pg_catalog.regclass \
         AND ad.oid OPERATOR(pg_catalog.=) f.objid \
         UNION SELECT a.attrelid FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type y ON y.oid OPERATOR(pg_catalog.=) a.atttypid \
         JOIN k ON k.oid OPERATOR(pg_catalog.=) ANY (ARRAY[y.oid, y.typbasetype]) \
         JOIN pg_catalog.pg_class ac ON ac.oid OPERATOR(pg_catalog.=) a.attrelid AND ac.relkind OPERATOR(pg_catalog.<>) 'c'::pg_catalog.\"char\" \
         WHERE a.attrelid OPERATOR(pg_catalog.>=) '16384'::pg_catalog.oid AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped), \
         t(oid) AS (SELECT oid FROM direct UNION SELECT x.oid FROM t JOIN pg_catalog.pg_depend d \
         ON d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid OPERATOR(pg_catalog.=) t.oid \
         CROSS JOIN LATERAL (SELECT r.ev_class AS oid FROM pg_catalog.pg_rewrite r WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
         AND r.oid OPERATOR(pg_catalog.=) d.objid UNION ALL SELECT p.polrelid FROM pg_catalog.pg_policy p \
         WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_policy'::pg_catalog.regclass AND p.oid OPERATOR(pg_catalog.=) d.objid) x) \
         SELECT COALESCE(pg_catalog.string_agg(DISTINCT c.relname::pg_catalog.text, ','), '') FROM t JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) t.oid), \
         {TYPE_EDGES}\
         o(oid) AS ({checked_roots}{CODE_TYPE_ROOTS}\
         UNION SELECT e.child FROM e JOIN o ON e.parent OPERATOR(pg_catalog.=) o.oid) \
         SELECT COALESCE(pg_catalog.string_agg(DISTINCT o.oid::pg_catalog.text, ','), '') FROM o), \
         {TYPE_EDGES}\
         k(oid) AS ({CODE_TYPE_ROOTS}\
         UNION SELECT e.child FROM e JOIN k ON e.parent OPERATOR(pg_catalog.=) k.oid) \
         SELECT COALESCE(pg_catalog.string_agg(DISTINCT t.typname::pg_catalog.text, ','), '') \
         FROM k JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) k.oid)",
        array(&mut safe.iter().chain(writes.iter())),
        array(&mut operators.iter()),
    )
}

async fn read_frame(io: &mut Box<dyn Io>, buf: &mut BytesMut) -> Result<wire::Frame, String> {
    let read = async {
        loop {
            if let Some(f) = wire::decode_frame(buf, 16 * 1024).map_err(|e| e.to_string())? {
                return Ok(f);
            }
            if io.read_buf(buf).await.map_err(|e| e.to_string())? == 0 {
                return Err("client closed the connection during login".to_string());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read).await.map_err(|_| "login timed out".to_string())?
}

/// A CancelRequest: forwarded to the database for the matching session, and withdraws a
/// statement that is waiting for approval.
async fn cancel(shared: &Arc<Shared>, pid: i32, key: Vec<u8>) {
    let target = {
        let m = shared.cancels.lock().unwrap_or_else(|p| p.into_inner());
        m.get(&(pid, key))
            .map(|t| (t.upstream.clone(), t.pid, t.key.clone(), t.notify.clone(), t.holding.clone()))
    };
    if let Some((cfg, upid, ukey, notify, holding)) = target {
        if holding.load(std::sync::atomic::Ordering::SeqCst) {
            notify.notify_one();
            return;
        }
        if let Err(e) = pgproto::conn::send_cancel(&cfg, upid, &ukey).await {
            tracing::warn!(error = %e, "forwarding a cancel request failed");
        }
    }
}

/// `SET name TO 'value'` for a startup option (names are plain identifiers, the value quoted).
pub(crate) fn set_sql(name: &str, value: &str) -> String {
    format!("SET {name} TO '{}'", value.replace('\'', "''"))
}

/// Why the `options` startup parameter was refused; the client is told this, with the hint to
/// pass settings as `-c name=value`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    #[error("-c without name=value")]
    MissingSetting,
    #[error("{0:?} is not a -c name=value setting")]
    NotASetting(String),
    #[error("{0:?} is not name=value")]
    NotNameValue(String),
    #[error("{0:?} is not a setting name")]
    BadName(String),
}

/// The `options` startup parameter as PostgreSQL reads it: words split at unescaped spaces
/// (`\ ` is a space, `\\` a backslash), each `-c name=value`, `-cname=value` or `--name=value`.
/// Anything else (other command-line switches) is refused.
pub fn parse_options(options: &str) -> Result<Vec<(String, String)>, OptionsError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.extend(chars.next()),
            c if c.is_ascii_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let kv = if w == "-c" {
            it.next().ok_or(OptionsError::MissingSetting)?
        } else if let Some(rest) = w.strip_prefix("-c").or_else(|| w.strip_prefix("--")) {
            rest.to_string()
        } else {
            return Err(OptionsError::NotASetting(w));
        };
        let Some((k, v)) = kv.split_once('=') else {
            return Err(OptionsError::NotNameValue(kv));
        };
        let k = k.replace('-', "_");
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
            return Err(OptionsError::BadName(k));
        }
        out.push((k, v.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod options_tests {
    use super::{OptionsError, parse_options};

    #[test]
    fn options_are_read_as_postgresql_reads_them() {
        let o =
            parse_options("-c search_path=app -cstatement_timeout=5s --work-mem=64MB -c x.y=a\\ b").unwrap();
        assert_eq!(
            o,
            vec![
                ("search_path".into(), "app".into()),
                ("statement_timeout".into(), "5s".into()),
                ("work_mem".into(), "64MB".into()),
                ("x.y".into(), "a b".into()),
            ]
        );
        assert_eq!(parse_options("-D /tmp"), Err(OptionsError::NotASetting("-D".into())));
        assert_eq!(parse_options("-c role"), Err(OptionsError::NotNameValue("role".into())));
        assert_eq!(parse_options("-c a;b=1"), Err(OptionsError::BadName("a;b".into())));
        assert_eq!(parse_options("-c"), Err(OptionsError::MissingSetting));
    }
}
