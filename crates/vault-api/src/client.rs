//! `VaultClient`: a typed async client for every vault endpoint, over TLS pinned to the
//! vault's own certificate.

use std::time::Duration;

use bytes::Bytes;
use reqwest::{Method, StatusCode};
use vault_types::{ObjectKind, ObjectName, Timestamp};

use crate::token::Scope;
use crate::wire::*;

/// Errors from the client. `Api` carries the vault's own message.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the vault refused the request ({status}): {message}")]
    Api { status: u16, message: String },
    #[error("could not reach the vault at {url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// A backup's data is damaged; the vault names the other backups of the cluster that do
    /// not use the damaged chunk.
    #[error("{message}")]
    Damaged { message: String, backups_without_it: Vec<String> },
    #[error("client setup failed: {0}")]
    Setup(String),
    #[error("the vault sent a response that could not be understood: {0}")]
    BadResponse(String),
}

impl ClientError {
    /// The HTTP status if the vault answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            ClientError::Damaged { .. } => Some(500),
            _ => None,
        }
    }
}

/// A client for one vault, authenticated with one token (or none, for `/healthz`).
#[derive(Clone)]
pub struct VaultClient {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl std::fmt::Debug for VaultClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultClient")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

impl VaultClient {
    /// A client for the vault at `base_url` (e.g. `https://127.0.0.1:8443`) that trusts only
    /// the certificate(s) in `ca_pem` — the vault's self-signed certificate — and no public CA.
    pub fn new(base_url: &str, ca_pem: &[u8], token: Option<String>) -> Result<VaultClient, ClientError> {
        let certs = reqwest::Certificate::from_pem_bundle(ca_pem)
            .map_err(|e| ClientError::Setup(format!("the CA file is not PEM certificates: {e}")))?;
        if certs.is_empty() {
            return Err(ClientError::Setup("the CA file holds no certificate".into()));
        }
        let http = reqwest::Client::builder()
            .tls_certs_only(certs)
            .https_only(true)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ClientError::Setup(format!("building the HTTP client: {e}")))?;
        Ok(VaultClient { http, base: base_url.trim_end_matches('/').to_string(), token })
    }

