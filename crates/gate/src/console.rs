//! The approvals console: the gate's access half of holdfast's web console, served on the
//! control listener under `/console/` (same TLS, same process, same people as the control API:
//! no new trust domain and no database of its own — sessions live in this process's memory and
//! end with it).
//!
//! People sign in with their gate name, password and a TOTP code; a session is a random token
//! in a `__Host-` cookie (`Secure; HttpOnly; SameSite=Strict`) that lasts `console_session`
//! from sign-in. Every POST carries the session's CSRF token (the sign-in form a double-submit
//! token of its own), compared in constant time; a browser's `Origin`, when sent, must be this
//! console. Each decision needs a fresh TOTP code (a code, once used, is refused for that person
//! until the next 30-second step) and a reason, and is audited like the CLI's, with the
//! client's address. Pages are server-rendered with `maud`, which escapes every interpolated
//! value; the only script (`console.js`) reloads the page when the requests change. An
//! address with 10 failed sign-ins in 10 minutes is refused until those 10 minutes end.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use audit::{Event, EventKind};
use axum::Router;
use axum::extract::{ConnectInfo, Form, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine;
use maud::{DOCTYPE, Markup, html};
use serve::web::{
    cookie, login_csrf, login_post_ok, post_ok, random_token, signed_in_redirect, signed_out_redirect,
};
use sha2::Digest;

use crate::Shared;
use crate::approvals::{Ask, Request, State as ReqState, state_name, unix_now};
use crate::config::Person;

mod audit_page;
mod grants;

const SESSION_COOKIE: &str = "__Host-hf_session";
const LOGIN_COOKIE: &str = "__Host-hf_login";
/// How long the sign-in form's own CSRF token lasts.
const LOGIN_FORM_SECS: u64 = 600;

/// Console sessions and the TOTP steps already used, in memory.
#[derive(Default)]
pub struct Sessions {
    /// By SHA-256 of the cookie's token: a lookup never compares secrets byte by byte.
    by_hash: Mutex<HashMap<[u8; 32], Session>>,
    /// The last TOTP step each person used on the console.
    totp_steps: Mutex<HashMap<String, u64>>,
    /// Failed sign-ins per client address: how many, since when.
    failures: Mutex<HashMap<std::net::IpAddr, (u32, u64)>>,
}

/// Failed sign-ins an address may make per window before it is refused until the window ends
/// (per address, not per name: a stranger must not be able to lock an approver out).
const MAX_FAILURES: u32 = 10;
const FAILURE_WINDOW_SECS: u64 = 600;

#[derive(Clone)]
struct Session {
    person: String,
    csrf: String,
    expires_at: u64,
    /// A message for the next page shown (post/redirect/get).
    flash: Option<Flash>,
}

#[derive(Clone)]
struct Flash {
    ok: bool,
    text: String,
}

fn token_hash(token: &str) -> [u8; 32] {
    sha2::Sha256::digest(token.as_bytes()).into()
}

impl Sessions {
    /// A new session for `person`, lasting `ttl` from `now`; its cookie token.
    fn create(&self, person: &str, ttl: Duration, now: u64) -> String {
        let token = random_token();
        let mut m = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, s| s.expires_at > now);
        m.insert(
            token_hash(&token),
            Session {
                person: person.into(),
                csrf: random_token(),
                expires_at: now + ttl.as_secs(),
                flash: None,
            },
        );
        token
    }

    /// The live session of `token` at `now` (its flash taken); an expired one is forgotten.
    fn get(&self, token: &str, now: u64) -> Option<Session> {
        let mut m = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        let h = token_hash(token);
        match m.get_mut(&h) {
            Some(s) if s.expires_at > now => {
                let out = s.clone();
                s.flash = None;
                Some(out)
            }
            Some(_) => {
                m.remove(&h);
                None
            }
            None => None,
        }
    }

    fn set_flash(&self, token: &str, ok: bool, text: String) {
        if let Some(s) = self.by_hash.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&token_hash(token)) {
            s.flash = Some(Flash { ok, text });
        }
    }

    fn end(&self, token: &str) {
        self.by_hash.lock().unwrap_or_else(|p| p.into_inner()).remove(&token_hash(token));
    }

    /// Seconds until `ip` may try to sign in again (0: now).
    fn throttled(&self, ip: std::net::IpAddr, now: u64) -> u64 {
        match self.failures.lock().unwrap_or_else(|p| p.into_inner()).get(&ip) {
            Some(&(n, since)) if n >= MAX_FAILURES && now < since + FAILURE_WINDOW_SECS => {
                since + FAILURE_WINDOW_SECS - now
            }
            _ => 0,
        }
    }

    fn failed(&self, ip: std::net::IpAddr, now: u64) {
        let mut m = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, (_, since)| now < *since + FAILURE_WINDOW_SECS);
        m.entry(ip).or_insert((0, now)).0 += 1;
    }

    /// Checks `code` for `person` at `now` and refuses a step already used (a code seen over a
    /// shoulder or in a proxy's log is worth nothing once its owner has used it).
    fn use_totp(&self, person: &Person, code: &str, now: u64) -> bool {
        let Some(secret) = &person.totp_secret else { return false };
        let Some(step) = crate::totp::verify(secret, code, now) else { return false };
        let mut m = self.totp_steps.lock().unwrap_or_else(|p| p.into_inner());
        let last = m.entry(person.name.clone()).or_insert(0);
        if step <= *last {
            return false;
        }
        *last = step;
        true
    }
}

