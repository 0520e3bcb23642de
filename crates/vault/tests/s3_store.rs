//! The vault on an S3 bucket with Object Lock (a real Ceph RGW): `init` refuses a bucket
//! without a lock (and writes nothing) unless `object_lock = false` was configured; a vault
//! initialised on a locked bucket serves, and its repository reopens from the bucket alone.

use std::sync::Arc;

use vault::clock::SystemClock;
use vault::config::{Config, StoreFile};

mod common;
use common::init_options as opts;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_init_and_serve_on_s3_require_object_lock() {
    let ceph = testkit::ceph::TempCeph::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let creds = testkit::s3::credentials_file(&ceph).unwrap();
    let file = |bucket: &str, object_lock: Option<bool>| StoreFile {
        kind: Some("s3".into()),
        endpoint: Some(ceph.endpoint()),
        bucket: Some(bucket.into()),
        credentials_file: Some(creds.clone()),
        object_lock,
        ..StoreFile::default()
    };
    let s3 = |bucket: &str| testkit::s3::config(&ceph, bucket, "").unwrap();
    store::s3::create_bucket(&s3("unlocked"), false).await.unwrap();
    store::s3::create_bucket(&s3("locked"), true).await.unwrap();

    // No lock: refused, and the directory holds no vault afterwards (a retry can succeed).
    let d1 = tmp.path().join("v1");
    let err = vault::init_with_store(opts(&d1), file("unlocked", None), &SystemClock).await.unwrap_err();
    assert!(err.to_string().contains("object_lock = false"), "{err}");
    assert!(!d1.join("vault.key").exists() && !d1.join("vault.toml").exists());
    // Explicitly accepted: software immutability only.
    vault::init_with_store(opts(&d1), file("unlocked", Some(false)), &SystemClock).await.unwrap();

    // Locked: init, serve, and the repository reopens from the bucket.
    let d2 = tmp.path().join("v2");
    // As `holdfast vault init --store-config FILE` reads it: a file with only a [store] table.
    let table = tmp.path().join("store.toml");
    std::fs::write(
        &table,
        format!(
            "[store]\nkind = \"s3\"\nendpoint = \"{}\"\nbucket = \"locked\"\ncredentials_file = \"{}\"\n",
            ceph.endpoint(),
            creds.display()
        ),
    )
    .unwrap();
    let from_file = StoreFile::from_file(&table).unwrap();
    assert_eq!(format!("{from_file:?}"), format!("{:?}", file("locked", None)));
    let init = vault::init_with_store(opts(&d2), from_file, &SystemClock).await.unwrap();
    assert!(!d2.join("store").exists(), "an S3 vault keeps no local store");
    let config = Config::load(&init.config_path).unwrap();
    assert!(matches!(config.store, vault::config::StoreConfig::S3(_)));
    let handle = vault::serve(config.clone(), Arc::new(SystemClock)).await.unwrap();
    handle.shutdown().await;
    let (repo, _) = vault::open_repository(&config, None).await.unwrap();
    assert_eq!(repo.id(), init.repository);
    let state = vault::load_state(&repo).await.unwrap();
    assert_eq!(format!("{state:?}").matches("first admin").count(), 1);
    // Every object the vault wrote is under a COMPLIANCE lock until at least now + 7 days.
    let s = store::S3Store::open(s3("locked")).await.unwrap();
    let week = store::Timestamp::now().plus(std::time::Duration::from_secs(7 * 86_400 - 60));
    let mut n = 0;
    for kind in store::ObjectKind::ALL {
        for m in store::ObjectStore::list(&s, kind).await.unwrap() {
            assert!(m.retain_until >= week, "{} retained only until {}", m.name, m.retain_until);
            n += 1;
        }
    }
    assert!(n >= 3, "{n} objects");
}