    /// The same vault with another token.
    pub fn with_token(&self, token: Option<String>) -> VaultClient {
        VaultClient { http: self.http.clone(), base: self.base.clone(), token }
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// A raw request to `path` with this client's token: for tests that send odd requests.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let rb = self.http.request(method, format!("{}{}", self.base, path));
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let resp =
            rb.send().await.map_err(|e| ClientError::Transport { url: self.base.clone(), source: e })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let undamaged = resp
            .headers()
            .get(UNDAMAGED_BACKUPS_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(',').filter(|s| !s.is_empty()).map(String::from).collect::<Vec<_>>());
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<ErrorBody>(&text).map(|b| b.error).unwrap_or(text);
        match undamaged {
            Some(backups_without_it) => Err(ClientError::Damaged { message, backups_without_it }),
            None => Err(ClientError::Api { status, message }),
        }
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let resp = self.send(rb).await?;
        let bytes =
            resp.bytes().await.map_err(|e| ClientError::Transport { url: self.base.clone(), source: e })?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::BadResponse(e.to_string()))
    }

    /// `GET /healthz` (no token needed).
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.json(self.http.get(format!("{}/healthz", self.base))).await
    }

    /// `GET /metrics`: Prometheus text (a read or admin token).
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let resp = self.send(self.request(Method::GET, "/metrics")).await?;
        resp.text().await.map_err(|e| ClientError::Transport { url: self.base.clone(), source: e })
    }

    /// Uploads a pack. The name must be the BLAKE3 hash of `bytes`.
    pub async fn put_object(
        &self,
        name: &ObjectName,
        bytes: Bytes,
    ) -> Result<PutObjectResponse, ClientError> {
        self.json(self.request(Method::PUT, &format!("/v1/objects/{name}")).body(bytes)).await
    }

    /// Downloads a whole object.
    pub async fn get_object(&self, name: &ObjectName) -> Result<Bytes, ClientError> {
        let resp = self.send(self.request(Method::GET, &format!("/v1/objects/{name}"))).await?;
        resp.bytes().await.map_err(|e| ClientError::Transport { url: self.base.clone(), source: e })
    }

    /// Downloads bytes `start..=end_inclusive` of an object.
    pub async fn get_object_range(
        &self,
        name: &ObjectName,
        start: u64,
        end_inclusive: u64,
    ) -> Result<Bytes, ClientError> {
        let rb = self
            .request(Method::GET, &format!("/v1/objects/{name}"))
            .header(reqwest::header::RANGE, format!("bytes={start}-{end_inclusive}"));
        let resp = self.send(rb).await?;
        resp.bytes().await.map_err(|e| ClientError::Transport { url: self.base.clone(), source: e })
    }

    /// The object's size, or `None` if it is absent.
    pub async fn head_object(&self, name: &ObjectName) -> Result<Option<u64>, ClientError> {
        let rb = self.request(Method::HEAD, &format!("/v1/objects/{name}"));
        let resp =
            rb.send().await.map_err(|e| ClientError::Transport { url: self.base.clone(), source: e })?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => Ok(resp.content_length()),
            s => Err(ClientError::Api { status: s.as_u16(), message: "HEAD refused (no body)".into() }),
        }
    }

    /// Lists objects of one kind.
    pub async fn list_objects(&self, kind: ObjectKind) -> Result<ListObjectsResponse, ClientError> {
        self.json(self.request(Method::GET, &format!("/v1/objects?kind={kind}"))).await
    }

    /// Appends an allow-listed catalog record.
    pub async fn append_record(
        &self,
        kind: &str,
        body: serde_json::Value,
    ) -> Result<AppendRecordResponse, ClientError> {
        let req = AppendRecordRequest { kind: kind.to_string(), body };
        self.json(self.request(Method::POST, "/v1/records").json(&req)).await
    }

    /// Lists catalog records, optionally of one kind.
    pub async fn list_records(&self, kind: Option<&str>) -> Result<ListRecordsResponse, ClientError> {
        // Record kinds are lowercase dotted words: nothing to percent-encode.
        let path = match kind {
            Some(k) => format!("/v1/records?kind={k}"),
            None => "/v1/records".to_string(),
        };
        self.json(self.request(Method::GET, &path)).await
    }

    /// Capture status of every protected cluster.
    pub async fn status(&self) -> Result<crate::status::StatusResponse, ClientError> {
        self.json(self.request(Method::GET, "/v1/status")).await
    }

    /// Takes a base backup of `cluster` now; returns when it is complete (may take long).
    pub async fn backup_cluster(&self, cluster: &str) -> Result<crate::status::BackupSummary, ClientError> {
        if !cluster.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(ClientError::Setup(format!(
                "{cluster:?} is not a cluster name: letters, digits, _ and - only"
            )));
        }
        let req = self.request(Method::POST, &format!("/v1/clusters/{cluster}/backup"));
        self.json(req.timeout(std::time::Duration::from_secs(24 * 3600))).await
    }

    fn check_cluster_name(cluster: &str) -> Result<(), ClientError> {
        if cluster.is_empty() || !cluster.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(ClientError::Setup(format!(
                "{cluster:?} is not a cluster name: letters, digits, _ and - only"
            )));
        }
        Ok(())
    }

    /// Every incident of `cluster`, oldest first (incident N is element N − 1).
    pub async fn incidents(&self, cluster: &str) -> Result<Vec<crate::status::Incident>, ClientError> {
        Self::check_cluster_name(cluster)?;
        self.json(self.request(Method::GET, &format!("/v1/clusters/{cluster}/incidents"))).await
    }

    /// Every restore point in the WAL the vault stores for `cluster`, by timeline and LSN.
    pub async fn restore_points(
        &self,
        cluster: &str,
    ) -> Result<Vec<crate::status::RestorePoint>, ClientError> {
        Self::check_cluster_name(cluster)?;
        self.json(self.request(Method::GET, &format!("/v1/clusters/{cluster}/restore-points"))).await
    }

    /// Starts a restore drill of `cluster` in the vault (admin); returns its id at once.
    pub async fn start_drill(&self, cluster: &str) -> Result<crate::drill::DrillStarted, ClientError> {
        Self::check_cluster_name(cluster)?;
        self.json(self.request(Method::POST, &format!("/v1/clusters/{cluster}/drills"))).await
    }

    /// Every warm standby's state.
    pub async fn standbys(&self) -> Result<crate::standby::StandbysResponse, ClientError> {
        self.json(self.request(Method::GET, "/v1/standbys")).await
    }

    /// Promotes `cluster`'s standby, paused before incident `before_incident` (admin).
    pub async fn promote_standby(
        &self,
        cluster: &str,
        before_incident: usize,
    ) -> Result<crate::standby::StandbyActionResponse, ClientError> {
        Self::check_cluster_name(cluster)?;
        let req = self
            .request(Method::POST, &format!("/v1/clusters/{cluster}/standby/promote"))
            .json(&crate::standby::PromoteRequest { before_incident });
        self.json(req.timeout(std::time::Duration::from_secs(600))).await
    }

    /// Makes `cluster`'s standby follow again (admin): clears its stop, or builds a fresh one
    /// when it was promoted or overran an incident.
    pub async fn resume_standby(
        &self,
        cluster: &str,
    ) -> Result<crate::standby::StandbyActionResponse, ClientError> {
        Self::check_cluster_name(cluster)?;
        let req = self.request(Method::POST, &format!("/v1/clusters/{cluster}/standby/resume"));
        self.json(req.timeout(std::time::Duration::from_secs(600))).await
    }

    /// Stored drill reports (signed) and each cluster's drill state.
    pub async fn drills(&self) -> Result<crate::drill::DrillsResponse, ClientError> {
        self.json(self.request(Method::GET, "/v1/drills")).await
    }

    /// What the vault holds for `cluster`: backups, WAL runs, histories, window.
    pub async fn inventory(&self, cluster: &str) -> Result<crate::status::Inventory, ClientError> {
        Self::check_cluster_name(cluster)?;
        self.json(self.request(Method::GET, &format!("/v1/clusters/{cluster}/inventory"))).await
    }

    /// A WAL segment or history file by PostgreSQL's file name. Returns the bytes (a segment is
    /// always whole) and how many of them are stored WAL (the rest are zeros).
    pub async fn wal_file(&self, cluster: &str, file: &str) -> Result<(Bytes, u64), ClientError> {
        Self::check_cluster_name(cluster)?;
        if file.is_empty() || !file.chars().all(|c| c.is_ascii_alphanumeric() || c == '.') {
            return Err(ClientError::Setup(format!("{file:?} is not a WAL file name")));
        }
        let resp =
            self.send(self.request(Method::GET, &format!("/v1/clusters/{cluster}/wal/{file}"))).await?;
        let valid = resp
            .headers()
            .get(crate::WAL_VALID_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| ClientError::BadResponse(format!("no {} header", crate::WAL_VALID_HEADER)))?;
        let bytes =
            resp.bytes().await.map_err(|e| ClientError::Transport { url: self.base.clone(), source: e })?;
        Ok((bytes, valid))
    }

    /// Every file, directory and symlink of a backup.
    pub async fn backup_entries(&self, backup: &str) -> Result<BackupEntriesResponse, ClientError> {
        if !backup.chars().all(|c| c.is_ascii_hexdigit()) || backup.is_empty() {
            return Err(ClientError::Setup(format!("{backup:?} is not a backup id (hex digits)")));
        }
        self.json(self.request(Method::GET, &format!("/v1/backups/{backup}/entries"))).await
    }

    /// Plaintext bytes `[offset, offset + length)` of one file of a backup (at most 64 MiB).
    pub async fn backup_file_range(
        &self,
        backup: &str,
        path: &str,
        offset: u64,
        length: u64,
    ) -> Result<Bytes, ClientError> {
        if !backup.chars().all(|c| c.is_ascii_hexdigit()) || backup.is_empty() {
            return Err(ClientError::Setup(format!("{backup:?} is not a backup id (hex digits)")));
        }
        // Percent-encoding by hand: the only query this client builds, not worth a feature.
        let mut enc = String::with_capacity(path.len());
        for b in path.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
                enc.push(b as char);
            } else {
                enc.push_str(&format!("%{b:02X}"));
            }
        }
        let url = format!("/v1/backups/{backup}/file?path={enc}&offset={offset}&length={length}");
        let rb = self.request(Method::GET, &url);
        let resp = self.send(rb).await?;
        resp.bytes().await.map_err(|e| ClientError::Transport { url: self.base.clone(), source: e })
    }

    /// Lists backups.
    pub async fn backups(&self) -> Result<ListBackupsResponse, ClientError> {
        self.json(self.request(Method::GET, "/v1/backups")).await
    }

    /// Creates a token; the response holds its secret, shown once.
    pub async fn create_token(&self, scope: Scope, label: &str) -> Result<CreateTokenResponse, ClientError> {
        let req = CreateTokenRequest { scope, label: label.to_string() };
        self.json(self.request(Method::POST, "/v1/tokens").json(&req)).await
    }

    /// Lists tokens (never their secrets).
    pub async fn list_tokens(&self) -> Result<ListTokensResponse, ClientError> {
        self.json(self.request(Method::GET, "/v1/tokens")).await
    }

    /// Revokes a token by id.
    pub async fn revoke_token(&self, id: &str) -> Result<TokenInfo, ClientError> {
        self.json(self.request(Method::DELETE, &format!("/v1/tokens/{id}"))).await
    }

    /// The retention policy in force.
    pub async fn retention(&self) -> Result<RetentionPolicy, ClientError> {
        self.json(self.request(Method::GET, "/v1/retention")).await
    }

    /// Lengthens the retention policy (shortening is refused).
    pub async fn set_retention(&self, days: u32) -> Result<RetentionPolicy, ClientError> {
        self.json(self.request(Method::PUT, "/v1/retention").json(&RetentionPolicy { days })).await
    }

    /// Retains every existing object at least until `until`.
    pub async fn extend_retention(&self, until: Timestamp) -> Result<ExtendRetentionResponse, ClientError> {
        let req = ExtendRetentionRequest { until };
        self.json(self.request(Method::POST, "/v1/retention/extend").json(&req)).await
    }

    /// Proposes an early deletion (alerts every keyholder).
    pub async fn propose(&self, req: &ProposeRequest) -> Result<ProposalView, ClientError> {
        self.json(self.request(Method::POST, "/v1/proposals").json(req)).await
    }

    /// A proposal and the bytes to sign.
    pub async fn proposal(&self, id: &str) -> Result<ProposalView, ClientError> {
        self.json(self.request(Method::GET, &format!("/v1/proposals/{id}"))).await
    }

    /// Adds a keyholder's signature to a proposal.
    pub async fn sign(&self, id: &str, req: &SignRequest) -> Result<ProposalView, ClientError> {
        self.json(self.request(Method::POST, &format!("/v1/proposals/{id}/signatures")).json(req)).await
    }

    /// Vetoes a proposal (one enrolled keyholder suffices).
    pub async fn veto(&self, id: &str, req: &VetoRequest) -> Result<ProposalView, ClientError> {
        self.json(self.request(Method::POST, &format!("/v1/proposals/{id}/veto")).json(req)).await
    }

    /// Executes a proposal once a quorum signed and the waiting period passed.
    pub async fn execute(&self, id: &str) -> Result<ExecuteResponse, ClientError> {
        self.json(self.request(Method::POST, &format!("/v1/proposals/{id}/execute"))).await
    }
}
