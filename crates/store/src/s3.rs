//! `S3Store`: the object store on an S3 bucket with Object Lock in COMPLIANCE mode (AWS S3,
//! Ceph RGW, MinIO, Tencent COS), so that not even the vault's own credential can delete or
//! shorten a backup before its retain-until date.
//!
//! The client: SigV4 signing written here (~80 lines, [`sigv4`]) over the `reqwest` (rustls,
//! aws-lc-rs) the workspace already builds, with `hmac`/`sha2`/`md-5` that are already in
//! Cargo.lock. Chosen over `aws-sdk-s3` (hundreds of crates, minutes of build on 2 cores) and
//! `rusty-s3` (no ListObjectVersions, no PutObjectRetention, and it brings its own quick-xml and
//! older hmac/sha2): every request below is one we write ourselves, so the Object Lock headers,
//! version ids and retention calls are exactly what S3 documents and nothing is hidden.
//!
//! Three rules make a hostile holder of the S3 credential harmless to what the vault reads:
//! - Reads never trust "the latest version". Lock buckets are versioned and some servers (Ceph
//!   RGW 16) ignore `If-None-Match: *` there, so anyone can PUT other bytes under a name; that
//!   only adds a *version*. A name resolves to the oldest version whose bytes hash to the name
//!   (verified once per process by downloading it; the version id is then cached: a version's
//!   bytes never change, and a locked version cannot be deleted).
//! - Every PUT carries `x-amz-object-lock-mode: COMPLIANCE` and a retain-until date; extending
//!   retention is PutObjectRetention on the resolved version, and only ever to a later date.
//! - `open` refuses a bucket without Object Lock unless the operator explicitly configured
//!   `object_lock = false` ("software immutability only", reported by [`S3Store::protection`]).
//!
//! Retention is also written as `x-amz-meta-holdfast-retain-until` at PUT (immutable per
//! version): it covers objects whose retention has already passed when written (S3 refuses a
//! lock date in the past) and buckets without a lock. Without a lock, `extend_retention` writes
//! a small sidecar `retention/<kind>/<hex>` object instead (software immutability only).

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use reqwest::{Method, StatusCode};

use crate::backend::{
    Expunge, ExpungeAuthority, ObjectMeta, ObjectStore, PutOutcome, StoreError, StoreStatus,
};
use crate::name::{ObjectKind, ObjectName};
use crate::timestamp::Timestamp;

pub mod sigv4;

use sigv4::Credentials;

/// Where the bucket is and how to reach it. Deserialised from the vault's `[store]` table.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// `https://s3.eu-west-1.amazonaws.com`, `http://127.0.0.1:7480` (Ceph RGW), …
    pub endpoint: String,
    /// The SigV4 region (`us-east-1` for most S3-compatible servers).
    #[serde(default = "default_region")]
    pub region: String,
    pub bucket: String,
    /// Prepended to every key (e.g. `prod-db/`), so one bucket can hold several repositories.
    #[serde(default)]
    pub prefix: String,
    /// `true`: `endpoint/bucket/key` (RGW, MinIO); `false`: `bucket.endpoint-host/key` (AWS, COS).
    #[serde(default = "yes")]
    pub path_style: bool,
    /// An AWS-style credentials file (`aws_access_key_id = …`, `aws_secret_access_key = …`);
    /// without it, `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` are read.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// PEM bundle of CA certificates trusted for the endpoint, added to the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Require Object Lock on the bucket (the default). `false` = software immutability only.
    #[serde(default = "yes")]
    pub object_lock: bool,
}

fn default_region() -> String {
    "us-east-1".into()
}
fn yes() -> bool {
    true
}

/// What protects the objects against the holder of the S3 credential.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Protection {
    /// Object Lock is on: every object is written in COMPLIANCE mode; the store itself refuses
    /// deletion and shortening until retain-until, whoever asks.
    ObjectLockCompliance {
        /// The bucket's default retention rule, if any (e.g. "COMPLIANCE 30 days").
        default_rule: Option<String>,
    },
    /// `object_lock = false`: only the vault's software keeps objects; whoever holds the S3
    /// credential can delete them.
    SoftwareOnly,
}

/// The S3 backend. Cheap to clone: clones share one client and one verified-version cache.
#[derive(Clone)]
pub struct S3Store {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: S3Config,
    creds: Credentials,
    http: reqwest::Client,
    protection: Protection,
    /// name → the oldest version whose bytes were verified to hash to the name.
    valid: Mutex<HashMap<ObjectName, Valid>>,
    /// Serialises put_if_absent per name (striped), so racing puts in one process store once.
    put_locks: Vec<tokio::sync::Mutex<()>>,
}

