//! The HTTP API: routes, authentication by token scope, and every handler. The state they
//! share and the operations on it that are not HTTP are in [`crate::service`].
//!
//! Rules every handler follows: the vault's clock decides all times (client headers and body
//! fields are never read for that); names are parsed strictly before any storage call; every
//! error is JSON `{"error": "..."}` saying what failed, why, and what to do.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use bytes::Bytes;
use ed25519_dalek::Verifier;
use store::quorum::{DELETION_PURPOSE, DeletionStatement, KeyholderSignature, QuorumError, QuorumWarrant};
use store::{ObjectKind, ObjectName, StoreError, UserFacing};
use vault_api::*;

use crate::service::{Entries, WriteRefusal};
use crate::state::{self, TokenEntry, kinds};

pub use crate::service::Shared;

mod console;

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// For a damaged chunk: the backups of the same cluster that do not use it (sent as the
    /// `x-holdfast-backups-without-damage` header, comma-separated).
    pub undamaged: Option<Vec<String>>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), undamaged: None }
    }
    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, message)
    }
    fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, message)
    }
    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
    fn unprocessable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }
    /// A failure inside the vault: the client is told what failed and an error id; the detail
    /// (which may name the vault host's paths or backend) goes to the log under that id.
    fn internal(what: &str, e: impl std::fmt::Display) -> ApiError {
        ApiError::internal_told(what, &e, None)
    }
    /// As [`ApiError::internal`], telling the client what `e` says is theirs to know.
    fn internal_user(what: &str, e: &impl UserFacing) -> ApiError {
        ApiError::internal_told(what, e, Some(e.user_message()))
    }
    fn internal_told(what: &str, e: &dyn std::fmt::Display, told: Option<String>) -> ApiError {
        let mut id = [0u8; 4];
        let _ = getrandom::getrandom(&mut id);
        let id = hex::encode(id);
        tracing::error!(error = %e, error_id = %id, "{what} failed");
        let told = told.map(|t| format!(": {t}")).unwrap_or_default();
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "{what} failed{told} (error {id} in the vault's log); nothing was changed by this request — retry, and check the vault's log if it persists"
            ),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&ErrorBody { error: self.message }).unwrap_or_default();
        let mut r =
            (self.status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body)
                .into_response();
        if let Some(ids) = self.undamaged
            && let Ok(v) = HeaderValue::from_str(&ids.join(","))
        {
            r.headers_mut().insert(vault_api::wire::UNDAMAGED_BACKUPS_HEADER, v);
        }
        r
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound(n) => ApiError::not_found(format!("object {n} is not in this vault")),
            StoreError::Name(n) => ApiError::bad_request(n.to_string()),
            StoreError::BadRange { .. } => ApiError::new(StatusCode::RANGE_NOT_SATISFIABLE, e.to_string()),
            other => ApiError::internal_user("storage", &other),
        }
    }
}

impl From<WriteRefusal> for ApiError {
    fn from(e: WriteRefusal) -> ApiError {
        let status = match e {
            WriteRefusal::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            WriteRefusal::QuotaExceeded(_) => StatusCode::INSUFFICIENT_STORAGE,
        };
        ApiError::new(status, e.message())
    }
}

impl From<store::RepoError> for ApiError {
    fn from(e: store::RepoError) -> ApiError {
        ApiError::internal_user("the repository", &e)
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn json<T: serde::Serialize>(status: StatusCode, v: &T) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

/// The router with every endpoint.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/objects", get(list_objects))
        .route("/v1/objects/{kind}/{hex}", put(put_object).get(get_object).head(head_object))
        .route("/v1/records", post(append_record).get(list_records))
        .route("/v1/backups", get(list_backups))
        .route("/v1/status", get(cluster_status))
        .route("/v1/clusters/{name}/backup", post(backup_cluster))
        .route("/v1/clusters/{name}/inventory", get(cluster_inventory))
        .route("/v1/clusters/{name}/drills", post(start_drill))
        .route("/v1/drills", get(list_drills))
        .route("/v1/clusters/{name}/incidents", get(cluster_incidents))
        .route("/v1/clusters/{name}/restore-points", get(cluster_restore_points))
        .route("/v1/clusters/{name}/wal/{file}", get(cluster_wal))
        .route("/v1/backups/{id}/entries", get(backup_entries))
        .route("/v1/backups/{id}/file", get(backup_file))
        .route("/v1/tokens", post(create_token).get(list_tokens))
        .route("/v1/tokens/{id}", axum::routing::delete(revoke_token))
        .route("/v1/retention", get(get_retention).put(put_retention))
        .route("/v1/retention/extend", post(extend_retention))
        .route("/v1/proposals", post(propose))
        .route("/v1/proposals/{id}", get(get_proposal))
        .route("/v1/proposals/{id}/signatures", post(sign_proposal))
        .route("/v1/proposals/{id}/veto", post(veto_proposal))
        .route("/v1/proposals/{id}/execute", post(execute_proposal))
        .merge(standby_routes())
        .merge(console::router())
        .fallback(fallback)
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "this endpoint does not accept that HTTP method")
        })
        .layer(axum::middleware::from_fn_with_state(shared.clone(), count_requests))
        .with_state(shared)
}

async fn count_requests(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let mut m = s.metrics.requests.lock().unwrap_or_else(|p| p.into_inner());
    *m.entry(resp.status().as_u16()).or_default() += 1;
    resp
}

impl Shared {
    /// Checks the bearer token and its scope.
    pub(crate) async fn authorize(
        &self,
        headers: &HeaderMap,
        allowed: &[Scope],
        what: &str,
    ) -> ApiResult<TokenEntry> {
        let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, m.to_string());
        let value = headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| unauthorized("missing token: send `Authorization: Bearer hft_…` (create tokens with `holdfast vault token create`)"))?;
        let text = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).ok_or_else(|| {
            unauthorized("malformed Authorization header: expected `Bearer hft_<id>_<secret>`")
        })?;
        let token: Token =
            text.parse().map_err(|_| unauthorized("malformed token: expected hft_<16 hex>_<secret>"))?;
        let known = self.state.read().await.tokens.contains_key(token.id());
        if !known {
            self.reload_tokens().await;
        }
        let state = self.state.read().await;
        let entry = state
            .authenticate(&token)
            .ok_or_else(|| unauthorized("unknown or revoked token: ask a vault admin for a new one"))?;
        if !allowed.contains(&entry.scope) {
            let needed: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
            return Err(ApiError::forbidden(format!(
                "{what} needs a token with scope {}; this token has scope {}",
                needed.join(" or "),
                entry.scope
            )));
        }
        Ok(entry.clone())
    }
}

/// Per-cluster drill gauges.
fn drill_metrics(out: &mut String, drills: &[vault_api::DrillStatus]) {
    use std::fmt::Write;
    let mut gauge = |name: &str, help: &str, value: &dyn Fn(&vault_api::DrillStatus) -> Option<f64>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for d in drills {
            if let Some(v) = value(d) {
                let _ = writeln!(out, "{name}{{cluster=\"{}\"}} {v}", d.cluster);
            }
        }
    };
    gauge("holdfast_drill_last_ok", "1 if the cluster's last restore drill passed.", &|d| {
        d.last.as_ref().map(|l| f64::from(u8::from(l.ok)))
    });
    gauge("holdfast_drill_last_success_timestamp_seconds", "When the last passing drill finished.", &|d| {
        d.last_passed_at.map(|t| t.as_secs() as f64)
    });
    gauge("holdfast_drill_last_rto_seconds", "RTO measured by the last drill.", &|d| {
        d.last.as_ref().and_then(|l| l.rto_seconds)
    });
    gauge("holdfast_drill_overdue", "1 if no drill passed within overdue_after.", &|d| {
        Some(f64::from(u8::from(d.overdue)))
    });
    gauge("holdfast_drill_running", "1 while a drill runs.", &|d| {
        Some(f64::from(u8::from(d.running.is_some())))
    });
    gauge("holdfast_drills_failed", "Failed drills stored in the catalog.", &|d| Some(d.failed as f64));
    gauge("holdfast_drills", "Drills stored in the catalog.", &|d| Some(d.total as f64));
}

