//! `holdfast demo --store s3`: the vault's store is a local directory written through to a
//! bucket with Object Lock (COMPLIANCE) on a Ceph RGW the demo starts (`testkit::ceph`), and an
//! extra act: root on the vault host erases the vault's local store and turns the vault's own S3
//! credential on the bucket — refused by the store — and the restore then comes from the bucket.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use reqwest::{Method, StatusCode};
use store::s3::sigv4;
use testkit::ceph::TempCeph;

use super::{Stage, Story, blocking};

/// The bucket and its RGW, kept for the whole demo.
pub(super) struct S3Side {
    pub ceph: TempCeph,
    pub bucket: String,
    /// The `[store]` table `vault init --store-config` reads.
    pub store_config: PathBuf,
}

/// Starts Ceph (MON, memstore OSD, RGW), creates a bucket with Object Lock, and writes the
/// vault's store table: a local `store/` written through to that bucket.
pub(super) async fn start(s: &mut Story, work: &Path) -> Result<S3Side> {
    let ceph = blocking(TempCeph::start).context("starting Ceph RGW for --store s3")?;
    let creds = work.join("s3.credentials");
    std::fs::write(
        &creds,
        format!(
            "aws_access_key_id = {}\naws_secret_access_key = {}\n",
            testkit::ceph::ACCESS_KEY,
            testkit::ceph::SECRET_KEY
        ),
    )?;
    let bucket = "holdfast-shop".to_string();
    let cfg = store::S3Config {
        endpoint: ceph.endpoint(),
        region: "us-east-1".into(),
        bucket: bucket.clone(),
        prefix: "shop/".into(),
        path_style: true,
        credentials_file: Some(creds.clone()),
        ca_file: None,
        object_lock: true,
    };
    store::s3::create_bucket(&cfg, true).await?;
    let store_config = work.join("store-mirror.toml");
    std::fs::write(
        &store_config,
        format!(
            "[store]\nkind = \"mirror\"\npath = \"store\"\n[store.remote]\nendpoint = \"{}\"\nbucket = \"{bucket}\"\nprefix = \"shop/\"\ncredentials_file = \"{}\"\n",
            ceph.endpoint(),
            creds.display()
        ),
    )?;
    s.event(
        "vault",
        format!(
            "Ceph RGW at {} (one MON, one OSD, RGW); bucket {bucket} created with Object Lock; the vault writes through to it",
            ceph.endpoint()
        ),
    );
    Ok(S3Side { ceph, bucket, store_config })
}

/// The extra act: root erases the local store and attacks the bucket with the S3 credential.
/// Returns how many of the credential's attempts the store refused, of how many.
pub(super) async fn act_root_erases_the_local_store(
    s: &mut Story,
    st: &mut Stage,
    side: &S3Side,
) -> Result<(usize, usize)> {
    s.say("--store s3: root on the vault host erases the vault's local store and turns its S3 credential on the bucket");
    // First every object reaches the bucket (the queue drains; `holdfast status` shows it).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let st_now = st.admin.status().await?;
        let remote = st_now.stores.iter().find(|x| x.role == "mirror.remote");
        if remote.is_some_and(|r| r.pending_objects == Some(0) && r.reconciled == Some(true)) {
            break;
        }
        if Instant::now() > deadline {
            return Err(anyhow!("the upload queue did not drain within 120 s: {remote:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    st.vault.terminate();
    let local = st.vault.store_dir();
    std::fs::remove_dir_all(&local).with_context(|| format!("erasing {}", local.display()))?;
    s.event("insider", format!("stops the vault and runs rm -rf {}", local.display()));

    let endpoint = side.ceph.endpoint();
    let host = endpoint.trim_start_matches("http://").to_string();
    let creds = sigv4::Credentials {
        access_key: testkit::ceph::ACCESS_KEY.into(),
        secret_key: testkit::ceph::SECRET_KEY.into(),
    };
    let http = reqwest::Client::new();
    let send = async |method: Method, key: Option<&str>, query: &[(&str, &str)], extra: &[(&str, &str)]| {
        let path = match key {
            Some(k) => format!("/{}/{}", side.bucket, sigv4::uri_encode(k, false)),
            None => format!("/{}", side.bucket),
        };
        let mut q: Vec<(String, String)> =
            query.iter().map(|(k, v)| (sigv4::uri_encode(k, true), sigv4::uri_encode(v, true))).collect();
        q.sort();
        let cq = q.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
        let mut headers: Vec<(String, String)> =
            extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let auth = sigv4::sign(
            &creds,
            "us-east-1",
            method.as_str(),
            &host,
            &path,
            &cq,
            &mut headers,
            &[],
            time::OffsetDateTime::now_utc(),
        );
        let url =
            if cq.is_empty() { format!("http://{host}{path}") } else { format!("http://{host}{path}?{cq}") };
        let mut rb = http.request(method, url).header("authorization", auth);
        for (k, v) in headers.iter().filter(|(k, _)| k != "host") {
            rb = rb.header(k.as_str(), v.as_str());
        }
        rb.send().await.map(|r| r.status()).unwrap_or(StatusCode::BAD_GATEWAY)
    };
    // The versions, as the credential lists them.
    let lister = open_bucket(side).await?;
    let versions = lister.list_versions("shop/").await?;
    let (mut refused, mut tried) = (0, 0);
    for v in &versions {
        for extra in [&[][..], &[("x-amz-bypass-governance-retention", "true")][..]] {
            tried += 1;
            if send(Method::DELETE, Some(&v.key), &[("versionId", v.version_id.as_str())], extra).await
                == StatusCode::FORBIDDEN
            {
                refused += 1;
            }
        }
    }
    tried += 1;
    let bucket_delete = send(Method::DELETE, None, &[], &[]).await;
    if bucket_delete == StatusCode::CONFLICT {
        refused += 1;
    }
    s.event(
        "insider",
        format!(
            "with the vault's S3 credential: deletes each of {} object versions (also with the GOVERNANCE bypass), then the bucket — {refused} of {tried} refused by Object Lock (COMPLIANCE)",
            versions.len()
        ),
    );
    blocking(|| st.vault.restart())?;
    s.event("vault", "restarted with no local store: serves from the bucket alone, object by object");
    Ok((refused, tried))
}

/// A handle on the bucket for listing versions, as the credential holder would.
async fn open_bucket(side: &S3Side) -> Result<store::S3Store> {
    let ceph = &side.ceph;
    let creds = ceph.dir().join("demo-s3.credentials");
    std::fs::write(
        &creds,
        format!(
            "aws_access_key_id = {}\naws_secret_access_key = {}\n",
            testkit::ceph::ACCESS_KEY,
            testkit::ceph::SECRET_KEY
        ),
    )?;
    let cfg = store::S3Config {
        endpoint: ceph.endpoint(),
        region: "us-east-1".into(),
        bucket: side.bucket.clone(),
        prefix: "shop/".into(),
        path_style: true,
        credentials_file: Some(creds),
        ca_file: None,
        object_lock: true,
    };
    Ok(store::S3Store::open(cfg).await?)
}