#[derive(Debug, Clone)]
struct Valid {
    version: String,
    size: u64,
    /// Retention last read or set by this process. Used by `list` only (metrics list every
    /// kind on each scrape; one HEAD per object each time would be a request storm); `head`
    /// and `raise` always ask the store. Retention only grows, so a cached value errs low.
    retain_until: Option<Timestamp>,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("endpoint", &self.inner.cfg.endpoint)
            .field("bucket", &self.inner.cfg.bucket)
            .field("prefix", &self.inner.cfg.prefix)
            .field("protection", &self.inner.protection)
            .finish_non_exhaustive()
    }
}

/// One entry of ListObjectVersions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionEntry {
    pub key: String,
    pub version_id: String,
    pub size: u64,
}

fn other(what: impl Into<String>, msg: impl std::fmt::Display) -> StoreError {
    StoreError::io(what, std::io::Error::other(msg.to_string()))
}

/// Reads credentials from an AWS-style file, or from the standard environment variables.
pub fn load_credentials(file: Option<&std::path::Path>) -> Result<Credentials, StoreError> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| StoreError::io(format!("reading S3 credentials file {}", path.display()), e))?;
        if let Ok(m) = std::fs::metadata(path) {
            use std::os::unix::fs::PermissionsExt;
            if m.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    file = %path.display(),
                    "the S3 credentials file is readable by other users: chmod 600 it"
                );
            }
        }
        let mut ak = None;
        let mut sk = None;
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else { continue };
            match k.trim() {
                "aws_access_key_id" | "access_key" => ak = ak.or(Some(v.trim().to_string())),
                "aws_secret_access_key" | "secret_key" => sk = sk.or(Some(v.trim().to_string())),
                _ => {}
            }
        }
        return match (ak, sk) {
            (Some(access_key), Some(secret_key)) => Ok(Credentials { access_key, secret_key }),
            _ => Err(StoreError::Refused(format!(
                "S3 credentials file {} lacks aws_access_key_id and/or aws_secret_access_key lines",
                path.display()
            ))),
        };
    }
    match (std::env::var("AWS_ACCESS_KEY_ID"), std::env::var("AWS_SECRET_ACCESS_KEY")) {
        (Ok(access_key), Ok(secret_key)) if !access_key.is_empty() && !secret_key.is_empty() => {
            Ok(Credentials { access_key, secret_key })
        }
        _ => Err(StoreError::Refused(
            "no S3 credentials: set credentials_file in [store] or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                .into(),
        )),
    }
}

/// Builds the HTTP client: rustls with the system roots plus `ca_file`, if given.
fn http_client(cfg: &S3Config) -> Result<reqwest::Client, StoreError> {
    let mut b = reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(10));
    if let Some(ca) = &cfg.ca_file {
        let pem =
            std::fs::read(ca).map_err(|e| StoreError::io(format!("reading CA file {}", ca.display()), e))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| StoreError::Refused(format!("CA file {} is not a PEM bundle: {e}", ca.display())))?;
        if certs.is_empty() {
            return Err(StoreError::Refused(format!("CA file {} holds no certificate", ca.display())));
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build().map_err(|e| other("building the S3 HTTP client", e))
}

/// A raw S3 request, signed, for the few callers that need one outside the backend (creating a
/// bucket). Not exported as a general client: the backend's methods are the only way the vault
/// touches objects.
#[derive(Clone)]
struct Req<'a> {
    method: Method,
    key: Option<&'a str>,
    query: Vec<(&'a str, String)>,
    headers: Vec<(String, String)>,
    body: Bytes,
}

impl<'a> Req<'a> {
    fn new(method: Method, key: Option<&'a str>) -> Self {
        Req { method, key, query: Vec::new(), headers: Vec::new(), body: Bytes::new() }
    }
    fn q(mut self, k: &'a str, v: impl Into<String>) -> Self {
        self.query.push((k, v.into()));
        self
    }
    fn h(mut self, k: &str, v: impl Into<String>) -> Self {
        self.headers.push((k.to_ascii_lowercase(), v.into()));
        self
    }
    fn body(mut self, b: Bytes) -> Self {
        self.body = b;
        self
    }
}

struct Resp {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Bytes,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// `S3 said 403 AccessDenied: …` for error messages.
    fn describe(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let code = xml_tag(&text, "Code").unwrap_or("");
        let msg = xml_tag(&text, "Message").unwrap_or("");
        format!("S3 answered {} {code} {msg}", self.status).trim_end().to_string()
    }
}