async fn fallback(uri: axum::http::Uri) -> ApiError {
    // A '/' inside an object name (or an extra segment) is a bad name, not a missing endpoint.
    if uri.path().starts_with("/v1/objects/") {
        ApiError::bad_request(
            "malformed object name: expected /v1/objects/<kind>/<64 lowercase hex digits>, with no '/' inside the name",
        )
    } else {
        ApiError::not_found("no such endpoint: vault API paths are /healthz, /metrics and /v1/…")
    }
}

fn parse_name(path: Result<Path<(String, String)>, PathRejection>) -> ApiResult<ObjectName> {
    let Path((kind, hex)) = path.map_err(|e| ApiError::bad_request(format!("bad object path: {e}")))?;
    if kind.len() + hex.len() > store::name::MAX_NAME_LEN {
        return Err(ApiError::bad_request(format!(
            "object name is {} bytes long: at most {} are allowed",
            kind.len() + hex.len() + 1,
            store::name::MAX_NAME_LEN
        )));
    }
    let kind: ObjectKind =
        kind.parse().map_err(|e: store::NameError| ApiError::bad_request(e.to_string()))?;
    let id = store::ObjectId::from_hex(&hex).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(ObjectName { kind, id })
}

/// Reads a body of at most `limit` bytes; a declared or actual excess is a 413.
async fn read_body(headers: &HeaderMap, body: Body, limit: u64) -> ApiResult<Bytes> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body is larger than this vault's limit of {limit} bytes (max_body_bytes): split the upload"
            ),
        )
    };
    if let Some(len) =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
        && len > limit
    {
        return Err(too_large());
    }
    axum::body::to_bytes(body, usize::try_from(limit).unwrap_or(usize::MAX)).await.map_err(|e| {
        let msg = e.to_string();
        if msg.contains("length limit") {
            too_large()
        } else {
            ApiError::bad_request(format!("could not read the request body: {msg}"))
        }
    })
}

async fn read_json<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    limit: u64,
) -> ApiResult<T> {
    let bytes = read_body(headers, body, limit.min(1 << 20)).await?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))
}

async fn healthz(State(s): State<Arc<Shared>>) -> Response {
    json(StatusCode::OK, &Health { status: "ok".into(), repository: s.repo.id().to_string() })
}

/// `GET /metrics`: Prometheus text. Written by hand on purpose: almost every series is a gauge
/// read from the state at scrape time, which `prometheus-client` would need a custom collector
/// per family for (more code, and a new dependency tree), for the same text.
async fn metrics(State(s): State<Arc<Shared>>, headers: HeaderMap) -> ApiResult<Response> {
    use std::fmt::Write;
    s.authorize(&headers, &[Scope::Read, Scope::Admin], "reading metrics").await?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP holdfast_vault_objects Objects stored, by kind (listed at most once a minute).\n# TYPE holdfast_vault_objects gauge"
    );
    let mut bytes_lines = String::new();
    for (kind, count, bytes) in s.object_stats().await? {
        let _ = writeln!(out, "holdfast_vault_objects{{kind=\"{kind}\"}} {count}");
        let _ = writeln!(bytes_lines, "holdfast_vault_bytes{{kind=\"{kind}\"}} {bytes}");
    }
    let _ = write!(
        out,
        "# HELP holdfast_vault_bytes Bytes stored, by kind.\n# TYPE holdfast_vault_bytes gauge\n{bytes_lines}"
    );
    let _ = writeln!(
        out,
        "# HELP holdfast_vault_requests_total HTTP responses, by status.\n# TYPE holdfast_vault_requests_total counter"
    );
    for (status, n) in s.metrics.requests.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        let _ = writeln!(out, "holdfast_vault_requests_total{{status=\"{status}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP holdfast_vault_uploaded_bytes_total Pack bytes accepted.\n# TYPE holdfast_vault_uploaded_bytes_total counter\nholdfast_vault_uploaded_bytes_total {}",
        s.metrics.uploaded_bytes.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP holdfast_vault_deletion_proposals_total Early-deletion proposals made.\n# TYPE holdfast_vault_deletion_proposals_total counter\nholdfast_vault_deletion_proposals_total {}",
        s.metrics.proposals.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP holdfast_vault_alerts_total Alerts raised.\n# TYPE holdfast_vault_alerts_total counter\nholdfast_vault_alerts_total {}",
        s.metrics.alerts.load(Ordering::Relaxed)
    );
    let state = s.state.read().await;
    let pending = state.proposals.values().filter(|p| p.status() == ProposalStatus::Pending).count();
    let _ = writeln!(
        out,
        "# HELP holdfast_vault_pending_proposals Deletion proposals neither vetoed nor executed.\n# TYPE holdfast_vault_pending_proposals gauge\nholdfast_vault_pending_proposals {pending}"
    );
    if let Some((at, c)) = &state.last_check {
        let _ = writeln!(
            out,
            "# HELP holdfast_vault_last_check_ok 1 if the last `vault check` found no damage.\n# TYPE holdfast_vault_last_check_ok gauge\nholdfast_vault_last_check_ok {}\nholdfast_vault_last_check_timestamp_seconds {}\nholdfast_vault_last_check_damaged {}",
            u8::from(c.ok),
            at.as_secs(),
            c.damaged
        );
    }
    drop(state);
    if let Some(c) = s.collector.get() {
        let clusters = c.status();
        cluster_metrics(&mut out, &clusters);
        crate::window_metrics::write(&mut out, &clusters);
    }
    drill_metrics(&mut out, &crate::drill::all_status(&s).await);
    crate::store_watch::metrics(&mut out, &s.stores.status(s.store.as_ref()).await);
    crate::standby::metrics(&mut out, &s.standbys.status());
    let hooks = s.webhooks.status();
    if !hooks.is_empty() {
        let _ = writeln!(
            out,
            "# HELP holdfast_alert_deliveries_total Alerts posted to a webhook, by result (failed = given up after retries).\n# TYPE holdfast_alert_deliveries_total counter"
        );
        for h in &hooks {
            let _ = writeln!(
                out,
                "holdfast_alert_deliveries_total{{webhook=\"{}\",result=\"delivered\"}} {}",
                h.name, h.delivered
            );
            let _ = writeln!(
                out,
                "holdfast_alert_deliveries_total{{webhook=\"{}\",result=\"failed\"}} {}",
                h.name, h.failed
            );
        }
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}

