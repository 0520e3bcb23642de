//! The gate's HTTPS control API, used by `holdfast gate pending|approve|reject|request|
//! break-glass`, and the console (`crate::console`, merged under `/console/`): people authenticate with their gate password (HTTP
//! basic, over TLS) and, for every decision, a TOTP code in `x-holdfast-totp`.
//!
//! `GET /healthz` and `GET /metrics` need no login.

use std::sync::Arc;

use audit::{Event, EventKind};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use tokio::sync::watch;

use crate::Shared;
use crate::approvals::{Ask, Request, unix_now};
use crate::config::Person;

pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    let mut cfg = (*tls).clone();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    serve::tls::serve_https(listener, acceptor, router(shared), shutdown).await;
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/v1/pending", get(pending))
        .route("/v1/approvals/{id}/approve", post(approve))
        .route("/v1/approvals/{id}/reject", post(reject))
        .route("/v1/grants", post(request_grant))
        .route("/v1/break-glass", post(break_glass))
        .route("/v1/status", get(status))
        .merge(crate::console::router())
        .with_state(shared)
}

type ApiResult = Result<Response, (StatusCode, String)>;

fn err(code: StatusCode, msg: impl Into<String>) -> (StatusCode, String) {
    (code, msg.into())
}

/// Who is calling: basic auth with the gate password; with `totp`, a valid code too.
fn authenticate(s: &Shared, headers: &HeaderMap, totp: bool) -> Result<Person, (StatusCode, String)> {
    let unauthorized =
        || err(StatusCode::UNAUTHORIZED, "log in with your gate name and password (HTTP basic)");
    let h = headers.get("authorization").and_then(|v| v.to_str().ok()).ok_or_else(unauthorized)?;
    let b = h.strip_prefix("Basic ").ok_or_else(unauthorized)?;
    let raw = base64::engine::general_purpose::STANDARD.decode(b.trim()).map_err(|_| unauthorized())?;
    let raw = String::from_utf8(raw).map_err(|_| unauthorized())?;
    let (name, password) = raw.split_once(':').ok_or_else(unauthorized)?;
    let person = s.config.person(name).filter(|p| p.verifier.check_password(password)).cloned();
    let Some(person) = person else {
        s.metrics.auth_failures.inc();
        return Err(err(StatusCode::UNAUTHORIZED, format!("wrong name or password for {name:?}")));
    };
    if totp {
        let Some(secret) = &person.totp_secret else {
            return Err(err(
                StatusCode::FORBIDDEN,
                format!(
                    "{} has no second factor configured (totp_secret in gate.toml): decisions need one",
                    person.name
                ),
            ));
        };
        let code = headers.get("x-holdfast-totp").and_then(|v| v.to_str().ok()).unwrap_or("");
        if crate::totp::verify(secret, code, unix_now()).is_none() {
            s.metrics.auth_failures.inc();
            return Err(err(
                StatusCode::UNAUTHORIZED,
                "a valid one-time code is needed (x-holdfast-totp; `--totp CODE` or HOLDFAST_GATE_TOTP)",
            ));
        }
    }
    Ok(person)
}

fn json<T: serde::Serialize>(code: StatusCode, v: &T) -> Response {
    (code, axum::Json(serde_json::to_value(v).unwrap_or_default())).into_response()
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct PendingResponse {
    pub requests: Vec<Request>,
    pub grants: Vec<crate::approvals::Grant>,
}

async fn pending(State(s): State<Arc<Shared>>, headers: HeaderMap) -> ApiResult {
    authenticate(&s, &headers, false)?;
    Ok(json(StatusCode::OK, &PendingResponse { requests: s.approvals.list(), grants: s.approvals.grants() }))
}

#[derive(Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct DecideBody {
    #[serde(default)]
    pub reason: Option<String>,
}

async fn decide(
    s: Arc<Shared>,
    headers: HeaderMap,
    id: String,
    approve: bool,
    body: DecideBody,
) -> ApiResult {
    let by = authenticate(&s, &headers, true)?;
    let req = s.approvals.decide(&id, &by, approve, body.reason.clone()).map_err(|e| {
        let code = match e {
            crate::approvals::DecideError::Unknown(_) => StatusCode::NOT_FOUND,
            crate::approvals::DecideError::Decided { .. } => StatusCode::CONFLICT,
            _ => StatusCode::FORBIDDEN,
        };
        err(code, e.to_string())
    })?;
    let kind = match (&req.ask, approve) {
        (Ask::Grant { .. }, true) => EventKind::GrantApproved,
        (Ask::Grant { .. }, false) => EventKind::GrantRejected,
        (_, true) => EventKind::Approved,
        (_, false) => EventKind::Rejected,
    };
    let _ = s
        .audit_event(Event::new(kind).person(by.name.clone()).detail(serde_json::json!({
            "approval": req.id, "requester": req.person, "ask": req.ask, "reason": body.reason, "via": "control api",
        })))
        .await;
    Ok(json(StatusCode::OK, &req))
}