/// Sends `req`, retrying twice (after 0.2 s and 0.8 s) when the connection fails or S3 answers
/// 500/502/503/504 (AWS's SlowDown and InternalError are transient by its own documentation).
/// Every request here is safe to repeat: a repeated PUT adds at most a duplicate version, which
/// reads ignore (the oldest valid version is the object), and deletes are by version id.
async fn send(
    cfg: &S3Config,
    creds: &Credentials,
    http: &reqwest::Client,
    req: Req<'_>,
) -> Result<Resp, StoreError> {
    let mut attempt = 0;
    loop {
        let r = send_once(cfg, creds, http, req.clone()).await;
        let transient = match &r {
            Err(_) => true,
            Ok(resp) => matches!(resp.status.as_u16(), 500 | 502 | 503 | 504),
        };
        if !transient || attempt == 2 {
            return r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200 << (2 * attempt))).await;
        attempt += 1;
    }
}

async fn send_once(
    cfg: &S3Config,
    creds: &Credentials,
    http: &reqwest::Client,
    req: Req<'_>,
) -> Result<Resp, StoreError> {
    let (host, path) = url_parts(cfg, req.key)?;
    let mut query = req.query.clone();
    query.sort();
    let canonical_query = query
        .iter()
        .map(|(k, v)| format!("{}={}", sigv4::uri_encode(k, true), sigv4::uri_encode(v, true)))
        .collect::<Vec<_>>()
        .join("&");
    let scheme = if cfg.endpoint.starts_with("https://") { "https" } else { "http" };
    let url = if canonical_query.is_empty() {
        format!("{scheme}://{host}{path}")
    } else {
        format!("{scheme}://{host}{path}?{canonical_query}")
    };
    let mut headers = req.headers;
    let signed = sigv4::sign(
        creds,
        &cfg.region,
        req.method.as_str(),
        &host,
        &path,
        &canonical_query,
        &mut headers,
        &req.body,
        time::OffsetDateTime::now_utc(),
    );
    let mut rb = http.request(req.method.clone(), &url).header("authorization", signed);
    for (k, v) in &headers {
        if k != "host" {
            rb = rb.header(k.as_str(), v.as_str());
        }
    }
    let what = format!("{} {url}", req.method);
    let r = rb.body(req.body).send().await.map_err(|e| {
        // reqwest's Display stops at "error sending request"; the cause (refused connection,
        // unknown certificate issuer, …) is in the source chain.
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(c) = src {
            msg.push_str(&format!(": {c}"));
            src = c.source();
        }
        other(&what, format!("{msg} (is the S3 endpoint up, and is its certificate trusted? see ca_file)"))
    })?;
    let status = r.status();
    let headers = r.headers().clone();
    let body = r.bytes().await.map_err(|e| other(&what, e))?;
    Ok(Resp { status, headers, body })
}

/// `(host[:port], /path)` for a key (or the bucket itself), path-style or virtual-host.
fn url_parts(cfg: &S3Config, key: Option<&str>) -> Result<(String, String), StoreError> {
    let rest = cfg
        .endpoint
        .strip_prefix("https://")
        .or_else(|| cfg.endpoint.strip_prefix("http://"))
        .ok_or_else(|| {
            StoreError::Refused(format!("S3 endpoint {:?} must start with http:// or https://", cfg.endpoint))
        })?;
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains('/') {
        return Err(StoreError::Refused(format!(
            "S3 endpoint {:?} must be scheme://host[:port] with no path",
            cfg.endpoint
        )));
    }
    let key_path = key.map(|k| format!("/{}", sigv4::uri_encode(k, false))).unwrap_or_default();
    if cfg.path_style {
        Ok((host.to_string(), format!("/{}{}", sigv4::uri_encode(&cfg.bucket, true), key_path)))
    } else {
        let p = if key_path.is_empty() { "/".to_string() } else { key_path };
        Ok((format!("{}.{host}", cfg.bucket), p))
    }
}

/// Creates `cfg.bucket`, with Object Lock enabled if `object_lock` (which also turns on
/// versioning, irrevocably). For setting up a vault and for tests; the vault never deletes one.
pub async fn create_bucket(cfg: &S3Config, object_lock: bool) -> Result<(), StoreError> {
    let creds = load_credentials(cfg.credentials_file.as_deref())?;
    let http = http_client(cfg)?;
    let mut req = Req::new(Method::PUT, None);
    if object_lock {
        req = req.h("x-amz-bucket-object-lock-enabled", "true");
    }
    if cfg.region != "us-east-1" {
        req = req.body(Bytes::from(format!(
            "<CreateBucketConfiguration><LocationConstraint>{}</LocationConstraint></CreateBucketConfiguration>",
            cfg.region
        )));
    }
    let r = send(cfg, &creds, &http, req).await?;
    if !r.status.is_success() {
        return Err(other(format!("creating bucket {}", cfg.bucket), r.describe()));
    }
    Ok(())
}

