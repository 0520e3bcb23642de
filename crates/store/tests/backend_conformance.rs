//! One conformance suite for every object-store backend (restic's backend tests are the model).
//!
//! Add a backend by adding one `#[tokio::test]` that builds it and calls [`conformance`].

use std::sync::Arc;

use bytes::Bytes;
use store::{
    Expunge, ExpungeAuthority, ObjectKind, ObjectName, ObjectStore, PutOutcome, StoreError, Timestamp,
};

/// Everything a backend must guarantee. `s` must be empty.
async fn conformance<S: ObjectStore + Expunge>(s: S) {
    let s = Arc::new(s);
    let now = Timestamp::now();
    let day = std::time::Duration::from_secs(86_400);
    let t1 = now.plus(day);
    let t2 = now.plus(day * 2);

    // Wrong hash: rejected, nothing stored.
    let name = ObjectName::for_bytes(ObjectKind::Pack, b"right");
    let err = s.put_if_absent(&name, Bytes::from_static(b"wrong"), t1).await.unwrap_err();
    assert!(matches!(err, StoreError::Name(_)), "{err}");
    assert!(s.head(&name).await.unwrap().is_none());
    assert!(s.list(ObjectKind::Pack).await.unwrap().is_empty());
    assert!(matches!(s.get(&name).await, Err(StoreError::NotFound(_))));

    // Store; same bytes again → AlreadyPresent; different bytes under the name → refused.
    assert_eq!(s.put_if_absent(&name, Bytes::from_static(b"right"), t1).await.unwrap(), PutOutcome::Created);
    assert_eq!(
        s.put_if_absent(&name, Bytes::from_static(b"right"), t1).await.unwrap(),
        PutOutcome::AlreadyPresent
    );
    assert!(s.put_if_absent(&name, Bytes::from_static(b"other"), t1).await.is_err());
    assert_eq!(&s.get(&name).await.unwrap()[..], b"right");
    let meta = s.head(&name).await.unwrap().unwrap();
    assert_eq!((meta.size, meta.retain_until), (5, t1));

    // Retention only lengthens: extending to an earlier instant keeps the later one.
    assert_eq!(s.extend_retention(&name, t2).await.unwrap(), t2);
    assert_eq!(s.extend_retention(&name, t1).await.unwrap(), t2);
    assert_eq!(s.extend_retention(&name, Timestamp(0)).await.unwrap(), t2);
    assert_eq!(s.head(&name).await.unwrap().unwrap().retain_until, t2);
    // A put with an earlier retain_until on an existing object keeps the later one.
    assert_eq!(
        s.put_if_absent(&name, Bytes::from_static(b"right"), t1).await.unwrap(),
        PutOutcome::AlreadyPresent
    );
    assert_eq!(s.head(&name).await.unwrap().unwrap().retain_until, t2);
    let absent = ObjectName::for_bytes(ObjectKind::Pack, b"absent");
    assert!(s.extend_retention(&absent, t2).await.is_err());

    // get_range bounds.
    assert_eq!(&s.get_range(&name, 1..4).await.unwrap()[..], b"igh");
    assert_eq!(&s.get_range(&name, 0..5).await.unwrap()[..], b"right");
    assert_eq!(s.get_range(&name, 5..5).await.unwrap().len(), 0);
    assert!(matches!(s.get_range(&name, 3..6).await, Err(StoreError::BadRange { .. })));
    assert!(matches!(s.get_range(&name, 10..20).await, Err(StoreError::BadRange { .. })));
    #[allow(clippy::reversed_empty_ranges)]
    let backwards = 4..2;
    assert!(s.get_range(&name, backwards).await.is_err());
    assert!(s.get_range(&absent, 0..1).await.is_err());

    // List: one kind only, in name order, nothing else (no temp files).
    let mut names = vec![name];
    for i in 0..20u32 {
        let b = format!("object {i}").into_bytes();
        let n = ObjectName::for_bytes(ObjectKind::Pack, &b);
        s.put_if_absent(&n, b.into(), t1).await.unwrap();
        names.push(n);
    }
    let idx = ObjectName::for_bytes(ObjectKind::Index, b"an index");
    s.put_if_absent(&idx, Bytes::from_static(b"an index"), t1).await.unwrap();
    names.sort();
    let listed: Vec<ObjectName> =
        s.list(ObjectKind::Pack).await.unwrap().into_iter().map(|m| m.name).collect();
    assert_eq!(listed, names);
    assert_eq!(s.list(ObjectKind::Index).await.unwrap().len(), 1);
    assert!(s.list(ObjectKind::Catalog).await.unwrap().is_empty());

    // Expunge refuses an unexpired object under Expired{now}; allows it once expired.
    let err = s.expunge(&name, ExpungeAuthority::Expired { now }).await.unwrap_err();
    assert!(matches!(err, StoreError::Refused(_)), "{err}");
    assert!(s.head(&name).await.unwrap().is_some());
    let short = ObjectName::for_bytes(ObjectKind::Catalog, b"short-lived");
    s.put_if_absent(&short, Bytes::from_static(b"short-lived"), Timestamp(now.0 - 10)).await.unwrap();
    s.expunge(&short, ExpungeAuthority::Expired { now }).await.unwrap();
    assert!(s.head(&short).await.unwrap().is_none());

    // Many tasks racing to put the same name: exactly one Created, every one succeeds.
    let bytes = Bytes::from(vec![42u8; 100_000]);
    let race = ObjectName::for_bytes(ObjectKind::Pack, &bytes);
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (s, b) = (s.clone(), bytes.clone());
        tasks.push(tokio::spawn(async move { s.put_if_absent(&race, b, t1).await }));
    }
    let mut created = 0;
    for t in tasks {
        if t.await.unwrap().unwrap() == PutOutcome::Created {
            created += 1;
        }
    }
    assert_eq!(created, 1);
    assert_eq!(s.get(&race).await.unwrap(), bytes);
    let listed: Vec<ObjectName> =
        s.list(ObjectKind::Pack).await.unwrap().into_iter().map(|m| m.name).collect();
    assert_eq!(listed.iter().filter(|n| **n == race).count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_dir() {
    let dir = tempfile::tempdir().unwrap();
    conformance(store::LocalDir::open(dir.path()).unwrap()).await;
    // Nothing is left behind in tmp/ after all those writes.
    assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
}

/// A config for `bucket` on `ceph`, the credential in a file (as the vault reads it).
fn s3_config(ceph: &testkit::ceph::TempCeph, bucket: &str, object_lock: bool) -> store::S3Config {
    let creds = ceph.dir().join("s3-credentials");
    std::fs::write(
        &creds,
        format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            testkit::ceph::ACCESS_KEY,
            testkit::ceph::SECRET_KEY
        ),
    )
    .unwrap();
    store::S3Config {
        endpoint: ceph.endpoint(),
        region: "us-east-1".into(),
        bucket: bucket.into(),
        prefix: String::new(),
        path_style: true,
        credentials_file: Some(creds),
        ca_file: None,
        object_lock,
    }
}