async fn approve(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<axum::Json<DecideBody>>,
) -> ApiResult {
    decide(s, headers, id, true, body.map(|b| b.0).unwrap_or_default()).await
}

async fn reject(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<axum::Json<DecideBody>>,
) -> ApiResult {
    decide(s, headers, id, false, body.map(|b| b.0).unwrap_or_default()).await
}

#[derive(serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct GrantBody {
    pub role: String,
    /// e.g. `1h`.
    #[serde(rename = "for")]
    pub for_: String,
    pub reason: String,
}

async fn request_grant(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    axum::Json(b): axum::Json<GrantBody>,
) -> ApiResult {
    let who = authenticate(&s, &headers, true)?;
    let req = open_grant(&s, &who, None, &b.role, &b.for_, &b.reason).await?;
    Ok(json(StatusCode::CREATED, &req))
}

/// Opens `who`'s request for a grant of `role` for `for_` (a duration such as `1h`), once the
/// rules allow it (the role exists, `may_request` names it, at most its `max_for`, a reason);
/// audited and alerted. Shared by the control API and the console (`client`: where from, when
/// known).
pub(crate) async fn open_grant(
    s: &Shared,
    who: &Person,
    client: Option<&str>,
    role: &str,
    for_: &str,
    reason: &str,
) -> Result<Request, (StatusCode, String)> {
    let role = s
        .config
        .grant_roles
        .iter()
        .find(|g| g.name == role)
        .ok_or_else(|| err(StatusCode::NOT_FOUND, format!("no grant role {role:?} in gate.toml")))?;
    if !who.may_request.contains(&role.name) {
        return Err(err(
            StatusCode::FORBIDDEN,
            format!("{} may not request role {} (may_request in gate.toml)", who.name, role.name),
        ));
    }
    let d = serve::parse_duration(for_).map_err(|e| err(StatusCode::BAD_REQUEST, format!("for: {e}")))?;
    if d > role.max_for {
        return Err(err(
            StatusCode::BAD_REQUEST,
            format!(
                "role {} is granted for at most {}s; asked {}s",
                role.name,
                role.max_for.as_secs(),
                d.as_secs()
            ),
        ));
    }
    if reason.trim().len() < 3 {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "say why (--reason): it goes to the approver and the audit log",
        ));
    }
    let (req, _rx) = s.approvals.open(
        &who.name,
        client.unwrap_or("control api"),
        None,
        Ask::Grant { role: role.name.clone(), secs: d.as_secs() },
        Some(reason.to_string()),
        s.config.approval_timeout,
    );
    let mut ev = Event::new(EventKind::GrantRequested).person(who.name.clone()).detail(serde_json::json!({
        "approval": req.id, "role": role.name, "secs": d.as_secs(), "reason": reason,
    }));
    if let Some(c) = client {
        ev = ev.client(c.to_string());
    }
    let _ = s.audit_event(ev).await;
    s.alert(serde_json::json!({"alert": "grant_requested", "approval": req.id, "person": who.name, "role": role.name, "for_secs": d.as_secs(), "reason": reason}));
    Ok(req)
}

#[derive(serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct BreakGlassBody {
    #[serde(rename = "for")]
    pub for_: String,
    pub reason: String,
}

async fn break_glass(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    axum::Json(b): axum::Json<BreakGlassBody>,
) -> ApiResult {
    let who = authenticate(&s, &headers, true)?;
    let g = open_break_glass(&s, &who, None, &b.for_, &b.reason).await?;
    Ok(json(StatusCode::CREATED, &g))
}

/// Breaks the glass for `who` for `for_` (at most 4h; a reason of at least 10 characters):
/// audited (refused if the audit log cannot take it) and alerted before it takes effect.
/// Shared by the control API and the console (`client`: where from, when known).
pub(crate) async fn open_break_glass(
    s: &Shared,
    who: &Person,
    client: Option<&str>,
    for_: &str,
    reason: &str,
) -> Result<crate::approvals::Grant, (StatusCode, String)> {
    if reason.trim().len() < 10 {
        return Err(err(StatusCode::BAD_REQUEST, "break-glass needs a reason of at least 10 characters"));
    }
    let d = serve::parse_duration(for_).map_err(|e| err(StatusCode::BAD_REQUEST, format!("for: {e}")))?;
    if d.as_secs() > 4 * 3600 {
        return Err(err(StatusCode::BAD_REQUEST, "break-glass lasts at most 4h"));
    }
    // Audited and alerted before it takes effect.
    let mut ev = Event::new(EventKind::BreakGlass).person(who.name.clone()).detail(serde_json::json!({
        "secs": d.as_secs(), "reason": reason,
    }));
    if let Some(c) = client {
        ev = ev.client(c.to_string());
    }
    s.audit_event(ev).await.map_err(|e| {
        // The requester learns the kind of failure; the spool's paths and the vault's address
        // stay in the gate's log.
        tracing::warn!(person = %who.name, error = %e, "break-glass refused: the audit log cannot record it");
        let why = vault_types::UserFacing::user_message(&e);
        err(StatusCode::SERVICE_UNAVAILABLE, format!("the audit log cannot record break-glass: {why}"))
    })?;
    s.alert(serde_json::json!({"alert": "break_glass", "person": who.name, "for_secs": d.as_secs(), "reason": reason}));
    Ok(s.approvals.break_glass(&who.name, d.as_secs(), reason.to_string()))
}