/// The latest Object Lock date this backend sets: 2100-01-01. AWS caps retention at 100 years,
/// and Ceph RGW keeps lock dates in 32-bit seconds (utime_t): a "forever" lock (9999-12-31, how
/// the vault retains its keys and config) was accepted by RGW 16 and then did not hold — a
/// version-id DELETE with the vault's credential succeeded. Objects retained longer than this
/// (the keys, the config) are locked until the ceiling; only the software keeps them after.
pub const LOCK_CEILING: Timestamp = Timestamp(4_102_444_800);

fn lock_date(t: Timestamp) -> Timestamp {
    t.min(LOCK_CEILING)
}

fn rfc3339(t: Timestamp) -> String {
    t.to_string()
}

fn parse_s3_time(s: &str) -> Option<Timestamp> {
    time::OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| Timestamp(t.unix_timestamp()))
}

fn md5_b64(bytes: &[u8]) -> String {
    use base64::Engine;
    use md5::Digest as _;
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(bytes))
}

/// The text of the first `<name>…</name>` in `xml` (S3 answers are small, flat documents).
fn xml_tag<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&close)? + start;
    Some(&xml[start..end])
}

/// Every `<name>…</name>` block in order.
fn xml_blocks<'a>(xml: &'a str, name: &str) -> Vec<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(&after[..j]);
        rest = &after[j + close.len()..];
    }
    out
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

impl S3Store {
    /// Connects, checks the bucket exists and that Object Lock is enabled on it (unless
    /// `cfg.object_lock` is false). Nothing is written.
    pub async fn open(cfg: S3Config) -> Result<S3Store, StoreError> {
        let creds = load_credentials(cfg.credentials_file.as_deref())?;
        let http = http_client(&cfg)?;
        url_parts(&cfg, None)?;
        if !cfg.prefix.is_empty() && !cfg.prefix.ends_with('/') {
            return Err(StoreError::Refused(format!("S3 prefix {:?} must end with '/'", cfg.prefix)));
        }
        let r = send(&cfg, &creds, &http, Req::new(Method::GET, None).q("object-lock", "")).await?;
        let text = String::from_utf8_lossy(&r.body).into_owned();
        let enabled = r.status.is_success() && xml_tag(&text, "ObjectLockEnabled") == Some("Enabled");
        if !r.status.is_success() {
            let code = xml_tag(&text, "Code").unwrap_or("");
            if code == "NoSuchBucket" {
                return Err(StoreError::Refused(format!(
                    "S3 bucket {} does not exist at {}: create it with Object Lock enabled",
                    cfg.bucket, cfg.endpoint
                )));
            }
            if r.status == StatusCode::FORBIDDEN {
                return Err(StoreError::Refused(format!(
                    "S3 refused the credential for bucket {} ({}): check the access key, secret and region",
                    cfg.bucket,
                    r.describe()
                )));
            }
        }
        let protection = if enabled {
            let rule = xml_tag(&text, "DefaultRetention").map(|d| {
                let mode = xml_tag(d, "Mode").unwrap_or("?");
                match (xml_tag(d, "Days"), xml_tag(d, "Years")) {
                    (Some(n), _) => format!("{mode} {n} days"),
                    (_, Some(n)) => format!("{mode} {n} years"),
                    _ => mode.to_string(),
                }
            });
            Protection::ObjectLockCompliance { default_rule: rule }
        } else if cfg.object_lock {
            return Err(StoreError::Refused(format!(
                "S3 bucket {} has no Object Lock ({}): backups there could be deleted by anyone holding \
                 the credential. Use a bucket created with Object Lock enabled, or set object_lock = false \
                 in [store] to accept software immutability only",
                cfg.bucket,
                r.describe()
            )));
        } else {
            Protection::SoftwareOnly
        };
        let put_locks = (0..64).map(|_| tokio::sync::Mutex::new(())).collect();
        Ok(S3Store {
            inner: Arc::new(Inner {
                cfg,
                creds,
                http,
                protection,
                valid: Mutex::new(HashMap::new()),
                put_locks,
            }),
        })
    }

    /// What protects the objects (for `vault status`).
    pub fn protection(&self) -> &Protection {
        &self.inner.protection
    }

    /// The configuration this store was opened with.
    pub fn config(&self) -> &S3Config {
        &self.inner.cfg
    }

    /// The earliest retention among the objects whose retention this process has set (a PUT
    /// the store accepted with its lock) or read back (`head`, `list`, an extension), and how
    /// many those are. Costs no
    /// request: status pages call it on every view.
    pub fn known_min_retention(&self) -> (Option<Timestamp>, u64) {
        let cache = self.inner.valid.lock().expect("cache lock");
        let known: Vec<Timestamp> = cache.values().filter_map(|v| v.retain_until).collect();
        (known.iter().min().copied(), known.len() as u64)
    }