/// Per-cluster capture gauges: the same figures `holdfast status` shows.
fn cluster_metrics(out: &mut String, clusters: &[capture::ClusterStatus]) {
    use std::fmt::Write;
    type Getter = fn(&capture::ClusterStatus) -> Option<f64>;
    let gauges: [(&str, &str, Getter); 13] = [
        ("connected", "1 while the WAL stream is up.", |c| Some(f64::from(u8::from(c.connected)))),
        ("durable_lsn_bytes", "End of the WAL durable in the vault, as a byte position.", |c| {
            c.durable_lsn.map(|l| l.0 as f64)
        }),
        ("received_lsn_bytes", "End of the WAL received from the server.", |c| {
            c.received_lsn.map(|l| l.0 as f64)
        }),
        ("lag_bytes", "WAL the server holds that the vault has not stored yet.", |c| {
            c.lag_bytes.map(|b| b as f64)
        }),
        ("lag_seconds", "How far the durable WAL trails the server, in seconds.", |c| c.lag_seconds),
        ("last_backup_timestamp_seconds", "When the last complete base backup finished.", |c| {
            c.last_backup.as_ref().map(|b| b.finished.as_secs() as f64)
        }),
        ("window_earliest_timestamp_seconds", "Earliest restorable instant.", |c| {
            c.window.as_ref().map(|w| w.earliest_time.as_secs() as f64)
        }),
        ("window_latest_timestamp_seconds", "Latest restorable instant.", |c| {
            c.window.as_ref().map(|w| w.latest_time.as_secs() as f64)
        }),
        ("incidents", "Incidents recorded (most recent 20 kept in status).", |c| {
            Some(c.incidents.len() as f64)
        }),
        ("last_contact_timestamp_seconds", "When the server was last heard from.", |c| {
            c.last_contact.map(|t| t.as_secs() as f64)
        }),
        (
            "decoded_lsn_bytes",
            "End of the WAL the destruction detector has decoded, as a byte position.",
            |c| c.decoded_lsn.map(|l| l.0 as f64),
        ),
        (
            "judged_lsn_bytes",
            "WAL the destruction detector has judged (decoded, no verdict waiting for the catalog): the warm standby is never fed past it.",
            |c| c.judged_lsn.map(|l| l.0 as f64),
        ),
        ("detector_lag_bytes", "Durable WAL the destruction detector has not decoded yet.", |c| {
            c.detector_lag_bytes.map(|b| b as f64)
        }),
    ];
    for (name, help, get) in gauges {
        let _ = writeln!(out, "# HELP holdfast_cluster_{name} {help}\n# TYPE holdfast_cluster_{name} gauge");
        for c in clusters {
            if let Some(v) = get(c) {
                let _ = writeln!(out, "holdfast_cluster_{name}{{cluster=\"{}\"}} {v}", c.name);
            }
        }
    }
}

async fn put_object(
    State(s): State<Arc<Shared>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let who = s.authorize(&headers, &[Scope::Append], "uploading an object").await?;
    let name = parse_name(path)?;
    if name.kind != ObjectKind::Pack {
        return Err(ApiError::forbidden(format!(
            "only pack objects can be uploaded; {} objects are written by the vault itself",
            name.kind
        )));
    }
    let bytes = read_body(&headers, body, s.config.max_body_bytes).await?;
    name.verify(&bytes).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let size = bytes.len() as u64;
    {
        let state = s.state.read().await;
        s.charge(&state, &who, size)?;
    }
    // A pack must be a pack of this repository, readable with its keys, before it is kept for
    // the whole retention period: junk would be reported as damage by `check` all that time.
    let (keys, check_name, check_bytes) = (s.repo.keys().clone(), name, bytes.clone());
    tokio::task::spawn_blocking(move || store::pack::validate(&keys, &check_name, &check_bytes))
        .await
        .map_err(|e| ApiError::internal("checking the pack", e))?
        .map_err(|e| {
            ApiError::unprocessable(format!(
                "{name} is not a well-formed pack of repository {}: {e}; nothing was stored",
                s.repo.id()
            ))
        })?;
    let mut state = s.state.write().await;
    let until = s.retain_until(&state, s.clock.now());
    let outcome = s.store.put_if_absent(&name, bytes, until).await?;
    let retain_until = s.store.head(&name).await?.map(|m| m.retain_until).unwrap_or(until);
    let status = match outcome {
        store::PutOutcome::Created => {
            s.metrics.uploaded_bytes.fetch_add(size, Ordering::Relaxed);
            let body =
                serde_json::to_value(state::TokenUpload { token: who.id.clone(), object: name, bytes: size })
                    .map_err(|e| ApiError::internal("encoding", e))?;
            s.write_record(&mut state, kinds::TOKEN_UPLOAD, body).await?;
            StatusCode::CREATED
        }
        store::PutOutcome::AlreadyPresent => StatusCode::OK,
    };
    Ok(json(status, &PutObjectResponse { name, outcome, size, retain_until }))
}

/// Parses a single `bytes=` range against an object of `size` bytes into a half-open range.
fn parse_range(value: &HeaderValue, size: u64) -> ApiResult<Range<u64>> {
    let unsatisfiable = |why: &str| {
        ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            format!(
                "Range header {value:?} {why}: expected one range `bytes=START-END` within the object's {size} bytes"
            ),
        )
    };
    let text = value.to_str().map_err(|_| unsatisfiable("is not ASCII"))?;
    let spec =
        text.trim().strip_prefix("bytes=").ok_or_else(|| unsatisfiable("does not start with bytes="))?;
    if spec.contains(',') {
        return Err(unsatisfiable("asks for several ranges"));
    }
    let (a, b) = spec.split_once('-').ok_or_else(|| unsatisfiable("has no '-'"))?;
    let num = |t: &str| t.trim().parse::<u64>().map_err(|_| unsatisfiable("is not numeric"));
    let range = match (a.trim().is_empty(), b.trim().is_empty()) {
        (false, false) => {
            let (a, b) = (num(a)?, num(b)?);
            if a > b {
                return Err(unsatisfiable("ends before it starts"));
            }
            a..b.saturating_add(1).min(size)
        }
        (false, true) => num(a)?..size,
        (true, false) => {
            let n = num(b)?;
            if n == 0 {
                return Err(unsatisfiable("asks for zero bytes"));
            }
            size.saturating_sub(n)..size
        }
        (true, true) => return Err(unsatisfiable("is empty")),
    };
    if range.start >= size {
        return Err(unsatisfiable("starts past the end"));
    }
    Ok(range)
}

async fn get_object(
    State(s): State<Arc<Shared>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    s.authorize(&headers, &[Scope::Read], "reading objects").await?;
    let name = parse_name(path)?;
    let meta = s
        .store
        .head(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("object {name} is not in this vault")))?;
    let resp = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::ACCEPT_RANGES, "bytes")
        .header("x-holdfast-retain-until", meta.retain_until.to_string());
    let built = match headers.get(header::RANGE) {
        Some(v) => {
            let r = parse_range(v, meta.size)?;
            let bytes = s.store.get_range(&name, r.clone()).await?;
            resp.status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_RANGE, format!("bytes {}-{}/{}", r.start, r.end - 1, meta.size))
                .body(Body::from(bytes))
        }
        None => resp.status(StatusCode::OK).body(Body::from(s.store.get(&name).await?)),
    };
    built.map_err(|e| ApiError::internal("building the response", e))
}

async fn head_object(
    State(s): State<Arc<Shared>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    s.authorize(&headers, &[Scope::Read], "reading objects").await?;
    let name = parse_name(path)?;
    let meta = s
        .store
        .head(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("object {name} is not in this vault")))?;
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_LENGTH, meta.size)
        .header(header::ACCEPT_RANGES, "bytes")
        .header("x-holdfast-retain-until", meta.retain_until.to_string())
        .body(Body::empty())
        .map_err(|e| ApiError::internal("building the response", e))
}

/// `?kind=K` (objects and records).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KindQuery {
    kind: Option<String>,
}

/// `?path=P&offset=O&length=L` (a backup's file).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileQuery {
    path: Option<String>,
    offset: Option<u64>,
    length: Option<u64>,
}

/// A query string decoded by axum's `Query` (percent-decoding, `+` as a space, unknown or
/// repeated parameters and malformed numbers refused). Taken as a `Result` so that a handler
/// checks the token first and answers a bad query with a JSON 400 like every other error.
fn query<T>(q: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    q.map(|Query(t)| t).map_err(|e| ApiError::bad_request(format!("bad query: {}", e.body_text())))
}

async fn list_objects(
    State(s): State<Arc<Shared>>,
    q: Result<Query<KindQuery>, QueryRejection>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    s.authorize(&headers, &[Scope::Read], "listing objects").await?;
    let q = query(q)?;
    let kinds: Vec<ObjectKind> = match q.kind {
        Some(k) => vec![k.parse().map_err(|e: store::NameError| ApiError::bad_request(e.to_string()))?],
        None => ObjectKind::ALL.to_vec(),
    };
    let mut objects = Vec::new();
    for k in kinds {
        objects.extend(s.store.list(k).await?);
    }
    Ok(json(StatusCode::OK, &ListObjectsResponse { objects }))
}

