//! Adversary A3/A4 with the vault's own S3 credential (root on the vault host reads the config):
//! on a real Ceph RGW with Object Lock, it tries every way S3 offers to destroy or replace the
//! vault's objects with raw signed requests of its own. Everything is refused by the store or
//! harmless, and afterwards a fresh vault handle restores the backup exactly.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use reqwest::{Method, StatusCode};
use store::{ObjectKind, ObjectName, ObjectStore, Repository, S3Store, Timestamp};
use testkit::s3::{Adversary, content_md5};

fn make_tree(root: &Path) {
    let w = |rel: &str, data: &[u8]| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    };
    let mut rel = Vec::new();
    for page in 0..24u32 {
        let mut p = format!("row {page} ").repeat(1000).into_bytes();
        p.resize(8192, b' ');
        rel.extend_from_slice(&p);
    }
    w("base/5/16384", &rel);
    w("global/pg_control", &[7u8; 8192]);
    w("postgresql.conf", b"shared_buffers = 128MB\n");
    w("pg_wal/000000010000000000000001", &(0..(1u32 << 20)).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>());
}

fn same_files(a: &Path, b: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![std::path::PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(a.join(&rel)).unwrap() {
            let r = rel.join(e.unwrap().file_name());
            if a.join(&r).is_dir() {
                stack.push(r);
            } else {
                assert_eq!(std::fs::read(a.join(&r)).unwrap(), std::fs::read(b.join(&r)).unwrap(), "{r:?}");
                n += 1;
            }
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_credential_holder_cannot_destroy_or_replace_locked_backups() {
    let ceph = testkit::ceph::TempCeph::start().unwrap();
    let cfg = testkit::s3::config(&ceph, "vault-prod", "prod/").unwrap();
    store::s3::create_bucket(&cfg, true).await.unwrap();
    let s3 = S3Store::open(cfg.clone()).await.unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(s3.clone());

    // The vault writes a repository and one backup of a data directory, retained a day.
    let now = Timestamp::now();
    let until = now.plus(std::time::Duration::from_secs(86_400));
    let id = age::x25519::Identity::generate();
    let repo = Repository::init(store.clone(), &[id.to_public()], now, until).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_tree(&src);
    let (r, s) = (repo.clone(), src.clone());
    let rec = tokio::task::spawn_blocking(move || {
        let mut w = r.backup_writer("before the attack", until);
        w.add_tree(&s).unwrap();
        w.finish(Timestamp::now()).unwrap()
    })
    .await
    .unwrap();
    let mut before = Vec::new();
    for kind in ObjectKind::ALL {
        for m in s3.list(kind).await.unwrap() {
            before.push((m, s3.get(&m.name).await.unwrap()));
        }
    }
    assert!(before.len() >= 5, "only {} objects written", before.len());
    assert!(before.iter().all(|(m, _)| m.retain_until >= until));

    let adv = Adversary::new(&ceph, &cfg.bucket);
    let versions = s3.list_versions("prod/").await.unwrap();
    assert_eq!(versions.len(), before.len(), "one version per object before the attack");
    let past = Timestamp(now.0 - 3600).to_string();
    let sooner = Timestamp(now.0 + 60).to_string();

    for v in &versions {
        let k = v.key.as_str();
        let vid = v.version_id.as_str();
        // 1. Delete the version, plainly and with the governance bypass header.
        let (st, body) = adv.send(Method::DELETE, Some(k), &[("versionId", vid)], &[], vec![]).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "delete {k}@{vid}: {body}");
        let bypass = [("x-amz-bypass-governance-retention", "true".to_string())];
        let (st, body) = adv.send(Method::DELETE, Some(k), &[("versionId", vid)], &bypass, vec![]).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "bypass delete {k}@{vid}: {body}");
        // 2. Shorten the retention, or switch the mode to GOVERNANCE (with bypass).
        for (mode, date) in [("COMPLIANCE", &past), ("COMPLIANCE", &sooner), ("GOVERNANCE", &sooner)] {
            let x = format!(
                "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>{mode}</Mode>\
                 <RetainUntilDate>{date}</RetainUntilDate></Retention>"
            )
            .into_bytes();
            for extra in [&[][..], &bypass[..]] {
                let mut h = vec![("content-md5", content_md5(&x))];
                h.extend(extra.iter().cloned());
                let (st, body) = adv
                    .send(Method::PUT, Some(k), &[("retention", ""), ("versionId", vid)], &h, x.clone())
                    .await;
                assert!(!st.is_success(), "{mode} until {date} on {k}@{vid} accepted: {body}");
            }
        }
        // 3. Overwrite the name with other bytes (a new version), then delete the "latest"
        //    (a delete marker): neither touches the locked version.
        let (st, body) = adv.send(Method::PUT, Some(k), &[], &[], b"ransom note".to_vec()).await;
        assert!(st.is_success(), "overwrite {k}: {st} {body}");
        let (st, body) = adv.send(Method::DELETE, Some(k), &[], &[], vec![]).await;
        assert!(st.is_success(), "delete marker {k}: {st} {body}");
    }
    // 4. Multi-object delete of every version at once.
    let objects: String = versions
        .iter()
        .map(|v| format!("<Object><Key>{}</Key><VersionId>{}</VersionId></Object>", v.key, v.version_id))
        .collect();
    let x = format!("<Delete>{objects}</Delete>").into_bytes();
    let (st, body) =
        adv.send(Method::POST, None, &[("delete", "")], &[("content-md5", content_md5(&x))], x).await;
    assert!(!body.contains("<Deleted>"), "multi-delete removed something: {st} {body}");
    // 5. A forged object under a name that was never written, and one under a real name.
    let forged = ObjectName::for_bytes(ObjectKind::Catalog, b"a forged record");
    let (st, _) =
        adv.send(Method::PUT, Some(&format!("prod/{forged}")), &[], &[], b"not those bytes".to_vec()).await;
    assert!(st.is_success());
    // 6. Delete the bucket.
    let (st, body) = adv.send(Method::DELETE, None, &[], &[], vec![]).await;
    assert_eq!(st, StatusCode::CONFLICT, "bucket delete: {body}");

    // Afterwards, through a fresh handle (nothing cached): every object reads back exactly,
    // with its retention, the forged name is not an object, and the backup restores.
    let fresh = S3Store::open(cfg.clone()).await.unwrap();
    let mut after = Vec::new();
    for kind in ObjectKind::ALL {
        after.extend(fresh.list(kind).await.unwrap());
    }
    assert_eq!(after, before.iter().map(|(m, _)| *m).collect::<Vec<_>>());
    for (m, bytes) in &before {
        assert_eq!(&fresh.get(&m.name).await.unwrap(), bytes, "{}", m.name);
        assert_eq!(fresh.head(&m.name).await.unwrap().unwrap().retain_until, m.retain_until);
        let n = bytes.len() as u64;
        assert_eq!(fresh.get_range(&m.name, n / 2..n).await.unwrap(), bytes.slice(n as usize / 2..));
    }
    assert!(fresh.head(&forged).await.unwrap().is_none());
    // The vault's own put of an existing name is still "already present" (a version with the
    // right hash exists), even though the latest version is the adversary's delete marker.
    let (m0, b0) = &before[0];
    assert_eq!(
        fresh.put_if_absent(&m0.name, b0.clone(), until).await.unwrap(),
        store::PutOutcome::AlreadyPresent
    );
    // Nor can the vault itself expunge early, even through the store's own Expunge.
    let err = store::Expunge::expunge(
        &fresh,
        &m0.name,
        store::ExpungeAuthority::Expired { now: until.plus(std::time::Duration::from_secs(1)) },
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("Object Lock"), "{err}");
    assert_eq!(&fresh.get(&m0.name).await.unwrap(), b0);

    let reopened = Repository::open(Arc::new(fresh) as Arc<dyn ObjectStore>, &[id]).await.unwrap();
    assert_eq!(reopened.backups().await.unwrap(), vec![rec.clone()]);
    let out = dir.path().join("restored");
    reopened.restore(&rec.id, &out).await.unwrap();
    assert_eq!(same_files(&src, &out), 4);

    // 7. Squatting: other bytes planted under a name before the vault writes it. The vault's
    //    put still creates the object (a newer version), and every reader gets the right bytes.
    let real = Bytes::from_static(b"the object the vault is about to write");
    let squatted = ObjectName::for_bytes(ObjectKind::Pack, &real);
    let (st, _) =
        adv.send(Method::PUT, Some(&format!("prod/{squatted}")), &[], &[], b"squatter".to_vec()).await;
    assert!(st.is_success());
    assert_eq!(s3.put_if_absent(&squatted, real.clone(), until).await.unwrap(), store::PutOutcome::Created);
    assert_eq!(s3.get(&squatted).await.unwrap(), real);
    let fresh = S3Store::open(cfg).await.unwrap();
    assert_eq!(fresh.get(&squatted).await.unwrap(), real);
    assert_eq!(fresh.head(&squatted).await.unwrap().unwrap().retain_until, until);
}

/// Objects the vault keeps "forever" (its keys and config: `Timestamp::FOREVER`, 9999-12-31)
/// are under a COMPLIANCE lock too. Regression: RGW 16 keeps lock dates in 32-bit seconds, so a
/// 9999 lock was accepted and then did not hold (a version-id DELETE succeeded); the backend now
/// locks until `store::s3::LOCK_CEILING` (2100-01-01) at most.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_kept_forever_are_locked_too() {
    let ceph = testkit::ceph::TempCeph::start().unwrap();
    let cfg = testkit::s3::config(&ceph, "vault-forever", "prod/").unwrap();
    store::s3::create_bucket(&cfg, true).await.unwrap();
    let s3 = S3Store::open(cfg.clone()).await.unwrap();
    let adv = Adversary::new(&ceph, &cfg.bucket);
    let kept = Bytes::from_static(b"{\"wrapped\":\"the repository keys\"}");
    let name = ObjectName::for_bytes(ObjectKind::Keys, &kept);
    s3.put_if_absent(&name, kept.clone(), Timestamp::FOREVER).await.unwrap();
    // Extending something retained a day to "forever" locks it (to the ceiling) as well.
    let later = Bytes::from_static(b"a pack that a forever backup reuses");
    let extended = ObjectName::for_bytes(ObjectKind::Pack, &later);
    s3.put_if_absent(&extended, later.clone(), Timestamp::now().plus(std::time::Duration::from_secs(86_400)))
        .await
        .unwrap();
    s3.extend_retention(&extended, Timestamp::FOREVER).await.unwrap();
    for v in s3.list_versions("prod/").await.unwrap() {
        let (st, body) =
            adv.send(Method::HEAD, Some(&v.key), &[("versionId", v.version_id.as_str())], &[], vec![]).await;
        assert!(st.is_success(), "{body}");
        let (st, body) = adv
            .send(Method::DELETE, Some(&v.key), &[("versionId", v.version_id.as_str())], &[], vec![])
            .await;
        assert_eq!(st, StatusCode::FORBIDDEN, "delete {}: {body}", v.key);
    }
    let fresh = S3Store::open(cfg).await.unwrap();
    assert_eq!(fresh.get(&name).await.unwrap(), kept);
    assert_eq!(fresh.get(&extended).await.unwrap(), later);
}