    /// This store as `vault status` shows it, without listing it (see [`Self::known_min_retention`]).
    pub fn status_now(&self, role: &str) -> StoreStatus {
        let c = &self.inner.cfg;
        let (min, n) = self.known_min_retention();
        let (lock_mode, rule) = match &self.inner.protection {
            Protection::ObjectLockCompliance { default_rule } => {
                ("object_lock_compliance", default_rule.clone())
            }
            Protection::SoftwareOnly => ("none", None),
        };
        StoreStatus {
            role: role.into(),
            location: format!("{}/{}/{}", c.endpoint.trim_end_matches('/'), c.bucket, c.prefix),
            lock_mode: lock_mode.into(),
            lock_default_rule: rule,
            min_retain_until: min,
            objects: n,
            ..StoreStatus::default()
        }
    }

    fn locked(&self) -> bool {
        matches!(self.inner.protection, Protection::ObjectLockCompliance { .. })
    }

    fn key(&self, name: &ObjectName) -> String {
        format!("{}{name}", self.inner.cfg.prefix)
    }

    fn sidecar_key(&self, name: &ObjectName) -> String {
        format!("{}retention/{name}", self.inner.cfg.prefix)
    }

    async fn send(&self, req: Req<'_>) -> Result<Resp, StoreError> {
        send(&self.inner.cfg, &self.inner.creds, &self.inner.http, req).await
    }

    /// Every version of every key under `prefix`, as S3 lists them (per key, newest first).
    pub async fn list_versions(&self, prefix: &str) -> Result<Vec<VersionEntry>, StoreError> {
        let mut out = Vec::new();
        let (mut key_marker, mut version_marker) = (None::<String>, None::<String>);
        loop {
            let mut req =
                Req::new(Method::GET, None).q("versions", "").q("prefix", prefix).q("max-keys", "1000");
            if let Some(k) = &key_marker {
                req = req.q("key-marker", k.clone());
            }
            if let Some(v) = &version_marker {
                req = req.q("version-id-marker", v.clone());
            }
            let r = self.send(req).await?;
            if !r.status.is_success() {
                return Err(other(format!("listing versions under {prefix:?}"), r.describe()));
            }
            let text = String::from_utf8_lossy(&r.body).into_owned();
            for v in xml_blocks(&text, "Version") {
                let (Some(key), Some(id)) = (xml_tag(v, "Key"), xml_tag(v, "VersionId")) else { continue };
                let size = xml_tag(v, "Size").and_then(|s| s.parse().ok()).unwrap_or(0);
                out.push(VersionEntry { key: xml_unescape(key), version_id: xml_unescape(id), size });
            }
            if xml_tag(&text, "IsTruncated") != Some("true") {
                return Ok(out);
            }
            key_marker = xml_tag(&text, "NextKeyMarker").map(xml_unescape);
            version_marker = xml_tag(&text, "NextVersionIdMarker").map(xml_unescape);
            if key_marker.is_none() {
                return Err(other("listing versions", "truncated answer without NextKeyMarker"));
            }
        }
    }

    /// The versions of exactly one name, oldest first.
    async fn versions_of(&self, name: &ObjectName) -> Result<Vec<VersionEntry>, StoreError> {
        let key = self.key(name);
        let mut v: Vec<VersionEntry> =
            self.list_versions(&key).await?.into_iter().filter(|e| e.key == key).collect();
        v.reverse();
        Ok(v)
    }

    /// GET of one version: `Ok(None)` if it does not exist (any more).
    async fn get_version(
        &self,
        name: &ObjectName,
        version: &str,
        range: Option<Range<u64>>,
    ) -> Result<Option<Bytes>, StoreError> {
        let key = self.key(name);
        let mut req = Req::new(Method::GET, Some(&key)).q("versionId", version);
        if let Some(r) = &range {
            req = req.h("range", format!("bytes={}-{}", r.start, r.end - 1));
        }
        let r = self.send(req).await?;
        match r.status {
            s if s.is_success() => Ok(Some(r.body)),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(other(format!("reading {name} version {version}"), r.describe())),
        }
    }

    /// The oldest version whose bytes hash to `name`, with those bytes if they were just read.
    async fn resolve(&self, name: &ObjectName) -> Result<Option<(Valid, Option<Bytes>)>, StoreError> {
        if let Some(v) = self.inner.valid.lock().expect("cache lock").get(name).cloned() {
            return Ok(Some((v, None)));
        }
        for e in self.versions_of(name).await? {
            let Some(bytes) = self.get_version(name, &e.version_id, None).await? else { continue };
            if name.verify(&bytes).is_ok() {
                let v = Valid { version: e.version_id, size: bytes.len() as u64, retain_until: None };
                self.inner.valid.lock().expect("cache lock").insert(*name, v.clone());
                return Ok(Some((v, Some(bytes))));
            }
            tracing::warn!(object = %name, version = %e.version_id, "a version under this name does not hash to it: ignored");
        }
        Ok(None)
    }