/// The console's routes, merged into the control API's router.
pub fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/console", get(|| async { Redirect::to("/console/approvals") }))
        .route("/console/", get(|| async { Redirect::to("/console/approvals") }))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/approvals", get(approvals_page))
        .route("/console/approvals/version", get(version))
        .route("/console/approvals/{id}/decide", post(decide))
        .route("/console/grants", get(grants::page))
        .route("/console/grants/request", post(grants::request))
        .route("/console/grants/break-glass", post(grants::break_glass))
        .route("/console/audit", get(audit_page::page))
        .route("/console/audit/{file}", get(audit_page::export))
        .route("/console/console.css", get(|| async { ([(header::CONTENT_TYPE, "text/css")], CSS) }))
        .route("/console/console.js", get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], JS) }))
        .layer(axum::middleware::map_response(serve::web::security_headers))
}

/// The signed-in person of a request, with their session's token.
struct Signed {
    token: String,
    person: Person,
    session: Session,
}

fn signed_in(s: &Shared, h: &HeaderMap) -> Option<Signed> {
    let token = cookie(h, SESSION_COOKIE)?;
    let session = s.console.get(token, unix_now())?;
    let person = s.config.person(&session.person)?.clone();
    Some(Signed { token: token.to_string(), person, session })
}

fn to_login() -> Response {
    Redirect::to("/console/login").into_response()
}

fn refused(code: StatusCode, text: &str) -> Response {
    let body = layout(
        "Refused",
        None,
        html! {
            section.card.error {
                h1 { "Refused" }
                p id="refused" { (text) }
                p { a href="/console/approvals" { "Back to the approvals" } }
            }
        },
    );
    (code, maud_html(body)).into_response()
}

