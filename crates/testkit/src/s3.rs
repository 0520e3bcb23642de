//! S3 on a [`TempCeph`] as the vault and an adversary see it: the credentials file the vault
//! reads, a store config for a bucket, and the adversary's own raw requests signed with that
//! credential (root on the vault host can read it from the vault's config).

use std::path::PathBuf;

use anyhow::Result;
use reqwest::{Method, StatusCode};
use store::s3::sigv4;

use crate::ceph::{ACCESS_KEY, SECRET_KEY, TempCeph};

/// Writes the S3 user's credential to `s3.credentials` in the cluster's directory, in the
/// format the vault reads (`credentials_file`); its path.
pub fn credentials_file(ceph: &TempCeph) -> Result<PathBuf> {
    let path = ceph.dir().join("s3.credentials");
    std::fs::write(
        &path,
        format!("aws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"),
    )?;
    Ok(path)
}

/// The store config for `bucket` under `prefix` on `ceph` (path-style, `us-east-1`, Object
/// Lock required), the credential in [`credentials_file`].
pub fn config(ceph: &TempCeph, bucket: &str, prefix: &str) -> Result<store::S3Config> {
    Ok(store::S3Config {
        endpoint: ceph.endpoint(),
        region: "us-east-1".into(),
        bucket: bucket.into(),
        prefix: prefix.into(),
        path_style: true,
        credentials_file: Some(credentials_file(ceph)?),
        ca_file: None,
        object_lock: true,
    })
}

/// A vault's `[store]` table (for `vault init --store-config`): a local `store/` directory
/// written through to `remote`'s bucket.
pub fn mirror_table(remote: &store::S3Config) -> String {
    let creds = remote.credentials_file.as_deref().map(|p| p.display().to_string()).unwrap_or_default();
    format!(
        "[store]\nkind = \"mirror\"\npath = \"store\"\n[store.remote]\nendpoint = \"{}\"\nbucket = \"{}\"\nprefix = \"{}\"\ncredentials_file = \"{creds}\"\n",
        remote.endpoint, remote.bucket, remote.prefix
    )
}

/// An adversary holding the vault's S3 credential, sending requests of its own choosing to one
/// bucket (signed with SigV4, as any S3 client would).
pub struct Adversary {
    http: reqwest::Client,
    host: String,
    bucket: String,
    creds: sigv4::Credentials,
}

impl Adversary {
    /// The adversary against `bucket` on `ceph`, with the S3 user's credential.
    pub fn new(ceph: &TempCeph, bucket: &str) -> Adversary {
        Adversary {
            http: reqwest::Client::new(),
            host: ceph.endpoint().trim_start_matches("http://").to_string(),
            bucket: bucket.into(),
            creds: sigv4::Credentials { access_key: ACCESS_KEY.into(), secret_key: SECRET_KEY.into() },
        }
    }

    /// Sends `method` on `key` (or the bucket itself) with `query` and `headers`; the status and
    /// body S3 answered. A request that gets no answer is 502 with the transport error as body.
    pub async fn send(
        &self,
        method: Method,
        key: Option<&str>,
        query: &[(&str, &str)],
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> (StatusCode, String) {
        let path = match key {
            Some(k) => format!("/{}/{}", self.bucket, sigv4::uri_encode(k, false)),
            None => format!("/{}", self.bucket),
        };
        let mut q: Vec<(String, String)> =
            query.iter().map(|(k, v)| (sigv4::uri_encode(k, true), sigv4::uri_encode(v, true))).collect();
        q.sort();
        let cq = q.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
        let mut headers: Vec<(String, String)> =
            headers.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        let auth = sigv4::sign(
            &self.creds,
            "us-east-1",
            method.as_str(),
            &self.host,
            &path,
            &cq,
            &mut headers,
            &body,
            time::OffsetDateTime::now_utc(),
        );
        let url = if cq.is_empty() {
            format!("http://{}{path}", self.host)
        } else {
            format!("http://{}{path}?{cq}", self.host)
        };
        let mut rb = self.http.request(method, url).header("authorization", auth);
        for (k, v) in headers.iter().filter(|(k, _)| k != "host") {
            rb = rb.header(k.as_str(), v.as_str());
        }
        match rb.body(body).send().await {
            Ok(r) => {
                let status = r.status();
                (status, r.text().await.unwrap_or_default())
            }
            Err(e) => (StatusCode::BAD_GATEWAY, format!("no answer: {e}")),
        }
    }
}

/// The `Content-MD5` header's value for `body` (S3 requires it on PutObjectRetention).
pub fn content_md5(body: &[u8]) -> String {
    use base64::Engine;
    use md5::Digest;
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(body))
}
