//! `holdfast demo --store s3`: the vault's store is a local directory written through to a
//! bucket with Object Lock (COMPLIANCE) on a Ceph RGW the demo starts (`testkit::ceph`), and an
//! extra act: root on the vault host erases the vault's local store and turns the vault's own S3
//! credential on the bucket — refused by the store — and the restore then comes from the bucket.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use reqwest::{Method, StatusCode};
use testkit::ceph::TempCeph;
use testkit::s3::Adversary;

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
    let bucket = "holdfast-shop".to_string();
    let cfg = testkit::s3::config(&ceph, &bucket, "shop/")?;
    store::s3::create_bucket(&cfg, true).await?;
    let store_config = work.join("store-mirror.toml");
    std::fs::write(&store_config, testkit::s3::mirror_table(&cfg))?;
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

    let adversary = Adversary::new(&side.ceph, &side.bucket);
    let send = async |method: Method, key: Option<&str>, query: &[(&str, &str)], extra: &[(&str, String)]| {
        adversary.send(method, key, query, extra, Vec::new()).await.0
    };
    // The versions, as the credential lists them.
    let lister = open_bucket(side).await?;
    let versions = lister.list_versions("shop/").await?;
    let (mut refused, mut tried) = (0, 0);
    for v in &versions {
        for extra in [&[][..], &[("x-amz-bypass-governance-retention", "true".to_string())][..]] {
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
    let cfg = testkit::s3::config(&side.ceph, &side.bucket, "shop/")?;
    Ok(store::S3Store::open(cfg).await?)
}