    fn remember_retention(&self, name: &ObjectName, version: &str, t: Timestamp) {
        if let Some(v) = self.inner.valid.lock().expect("cache lock").get_mut(name)
            && v.version == version
        {
            v.retain_until = Some(v.retain_until.map_or(t, |c| c.max(t)));
        }
    }

    fn forget(&self, name: &ObjectName) {
        self.inner.valid.lock().expect("cache lock").remove(name);
    }

    /// Retention in force on one version: the later of its COMPLIANCE lock, the retain-until
    /// written at PUT and (without a lock) the sidecar.
    async fn retention_of(&self, name: &ObjectName, version: &str) -> Result<Option<Timestamp>, StoreError> {
        let key = self.key(name);
        let r = self.send(Req::new(Method::HEAD, Some(&key)).q("versionId", version)).await?;
        if r.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !r.status.is_success() {
            return Err(other(format!("reading retention of {name}"), r.describe()));
        }
        let mut t = Timestamp(i64::MIN);
        if r.header("x-amz-object-lock-mode") == Some("COMPLIANCE")
            && let Some(d) = r.header("x-amz-object-lock-retain-until-date").and_then(parse_s3_time)
        {
            t = t.max(d);
        }
        if let Some(m) = r.header("x-amz-meta-holdfast-retain-until").and_then(|s| s.parse().ok()) {
            t = t.max(Timestamp(m));
        }
        if !self.locked() {
            let sk = self.sidecar_key(name);
            let s = self.send(Req::new(Method::GET, Some(&sk))).await?;
            if s.status.is_success()
                && let Ok(v) = String::from_utf8_lossy(&s.body).trim().parse()
            {
                t = t.max(Timestamp(v));
            }
        }
        Ok(Some(t))
    }

    async fn put_new(
        &self,
        name: &ObjectName,
        bytes: Bytes,
        retain_until: Timestamp,
    ) -> Result<String, StoreError> {
        let key = self.key(name);
        let mut req = Req::new(Method::PUT, Some(&key))
            .h("content-md5", md5_b64(&bytes))
            .h("x-amz-meta-holdfast-retain-until", retain_until.as_secs().to_string());
        // S3 refuses a lock date in the past; such an object needs no lock anyway.
        if self.locked() && retain_until > Timestamp::now() {
            req = req
                .h("x-amz-object-lock-mode", "COMPLIANCE")
                .h("x-amz-object-lock-retain-until-date", rfc3339(lock_date(retain_until)));
        }
        let r = self.send(req.body(bytes)).await?;
        if !r.status.is_success() {
            return Err(other(format!("writing {name}"), r.describe()));
        }
        Ok(r.header("x-amz-version-id").unwrap_or("null").to_string())
    }

    /// Raises the lock (or sidecar) of the resolved version to `until`; never lowers it.
    async fn raise(
        &self,
        name: &ObjectName,
        version: &str,
        until: Timestamp,
    ) -> Result<Timestamp, StoreError> {
        let current = self.retention_of(name, version).await?.ok_or(StoreError::NotFound(*name))?;
        self.remember_retention(name, version, current);
        if until <= current {
            return Ok(current);
        }
        // The lock can hold at most until LOCK_CEILING; a later wish ("forever") is kept in
        // full by the software (the metadata written at PUT) and as far as possible by the lock.
        let until = lock_date(until);
        if until <= current {
            return Ok(current);
        }
        if self.locked() {
            let key = self.key(name);
            let body = Bytes::from(format!(
                "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>COMPLIANCE</Mode>\
                 <RetainUntilDate>{}</RetainUntilDate></Retention>",
                rfc3339(until)
            ));
            let r = self
                .send(
                    Req::new(Method::PUT, Some(&key))
                        .q("retention", "")
                        .q("versionId", version)
                        .h("content-md5", md5_b64(&body))
                        .body(body),
                )
                .await?;
            if !r.status.is_success() {
                return Err(other(format!("extending the Object Lock of {name} to {until}"), r.describe()));
            }
        } else {
            let sk = self.sidecar_key(name);
            let r = self
                .send(Req::new(Method::PUT, Some(&sk)).body(Bytes::from(until.as_secs().to_string())))
                .await?;
            if !r.status.is_success() {
                return Err(other(format!("writing the retention of {name}"), r.describe()));
            }
        }
        let now = self.retention_of(name, version).await?.ok_or(StoreError::NotFound(*name))?;
        self.remember_retention(name, version, now);
        if now < until {
            return Err(other(
                format!("extending retention of {name}"),
                format!("the store kept {now}, not {until}"),
            ));
        }
        Ok(now)
    }
}

