//! The backup half of holdfast's web console, served by the vault under `/console/` on its API
//! listener: the protected clusters (streaming, lag, durable LSN, restorable window, last backup
//! and drill) and each cluster's incidents with what they destroyed and the exact `holdfast
//! restore --before-incident N` command that undoes them.
//!
//! Sign-in is with a vault token (`read` or `admin`): the console keeps it in this process's
//! memory under a random session cookie (`__Host-`, `Secure; HttpOnly; SameSite=Strict`,
//! lasting `console_session` from sign-in, 15 minutes by default) and authorizes every page
//! and action with it exactly as the API would (`Shared::authorize`), so a revoked token stops working at once and an action that needs
//! `admin` (starting a drill) is refused to a `read` sign-in — whose pages show no such button.
//! Every POST carries the session's CSRF token. No new trust domain, no data of its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Extension, Form, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};
use serve::web::{
    cookie, login_csrf, login_post_ok, post_ok, random_token, signed_in_redirect, signed_out_redirect,
};
use vault_api::Scope;
use vault_api::status::{Incident, IncidentTarget};

use super::Shared;

mod audit;

const SESSION_COOKIE: &str = "__Host-hfv_session";
const LOGIN_COOKIE: &str = "__Host-hfv_login";
/// How long the sign-in form's own CSRF token lasts.
const LOGIN_FORM_SECS: u64 = 600;

/// Console sessions, in memory: they end with the process.
#[derive(Default)]
pub struct Sessions {
    by_hash: Mutex<HashMap<[u8; 32], Session>>,
}

#[derive(Clone)]
struct Session {
    /// The vault token signed in with (re-checked on every request).
    token: String,
    csrf: String,
    expires_at: u64,
}

/// Seconds since the epoch by this host's clock (a session's age, not a retention decision).
fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn hash(t: &str) -> [u8; 32] {
    *blake3::hash(t.as_bytes()).as_bytes()
}

impl Sessions {
    fn create(&self, token: String, ttl: u64, now: u64) -> String {
        let id = random_token();
        let mut m = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, s| s.expires_at > now);
        m.insert(hash(&id), Session { token, csrf: random_token(), expires_at: now + ttl });
        id
    }

    fn get(&self, id: &str, now: u64) -> Option<Session> {
        let m = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        m.get(&hash(id)).filter(|s| s.expires_at > now).cloned()
    }

    fn end(&self, id: &str) {
        self.by_hash.lock().unwrap_or_else(|p| p.into_inner()).remove(&hash(id));
    }
}

/// A signed-in request: its session and the token's scope and label as the vault knows them now.
struct Signed {
    id: String,
    session: Session,
    scope: Scope,
    label: String,
}

/// The sessions, shared by the console's handlers (kept out of `Shared`: only this module, a
/// part of the API leaf, knows them).
type Console = Extension<Arc<Sessions>>;

async fn signed_in(
    s: &Shared,
    sessions: &Sessions,
    h: &HeaderMap,
    allowed: &[Scope],
    what: &str,
) -> Result<Signed, Response> {
    let Some(id) = cookie(h, SESSION_COOKIE) else {
        return Err(Redirect::to("/console/login").into_response());
    };
    let Some(session) = sessions.get(id, now()) else {
        return Err(Redirect::to("/console/login").into_response());
    };
    let mut auth = HeaderMap::new();
    let bearer = HeaderValue::from_str(&format!("Bearer {}", session.token));
    auth.insert(header::AUTHORIZATION, bearer.map_err(|_| Redirect::to("/console/login").into_response())?);
    match s.authorize(&auth, allowed, what).await {
        Ok(t) => Ok(Signed { id: id.to_string(), session, scope: t.scope, label: t.label }),
        Err(e) if e.status == StatusCode::UNAUTHORIZED => {
            sessions.end(id);
            Err(Redirect::to("/console/login").into_response())
        }
        Err(e) => Err(refused(e.status, &e.message)),
    }
}

/// The console's routes, merged into the API's router.
pub fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/console", get(|| async { Redirect::to("/console/clusters") }))
        .route("/console/", get(|| async { Redirect::to("/console/clusters") }))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/clusters", get(clusters_page))
        .route("/console/clusters/{name}", get(cluster_page))
        .route("/console/clusters/{name}/drill", post(start_drill))
        .route("/console/drills", get(drills_page))
        .route("/console/clusters/{name}/incidents/{n}/ack", post(acknowledge))
        .route("/console/proposals", get(proposals_page))
        .route("/console/audit", get(audit::audit_page))
        .route("/console/audit/{file}", get(audit::export))
        .route("/console/console.css", get(|| async { ([(header::CONTENT_TYPE, "text/css")], CSS) }))
        .layer(axum::middleware::map_response(serve::web::security_headers))
        .layer(Extension(Arc::new(Sessions::default())))
        .layer(Extension(Arc::new(audit::Cache::default())))
}