async fn append_record(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    let who = s.authorize(&headers, &[Scope::Append], "appending a record").await?;
    let req: AppendRecordRequest = read_json(&headers, body, s.config.max_body_bytes).await?;
    if !APPENDABLE_RECORD_KINDS.contains(&req.kind.as_str()) {
        s.alert(serde_json::json!({
            "alert": "record.refused",
            "token": who.id,
            "label": who.label,
            "kind": req.kind.chars().take(64).collect::<String>(),
            "what_to_do": "a client token tried to write a record only the vault writes (an incident, drill, backup, token…): find who holds it and revoke it",
        }));
        return Err(ApiError::forbidden(format!(
            "record kind {:?} is written only by the vault itself; append tokens may write: {}",
            req.kind.chars().take(40).collect::<String>(),
            APPENDABLE_RECORD_KINDS.join(", ")
        )));
    }
    let mut state = s.state.write().await;
    s.charge(&state, &who, state::body_bytes(&req.body))?;
    let now = s.clock.now();
    let retain_until = s.retain_until(&state, now);
    let name = s.repo.append_record_by(&req.kind, req.body.clone(), now, retain_until, Some(&who.id)).await?;
    state.apply_authored(&name, &req.kind, now, &req.body, Some(&who.id));
    let written_at = now;
    Ok(json(StatusCode::CREATED, &AppendRecordResponse { name, written_at, retain_until }))
}

async fn list_records(
    State(s): State<Arc<Shared>>,
    q: Result<Query<KindQuery>, QueryRejection>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    s.authorize(&headers, &[Scope::Read], "reading records").await?;
    let q = query(q)?;
    let records = s
        .repo
        .records()
        .await?
        .into_iter()
        .filter(|(_, r)| q.kind.as_ref().is_none_or(|k| *k == r.kind))
        .map(|(name, r)| RecordEntry { name, kind: r.kind, written_at: r.written_at, body: r.body })
        .collect();
    Ok(json(StatusCode::OK, &ListRecordsResponse { records }))
}

/// `GET /v1/status`: every protected cluster's capture state.
async fn cluster_status(State(s): State<Arc<Shared>>, headers: HeaderMap) -> ApiResult<Response> {
    s.authorize(&headers, &[Scope::Read, Scope::Admin], "reading status").await?;
    let mut clusters = s.collector.get().map(|c| c.status()).unwrap_or_default();
    let drills = crate::drill::all_status(&s).await;
    for c in &mut clusters {
        c.drill = drills.iter().find(|d| d.cluster == c.name).cloned();
        c.standby = s.standbys.status().into_iter().find(|b| b.cluster == c.name);
    }
    let stores = s.stores.status(s.store.as_ref()).await;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "clusters": clusters, "webhooks": s.webhooks.status(), "stores": stores }),
    ))
}

/// `POST /v1/clusters/{name}/drills`: start a restore drill now (admin); answers at once with
/// its id (`GET /v1/drills` shows progress and, once done, the signed report).
async fn start_drill(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let who = s.authorize(&headers, &[Scope::Admin], "starting a restore drill").await?;
    let Path(name) = name.map_err(|e| ApiError::bad_request(format!("bad cluster name: {e}")))?;
    match crate::drill::start(&s, &name, format!("on demand ({})", who.label)) {
        Ok(id) => Ok(json(StatusCode::ACCEPTED, &vault_api::drill::DrillStarted { id })),
        Err(e @ crate::drill::StartError::UnknownCluster(_)) => Err(ApiError::not_found(e.to_string())),
        Err(e @ crate::drill::StartError::Running { .. }) => Err(ApiError::conflict(e.to_string())),
        Err(e) => Err(ApiError::internal("starting the drill", e)),
    }
}

/// `GET /v1/drills`: every stored drill report (signed) and each cluster's drill state.
async fn list_drills(State(s): State<Arc<Shared>>, headers: HeaderMap) -> ApiResult<Response> {
    s.authorize(&headers, &[Scope::Read, Scope::Admin], "listing restore drills").await?;
    let clusters = crate::drill::all_status(&s).await;
    let drills = s.state.read().await.drills.clone();
    Ok(json(
        StatusCode::OK,
        &vault_api::drill::DrillsResponse { signing_key: s.drills.public_key(), drills, clusters },
    ))
}

fn collector_cluster(
    s: &Shared,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<&Arc<capture::runtime::ClusterRuntime>> {
    let Path(name) = name.map_err(|e| ApiError::bad_request(format!("bad cluster name: {e}")))?;
    let Some(collector) = s.collector.get() else {
        return Err(ApiError::not_found(
            "this vault protects no cluster: add a [[cluster]] table to its config",
        ));
    };
    collector.cluster(&name).map_err(|e| ApiError::not_found(e.to_string()))
}

/// `GET /v1/clusters/{name}/incidents`: every incident of the cluster, oldest first (number
/// N is position N, from 1: what `restore --before-incident N` takes).
async fn cluster_incidents(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    s.authorize(&headers, &[Scope::Read, Scope::Admin], "reading incidents").await?;
    let rt = collector_cluster(&s, name)?;
    Ok(json(StatusCode::OK, &rt.incidents()))
}

/// `GET /v1/clusters/{name}/restore-points`: every restore point in the stored WAL, decoded
/// by the vault (a restore resolves `--restore-point` through it).
async fn cluster_restore_points(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    s.authorize(&headers, &[Scope::Read, Scope::Admin], "reading restore points").await?;
    let rt = collector_cluster(&s, name)?;
    match rt.restore_points().await {
        Ok(points) => Ok(json(StatusCode::OK, &points)),
        Err(e) => Err(ApiError::internal("reading the stored WAL for restore points", e)),
    }
}

/// `GET /v1/clusters/{name}/inventory`: backups, stored WAL runs, histories, window.
async fn cluster_inventory(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    s.authorize(&headers, &[Scope::Read, Scope::Admin], "reading a cluster's inventory").await?;
    let rt = collector_cluster(&s, name)?;
    Ok(json(StatusCode::OK, &rt.inventory()))
}

/// `GET /v1/clusters/{name}/wal/{file}`: a WAL segment (whole, zero-padded past the stored
/// WAL, see [`WAL_VALID_HEADER`]) or a timeline history file, in plaintext: what
/// `restore_command` asks for.
async fn cluster_wal(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<Response> {
    s.authorize(&headers, &[Scope::Read], "reading WAL").await?;
    let Path((name, file)) = path.map_err(|e| ApiError::bad_request(format!("bad path: {e}")))?;
    let rt = collector_cluster(&s, Ok(Path(name)))?;
    let octets = |bytes: Vec<u8>, valid: u64| {
        let mut r = (StatusCode::OK, bytes).into_response();
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        r.headers_mut().insert(WAL_VALID_HEADER, HeaderValue::from(valid));
        r
    };
    match rt.wal_file(&file).await {
        Ok((bytes, valid)) => Ok(octets(bytes, valid)),
        Err(capture::CaptureError::InvalidName(m)) => Err(ApiError::bad_request(m)),
        Err(capture::CaptureError::NotFound(m)) => Err(ApiError::not_found(m)),
        Err(e) => Err(ApiError::internal(&format!("reading WAL file {file}"), e)),
    }
}

/// The file list of a backup; an unknown id is a 404 naming where to look.
async fn entries_of(s: &Shared, id: &str) -> ApiResult<Entries> {
    s.entries(id).await.map_err(|e| match e {
        store::RepoError::NoSuchBackup(_) => {
            ApiError::not_found(format!("backup {id} is not in this vault (see GET /v1/backups)"))
        }
        e => e.into(),
    })
}

/// `GET /v1/backups/{id}/entries`: every file, directory and symlink of a backup.
async fn backup_entries(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    s.authorize(&headers, &[Scope::Read], "reading a backup's file list").await?;
    let Path(id) = id.map_err(|e| ApiError::bad_request(format!("bad backup id: {e}")))?;
    let entries = entries_of(&s, &id).await?;
    let entries = entries
        .values()
        .map(|e| BackupEntry {
            path: e.path.clone(),
            kind: match e.kind {
                store::snapshot::EntryKind::File => "file",
                store::snapshot::EntryKind::Dir => "dir",
                store::snapshot::EntryKind::Symlink => "symlink",
            }
            .to_string(),
            size: e.size,
            mode: e.mode,
            mtime: e.mtime,
            target: e.target.clone(),
        })
        .collect();
    Ok(json(StatusCode::OK, &BackupEntriesResponse { backup: id, entries }))
}

/// Largest range one `GET /v1/backups/{id}/file` returns.
const MAX_FILE_RANGE: u64 = 64 << 20;

/// `GET /v1/backups/{id}/file?path=P&offset=O&length=L`: plaintext bytes of one file of a
/// backup, every chunk checked against its id on the way.
async fn backup_file(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<FileQuery>, QueryRejection>,
) -> ApiResult<Response> {
    s.authorize(&headers, &[Scope::Read], "reading a backup's files").await?;
    let Path(id) = id.map_err(|e| ApiError::bad_request(format!("bad backup id: {e}")))?;
    let q = query(q)?;
    let (offset, length) = (q.offset.unwrap_or(0), q.length.unwrap_or(MAX_FILE_RANGE));
    let path =
        q.path.ok_or_else(|| ApiError::bad_request("the query must name the file: ?path=base/5/16384"))?;
    if length > MAX_FILE_RANGE {
        return Err(ApiError::bad_request(format!("length is at most {MAX_FILE_RANGE} bytes per request")));
    }
    let entries = entries_of(&s, &id).await?;
    let entry = entries
        .get(&path)
        .filter(|e| e.kind == store::snapshot::EntryKind::File)
        .ok_or_else(|| ApiError::not_found(format!("backup {id} has no file {path:?}")))?;
    let bytes = match s.repo.read_file_range(entry, offset, length).await {
        Ok(b) => b,
        Err(store::RepoError::ChunkUnreadable { chunk, file, cause }) => {
            let undamaged = s.backups_without_chunk(&id, &chunk).await;
            let e = store::RepoError::ChunkUnreadable { chunk, file, cause };
            tracing::error!(backup = %id, path = %path, error = %e, "a backup's data is damaged");
            let mut err = ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "backup {id} is damaged: {e}; other backups of this cluster that do not use that chunk: {} \
                     (run `holdfast vault check` for everything damaged)",
                    if undamaged.is_empty() { "none".to_string() } else { undamaged.join(", ") }
                ),
            );
            err.undamaged = Some(undamaged);
            return Err(err);
        }
        Err(e) => {
            return Err(ApiError::internal_user(
                &format!("reading {path} of backup {id} (run `holdfast vault check`)"),
                &e,
            ));
        }
    };
    let mut r = (StatusCode::OK, bytes).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    Ok(r)
}

