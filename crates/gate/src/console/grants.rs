//! The console's grants page: what is active and until when (just-in-time grants and
//! break-glass), the grant requests waiting for a second person, and the two forms — request a
//! grant of a role one's `may_request` names, or break the glass — each with a fresh TOTP code
//! (once per step, as every console decision) and a reason. Both go through the control API's
//! own rules (`control::open_grant`, `control::open_break_glass`: the role's `max_for`, at
//! most 4h of break-glass, audited — break-glass refused if the audit log cannot take it — and
//! alerted); a grant is approved on the approvals page like any request, by another approver,
//! never by the person who asked.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Form, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serve::web::{ct_eq, same_origin};

use super::{ago, layout, maud_html, refused, signed_in, to_login};
use crate::Shared;
use crate::approvals::{Ask, State as ReqState, unix_now};

/// A unix time as RFC 3339 (UTC).
fn at(secs: u64) -> String {
    vault_types::Timestamp(i64::try_from(secs).unwrap_or(i64::MAX)).to_string()
}

pub(super) async fn page(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let Some(w) = signed_in(&s, &headers) else { return to_login() };
    let now = unix_now();
    let grants = s.approvals.grants();
    let waiting: Vec<_> = s
        .approvals
        .list()
        .into_iter()
        .filter(|r| r.state == ReqState::Pending && matches!(r.ask, Ask::Grant { .. }))
        .collect();
    let roles: Vec<_> =
        s.config.grant_roles.iter().filter(|g| w.person.may_request.contains(&g.name)).collect();
    let mine_glass = grants.iter().find(|g| g.break_glass && g.person == w.person.name);
    let body = html! {
        @if let Some(f) = &w.session.flash {
            p.flash.(if f.ok { "good" } else { "bad" }) id="flash" { (f.text) }
        }
        h1 { "Grants and break-glass " span.count id="active-count" { (grants.len()) } }
        @if grants.is_empty() { p.muted id="none-active" { "Nothing is active." } } @else {
            div.scroll {
                table.list id="active" {
                    tr { th { "person" } th { "role" } th { "until" } th { "ends in" } th { "approved by" } th { "reason" } }
                    @for g in &grants {
                        tr.(if g.break_glass { "glass" } else { "" }) id={ "grant-" (g.id) } {
                            td { (g.person) } td { (g.role) }
                            td.until { (at(g.until)) } td { (ago(g.until.saturating_sub(now))) }
                            td { @if g.break_glass { "nobody (alerted)" } @else { (g.approved_by) } }
                            td { (g.reason.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
            p.muted { "Under a grant, connect as " code { "name@role" } "; its sessions end when it does." }
        }
        h2 { "Waiting for a second person " span.count id="waiting-count" { (waiting.len()) } }
        @if waiting.is_empty() { p.muted { "No grant request is waiting." } } @else {
            table.list id="waiting" {
                tr { th { "id" } th { "person" } th { "role" } th { "for" } th { "reason" } }
                @for r in &waiting {
                    tr id={ "wait-" (r.id) } {
                        td { code { (r.id) } } td { (r.person) }
                        @if let Ask::Grant { role, secs } = &r.ask { td { (role) } td { (ago(*secs)) } } @else { td {} td {} }
                        td { (r.reason.as_deref().unwrap_or("")) }
                    }
                }
            }
            p { "Another approver decides them on " a href="/console/approvals" { "the approvals page" } " (never the person who asked)." }
        }
        h2 { "Request a grant" }
        @if roles.is_empty() {
            p.muted id="no-roles" { "You may request no role (may_request in gate.toml)." }
        } @else {
            form.card.decide id="request-grant" method="post" action="/console/grants/request" {
                input type="hidden" name="csrf" value=(w.session.csrf);
                label { "Role" select id="g-role" name="role" {
                    @for r in &roles { option value=(r.name) { (r.name) " (at most " (ago(r.max_for.as_secs())) ")" } }
                } }
                label { "For (e.g. 30m, 1h)" input id="g-for" name="for" required maxlength="10"; }
                label { "One-time code" input id="g-totp" name="totp" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9]{6}" maxlength="6" required; }
                label { "Reason (recorded, shown to the approver)" input id="g-reason" name="reason" required minlength="3" maxlength="500"; }
                div.buttons { button id="g-submit" type="submit" { "Request" } }
            }
        }
        h2 { "Break glass" }
        @if let Some(g) = mine_glass {
            p.flash.bad id="glass-active" { "Your break-glass is active until " (at(g.until)) "." }
        }
        form.card.decide id="break-glass" method="post" action="/console/grants/break-glass" {
            p.muted.wide { "An emergency: for the time given, your destructive statements run without a second person. "
                "It is audited and alerted at once, and so is every statement under it. At most 4h." }
            input type="hidden" name="csrf" value=(w.session.csrf);
            label { "For (e.g. 15m)" input id="bg-for" name="for" required maxlength="10"; }
            label { "One-time code" input id="bg-totp" name="totp" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9]{6}" maxlength="6" required; }
            label { "Reason (at least 10 characters)" input id="bg-reason" name="reason" required minlength="10" maxlength="500"; }
            div.buttons { button.reject id="bg-submit" type="submit" { "Break the glass" } }
        }
    };
    maud_html(layout("Grants", Some(&w), body)).into_response()
}

#[derive(serde::Deserialize)]
pub(super) struct AskForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    role: String,
    #[serde(default, rename = "for")]
    for_: String,
    #[serde(default)]
    totp: String,
    #[serde(default)]
    reason: String,
}

/// `POST /console/grants/request` and `/console/grants/break-glass`.
async fn ask(s: Arc<Shared>, peer: SocketAddr, headers: HeaderMap, f: AskForm, glass: bool) -> Response {
    let Some(w) = signed_in(&s, &headers) else { return to_login() };
    if !(ct_eq(&w.session.csrf, &f.csrf) && same_origin(&headers)) {
        return refused(StatusCode::FORBIDDEN, "Missing or wrong CSRF token: reload the page and try again.");
    }
    let back = |ok: bool, text: String| {
        s.console.set_flash(&w.token, ok, text);
        Redirect::to("/console/grants").into_response()
    };
    if !s.console.use_totp(&w.person, &f.totp, unix_now()) {
        s.metrics.auth_failures.inc();
        return back(
            false,
            "Wrong or already used one-time code: nothing was asked. Wait for the next code.".into(),
        );
    }
    let client = peer.to_string();
    if glass {
        match crate::control::open_break_glass(&s, &w.person, Some(&client), &f.for_, &f.reason).await {
            Ok(g) => back(true, format!("Break-glass active until {} (alerted).", at(g.until))),
            Err((_, e)) => back(false, format!("No break-glass: {e}.")),
        }
    } else {
        match crate::control::open_grant(&s, &w.person, Some(&client), &f.role, &f.for_, &f.reason).await {
            Ok(r) => {
                back(true, format!("Requested {}: a grant of {} waits for another approver.", r.id, f.role))
            }
            Err((_, e)) => back(false, format!("Not requested: {e}.")),
        }
    }
}

pub(super) async fn request(
    State(s): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<AskForm>,
) -> Response {
    ask(s, peer, headers, f, false).await
}

pub(super) async fn break_glass(
    State(s): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<AskForm>,
) -> Response {
    ask(s, peer, headers, f, true).await
}