async fn status(State(s): State<Arc<Shared>>, headers: HeaderMap) -> ApiResult {
    authenticate(&s, &headers, false)?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "active_sessions": s.metrics.active_sessions.load(std::sync::atomic::Ordering::Relaxed),
            "pending": s.approvals.list().iter().filter(|r| r.state == crate::approvals::State::Pending).count(),
            "grants": s.approvals.grants(),
            "audit": s.audit.status(),
            "webhooks": s.webhooks.status(),
            "started_at": s.started_at,
            "budgets": {
                "limits": {
                    "rows": s.guard.policy().budget_rows,
                    "table_percent": s.guard.policy().budget_table_percent,
                    "min_table_rows": s.guard.policy().budget_min_table_rows,
                    "window_seconds": s.guard.policy().budget_window_seconds,
                },
                "used": s.budgets.snapshot(crate::budget::Limits::from_policy(s.guard.policy()).window),
            },
        }),
    ))
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    let m = &s.metrics;
    let a = s.audit.status();
    let mut out = String::new();
    let mut put = |name: &str, help: &str, kind: &str, v: u64| {
        out += &format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n");
    };
    put("holdfast_gate_connections_total", "Client connections accepted.", "counter", m.connections.get());
    put(
        "holdfast_gate_auth_failures_total",
        "Failed logins (protocol and control API).",
        "counter",
        m.auth_failures.get(),
    );
    put(
        "holdfast_gate_statements_allowed_total",
        "Statements passed to the database.",
        "counter",
        m.allowed.get(),
    );
    put("holdfast_gate_statements_held_total", "Statements held for approval.", "counter", m.held.get());
    put(
        "holdfast_gate_statements_refused_total",
        "Statements refused (policy, rejection, timeout, audit full).",
        "counter",
        m.refused.get(),
    );
    put(
        "holdfast_gate_row_guarded_total",
        "DELETE/UPDATE run under the row-count guard.",
        "counter",
        m.row_guarded.get(),
    );
    put(
        "holdfast_gate_active_sessions",
        "Sessions open now.",
        "gauge",
        m.active_sessions.load(std::sync::atomic::Ordering::Relaxed),
    );
    put(
        "holdfast_gate_audit_pending_records",
        "Audit records not yet in the vault.",
        "gauge",
        a.pending_records,
    );
    put("holdfast_gate_audit_pending_bytes", "Audit bytes not yet in the vault.", "gauge", a.pending_bytes);
    let c = s.guard.cache_stats();
    put(
        "holdfast_gate_guard_parses_total",
        "Statements the guard parsed and classified in full.",
        "counter",
        c.parsed,
    );
    put(
        "holdfast_gate_guard_text_cache_hits_total",
        "Statements judged from the analysis of the same text seen before.",
        "counter",
        c.text_hits,
    );
    put(
        "holdfast_gate_guard_shape_cache_hits_total",
        "Statements judged from the analysis of the same shape (the same text but for constants' values).",
        "counter",
        c.shape_hits,
    );
    let t = &m.timing;
    put(
        "holdfast_gate_server_flights_total",
        "Writes of queued messages to the database (the client's and the gate's own).",
        "counter",
        t.server_flights.get(),
    );
    put(
        "holdfast_gate_audit_waits_total",
        "Waits of a session for an audit record to be durable (one fsync or a share of a group's).",
        "counter",
        t.audit_waits.get(),
    );
    t.audit_wait.render(
        "holdfast_gate_statement_audit_wait_seconds",
        "Per statement (Query, or extended batch to its Sync): time waiting for its audit records to be durable.",
        &mut out,
    );
    t.server.render(
        "holdfast_gate_statement_server_seconds",
        "Per statement: time waiting for the database's answers to the client's own messages.",
        &mut out,
    );
    t.own.render(
        "holdfast_gate_statement_own_seconds",
        "Per statement: time waiting for the database's answers to the gate's own messages (savepoint, counters read and check, release, BEGIN/COMMIT the gate opened).",
        &mut out,
    );
    t.total.render(
        "holdfast_gate_statement_seconds",
        "Per statement: from the gate taking up the client's first message to the client's ReadyForQuery.",
        &mut out,
    );
    ([("content-type", "text/plain; version=0.0.4")], out).into_response()
}