/// `POST /v1/clusters/{name}/backup`: take a base backup now; answers once it is complete.
async fn backup_cluster(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    s.authorize(&headers, &[Scope::Admin], "starting a base backup").await?;
    let Path(name) = name.map_err(|e| ApiError::bad_request(format!("bad cluster name: {e}")))?;
    let Some(collector) = s.collector.get() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "this vault protects no cluster: add a [[cluster]] table to its config",
        ));
    };
    match collector.backup_now(&name).await {
        Ok(summary) => Ok(json(StatusCode::OK, &summary)),
        Err(capture::CaptureError::UnknownCluster(n)) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("unknown cluster {n:?}: it is not in the vault's configuration"),
        )),
        Err(e) => {
            tracing::warn!(cluster = %name, error = %e, "a base backup asked for through the API failed");
            Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!("the base backup failed: {}", e.user_message()),
            ))
        }
    }
}

async fn list_backups(State(s): State<Arc<Shared>>, headers: HeaderMap) -> ApiResult<Response> {
    s.authorize(&headers, &[Scope::Read], "listing backups").await?;
    let now = s.clock.now();
    let backups = s.repo.backups().await?.iter().map(|b| crate::backup_summary(b, now)).collect();
    Ok(json(StatusCode::OK, &ListBackupsResponse { backups }))
}

async fn create_token(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    let who = s.authorize(&headers, &[Scope::Admin], "creating tokens").await?;
    let req: CreateTokenRequest = read_json(&headers, body, s.config.max_body_bytes).await?;
    if req.label.len() > 200 || req.label.chars().any(char::is_control) {
        return Err(ApiError::bad_request("token label must be at most 200 printable characters"));
    }
    let token = crate::new_token().map_err(|e| ApiError::internal("generating a token", e))?;
    let body = serde_json::to_value(crate::token_record(&token, req.scope, &req.label, &who.id))
        .map_err(|e| ApiError::internal("encoding", e))?;
    let mut state = s.state.write().await;
    s.write_record(&mut state, kinds::TOKEN_CREATED, body).await?;
    tracing::info!(token = token.id(), scope = %req.scope, by = who.id, "created a token");
    s.alert(serde_json::json!({
        "alert": "token.created",
        "token": token.id(),
        "scope": req.scope,
        "label": req.label,
        "by_token": who.id,
        "what_to_do": "if nobody you know asked for this token, revoke it: holdfast vault token revoke --id <token>",
    }));
    Ok(json(
        StatusCode::CREATED,
        &CreateTokenResponse {
            id: token.id().to_string(),
            scope: req.scope,
            label: req.label,
            token: token.expose(),
        },
    ))
}

async fn list_tokens(State(s): State<Arc<Shared>>, headers: HeaderMap) -> ApiResult<Response> {
    s.authorize(&headers, &[Scope::Admin], "listing tokens").await?;
    let tokens = s.state.read().await.tokens.values().map(TokenEntry::info).collect();
    Ok(json(StatusCode::OK, &ListTokensResponse { tokens }))
}

async fn revoke_token(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let who = s.authorize(&headers, &[Scope::Admin], "revoking tokens").await?;
    if !token::is_token_id(&id) {
        return Err(ApiError::bad_request(
            "token id must be 16 lowercase hex digits (see `holdfast vault token list`)",
        ));
    }
    let mut state = s.state.write().await;
    let Some(t) = state.tokens.get(&id) else {
        return Err(ApiError::not_found(format!("no token with id {id}")));
    };
    if t.revoked_at.is_none() {
        if t.scope == Scope::Admin && state.live_admins() <= 1 {
            return Err(ApiError::conflict(format!(
                "token {id} is the last admin token: revoking it would leave nobody able to administer the vault; \
                 create another admin token first (holdfast vault token create --scope admin)"
            )));
        }
        let (scope, label) = (t.scope, t.label.clone());
        let body = serde_json::to_value(state::TokenRevoked { id: id.clone(), revoked_by: who.id.clone() })
            .map_err(|e| ApiError::internal("encoding", e))?;
        s.write_record(&mut state, kinds::TOKEN_REVOKED, body).await?;
        tracing::info!(token = id, by = who.id, "revoked a token");
        s.alert(serde_json::json!({
            "alert": "token.revoked",
            "token": id,
            "scope": scope,
            "label": label,
            "by_token": who.id,
            "live_admin_tokens": state.live_admins(),
        }));
    }
    Ok(json(StatusCode::OK, &state.tokens[&id].info()))
}

async fn get_retention(State(s): State<Arc<Shared>>, headers: HeaderMap) -> ApiResult<Response> {
    s.authorize(&headers, &[Scope::Admin, Scope::Read], "reading the retention policy").await?;
    let days = s.state.read().await.retention_days(s.config.retention_days);
    Ok(json(StatusCode::OK, &RetentionPolicy { days }))
}