fn maud_html(m: Markup) -> ([(header::HeaderName, &'static str); 1], String) {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], m.into_string())
}

fn layout(title: &str, who: Option<&Signed>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · holdfast gate" }
                link rel="stylesheet" href="/console/console.css";
                script src="/console/console.js" defer {}
            }
            body {
                header.top {
                    div.brand { "holdfast " strong { "gate" } span.domain { " · access console: approvals, grants, audit" } }
                    @if let Some(w) = who {
                        nav.pages { a href="/console/approvals" { "Approvals" } " " a id="nav-grants" href="/console/grants" { "Grants" } " " a id="nav-audit" href="/console/audit" { "Audit" } }
                        form.logout method="post" action="/console/logout" {
                            input type="hidden" name="csrf" value=(w.session.csrf);
                            span { "signed in as " strong id="whoami" { (w.person.name) } }
                            " "
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

#[derive(serde::Deserialize)]
struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    person: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    totp: String,
}

fn login_form(error: Option<&str>) -> Response {
    let (csrf, csrf_cookie) = login_csrf(LOGIN_COOKIE, LOGIN_FORM_SECS);
    let body = layout(
        "Sign in",
        None,
        html! {
            section.card.narrow {
                h1 { "Sign in" }
                p.muted { "With your gate name and password and the code of your authenticator app." }
                @if let Some(e) = error { p.flash.bad id="error" { (e) } }
                form id="login" method="post" action="/console/login" {
                    input type="hidden" name="csrf" value=(csrf);
                    label { "Name" input id="person" name="person" autocomplete="username" required autocapitalize="none"; }
                    label { "Password" input id="password" name="password" type="password" autocomplete="current-password" required; }
                    label { "One-time code" input id="totp" name="totp" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9]{6}" maxlength="6" required; }
                    button id="signin" type="submit" { "Sign in" }
                }
            }
        },
    );
    let code = if error.is_some() { StatusCode::UNAUTHORIZED } else { StatusCode::OK };
    (code, [csrf_cookie], maud_html(body)).into_response()
}

async fn login_page(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if signed_in(&s, &headers).is_some() {
        return Redirect::to("/console/approvals").into_response();
    }
    login_form(None)
}

/// A verifier for names nobody has, so an unknown name costs the same as a wrong password.
fn decoy() -> &'static crate::scram::Verifier {
    static V: OnceLock<crate::scram::Verifier> = OnceLock::new();
    V.get_or_init(|| crate::scram::Verifier::generate(&random_token()))
}

async fn login(
    State(s): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    if !login_post_ok(&headers, LOGIN_COOKIE, &f.csrf) {
        return refused(
            StatusCode::FORBIDDEN,
            "This sign-in form expired or did not come from this console: open the sign-in page again.",
        );
    }
    let wait = s.console.throttled(peer.ip(), unix_now());
    if wait > 0 {
        s.metrics.auth_failures.inc();
        let msg = format!("Too many failed sign-ins from your address: try again in {}.", ago(wait));
        let mut r = login_form(Some(&msg));
        *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        return r;
    }
    let person = s.config.person(&f.person);
    let password_ok = match person {
        Some(p) => p.verifier.check_password(&f.password),
        None => {
            let _ = decoy().check_password(&f.password);
            false
        }
    };
    let ok = password_ok && person.is_some_and(|p| s.console.use_totp(p, &f.totp, unix_now()));
    let _ = s
        .audit_event(
            Event::new(EventKind::Auth)
                .person(f.person.clone())
                .client(peer.to_string())
                .detail(serde_json::json!({"ok": ok, "method": "console password + totp", "tls": true})),
        )
        .await;
    let Some(person) = person.filter(|_| ok) else {
        s.metrics.auth_failures.inc();
        s.console.failed(peer.ip(), unix_now());
        return login_form(Some("Wrong name, password or one-time code (a code works once)."));
    };
    let token = s.console.create(&person.name, s.config.console_session, unix_now());
    signed_in_redirect(
        "/console/approvals",
        SESSION_COOKIE,
        &token,
        s.config.console_session.as_secs(),
        LOGIN_COOKIE,
    )
}

#[derive(serde::Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(State(s): State<Arc<Shared>>, headers: HeaderMap, Form(f): Form<CsrfForm>) -> Response {
    let Some(w) = signed_in(&s, &headers) else { return to_login() };
    if !post_ok(&w.session.csrf, &f.csrf, &headers) {
        return refused(StatusCode::FORBIDDEN, "Missing or wrong CSRF token: reload the page and try again.");
    }
    s.console.end(&w.token);
    signed_out_redirect("/console/login", SESSION_COOKIE)
}

/// A short digest of what the approvals page shows, for `console.js` to notice changes.
fn digest(s: &Shared) -> String {
    let mut h = sha2::Sha256::new();
    for r in s.approvals.list() {
        h.update(format!("{}:{};", r.id, state_name(&r.state)));
    }
    for g in s.approvals.grants() {
        h.update(format!("g{}:{};", g.id, g.until));
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&h.finalize()[..9])
}

async fn version(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if signed_in(&s, &headers).is_none() {
        return (StatusCode::UNAUTHORIZED, "sign in").into_response();
    }
    ([(header::CONTENT_TYPE, "text/plain")], digest(&s)).into_response()
}

fn ago(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {:02}s", s / 60, s % 60),
        s => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn ask_view(r: &Request) -> Markup {
    match &r.ask {
        Ask::Statement { sql, class, reasons, parameters } => html! {
            pre.sql { code { (sql) } }
            p { "Class: " strong { (class) } }
            @if !reasons.is_empty() {
                p.why-title { "Why the guard held it:" }
                ul.reasons { @for why in reasons { li { (why) } } }
            }
            @if let Some(p) = parameters {
                p.params {
                    (p.count) " bound parameter(s), values " (p.values_are)
                    @if !p.values.is_empty() {
                        ": "
                        @for (i, v) in p.values.iter().enumerate() {
                            code { "$" (i + 1) " = " (v.as_deref().unwrap_or("NULL")) } " "
                        }
                    }
                }
            }
        },
        Ask::Grant { role, secs } => html! {
            p { "A grant of role " strong { (role) } " for " (ago(*secs)) }
        },
        Ask::Access { why } => html! { p { "A session outside the person's rules: " (why) } },
    }
}

fn what(r: &Request) -> &'static str {
    match r.ask {
        Ask::Statement { .. } => "statement",
        Ask::Grant { .. } => "grant",
        Ask::Access { .. } => "access",
    }
}

async fn approvals_page(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let Some(w) = signed_in(&s, &headers) else { return to_login() };
    let now = unix_now();
    let all = s.approvals.list();
    let (pending, decided): (Vec<_>, Vec<_>) = all.into_iter().partition(|r| r.state == ReqState::Pending);
    let grants = s.approvals.grants();
    let me = &w.person;
    let body = html! {
        @if let Some(f) = &w.session.flash {
            p.flash.(if f.ok { "good" } else { "bad" }) id="flash" { (f.text) }
        }
        h1 { "Waiting for a second person " span.count id="pending-count" { (pending.len()) } }
        div id="pending" data-version=(digest(&s)) {
            @if pending.is_empty() { p.muted id="none-pending" { "Nothing is waiting." } }
            @for r in &pending {
                article.card.request id={ "req-" (r.id) } data-person=(r.person) {
                    header {
                        span.kind { (what(r)) } " "
                        code.id { (r.id) }
                        span.muted { " · waiting " (ago(now.saturating_sub(r.created_at)))
                            " · expires in " (ago(r.expires_at.saturating_sub(now))) }
                    }
                    p.who { strong.person { (r.person) } " from " code.client { (r.client) }
                        @if let Some(sess) = r.session { span.muted { " (session " (sess) ")" } } }
                    @if let Some(reason) = &r.reason { p { "Their reason: " em { (reason) } } }
                    (ask_view(r))
                    @if r.person == me.name {
                        p.own { "Your own request: another approver must decide it." }
                    } @else if !me.approver {
                        p.own { "You are not an approver (approver = true in gate.toml)." }
                    } @else {
                        form.decide method="post" action={ "/console/approvals/" (r.id) "/decide" } {
                            input type="hidden" name="csrf" value=(w.session.csrf);
                            label { "One-time code" input.totp name="totp" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9]{6}" maxlength="6" required; }
                            label { "Reason (recorded)" input.reason name="reason" required minlength="3" maxlength="500"; }
                            div.buttons {
                                button.approve type="submit" name="decision" value="approve" { "Approve" }
                                button.reject type="submit" name="decision" value="reject" { "Reject" }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Active grants" }
        @if grants.is_empty() { p.muted { "None." } } @else {
            table.list {
                tr { th { "person" } th { "role" } th { "ends in" } th { "approved by" } th { "reason" } }
                @for g in &grants {
                    tr.(if g.break_glass { "glass" } else { "" }) {
                        td { (g.person) } td { (g.role) @if g.break_glass { " (break-glass)" } }
                        td { (ago(g.until.saturating_sub(now))) } td { (g.approved_by) }
                        td { (g.reason.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
        h2 { "Decided in the last hour" }
        @if decided.is_empty() { p.muted { "None." } } @else {
            table.list id="decided" {
                tr { th { "id" } th { "person" } th { "what" } th { "outcome" } }
                @for r in &decided {
                    tr id={ "done-" (r.id) } {
                        td { code { (r.id) } } td { (r.person) } td { (what(r)) }
                        td.outcome { (state_name(&r.state))
                            @match &r.state {
                                ReqState::Approved { by, at } | ReqState::Rejected { by, at, .. } => {
                                    " by " (by) ", " (ago(now.saturating_sub(*at))) " ago"
                                }
                                _ => {}
                            }
                        }
                    }
                }
            }
        }
        @if let Some(vault) = s.config.audit.as_ref().map(|a| a.vault.trim_end_matches('/')).filter(|v| v.starts_with("https://")) {
            p.foot { "Backups, incidents and restores: " a id="vault-console" href={ (vault) "/console/" } { "the vault's console" } }
        }
        p.muted.foot { "This page updates itself. Decisions are recorded in the gate's audit log with your name, address and reason." }
    };
    maud_html(layout("Approvals", Some(&w), body)).into_response()
}

#[derive(serde::Deserialize)]
struct DecideForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    totp: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    decision: String,
}

async fn decide(
    State(s): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<DecideForm>,
) -> Response {
    let Some(w) = signed_in(&s, &headers) else { return to_login() };
    if !post_ok(&w.session.csrf, &f.csrf, &headers) {
        return refused(StatusCode::FORBIDDEN, "Missing or wrong CSRF token: reload the page and try again.");
    }
    let back = |ok: bool, text: String| {
        s.console.set_flash(&w.token, ok, text);
        Redirect::to("/console/approvals").into_response()
    };
    let approve = match f.decision.as_str() {
        "approve" => true,
        "reject" => false,
        _ => return refused(StatusCode::BAD_REQUEST, "Say approve or reject."),
    };
    let reason = f.reason.trim().to_string();
    if reason.chars().count() < 3 {
        return back(false, format!("Say why you decide {id} (a reason of at least 3 characters)."));
    }
    if !s.console.use_totp(&w.person, &f.totp, unix_now()) {
        s.metrics.auth_failures.inc();
        return back(
            false,
            format!("Wrong or already used one-time code: nothing decided on {id}. Wait for the next code."),
        );
    }
    let req = match s.approvals.decide(&id, &w.person, approve, Some(reason.clone())) {
        Ok(r) => r,
        Err(e) => return back(false, e.to_string()),
    };
    let kind = match (&req.ask, approve) {
        (Ask::Grant { .. }, true) => EventKind::GrantApproved,
        (Ask::Grant { .. }, false) => EventKind::GrantRejected,
        (_, true) => EventKind::Approved,
        (_, false) => EventKind::Rejected,
    };
    let _ = s
        .audit_event(Event::new(kind).person(w.person.name.clone()).client(peer.to_string()).detail(
            serde_json::json!({
                "approval": req.id, "requester": req.person, "ask": req.ask, "reason": reason, "via": "console",
            }),
        ))
        .await;
    back(
        true,
        format!(
            "{} {} ({}'s {}).",
            if approve { "Approved" } else { "Rejected" },
            req.id,
            req.person,
            what(&req)
        ),
    )
}

const CSS: &str = include_str!("console/console.css");
const JS: &str = include_str!("console/console.js");

#[cfg(test)]
mod tests {
    use super::*;

    fn person(name: &str) -> Person {
        Person {
            name: name.into(),
            verifier: crate::scram::Verifier::generate("x"),
            approver: true,
            db_user: None,
            totp_secret: Some(b"12345678901234567890".to_vec()),
            networks: vec![],
            hours: None,
            may_request: vec![],
        }
    }

    #[test]
    fn sessions_expire_and_unknown_tokens_find_nothing() {
        let s = Sessions::default();
        let t = s.create("bob", Duration::from_secs(60), 1000);
        assert_eq!(s.get(&t, 1059).map(|x| x.person), Some("bob".into()));
        assert!(s.get(&t, 1060).is_none(), "expired at sign-in + ttl");
        assert!(s.get(&t, 1000).is_none(), "an expired session is forgotten");
        assert!(s.get("nope", 1000).is_none());
        let t2 = s.create("bob", Duration::from_secs(60), 1000);
        s.end(&t2);
        assert!(s.get(&t2, 1001).is_none(), "signed out");
    }

    #[test]
    fn an_address_that_keeps_failing_waits() {
        let s = Sessions::default();
        let (ip, other) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
        for _ in 0..MAX_FAILURES - 1 {
            s.failed(ip, 1000);
        }
        assert_eq!(s.throttled(ip, 1000), 0);
        s.failed(ip, 1000);
        assert_eq!(s.throttled(ip, 1100), FAILURE_WINDOW_SECS - 100);
        assert_eq!(s.throttled(other, 1100), 0, "per address");
        assert_eq!(s.throttled(ip, 1000 + FAILURE_WINDOW_SECS), 0, "the window ends");
    }

    #[test]
    fn a_totp_code_works_once() {
        let s = Sessions::default();
        let p = person("bob");
        let now = 1_234_567_890;
        let code = |step: u64| format!("{:06}", crate::totp::code_at(b"12345678901234567890", step));
        assert!(s.use_totp(&p, &code(now / 30), now));
        assert!(!s.use_totp(&p, &code(now / 30), now), "replayed");
        assert!(!s.use_totp(&p, &code(now / 30 - 1), now), "an older step after a newer one");
        assert!(s.use_totp(&p, &code(now / 30 + 1), now), "the next step");
        assert!(s.use_totp(&person("carol"), &code(now / 30), now), "steps are per person");
    }

    #[test]
    fn sql_is_escaped() {
        let r = Request {
            id: "a1".into(),
            person: "alice".into(),
            client: "127.0.0.1:5".into(),
            session: None,
            ask: Ask::Statement {
                sql: "DELETE FROM t WHERE x = '<script>alert(1)</script>'".into(),
                class: "destructive".into(),
                reasons: vec!["<b>".into()],
                parameters: None,
            },
            reason: None,
            created_at: 0,
            expires_at: 0,
            state: ReqState::Pending,
        };
        let html = ask_view(&r).into_string();
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;") && !html.contains("<script>"),
            "{html}"
        );
        assert!(html.contains("&lt;b&gt;") && !html.contains("<b>"), "{html}");
    }
}