#[async_trait::async_trait]
impl ObjectStore for S3Store {
    async fn put_if_absent(
        &self,
        name: &ObjectName,
        bytes: Bytes,
        retain_until: Timestamp,
    ) -> Result<PutOutcome, StoreError> {
        name.verify(&bytes)?;
        let _g = self.inner.put_locks[usize::from(name.id.0[0]) % self.inner.put_locks.len()].lock().await;
        if let Some((v, _)) = self.resolve(name).await? {
            self.raise(name, &v.version, retain_until).await?;
            return Ok(PutOutcome::AlreadyPresent);
        }
        let size = bytes.len() as u64;
        let version = self.put_new(name, bytes, retain_until).await?;
        // If ours is the oldest version of the key, it is the object: its bytes were checked
        // against the name above and S3 checked them against Content-MD5, so no re-download.
        // Otherwise someone wrote first (another process, or someone holding the credential):
        // the oldest version that hashes to the name is the object, so resolve as a reader would.
        let versions = self.versions_of(name).await?;
        if versions.first().is_some_and(|v| v.version_id == version) {
            // The store accepted the PUT with this lock (or, already past, the metadata only).
            let v = Valid { version: version.clone(), size, retain_until: Some(retain_until) };
            self.inner.valid.lock().expect("cache lock").insert(*name, v);
            return Ok(PutOutcome::Created);
        }
        self.forget(name);
        match self.resolve(name).await? {
            Some((v, _)) if v.version == version => Ok(PutOutcome::Created),
            Some(_) => Ok(PutOutcome::AlreadyPresent),
            None => Err(other(
                format!("writing {name}"),
                format!("S3 accepted version {version} ({size} bytes) but it does not read back"),
            )),
        }
    }

    async fn get(&self, name: &ObjectName) -> Result<Bytes, StoreError> {
        let (v, bytes) = self.resolve(name).await?.ok_or(StoreError::NotFound(*name))?;
        if let Some(b) = bytes {
            return Ok(b);
        }
        match self.get_version(name, &v.version, None).await? {
            Some(b) if name.verify(&b).is_ok() => Ok(b),
            _ => {
                // The cached version vanished or changed (only possible without a lock): look again.
                self.forget(name);
                let (_, b) = self.resolve(name).await?.ok_or(StoreError::NotFound(*name))?;
                match b {
                    Some(b) => Ok(b),
                    None => Err(StoreError::NotFound(*name)),
                }
            }
        }
    }

    async fn get_range(&self, name: &ObjectName, range: Range<u64>) -> Result<Bytes, StoreError> {
        let (v, bytes) = self.resolve(name).await?.ok_or(StoreError::NotFound(*name))?;
        if range.start > range.end || range.end > v.size {
            return Err(StoreError::BadRange {
                name: *name,
                start: range.start,
                end: range.end,
                size: v.size,
            });
        }
        if let Some(b) = bytes {
            return Ok(b.slice(range.start as usize..range.end as usize));
        }
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let want = range.end - range.start;
        match self.get_version(name, &v.version, Some(range.clone())).await? {
            Some(b) if b.len() as u64 == want => Ok(b),
            _ => {
                self.forget(name);
                Err(other(
                    format!("reading {name} {}..{}", range.start, range.end),
                    "the verified version changed",
                ))
            }
        }
    }

    async fn head(&self, name: &ObjectName) -> Result<Option<ObjectMeta>, StoreError> {
        let Some((v, _)) = self.resolve(name).await? else { return Ok(None) };
        match self.retention_of(name, &v.version).await? {
            Some(t) => {
                self.remember_retention(name, &v.version, t);
                Ok(Some(ObjectMeta { name: *name, size: v.size, retain_until: t }))
            }
            None => {
                self.forget(name);
                Ok(None)
            }
        }
    }

    async fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectMeta>, StoreError> {
        let prefix = format!("{}{kind}/", self.inner.cfg.prefix);
        let mut by_name = BTreeSet::new();
        for e in self.list_versions(&prefix).await? {
            // Keys that are not object names (written by someone else) are not objects.
            let Ok(name) = e.key[self.inner.cfg.prefix.len()..].parse::<ObjectName>() else { continue };
            if name.kind == kind {
                by_name.insert(name);
            }
        }
        let mut out = Vec::with_capacity(by_name.len());
        for name in by_name {
            // Only names with a version that hashes to them are objects: someone holding the
            // credential can write any key. Verifying downloads each name once per process (the
            // vault's own writes are verified as they happen); later lists hit the cache.
            let Some((v, _)) = self.resolve(&name).await? else { continue };
            if let Some(t) = v.retain_until {
                out.push(ObjectMeta { name, size: v.size, retain_until: t });
            } else if let Some(t) = self.retention_of(&name, &v.version).await? {
                self.remember_retention(&name, &v.version, t);
                out.push(ObjectMeta { name, size: v.size, retain_until: t });
            }
        }
        Ok(out)
    }