async fn put_retention(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    let who = s.authorize(&headers, &[Scope::Admin], "changing the retention policy").await?;
    let req: RetentionPolicy = read_json(&headers, body, s.config.max_body_bytes).await?;
    let mut state = s.state.write().await;
    let current = state.retention_days(s.config.retention_days);
    if req.days < current {
        return Err(ApiError::forbidden(format!(
            "retention can only be lengthened; shortening needs a quorum deletion proposal (current policy: {current} days, asked for {})",
            req.days
        )));
    }
    if req.days > 36_500 {
        return Err(ApiError::bad_request(
            "retention is limited to 36500 days; use `retention/extend` with a date for longer holds",
        ));
    }
    if req.days > current {
        let body = serde_json::to_value(state::RetentionPolicyRecord { days: req.days, set_by: who.id })
            .map_err(|e| ApiError::internal("encoding", e))?;
        s.write_record(&mut state, kinds::RETENTION_POLICY, body).await?;
        s.retention_days_now.fetch_max(req.days, Ordering::SeqCst);
    }
    Ok(json(StatusCode::OK, &RetentionPolicy { days: state.retention_days(s.config.retention_days) }))
}

async fn extend_retention(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    s.authorize(&headers, &[Scope::Admin], "extending retention").await?;
    let req: ExtendRetentionRequest = read_json(&headers, body, s.config.max_body_bytes).await?;
    let mut extended = 0u64;
    for kind in ObjectKind::ALL {
        for meta in s.store.list(kind).await? {
            if meta.retain_until < req.until {
                s.store.extend_retention(&meta.name, req.until).await?;
                extended += 1;
            }
        }
    }
    tracing::info!(until = %req.until, extended, "extended retention of existing objects");
    Ok(json(StatusCode::OK, &ExtendRetentionResponse { extended, until: req.until }))
}

fn random_hex(n: usize) -> ApiResult<String> {
    let mut b = vec![0u8; n];
    getrandom::getrandom(&mut b).map_err(|e| ApiError::internal("the random number generator", e))?;
    Ok(hex::encode(b))
}

async fn propose(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    let who = s.authorize(&headers, &[Scope::Admin], "proposing a deletion").await?;
    let req: ProposeRequest = read_json(&headers, body, s.config.max_body_bytes).await?;
    if s.config.quorum.keyholders.is_empty() {
        return Err(ApiError::forbidden(
            "early deletion is disabled: no keyholders are enrolled in [quorum] of the vault's config",
        ));
    }
    if req.reason.trim().is_empty() || req.reason.len() > 2000 {
        return Err(ApiError::bad_request("a deletion proposal needs a reason (1 to 2000 characters)"));
    }
    let mut objects: BTreeSet<ObjectName> = req.objects.iter().copied().collect();
    match (&req.backup, objects.is_empty()) {
        (Some(_), false) => return Err(ApiError::bad_request("name either objects or one backup, not both")),
        (None, true) => return Err(ApiError::bad_request("name the objects to delete, or a backup id")),
        (Some(id), true) => objects = backup_objects(&s, id).await?,
        (None, false) => {
            let records: BTreeMap<ObjectName, store::CatalogRecord> =
                s.repo.records().await?.into_iter().collect();
            for n in &objects {
                deletable(n, records.get(n))?;
                if s.store.head(n).await?.is_none() {
                    return Err(ApiError::not_found(format!(
                        "object {n} is not in this vault; nothing was proposed"
                    )));
                }
            }
        }
    }
    let now = s.clock.now();
    let statement = DeletionStatement {
        purpose: DELETION_PURPOSE.into(),
        repository: s.repo.id().to_string(),
        proposal: random_hex(8)?,
        proposed_at: now,
        not_before: now.plus(s.config.quorum.wait),
        objects,
        reason: req.reason.clone(),
    };
    let rec = state::DeletionProposed {
        statement: statement.clone(),
        proposed_by: who.id.clone(),
        backup: req.backup.clone(),
    };
    let body = serde_json::to_value(&rec).map_err(|e| ApiError::internal("encoding", e))?;
    let mut state = s.state.write().await;
    s.write_record(&mut state, kinds::DELETION_PROPOSED, body).await?;
    s.metrics.proposals.fetch_add(1, Ordering::Relaxed);
    s.alert(serde_json::json!({
        "alert": "deletion.proposed",
        "proposal": statement.proposal,
        "repository": statement.repository,
        "proposed_by_token": who.id,
        "objects": statement.objects.len(),
        "backup": req.backup,
        "reason": statement.reason,
        "not_before": statement.not_before,
        "what_to_do": "if you did not expect this, veto it: holdfast vault veto --proposal <id> --key <your key>",
    }));
    let view = state.proposals[&statement.proposal].view(s.config.quorum.threshold);
    Ok(json(StatusCode::CREATED, &view))
}

/// Catalog record kinds a quorum may delete: a backup's own entries and WAL summaries. Every
/// other record is the vault's history (tokens, revocations, retention, proposals, vetoes,
/// incidents, drills, audit): deleting one would rewrite it — un-revoke a token, un-veto a
/// proposal, shorten retention, erase an incident.
pub const DELETABLE_RECORD_KINDS: &[&str] =
    &["backup", capture::BACKUP_COMPLETE_RECORD, capture::archive::SEGMENT_RECORD];

/// Refuses objects a quorum may never delete: repository keys and config (kept forever, the
/// format says so), index files (every pack's map), and catalog records other than
/// [`DELETABLE_RECORD_KINDS`] (or unreadable ones).
fn deletable(n: &ObjectName, record: Option<&store::CatalogRecord>) -> ApiResult<()> {
    match n.kind {
        ObjectKind::Keys | ObjectKind::Config | ObjectKind::Index => Err(ApiError::forbidden(format!(
            "{n} cannot be deleted, not even by a quorum: {} objects are kept for the life of the repository; nothing was proposed",
            n.kind
        ))),
        ObjectKind::Catalog => match record {
            Some(r) if DELETABLE_RECORD_KINDS.contains(&r.kind.as_str()) && r.author.is_none() => Ok(()),
            Some(r) => Err(ApiError::forbidden(format!(
                "{n} is a {:?} catalog record: only {} records can be deleted by a quorum (the rest is the vault's history); nothing was proposed",
                r.kind,
                DELETABLE_RECORD_KINDS.join(", ")
            ))),
            None => Err(ApiError::forbidden(format!(
                "{n} is not a readable catalog record of this vault; nothing was proposed"
            ))),
        },
        _ => Ok(()),
    }
}

/// The objects to remove for a backup: its catalog records and the packs no other backup uses.
async fn backup_objects(s: &Shared, id: &str) -> ApiResult<BTreeSet<ObjectName>> {
    let backups = s.repo.backups().await?;
    let (this, others): (Vec<_>, Vec<_>) = backups.into_iter().partition(|b| b.id == id);
    if this.is_empty() {
        return Err(ApiError::not_found(format!("no backup with id {id:?} (see `holdfast vault backups`)")));
    }
    let keep = s.repo.referenced_packs(&others).await?;
    let mut objects: BTreeSet<ObjectName> =
        s.repo.referenced_packs(&this).await?.into_iter().filter(|p| !keep.contains(p)).collect();
    for (name, r) in s.repo.records().await? {
        // Its `backup` record, and the collector's `backup.complete` record of it: without the
        // latter the backup would stay in the inventory and a restore would pick it.
        let kind_matches = r.kind == "backup" || r.kind == capture::BACKUP_COMPLETE_RECORD;
        if kind_matches && r.author.is_none() && r.body.get("id").and_then(|v| v.as_str()) == Some(id) {
            objects.insert(name);
        }
    }
    Ok(objects)
}

fn parse_proposal_id(id: &str) -> ApiResult<()> {
    if token::is_token_id(id) {
        Ok(())
    } else {
        Err(ApiError::bad_request("proposal id must be 16 lowercase hex digits"))
    }
}