/// The same suite on a real Ceph RGW: an Object Lock bucket (COMPLIANCE on every object), and a
/// bucket without a lock opened with `object_lock = false`. A bucket without a lock is refused
/// unless that was configured, and a bucket that does not exist is named in the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_on_ceph_rgw() {
    let ceph = testkit::ceph::TempCeph::start().unwrap();

    let locked = s3_config(&ceph, "conformance-locked", true);
    let err = store::S3Store::open(locked.clone()).await.unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    store::s3::create_bucket(&locked, true).await.unwrap();
    let s = store::S3Store::open(locked.clone()).await.unwrap();
    assert!(matches!(s.protection(), store::Protection::ObjectLockCompliance { .. }));
    conformance(s).await;
    // A fresh handle (nothing cached) sees the same objects.
    let fresh = store::S3Store::open(locked).await.unwrap();
    assert_eq!(fresh.list(ObjectKind::Pack).await.unwrap().len(), 22);

    let unlocked = s3_config(&ceph, "conformance-unlocked", true);
    store::s3::create_bucket(&unlocked, false).await.unwrap();
    let err = store::S3Store::open(unlocked.clone()).await.unwrap_err();
    assert!(err.to_string().contains("object_lock = false"), "{err}");
    let s = store::S3Store::open(store::S3Config { object_lock: false, ..unlocked }).await.unwrap();
    assert_eq!(s.protection(), &store::Protection::SoftwareOnly);
    conformance(s.clone()).await;

    // The store going away is an error that says so, never a silent success or "absent".
    let mut ceph = ceph;
    ceph.stop_rgw().unwrap();
    let n = ObjectName::for_bytes(ObjectKind::Pack, b"while RGW is down");
    let err =
        s.put_if_absent(&n, Bytes::from_static(b"while RGW is down"), Timestamp::now()).await.unwrap_err();
    assert!(err.to_string().contains("is the S3 endpoint up"), "{err}");
    let other = ObjectName::for_bytes(ObjectKind::Pack, b"never written");
    assert!(matches!(s.head(&other).await, Err(StoreError::Io { .. })));
    let err = store::S3Store::open(s3_config(&ceph, "conformance-locked", true)).await.unwrap_err();
    assert!(err.to_string().contains("is the S3 endpoint up"), "{err}");
}