fn page(code: StatusCode, m: Markup) -> Response {
    (code, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], m.into_string()).into_response()
}

fn layout(title: &str, who: Option<&Signed>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · holdfast vault" }
                link rel="stylesheet" href="/console/console.css";
            }
            body {
                header.top {
                    div.brand { "holdfast " strong { "vault" } span.domain { " · backup console: clusters, incidents, drills, proposals, audit" } }
                    @if let Some(w) = who {
                        nav.pages { a href="/console/clusters" { "Clusters" } " " a id="nav-drills" href="/console/drills" { "Drills" } " " a id="nav-proposals" href="/console/proposals" { "Proposals" } " " a id="nav-audit" href="/console/audit" { "Audit" } }
                        form.logout method="post" action="/console/logout" {
                            input type="hidden" name="csrf" value=(w.session.csrf);
                            span { "token " strong id="whoami" { (w.label) } " (" span id="scope" { (w.scope.as_str()) } ")" }
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

fn refused(code: StatusCode, text: &str) -> Response {
    page(
        code,
        layout(
            "Refused",
            None,
            html! { section.card { h1 { "Refused" } p id="refused" { (text) } p { a href="/console/clusters" { "Back" } } } },
        ),
    )
}

#[derive(serde::Deserialize)]
struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    token: String,
}

fn login_form(error: Option<&str>) -> Response {
    let (csrf, csrf_cookie) = login_csrf(LOGIN_COOKIE, LOGIN_FORM_SECS);
    let body = layout(
        "Sign in",
        None,
        html! {
            section.card.narrow {
                h1 { "Sign in" }
                p.muted { "With a vault token: " code { "read" } " shows the pages, " code { "admin" } " also starts drills." }
                @if let Some(e) = error { p.flash.bad id="error" { (e) } }
                form id="login" method="post" action="/console/login" {
                    input type="hidden" name="csrf" value=(csrf);
                    label { "Token" input id="token" name="token" type="password" autocomplete="off" required; }
                    button id="signin" type="submit" { "Sign in" }
                }
            }
        },
    );
    let code = if error.is_some() { StatusCode::UNAUTHORIZED } else { StatusCode::OK };
    (code, [csrf_cookie], page(code, body)).into_response()
}

async fn login_page() -> Response {
    login_form(None)
}

async fn login(
    State(s): State<Arc<Shared>>,
    Extension(sessions): Console,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    if !login_post_ok(&headers, LOGIN_COOKIE, &f.csrf) {
        return refused(
            StatusCode::FORBIDDEN,
            "This sign-in form expired or did not come from this console.",
        );
    }
    let mut auth = HeaderMap::new();
    let Ok(v) = HeaderValue::from_str(&format!("Bearer {}", f.token.trim())) else {
        return login_form(Some("That is not a vault token."));
    };
    auth.insert(header::AUTHORIZATION, v);
    if let Err(e) = s.authorize(&auth, &[Scope::Read, Scope::Admin], "signing in to the console").await {
        tracing::warn!(error = %e.message, "console sign-in refused");
        return login_form(Some(
            "Unknown, revoked or wrong-scope token (the console takes read or admin tokens).",
        ));
    }
    let ttl = s.config.console_session.as_secs();
    let id = sessions.create(f.token.trim().to_string(), ttl, now());
    signed_in_redirect("/console/clusters", SESSION_COOKIE, &id, ttl, LOGIN_COOKIE)
}

#[derive(serde::Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(s): State<Arc<Shared>>,
    Extension(sessions): Console,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    let w = match signed_in(&s, &sessions, &headers, &[Scope::Read, Scope::Admin], "signing out").await {
        Ok(w) => w,
        Err(r) => return r,
    };
    if !post_ok(&w.session.csrf, &f.csrf, &headers) {
        return refused(StatusCode::FORBIDDEN, "Missing or wrong CSRF token: reload the page.");
    }
    sessions.end(&w.id);
    signed_out_redirect("/console/login", SESSION_COOKIE)
}

fn lag(c: &vault_api::status::ClusterStatus) -> String {
    match (c.lag_bytes, c.lag_seconds) {
        (Some(b), Some(s)) => format!("{b} bytes, {s:.1} s"),
        (Some(b), None) => format!("{b} bytes"),
        _ => "unknown".into(),
    }
}

async fn clusters_page(
    State(s): State<Arc<Shared>>,
    Extension(sessions): Console,
    headers: HeaderMap,
) -> Response {
    let w = match signed_in(&s, &sessions, &headers, &[Scope::Read, Scope::Admin], "reading status").await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let clusters = s.collector.get().map(|c| c.status()).unwrap_or_default();
    let drills = crate::drill::all_status(&s).await;
    let body = html! {
        h1 { "Protected clusters" }
        @if clusters.is_empty() { p.muted { "This vault protects no cluster ([[cluster]] in vault.toml)." } }
        @for c in &clusters {
            @let drill = drills.iter().find(|d| d.cluster == c.name);
            article.card.cluster id={ "cluster-" (c.name) } {
                h2 { a href={ "/console/clusters/" (c.name) } { (c.name) } " "
                    span.(if c.connected { "state good" } else { "state bad" }) { @if c.connected { "streaming" } @else { "not connected" } } }
                table.kv {
                    tr { th { "durable LSN" } td { (c.durable_lsn.map(|l| l.to_string()).unwrap_or_default()) } }
                    tr { th { "lag" } td { (lag(c)) } }
                    tr { th { "restorable" } td {
                        @if c.windows.is_empty() { "nothing yet" }
                        @for i in &c.windows { div { (i.window.earliest_time) " → " (i.window.latest_time) " (timeline " (i.timeline) ")" } }
                    } }
                    tr { th { "last backup" } td { @if let Some(b) = &c.last_backup { (b.finished) " (" (b.id) ")" } @else { "none" } } }
                    tr { th { "last drill" } td {
                        @match drill.and_then(|d| d.last.as_ref()) {
                            Some(l) => { (if l.ok { "passed" } else { "FAILED" }) ", " (l.started_at)
                                @if let Some(rto) = l.rto_seconds { ", RTO " (format!("{rto:.0}")) " s" } }
                            None => { "none" }
                        }
                        @if drill.is_some_and(|d| d.overdue) { strong.bad { " overdue" } }
                    } }
                    tr { th { "incidents" } td { a.incidents href={ "/console/clusters/" (c.name) } { (c.incidents.len()) } } }
                }
            }
        }
    };
    page(StatusCode::OK, layout("Clusters", Some(&w), body))
}

/// Restore drills: each cluster's schedule (next due, overdue, running) and every stored
/// report, newest first, with whether its signature verifies against the vault's drill-report
/// key (`SignedDrillReport::verify`, as `holdfast drill list` does); 100 a page.
async fn drills_page(
    State(s): State<Arc<Shared>>,
    Extension(sessions): Console,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<PageQuery>,
) -> Response {
    let w = match signed_in(&s, &sessions, &headers, &[Scope::Read, Scope::Admin], "listing restore drills")
        .await
    {
        Ok(w) => w,
        Err(r) => return r,
    };
    let status = crate::drill::all_status(&s).await;
    let key = s.drills.public_key();
    let entries = s.state.read().await.drills.clone();
    let pages = entries.len().div_ceil(PAGE).max(1);
    let pg = q.page.min(pages - 1);
    let shown: Vec<_> = entries.iter().rev().skip(pg * PAGE).take(PAGE).collect();
    let body = html! {
        h1 { "Restore drills" }
        @if status.is_empty() { p.muted { "No cluster has drills ([[drill]] in vault.toml, or an admin starts one)." } }
        @if !status.is_empty() {
            table.list id="schedule" {
                tr { th { "cluster" } th { "every" } th { "next due" } th { "state" } th { "last" } th { "passed / run" } }
                @for d in &status {
                    tr id={ "schedule-" (d.cluster) } {
                        td { (d.cluster) }
                        td { (d.every_seconds.map(|e| format!("{e} s")).unwrap_or_else(|| "on demand".into())) }
                        td { (d.next_due.map(|t| t.to_string()).unwrap_or_else(|| "-".into())) }
                        td.state { @if d.overdue { strong.bad { "OVERDUE" } } @else if let Some(r) = &d.running { "running: " (r.phase) } @else { "ok" } }
                        td { @if let Some(l) = &d.last { (if l.ok { "passed" } else { "FAILED" }) ", " (l.started_at)
                            @if let Some(rto) = l.rto_seconds { ", RTO " (format!("{rto:.0}")) " s" } } @else { "none" } }
                        td { (d.total - d.failed) " / " (d.total) }
                    }
                }
            }
        }
        h2 { "Reports " span.count id="reports" { (entries.len()) } }
        p.muted { "Signed by the vault's drill-report key " code { (key.get(..16).unwrap_or(&key)) "…" } "." }
        table.list id="drill-reports" {
            tr { th { "started" } th { "cluster" } th { "result" } th { "RTO" } th { "target" } th { "signature" } }
            @for e in &shown {
                @match e.signed.verify(&key) {
                    Ok(r) => tr.report id={ "drill-" (r.id) } {
                        td { (r.started_at) } td { (r.cluster) }
                        td { (if r.ok { "passed" } else { "FAILED" }) ": " (r.verdict) }
                        td { (r.rto_seconds.map(|x| format!("{x:.1} s")).unwrap_or_default()) }
                        td { code { (r.target) } }
                        td { span.good { "verified" } }
                    },
                    Err(err) => tr.report.forged {
                        td { (e.written_at) } td { "?" } td { "not a report the vault signed" } td {} td {}
                        td { strong.bad { "REJECTED: " (err.to_string()) } }
                    },
                }
            }
        }
        @if pages > 1 {
            p id="pages" {
                @if pg > 0 { a href={ "/console/drills?page=" (pg - 1) } { "← newer" } " " }
                "page " (pg + 1) " of " (pages)
                @if pg + 1 < pages { " " a href={ "/console/drills?page=" (pg + 1) } { "older →" } }
            }
        }
    };
    page(StatusCode::OK, layout("Drills", Some(&w), body))
}

/// Deletion proposals, newest first: what each would delete (counts by kind, backups, WAL,
/// bytes — the same effects `vault sign` shows), the keyholders whose signatures verified of the
/// threshold, the veto, and the waiting period by the vault's clock with the time left.
async fn proposals_page(
    State(s): State<Arc<Shared>>,
    Extension(sessions): Console,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<PageQuery>,
) -> Response {
    let w = match signed_in(&s, &sessions, &headers, &[Scope::Read, Scope::Admin], "reading proposals").await
    {
        Ok(w) => w,
        Err(r) => return r,
    };
    let mut views: Vec<_> = {
        let state = s.state.read().await;
        state.proposals.values().map(|p| p.view(s.config.quorum.threshold)).collect()
    };
    views.sort_by_key(|v| std::cmp::Reverse(v.statement.proposed_at));
    let pages = views.len().div_ceil(PAGE).max(1);
    let pg = q.page.min(pages - 1);
    let now = s.clock.now().as_secs();
    let mut shown = Vec::new();
    for mut v in views.into_iter().skip(pg * PAGE).take(PAGE) {
        v.effects = super::effects(&s, &v.statement.objects).await.ok();
        shown.push(v);
    }
    let body = html! {
        h1 { "Deletion proposals " span.count id="proposals" { (shown.len()) } }
        p.muted { "Nothing is deleted early without " (s.config.quorum.threshold) " keyholder signature(s) and the waiting period; any keyholder may veto." }
        @if shown.is_empty() { p.muted id="no-proposals" { "No proposal." } }
        @for v in &shown {
            article.card.proposal id={ "proposal-" (v.id) } {
                header { span.kind { (format!("{:?}", v.status).to_lowercase()) } " " code { (v.id) }
                    span.muted { " · proposed " (v.statement.proposed_at) } }
                p { "Reason: " em { (v.statement.reason) } }
                table.kv {
                    tr { th { "would delete" } td {
                        (v.statement.objects.len()) " object(s)"
                        @if let Some(e) = &v.effects {
                            ", " (e.bytes) " bytes"
                            @for (k, n) in &e.objects_by_kind { " · " (n) " " (k) }
                            @for b in &e.backups { div { "backup " code { (b.id) } " (" (b.label) ", " (b.started) "): its " (b.how) } }
                            @for x in &e.wal { div { "WAL of " (x.cluster) ", timeline " (x.timeline) } }
                        }
                    } }
                    tr { th { "signatures" } td.signatures { (v.signed_by.len()) " of " (v.threshold)
                        @for k in &v.signed_by { div { code { (k.get(..16).unwrap_or(k)) "…" } } } } }
                    tr { th { "veto" } td { @if let Some(k) = &v.vetoed_by { strong.bad { "vetoed by " code { (k.get(..16).unwrap_or(k)) "…" } } } @else { "none" } } }
                    tr { th { "waiting period" } td.left {
                        "until " (v.statement.not_before)
                        @let left = v.statement.not_before.as_secs() - now;
                        @if v.executed_at.is_some() { " · executed" }
                        @else if left > 0 { " · " strong { (left / 3600) "h " ((left % 3600) / 60) "m left" } }
                        @else { " · over" }
                    } }
                }
            }
        }
        @if pages > 1 {
            p id="pages" {
                @if pg > 0 { a href={ "/console/proposals?page=" (pg - 1) } { "← newer" } " " }
                "page " (pg + 1) " of " (pages)
                @if pg + 1 < pages { " " a href={ "/console/proposals?page=" (pg + 1) } { "older →" } }
            }
        }
    };
    page(StatusCode::OK, layout("Proposals", Some(&w), body))
}

/// Rows per page of a long list.
const PAGE: usize = 100;
/// Incidents per page of a cluster's page (each is a card with its audit records).
const INCIDENTS_PAGE: usize = 20;

#[derive(serde::Deserialize, Default)]
struct PageQuery {
    #[serde(default)]
    page: usize,
}

/// The command that restores to just before incident `n` of `cluster`.
pub fn restore_command(cluster: &str, n: usize) -> String {
    // `--promote`: paused before a DROP's or TRUNCATE's commit, a hot standby still holds the
    // lock the transaction's replayed records took, and reading the table would wait forever.
    format!(
        "holdfast restore --cluster {cluster} --before-incident {n} --target-dir restore-{cluster}-{n} --start --promote"
    )
}

fn incident_view(cluster: &str, n: usize, i: &Incident) -> Markup {
    html! {
        article.card.incident id={ "incident-" (n) } {
            header { span.kind { (i.kind) } " " strong { "#" (n) } span.muted { " · " (i.detected_at) } }
            p.message { (i.message) }
            @if !i.objects.is_empty() {
                div.scroll { table.list.objects {
                    tr { th { "what" } th { "rows" } th { "size" } th { "change" } }
                    @for o in &i.objects {
                        tr {
                            td.name { (o.database)
                                @if let Some(sc) = &o.schema { "." (sc) }
                                @if let Some(t) = &o.table { "." (t) } }
                            td { (o.rows.map(|r| r.to_string()).unwrap_or_default()) }
                            td { (o.bytes.map(|b| format!("{} KiB", b / 1024)).unwrap_or_default()) }
                            td { @if o.dropped { "dropped or emptied" }
                                @if let Some(d) = o.deleted { (d) " rows deleted" }
                                @if let Some(u) = o.updated { (u) " rows updated" } }
                        }
                    }
                } }
            }
            @if let Some(x) = i.xid { p { "Transaction " code { (x) } @if let Some(l) = i.lsn { " at " code { (l) } } } }
            @match &i.restore_target {
                Some(t) => {
                    p { "Restore target: just before "
                        @match t { IncidentTarget::BeforeXid { xid } => { "transaction " (xid) }
                                   IncidentTarget::BeforeLsn { lsn } => { "WAL position " (lsn) } } }
                    p.muted { "To bring it back into a new data directory, opened for writes (with a read token):" }
                    pre.command { code { (restore_command(cluster, n)) } }
                }
                None => { p.muted { "No destructive transaction to restore to just before: restore with --time or --lsn." } }
            }
        }
    }
}

/// Where incident `n` (1-based, of `total`) is listed: its card's anchor, on the page of the
/// cluster's incidents that shows it (newest first, [`INCIDENTS_PAGE`] a page).
fn incident_href(cluster: &str, n: usize, total: usize, shown_page: usize) -> String {
    let pg = total.saturating_sub(n) / INCIDENTS_PAGE;
    if pg == shown_page {
        format!("#incident-{n}")
    } else {
        format!("/console/clusters/{cluster}?page={pg}#incident-{n}")
    }
}

/// The restorable window as one horizontal bar from the earliest restorable time (or the
/// first backup or incident, if older) to `now`: restorable intervals filled, gaps left empty,
/// base backups as ticks, incidents as red marks linking to their cards. Inline SVG scaled to
/// the page's width (no script; `non-scaling-stroke` keeps ticks thin on a phone); the times
/// are in each element's `<title>` and in the text list the page keeps under it.
fn timeline(
    c: &vault_api::status::ClusterStatus,
    backups: &[store::BackupRecord],
    incidents: &[Incident],
    now: i64,
    shown_page: usize,
) -> Markup {
    let times = c
        .windows
        .iter()
        .flat_map(|i| [i.window.earliest_time.as_secs(), i.window.latest_time.as_secs()])
        .chain(backups.iter().map(|b| b.started.as_secs()))
        .chain(incidents.iter().map(|i| i.detected_at.as_secs()));
    let Some(start) = times.clone().min() else {
        return html! { p.muted id="timeline" { "Nothing restorable yet: no base backup." } };
    };
    let end = times.max().unwrap_or(now).max(now).max(start + 1);
    // Positions in a 1000-wide view box, clamped so that a mark at "now" stays visible.
    let x = |t: i64| ((t - start) as f64 * 1000.0 / (end - start) as f64).clamp(0.0, 1000.0);
    let total = incidents.len();
    html! {
        figure.timeline id="timeline" {
            svg viewBox="0 0 1000 40" preserveAspectRatio="none" role="img"
                aria-label={ "Restorable window of " (c.name) " from " (store::Timestamp(start)) " to now" } {
                rect.gap x="0" y="8" width="1000" height="24" { title { "not restorable" } }
                @for i in &c.windows {
                    @let (a, b) = (x(i.window.earliest_time.as_secs()), x(i.window.latest_time.as_secs()));
                    rect.interval x=(format!("{a:.2}")) y="8" width=(format!("{:.2}", (b - a).max(4.0))) height="24" {
                        title { "restorable " (i.window.earliest_time) " → " (i.window.latest_time) " (timeline " (i.timeline) ")" }
                    }
                }
                @for b in backups {
                    @let bx = format!("{:.2}", x(b.started.as_secs()));
                    line.backup x1=(bx) x2=(bx) y1="4" y2="36" vector-effect="non-scaling-stroke" {
                        title { "base backup " (b.id) ", " (b.started) " → " (b.finished) }
                    }
                }
                @for (k, i) in incidents.iter().enumerate() {
                    @let ix = format!("{:.2}", x(i.detected_at.as_secs()));
                    a.incident-mark href=(incident_href(&c.name, k + 1, total, shown_page)) {
                        title { "incident #" (k + 1) " " (i.kind) " at " (i.detected_at) }
                        line x1=(ix) x2=(ix) y1="0" y2="40" vector-effect="non-scaling-stroke" {}
                    }
                }
            }
            figcaption {
                div.axis { span { (store::Timestamp(start)) } span { "now (" (store::Timestamp(now)) ")" } }
                div.legend {
                    span { i.sw.interval {} "restorable" } " "
                    span { i.sw.gap {} "not restorable" } " "
                    span { i.sw.backup {} "base backup" } " "
                    span { i.sw.incident {} "incident (links to it)" }
                }
            }
        }
    }
}

async fn cluster_page(
    State(s): State<Arc<Shared>>,
    Extension(sessions): Console,
    headers: HeaderMap,
    Path(name): Path<String>,
    axum::extract::Query(q): axum::extract::Query<PageQuery>,
    Extension(cache): Extension<Arc<audit::Cache>>,
) -> Response {
    let w = match signed_in(&s, &sessions, &headers, &[Scope::Read, Scope::Admin], "reading incidents").await
    {
        Ok(w) => w,
        Err(r) => return r,
    };
    let Some(rt) = s.collector.get().and_then(|c| c.cluster(&name).ok()) else {
        return refused(StatusCode::NOT_FOUND, "No such cluster in this vault.");
    };
    let c = rt.status();
    let incidents = rt.incidents();
    let acks = s.state.read().await.incident_acks.clone();
    // The gates' audit records, for each incident's "who ran what" (read once per page).
    let shipped = audit::Shipped::load(&s, &cache)
        .await
        .inspect_err(|e| tracing::error!(error = %e, "console: reading the audit batches"))
        .ok();
    let backups: Vec<_> = match s.repo.backups().await {
        Ok(all) => all.into_iter().filter(|b| b.cluster.as_deref() == Some(c.name.as_str())).collect(),
        Err(e) => {
            tracing::error!(error = %e, "console: listing backups for the timeline");
            Vec::new()
        }
    };
    let pages = incidents.len().div_ceil(INCIDENTS_PAGE).max(1);
    let pg = q.page.min(pages - 1);
    let body = html! {
        p { a href="/console/clusters" { "← clusters" } }
        h1 { (c.name) " " span.(if c.connected { "state good" } else { "state bad" }) { @if c.connected { "streaming" } @else { "not connected" } } }
        p { "Durable to " code { (c.durable_lsn.map(|l| l.to_string()).unwrap_or_default()) } ", lag " (lag(&c)) "." }
        h2 { "Restorable window" }
        (timeline(&c, &backups, &incidents, s.clock.now().as_secs(), pg))
        ul.windows id="windows" {
            @if c.windows.is_empty() { li { "nothing restorable yet" } }
            @for i in &c.windows { li { (i.window.earliest_time) " → " (i.window.latest_time) " (timeline " (i.timeline) ", " (i.backups.len()) " base backup(s))" } }
        }
        @if w.scope == Scope::Admin {
            form.drill method="post" action={ "/console/clusters/" (c.name) "/drill" } {
                input type="hidden" name="csrf" value=(w.session.csrf);
                button id="start-drill" type="submit" { "Start a restore drill now" }
            }
        }
        h2 { "Incidents " span.count id="incident-count" { (incidents.len()) } }
        @if incidents.is_empty() { p.muted { "None." } }
        @for (k, i) in incidents.iter().enumerate().rev().skip(pg * INCIDENTS_PAGE).take(INCIDENTS_PAGE) {
            (incident_view(&c.name, k + 1, i))
            (audit::around(shipped.as_deref(), i.detected_at.as_secs()))
            @let ack = acks.iter().find(|a| a.cluster == c.name && a.number == k + 1 && a.detected_at == i.detected_at);
            @if let Some(a) = ack {
                p.ack id={ "ack-" (k + 1) } { "Acknowledged by " strong { (a.by) } " at " (a.at.map(|t| t.to_string()).unwrap_or_default()) "." }
            } @else if w.scope == Scope::Admin {
                form.ack method="post" action={ "/console/clusters/" (c.name) "/incidents/" (k + 1) "/ack" } {
                    input type="hidden" name="csrf" value=(w.session.csrf);
                    button id={ "ack-button-" (k + 1) } type="submit" { "Acknowledge #" (k + 1) }
                }
            }
        }
        @if pages > 1 {
            p id="pages" {
                @if pg > 0 { a id="prev-page" href={ "/console/clusters/" (c.name) "?page=" (pg - 1) } { "← newer" } " " }
                "page " (pg + 1) " of " (pages)
                @if pg + 1 < pages { " " a id="next-page" href={ "/console/clusters/" (c.name) "?page=" (pg + 1) } { "older →" } }
            }
        }
    };
    page(StatusCode::OK, layout(&name, Some(&w), body))
}

/// Records that an admin acknowledged incident `n`: an `incident.ack` catalog record written
/// by the vault itself (the incident is never changed or removed; the kind is not appendable
/// through the API). Acknowledging twice is refused.
async fn acknowledge(
    State(s): State<Arc<Shared>>,
    Extension(sessions): Console,
    headers: HeaderMap,
    Path((name, n)): Path<(String, usize)>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let w = match signed_in(&s, &sessions, &headers, &[Scope::Admin], "acknowledging an incident").await {
        Ok(w) => w,
        Err(r) => return r,
    };
    if !post_ok(&w.session.csrf, &f.csrf, &headers) {
        return refused(StatusCode::FORBIDDEN, "Missing or wrong CSRF token: reload the page.");
    }
    let Some(rt) = s.collector.get().and_then(|c| c.cluster(&name).ok()) else {
        return refused(StatusCode::NOT_FOUND, "No such cluster in this vault.");
    };
    let Some(i) = n.checked_sub(1).and_then(|k| rt.incidents().into_iter().nth(k)) else {
        return refused(StatusCode::NOT_FOUND, "No such incident.");
    };
    let mut state = s.state.write().await;
    if state
        .incident_acks
        .iter()
        .any(|a| a.cluster == name && a.number == n && a.detected_at == i.detected_at)
    {
        return refused(StatusCode::CONFLICT, "That incident is already acknowledged.");
    }
    let ack = crate::state::IncidentAck {
        cluster: name.clone(),
        number: n,
        detected_at: i.detected_at,
        by: w.label.clone(),
        at: None,
    };
    let body = serde_json::to_value(&ack).unwrap_or_default();
    if let Err(e) = s.write_record(&mut state, crate::state::kinds::INCIDENT_ACK, body).await {
        tracing::error!(error = %e, "recording an incident acknowledgement");
        return refused(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("Could not record the acknowledgement: {e}"),
        );
    }
    Redirect::to(&format!("/console/clusters/{name}")).into_response()
}

async fn start_drill(
    State(s): State<Arc<Shared>>,
    Extension(sessions): Console,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let w = match signed_in(&s, &sessions, &headers, &[Scope::Admin], "starting a restore drill").await {
        Ok(w) => w,
        Err(r) => return r,
    };
    if !post_ok(&w.session.csrf, &f.csrf, &headers) {
        return refused(StatusCode::FORBIDDEN, "Missing or wrong CSRF token: reload the page.");
    }
    match crate::drill::start(&s, &name, format!("on demand from the console ({})", w.label)) {
        Ok(_) => Redirect::to(&format!("/console/clusters/{name}")).into_response(),
        Err(e) => refused(StatusCode::CONFLICT, &e.to_string()),
    }
}

const CSS: &str = include_str!("console.css");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_end_after_their_time_and_on_sign_out() {
        let s = Sessions::default();
        let id = s.create("hft_x".into(), 900, 1000);
        assert_eq!(s.get(&id, 1000 + 900 - 1).map(|x| x.token), Some("hft_x".into()));
        assert!(s.get(&id, 1000 + 900).is_none());
        let id = s.create("hft_y".into(), 900, 1000);
        s.end(&id);
        assert!(s.get(&id, 1001).is_none());
        assert!(s.get("nope", 1001).is_none());
    }

    #[test]
    fn the_timeline_draws_intervals_gaps_backups_and_linked_incidents() {
        let w = |a: &str, b: &str| {
            serde_json::json!({"earliest_lsn": "0/2000028", "earliest_time": a, "latest_lsn": "0/3000000",
                "latest_time": b, "timeline": 1, "backups": ["b1"]})
        };
        let windows = serde_json::from_value(serde_json::json!([
            w("2026-12-04T10:00:00Z", "2026-12-04T11:00:00Z"),
            w("2026-12-04T12:00:00Z", "2026-12-04T13:00:00Z")
        ]))
        .unwrap();
        let c = vault_api::status::ClusterStatus { name: "main".into(), windows, ..Default::default() };
        let backup: store::BackupRecord = serde_json::from_value(serde_json::json!({
            "id": "b1", "label": "x", "cluster": "main", "started": "2026-12-04T10:00:00Z",
            "finished": "2026-12-04T10:00:00Z", "retain_until": "2027-01-01T00:00:00Z", "tree": [],
            "files": 1, "bytes": 1, "stored_bytes": 1,
        }))
        .unwrap();
        let incident = |at: &str| -> Incident {
            serde_json::from_value(serde_json::json!({
                "cluster": "main", "kind": "<script>x</script>", "detected_at": at, "message": "m",
            }))
            .unwrap()
        };
        let incidents = vec![incident("2026-12-04T10:30:00Z"), incident("2026-12-04T12:30:00Z")];
        let now = "2026-12-04T14:00:00Z".parse::<store::Timestamp>().unwrap().as_secs();
        let html = timeline(&c, &[backup], &incidents, now, 0).into_string();
        assert_eq!(html.matches("<rect class=\"interval\"").count(), 2, "{html}");
        assert_eq!(html.matches("<line class=\"backup\"").count(), 1, "{html}");
        assert!(html.contains("<rect class=\"gap\""), "{html}");
        assert!(html.contains("href=\"#incident-1\"") && html.contains("href=\"#incident-2\""), "{html}");
        assert!(html.contains("incident #2 &lt;script&gt;"), "escaped: {html}");
        assert!(!html.contains("<script>"), "{html}");
        // The second window starts 2 h into the 4 h from the first backup to now: x = 500.
        assert!(html.contains("x=\"500.00\""), "{html}");
        // An incident on another page of the list links to that page.
        assert_eq!(incident_href("main", 1, 45, 0), "/console/clusters/main?page=2#incident-1");
        assert_eq!(incident_href("main", 45, 45, 0), "#incident-45");
        let empty = vault_api::status::ClusterStatus { name: "x".into(), ..Default::default() };
        assert!(timeline(&empty, &[], &[], now, 0).into_string().contains("Nothing restorable yet"));
    }

    #[test]
    fn incidents_are_escaped_and_carry_the_command() {
        let i: Incident = serde_json::from_value(serde_json::json!({
            "cluster": "main", "kind": "relations_dropped", "detected_at": "2026-12-04T10:00:00Z",
            "message": "<script>x</script> dropped", "lsn": null, "xid": 740,
            "restore_target": {"kind": "before_xid", "xid": 740},
            "objects": [{"database": "shop", "schema": "public", "table": "<b>orders</b>", "dropped": true}],
        }))
        .unwrap();
        let html = incident_view("main", 3, &i).into_string();
        assert!(!html.contains("<script>") && !html.contains("<b>"), "{html}");
        assert!(html.contains("shop.public.&lt;b&gt;orders&lt;/b&gt;"), "{html}");
        assert!(html.contains("holdfast restore --cluster main --before-incident 3"), "{html}");
    }
}