async fn get_proposal(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    s.authorize(&headers, &[Scope::Admin, Scope::Read, Scope::Append], "reading a proposal").await?;
    parse_proposal_id(&id)?;
    let mut view = {
        let state = s.state.read().await;
        let p = state
            .proposals
            .get(&id)
            .ok_or_else(|| ApiError::not_found(format!("no proposal with id {id}")))?;
        p.view(s.config.quorum.threshold)
    };
    view.effects = Some(effects(&s, &view.statement.objects).await?);
    Ok(json(StatusCode::OK, &view))
}

/// What deleting `objects` would remove: counts by kind, the backups losing their record or
/// their data, the WAL ranges.
async fn effects(s: &Shared, objects: &BTreeSet<ObjectName>) -> ApiResult<ProposalEffects> {
    let mut e = ProposalEffects::default();
    let records: BTreeMap<ObjectName, store::CatalogRecord> = s.repo.records().await?.into_iter().collect();
    let mut packs = BTreeSet::new();
    let mut wal = BTreeSet::new();
    let mut record_backups = BTreeSet::new();
    for n in objects {
        *e.objects_by_kind.entry(n.kind.to_string()).or_default() += 1;
        match s.store.head(n).await? {
            Some(m) => e.bytes += m.size,
            None => e.absent += 1,
        }
        match n.kind {
            ObjectKind::Pack => {
                packs.insert(*n);
            }
            ObjectKind::Wal => {
                wal.insert(*n);
            }
            ObjectKind::Catalog => {
                if let Some(r) = records.get(n) {
                    *e.records_by_kind.entry(r.kind.clone()).or_default() += 1;
                    if let Some(id) = r.body.get("id").and_then(|v| v.as_str())
                        && (r.kind == "backup" || r.kind == capture::BACKUP_COMPLETE_RECORD)
                    {
                        record_backups.insert(id.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    for b in s.repo.backups().await? {
        let how = if record_backups.contains(&b.id) {
            "record"
        } else if !packs.is_empty()
            && s.repo.referenced_packs(std::slice::from_ref(&b)).await?.iter().any(|p| packs.contains(p))
        {
            "data"
        } else {
            continue;
        };
        e.backups.push(AffectedBackup {
            id: b.id.clone(),
            label: b.label.clone(),
            cluster: b.cluster.clone(),
            started: b.started,
            how: how.into(),
        });
    }
    if !wal.is_empty() {
        let ranges = capture::archive::affected_wal(&s.repo, &wal)
            .await
            .map_err(|e| ApiError::internal("mapping WAL objects to ranges", e))?;
        for r in ranges {
            let (start, end) = match (r.start, r.end) {
                (Some(a), Some(b)) => (a.to_string(), b.to_string()),
                _ => match capture::archive::read_piece(&s.repo, &r.object).await {
                    Ok(p) => (p.header.start.to_string(), p.header.end.to_string()),
                    Err(_) => ("?".into(), "?".into()),
                },
            };
            e.wal.push(AffectedWal { cluster: r.cluster, timeline: r.timeline, start, end });
        }
    }
    Ok(e)
}

/// Checks that `req` is a valid signature over `message` by an enrolled keyholder.
fn verify_keyholder(s: &Shared, req: &SignRequest, message: &[u8]) -> ApiResult<String> {
    let key = store::quorum::parse_key(&req.public_key).ok_or_else(|| {
        ApiError::bad_request("public_key must be 64 hex digits (an ed25519 key from `holdfast keygen`)")
    })?;
    let holder =
        s.config.quorum.keyholder(&hex::encode(key.as_bytes())).ok_or_else(|| {
            ApiError::forbidden("this public key is not an enrolled keyholder of this vault")
        })?;
    let mut sig = [0u8; 64];
    hex::decode_to_slice(&req.signature, &mut sig)
        .map_err(|_| ApiError::bad_request("signature must be 128 hex digits"))?;
    key.verify(message, &ed25519_dalek::Signature::from_bytes(&sig)).map_err(|_| {
        ApiError::bad_request(format!(
            "the signature by {} does not verify over the expected bytes",
            holder.name
        ))
    })?;
    Ok(holder.name.clone())
}

async fn sign_proposal(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    s.authorize(&headers, &[Scope::Admin, Scope::Read, Scope::Append], "signing a proposal").await?;
    parse_proposal_id(&id)?;
    let req: SignRequest = read_json(&headers, body, s.config.max_body_bytes).await?;
    let mut state = s.state.write().await;
    let p =
        state.proposals.get(&id).ok_or_else(|| ApiError::not_found(format!("no proposal with id {id}")))?;
    if p.status() != ProposalStatus::Pending {
        return Err(ApiError::conflict(format!(
            "proposal {id} is {:?}: it takes no more signatures",
            p.status()
        )));
    }
    let holder = verify_keyholder(&s, &req, &p.statement.canonical_bytes())?;
    let key = req.public_key.to_lowercase();
    if !p.signatures.iter().any(|x| x.public_key == key) {
        let act = state::KeyholderAct {
            proposal: id.clone(),
            public_key: key,
            signature: req.signature.to_lowercase(),
        };
        let body = serde_json::to_value(&act).map_err(|e| ApiError::internal("encoding", e))?;
        s.write_record(&mut state, kinds::DELETION_SIGNED, body).await?;
        tracing::warn!(proposal = id, keyholder = holder, "a keyholder signed a deletion proposal");
        let p = &state.proposals[&id];
        s.alert(serde_json::json!({
            "alert": "deletion.signed",
            "proposal": id,
            "keyholder": holder,
            "signatures": p.view(s.config.quorum.threshold).signed_by.len(),
            "threshold": s.config.quorum.threshold,
            "objects": p.statement.objects.len(),
            "not_before": p.statement.not_before,
            "what_to_do": "if this deletion is not wanted, veto it: holdfast vault veto --proposal <id> --key <your key>",
        }));
    }
    Ok(json(StatusCode::OK, &state.proposals[&id].view(s.config.quorum.threshold)))
}

async fn veto_proposal(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    s.authorize(&headers, &[Scope::Admin, Scope::Read, Scope::Append], "vetoing a proposal").await?;
    parse_proposal_id(&id)?;
    let req: VetoRequest = read_json(&headers, body, s.config.max_body_bytes).await?;
    let mut state = s.state.write().await;
    let p =
        state.proposals.get(&id).ok_or_else(|| ApiError::not_found(format!("no proposal with id {id}")))?;
    if p.status() == ProposalStatus::Executed {
        return Err(ApiError::conflict(format!("proposal {id} was already executed")));
    }
    let holder = verify_keyholder(&s, &req, &veto_message(&id))?;
    if p.vetoed_by.is_none() {
        let act = state::KeyholderAct {
            proposal: id.clone(),
            public_key: req.public_key.to_lowercase(),
            signature: req.signature.to_lowercase(),
        };
        let body = serde_json::to_value(&act).map_err(|e| ApiError::internal("encoding", e))?;
        s.write_record(&mut state, kinds::DELETION_VETOED, body).await?;
        s.alert(serde_json::json!({"alert": "deletion.vetoed", "proposal": id, "keyholder": holder}));
    }
    Ok(json(StatusCode::OK, &state.proposals[&id].view(s.config.quorum.threshold)))
}

async fn execute_proposal(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let who = s.authorize(&headers, &[Scope::Admin], "executing a deletion").await?;
    parse_proposal_id(&id)?;
    let mut state = s.state.write().await;
    let p = state
        .proposals
        .get(&id)
        .ok_or_else(|| ApiError::not_found(format!("no proposal with id {id}")))?
        .clone();
    match p.status() {
        ProposalStatus::Vetoed => {
            return Err(ApiError::forbidden(format!(
                "proposal {id} was vetoed by keyholder {}; it can never execute",
                p.vetoed_by.as_deref().unwrap_or("?")
            )));
        }
        ProposalStatus::Executed => {
            return Err(ApiError::conflict(format!("proposal {id} was already executed")));
        }
        ProposalStatus::Pending => {}
    }
    let now = s.clock.now();
    let q = &s.config.quorum;
    let sigs: Vec<KeyholderSignature> = p.signatures.clone();
    let warrant = QuorumWarrant::verify(s.repo.id(), &p.statement, &sigs, &q.keys(), q.threshold, now)
        .map_err(|e| match e {
            QuorumError::NotEnough { .. } => {
                ApiError::forbidden(format!("{e}: collect more signatures with `holdfast vault sign`"))
            }
            QuorumError::TooEarly { .. } => {
                ApiError::forbidden(format!("{e}: keyholders have until then to veto"))
            }
            other => ApiError::forbidden(other.to_string()),
        })?;
    // Checked again here: a proposal recorded before these rules, or one whose catalog record
    // changed meaning, must not remove what no quorum may remove.
    let records: BTreeMap<ObjectName, store::CatalogRecord> = s.repo.records().await?.into_iter().collect();
    for n in &p.statement.objects {
        if n.kind != ObjectKind::Catalog || records.contains_key(n) {
            deletable(n, records.get(n))?;
        }
    }
    let mut objects = p.statement.objects.clone();
    if let Some(backup) = &p.backup {
        // A backup written after the proposal may reuse some of these packs: keep those.
        let others: Vec<_> = s.repo.backups().await?.into_iter().filter(|b| &b.id != backup).collect();
        let keep = s.repo.referenced_packs(&others).await?;
        objects.retain(|o| !keep.contains(o));
    }
    let (removed, absent) = crate::retention::execute(s.store.as_ref(), &warrant, &objects)
        .await
        .map_err(|e| ApiError::internal("the deletion", e))?;
    let rec = state::DeletionExecuted {
        proposal: id.clone(),
        signers: warrant.signers().to_vec(),
        removed: removed.clone(),
        absent: absent.clone(),
    };
    let body = serde_json::to_value(&rec).map_err(|e| ApiError::internal("encoding", e))?;
    s.write_record(&mut state, kinds::DELETION_EXECUTED, body).await?;
    // The backup leaves status, inventory and the restorable window now, not at the next start.
    if let (Some(backup), Some(c)) = (&p.backup, s.collector.get()) {
        for cs in c.status() {
            if let Ok(rt) = c.cluster(&cs.name) {
                rt.forget_backup(backup);
            }
        }
    }
    *s.entries_cache.lock().unwrap_or_else(|p| p.into_inner()) = None;
    s.alert(serde_json::json!({"alert": "deletion.executed", "proposal": id, "by_token": who.id, "removed": removed.len()}));
    Ok(json(StatusCode::OK, &ExecuteResponse { proposal: id, removed, absent }))
}

/// The standby endpoints: `GET /v1/standbys` (read), `POST /v1/clusters/{name}/standby/promote`
/// and `/resume` (admin).
fn standby_routes() -> axum::Router<Arc<Shared>> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/v1/standbys", get(standby_list))
        .route("/v1/clusters/{name}/standby/promote", post(promote_handler))
        .route("/v1/clusters/{name}/standby/resume", post(resume_handler))
}

type StandbyReply = Result<axum::response::Response, ApiError>;

fn standby_reply<T: serde::Serialize>(v: &T) -> StandbyReply {
    use axum::response::IntoResponse;
    Ok(axum::Json(v).into_response())
}

fn standby_refusal(e: crate::standby::ActionError) -> ApiError {
    use axum::http::StatusCode;
    let status = match e {
        crate::standby::ActionError::NoStandby(_) => StatusCode::NOT_FOUND,
        crate::standby::ActionError::Conflict(_) => StatusCode::CONFLICT,
        crate::standby::ActionError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError { status, message: e.to_string(), undamaged: None }
}

async fn standby_list(
    axum::extract::State(s): axum::extract::State<Arc<Shared>>,
    headers: axum::http::HeaderMap,
) -> StandbyReply {
    s.authorize(&headers, &[vault_api::Scope::Read, vault_api::Scope::Admin], "reading standby status")
        .await?;
    standby_reply(&vault_api::standby::StandbysResponse { standbys: s.standbys.status() })
}

async fn promote_handler(
    axum::extract::State(s): axum::extract::State<Arc<Shared>>,
    axum::extract::Path(name): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> StandbyReply {
    let who = s.authorize(&headers, &[vault_api::Scope::Admin], "promoting a standby").await?;
    let req: vault_api::standby::PromoteRequest = serde_json::from_slice(&body).map_err(|e| ApiError {
        status: axum::http::StatusCode::BAD_REQUEST,
        message: format!("the body must be {{\"before_incident\": N}}: {e}"),
        undamaged: None,
    })?;
    let (status, message) =
        crate::standby::promote(&s, &name, req.before_incident).await.map_err(standby_refusal)?;
    s.alert(serde_json::json!({
        "alert": "standby_promoted", "cluster": name, "before_incident": req.before_incident, "by": who.label,
    }));
    standby_reply(&vault_api::standby::StandbyActionResponse { status, message })
}

async fn resume_handler(
    axum::extract::State(s): axum::extract::State<Arc<Shared>>,
    axum::extract::Path(name): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
) -> StandbyReply {
    let who = s.authorize(&headers, &[vault_api::Scope::Admin], "resuming a standby").await?;
    let (status, message) = crate::standby::resume(&s, &name).await.map_err(standby_refusal)?;
    s.alert(serde_json::json!({ "alert": "standby_resumed", "cluster": name, "by": who.label }));
    standby_reply(&vault_api::standby::StandbyActionResponse { status, message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let v = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(parse_range(&v("bytes=0-9"), 100).unwrap(), 0..10);
        assert_eq!(parse_range(&v("bytes=90-200"), 100).unwrap(), 90..100);
        assert_eq!(parse_range(&v("bytes=95-"), 100).unwrap(), 95..100);
        assert_eq!(parse_range(&v("bytes=-5"), 100).unwrap(), 95..100);
        for bad in [
            "bytes=9-0",
            "bytes=100-",
            "items=0-1",
            "bytes=0-1,3-4",
            "bytes=-0",
            "bytes=-",
            "bytes=a-b",
            "bytes=-18446744073709551616",
        ] {
            assert!(parse_range(&v(bad), 100).is_err(), "{bad}");
        }
    }

    /// A failure inside the vault tells the client what failed and an error id, never the
    /// vault host's paths or the OS message; errors that are the client's to know pass through.
    #[test]
    fn internal_detail_stays_in_the_log() {
        let secret_path = "/srv/holdfast-secret-store/objects/pack/ab";
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "EACCES on the disk");
        let hidden = [
            ApiError::from(StoreError::Io { what: format!("reading {secret_path}"), source: io }),
            ApiError::from(store::RepoError::Io {
                what: format!("writing {secret_path}"),
                source: std::io::Error::other("EIO"),
            }),
            ApiError::internal("encoding", format!("serde failed at {secret_path}")),
        ];
        for e in hidden {
            assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
            assert!(!e.message.contains("secret-store") && !e.message.contains("EACCES"), "{}", e.message);
            assert!(!e.message.contains("EIO"), "{}", e.message);
            let id = e.message.split("(error ").nth(1).and_then(|r| r.split(' ').next()).unwrap_or("");
            assert_eq!(id.len(), 8, "an error id to find the detail in the log: {}", e.message);
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{}", e.message);
        }
        // Tampering is the operator's to know (and to act on): it reaches the client.
        let tampered = ApiError::from(store::RepoError::Tampered { what: "pack/cd".into() });
        assert!(
            tampered.message.contains("authentication failed") && tampered.message.contains("run `check`")
        );
        assert!(tampered.message.contains("pack/cd"), "{}", tampered.message);
        // Two failures get two ids.
        let (a, b) = (ApiError::internal("x", "y"), ApiError::internal("x", "y"));
        assert_ne!(a.message, b.message);
    }
}