/// The write-through store (`kind = "mirror"`): a local directory and a locked bucket behave as
/// one backend; once the queue drains, the bucket alone holds every object the suite left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mirror_local_dir_through_to_s3() {
    let ceph = testkit::ceph::TempCeph::start().unwrap();
    let cfg = s3_config(&ceph, "conformance-mirror", true);
    store::s3::create_bucket(&cfg, true).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let local = store::LocalDir::open(dir.path()).unwrap();
    let m = store::MirrorStore::open(local, store::S3Store::open(cfg.clone()).await.unwrap());
    conformance(m.clone()).await;
    assert!(m.wait_drained(std::time::Duration::from_secs(60)).await, "{:?}", m.upload_status());
    let bucket = store::S3Store::open(cfg).await.unwrap();
    let local_packs = m.local().list(ObjectKind::Pack).await.unwrap();
    let remote_packs = bucket.list(ObjectKind::Pack).await.unwrap();
    assert_eq!(local_packs.len(), 22);
    assert_eq!(
        remote_packs.iter().map(|x| (x.name, x.size, x.retain_until)).collect::<Vec<_>>(),
        local_packs.iter().map(|x| (x.name, x.size, x.retain_until)).collect::<Vec<_>>(),
        "the bucket holds every pack with the local retention"
    );
    // The expunged short-lived object reached neither copy afterwards.
    assert!(bucket.list(ObjectKind::Catalog).await.unwrap().is_empty());
}

/// TLS with a private CA (`ca_file`): RGW serves HTTPS with a certificate the system does not
/// trust; with the certificate as `ca_file` the store works, without it opening fails on the
/// certificate (never falls back to plain HTTP or skips verification).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_over_tls_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("rgw.crt"), dir.path().join("rgw.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let ceph = testkit::ceph::TempCeph::start_with_tls(Some((&cert, &key))).unwrap();
    let cfg = store::S3Config {
        endpoint: ceph.tls_endpoint().unwrap(),
        ca_file: Some(cert.clone()),
        ..s3_config(&ceph, "over-tls", true)
    };
    store::s3::create_bucket(&cfg, true).await.unwrap();
    let s = store::S3Store::open(cfg.clone()).await.unwrap();
    let n = ObjectName::for_bytes(ObjectKind::Pack, b"over tls");
    let until = Timestamp::now().plus(std::time::Duration::from_secs(3600));
    assert_eq!(
        s.put_if_absent(&n, Bytes::from_static(b"over tls"), until).await.unwrap(),
        PutOutcome::Created
    );
    assert_eq!(&s.get(&n).await.unwrap()[..], b"over tls");

    let err = store::S3Store::open(store::S3Config { ca_file: None, ..cfg.clone() }).await.unwrap_err();
    assert!(format!("{err:?}").to_lowercase().contains("certificate"), "{err:?}");
    let bad = dir.path().join("not-a-ca.pem");
    std::fs::write(&bad, "hello").unwrap();
    let err = store::S3Store::open(store::S3Config { ca_file: Some(bad), ..cfg }).await.unwrap_err();
    assert!(err.to_string().contains("holds no certificate"), "{err}");
}