    async fn extend_retention(&self, name: &ObjectName, until: Timestamp) -> Result<Timestamp, StoreError> {
        let (v, _) = self.resolve(name).await?.ok_or(StoreError::NotFound(*name))?;
        self.raise(name, &v.version, until).await
    }

    async fn status(&self) -> Vec<StoreStatus> {
        // Listing reads every object's retention once per process (later lists use the cache),
        // so the minimum covers the whole bucket, not only what this process touched.
        let mut err = None;
        for kind in ObjectKind::ALL {
            if let Err(e) = self.list(kind).await {
                err = Some(e.to_string());
            }
        }
        let mut st = self.status_now("s3");
        st.last_error = err;
        vec![st]
    }
}

#[async_trait::async_trait]
impl Expunge for S3Store {
    async fn expunge(&self, name: &ObjectName, authority: ExpungeAuthority<'_>) -> Result<(), StoreError> {
        let meta = self.head(name).await?.ok_or(StoreError::NotFound(*name))?;
        let valid = self.resolve(name).await?.ok_or(StoreError::NotFound(*name))?.0;
        match authority {
            ExpungeAuthority::Expired { now } => {
                if meta.retain_until > now {
                    return Err(StoreError::Refused(format!(
                        "{name} is retained until {}; it cannot be removed at {now}",
                        meta.retain_until
                    )));
                }
            }
            ExpungeAuthority::Quorum(w) => {
                if !w.covers(name) {
                    return Err(StoreError::Refused(format!("the quorum warrant does not name {name}")));
                }
            }
        }
        let key = self.key(name);
        // The verified version first: if the store's lock refuses it, nothing else is touched.
        let mut versions = self.versions_of(name).await?;
        versions.sort_by_key(|e| e.version_id != valid.version);
        for e in versions {
            let r =
                self.send(Req::new(Method::DELETE, Some(&key)).q("versionId", e.version_id.clone())).await?;
            if r.status.is_success() || r.status == StatusCode::NOT_FOUND {
                continue;
            }
            if e.version_id == valid.version {
                return Err(StoreError::Refused(format!(
                    "the S3 store refuses to delete {name} ({}): its Object Lock (COMPLIANCE) holds it until {}; \
                     no credential or warrant can remove it earlier",
                    r.describe(),
                    meta.retain_until
                )));
            }
            tracing::warn!(object = %name, version = %e.version_id, answer = %r.describe(), "could not delete a stray version");
        }
        self.forget(name);
        if !self.locked() {
            let sk = self.sidecar_key(name);
            let _ = self.send(Req::new(Method::DELETE, Some(&sk))).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_helpers() {
        let x = "<R><Version><Key>a&amp;b</Key><VersionId>1</VersionId></Version><VersionIdMarker></VersionIdMarker>\
                 <DeleteMarker><Key>c</Key></DeleteMarker><Version><Key>d</Key></Version></R>";
        let b = xml_blocks(x, "Version");
        assert_eq!(b.len(), 2);
        assert_eq!(xml_unescape(xml_tag(b[0], "Key").unwrap()), "a&b");
        assert_eq!(xml_tag(b[1], "Key"), Some("d"));
        assert_eq!(xml_tag(x, "Nope"), None);
    }

    #[test]
    fn url_forms() {
        let mut c = S3Config {
            endpoint: "http://127.0.0.1:7480".into(),
            region: default_region(),
            bucket: "b".into(),
            prefix: String::new(),
            path_style: true,
            credentials_file: None,
            ca_file: None,
            object_lock: true,
        };
        assert_eq!(url_parts(&c, Some("pack/ab")).unwrap(), ("127.0.0.1:7480".into(), "/b/pack/ab".into()));
        c.path_style = false;
        c.endpoint = "https://s3.eu-west-1.amazonaws.com".into();
        assert_eq!(
            url_parts(&c, Some("pack/ab")).unwrap(),
            ("b.s3.eu-west-1.amazonaws.com".into(), "/pack/ab".into())
        );
        assert_eq!(url_parts(&c, None).unwrap().1, "/");
        c.endpoint = "s3.example.com".into();
        assert!(url_parts(&c, None).is_err());
        c.endpoint = "https://s3.example.com/path".into();
        assert!(url_parts(&c, None).is_err());
    }
}
