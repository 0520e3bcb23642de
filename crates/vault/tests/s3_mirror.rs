//! A vault whose store is a local directory written through to a locked bucket on a real Ceph
//! RGW (`[store] kind = "mirror"`): status and `/metrics` show both copies' lock mode and
//! retention floor and the upload queue; RGW stopped under writes raises the backlog and
//! failing alerts, nothing is lost, and the recovery alert follows when it drains; root erasing
//! the local store leaves a vault that reopens and reads everything from the bucket, and the
//! copies' check names what is missing where.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vault::clock::SystemClock;
use vault::config::{Config, StoreConfig, StoreFile, UploadAlerts};
use vault_api::client::VaultClient;

fn alerts_seen(file: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["alert"].as_str().map(String::from))
        .collect()
}

async fn poll(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

mod common;
use common::init_options as opts;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_vault_alerts_on_a_stopped_bucket_drains_and_survives_an_erased_local_store() {
    let mut ceph = testkit::ceph::TempCeph::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let remote = testkit::s3::config(&ceph, "mirror", "v1/").unwrap();
    store::s3::create_bucket(&remote, true).await.unwrap();
    let dir = tmp.path().join("vault");
    let file = StoreFile {
        kind: Some("mirror".into()),
        path: Some("store".into()),
        max_pending_objects: Some(3),
        upload_grace_seconds: Some(1),
        remote: Some(remote.clone()),
        ..StoreFile::default()
    };
    let init = vault::init_with_store(opts(&dir), file, &SystemClock).await.unwrap();
    let mut config = Config::load(&init.config_path).unwrap();
    let StoreConfig::Mirror { alerts, .. } = &config.store else { panic!("{:?}", config.store) };
    assert_eq!(
        *alerts,
        UploadAlerts { max_pending_objects: 3, max_pending_bytes: 10 << 30, grace: Duration::from_secs(1) }
    );
    let alert_file = tmp.path().join("alerts.jsonl");
    config.alert_command = Some(vec![
        "sh".into(),
        "-c".into(),
        format!("printf '%s\\n' \"$(cat)\" >> {}", alert_file.display()),
    ]);

    let handle = vault::serve(config.clone(), Arc::new(SystemClock)).await.unwrap();
    let ca = std::fs::read(&init.ca_path).unwrap();
    let admin = VaultClient::new(&format!("https://{}", handle.addr()), &ca, Some(init.admin_token.expose()))
        .unwrap();
    // Three catalog writes of this process: status counts the bucket's objects whose retention
    // this process set or read back (`S3Store::known_min_retention`), so what init uploaded
    // before `serve` may or may not be among them (a CI run saw 2); these three always are.
    for i in 0..3 {
        admin
            .create_token(vault_api::Scope::Read, &format!("written while the bucket is up #{i}"))
            .await
            .unwrap();
    }
    let mirror = handle.shared().stores.mirror.clone().unwrap();
    assert!(mirror.wait_drained(Duration::from_secs(60)).await);

    // Status: both copies, the bucket under COMPLIANCE, a retention floor of about a week.
    let week = store::Timestamp::now().plus(Duration::from_secs(7 * 86_400 - 120));
    let status = admin.status().await.unwrap();
    let roles: Vec<&str> = status.stores.iter().map(|s| s.role.as_str()).collect();
    assert_eq!(roles, ["mirror.local", "mirror.remote"]);
    let (local, bucket) = (&status.stores[0], &status.stores[1]);
    assert_eq!((local.lock_mode.as_str(), bucket.lock_mode.as_str()), ("software", "object_lock_compliance"));
    assert!(local.min_retain_until.unwrap() >= week, "{local:?}");
    assert!(bucket.min_retain_until.unwrap() >= week && bucket.objects >= 3, "{bucket:?}");
    assert_eq!((bucket.pending_objects, bucket.failing_since), (Some(0), None));
    let metrics = admin.metrics().await.unwrap();
    assert!(
        metrics
            .contains("holdfast_store_object_lock{role=\"mirror.remote\",mode=\"object_lock_compliance\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("holdfast_store_pending_objects 0"), "{metrics}");
    assert!(
        metrics.contains("holdfast_store_min_retain_until_timestamp_seconds{role=\"mirror.remote\"}"),
        "{metrics}"
    );

    // RGW stops under writes: every write is acknowledged (durable locally), the queue grows
    // past its bound, uploads fail past the grace period: two alerts, and status says so.
    ceph.stop_rgw().unwrap();
    // Token records: catalog writes the vault acknowledges only once they are durable.
    for i in 0..5 {
        admin
            .create_token(vault_api::Scope::Read, &format!("written while the bucket is down #{i}"))
            .await
            .unwrap();
    }
    poll("the backlog and failing alerts", Duration::from_secs(60), async || {
        let seen = alerts_seen(&alert_file);
        seen.iter().any(|a| a == "store.upload_backlog") && seen.iter().any(|a| a == "store.upload_failing")
    })
    .await;
    let st = admin.status().await.unwrap();
    let b = &st.stores[1];
    assert!(b.pending_objects.unwrap() >= 5 && b.failing_since.is_some() && b.last_error.is_some(), "{b:?}");
    let metrics = admin.metrics().await.unwrap();
    assert!(metrics.contains("holdfast_store_upload_failing 1"), "{metrics}");

    // RGW returns: the queue drains, the recovery alert follows, the bucket has every record.
    ceph.start_rgw().unwrap();
    poll("the recovery alert", Duration::from_secs(60), async || {
        alerts_seen(&alert_file).iter().any(|a| a == "store.upload_recovered")
    })
    .await;
    assert_eq!(admin.status().await.unwrap().stores[1].pending_objects, Some(0));
    let fresh = store::S3Store::open(remote.clone()).await.unwrap();
    let in_bucket = store::ObjectStore::list(&fresh, store::ObjectKind::Catalog).await.unwrap();
    let local_store = store::LocalDir::open(dir.join("store")).unwrap();
    let in_local = store::ObjectStore::list(&local_store, store::ObjectKind::Catalog).await.unwrap();
    assert_eq!(
        in_bucket.iter().map(|m| m.name).collect::<Vec<_>>(),
        in_local.iter().map(|m| m.name).collect::<Vec<_>>()
    );
    handle.shutdown().await;

    // Root erases the local store: the vault reopens from the bucket, its state is whole, and
    // the copies' check names every object as missing locally and none missing in the bucket.
    std::fs::remove_dir_all(dir.join("store")).unwrap();
    let handle = vault::serve(config.clone(), Arc::new(SystemClock)).await.unwrap();
    let admin = VaultClient::new(&format!("https://{}", handle.addr()), &ca, Some(init.admin_token.expose()))
        .unwrap();
    let tokens = admin.list_tokens().await.unwrap();
    let while_down = format!("{tokens:?}").matches("written while the bucket is down").count();
    assert_eq!(while_down, 5, "{tokens:?}");
    let m = handle.shared().stores.mirror.clone().unwrap();
    let copies = m.verify_copies().await;
    assert!(copies.local_missing.len() >= 3 + 5, "{copies:?}");
    assert!(
        copies.remote_missing.is_empty() && copies.local_damaged.is_empty() && copies.errors.is_empty(),
        "{copies:?}"
    );
    assert!(m.upload_status().fallback_reads > 0);
    handle.shutdown().await;
}
