//! `check` names the damaged pack and the backups that use it, with and without keys.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use store::{LocalDir, ObjectKind, ObjectStore, Repository, Timestamp, check};

fn data(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn tamper(path: &std::path::Path, at: usize) {
    let mut b = std::fs::read(path).unwrap();
    let at = at.min(b.len() - 1);
    b[at] ^= 0x20;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(path, b).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_names_pack_and_backups() {
    let dir = tempfile::tempdir().unwrap();
    let local = LocalDir::open(dir.path()).unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(local.clone());
    let id = age::x25519::Identity::generate();
    let repo = Repository::init(store.clone(), &[id.to_public()], Timestamp::now(), Timestamp::FOREVER)
        .await
        .unwrap();
    // Backup A holds file a; backup B holds a (shared) and b; backup C holds only c.
    let (a, b, c) = (data(3 << 20, 1), data(3 << 20, 2), data(3 << 20, 3));
    let mut recs = Vec::new();
    for (label, files) in [
        ("A", vec![("a", a.clone())]),
        ("B", vec![("a", a.clone()), ("b", b.clone())]),
        ("C", vec![("c", c.clone())]),
    ] {
        let r = repo.clone();
        recs.push(
            tokio::task::spawn_blocking(move || {
                let mut w = r.backup_writer(label, Timestamp::FOREVER);
                for (p, d) in files {
                    w.add_stream(p, &d[..], 0o600, 0).unwrap();
                }
                w.finish(Timestamp::now()).unwrap()
            })
            .await
            .unwrap(),
        );
    }
    let clean = check(store.as_ref(), Some(&repo)).await;
    assert!(clean.is_clean(), "{clean:#?}");
    assert_eq!(clean.backups_checked, 3);
    assert!(check(store.as_ref(), None).await.is_clean());

    // Find the pack holding file a's first chunk (written by backup A) and flip one byte in it.
    let mut victim = None;
    for p in store.list(ObjectKind::Pack).await.unwrap() {
        let bytes = store.get(&p.name).await.unwrap();
        let header = store::pack::header_from_bytes(repo.keys(), &p.name, &bytes).unwrap();
        if header.iter().any(|e| e.id == repo.keys().chunk_id(&a[..e.raw_length as usize])) {
            victim = Some(p.name);
        }
    }
    let victim = victim.expect("a pack holds file a");
    tamper(&local.object_path(&victim), 1000);

    // Without keys: the pack is named.
    let r = check(store.as_ref(), None).await;
    assert_eq!(r.damaged.len(), 1, "{r:#?}");
    assert_eq!(r.damaged[0].name, victim.to_string());
    assert!(r.damaged[0].why.contains("hashes to"));

    // With keys: the pack and exactly the backups using it (A and B, not C).
    let r = check(store.as_ref(), Some(&repo)).await;
    assert_eq!(
        r.damaged.iter().map(|p| p.name.clone()).collect::<Vec<_>>(),
        vec![victim.to_string()],
        "{r:#?}"
    );
    let mut affected: Vec<&str> = r.affected_backups.iter().map(|b| b.label.as_str()).collect();
    affected.sort();
    assert_eq!(affected, vec!["A", "B"], "{r:#?}");
    assert!(r.affected_backups.iter().all(|b| b.because.iter().any(|w| w.contains(&victim.to_string()))));
    let json = serde_json::to_string(&r).unwrap();
    assert!(json.contains(&victim.to_string()));

    // A missing index file: blobs of every backup are in no index; missing reported.
    for i in store.list(ObjectKind::Index).await.unwrap() {
        std::fs::remove_file(local.object_path(&i.name)).unwrap();
    }
    let r = check(store.as_ref(), Some(&repo)).await;
    assert!(r.missing.iter().any(|p| p.name.starts_with("blob ")), "{r:#?}");
    assert_eq!(r.affected_backups.len(), 3);
    assert!(r.warnings.iter().any(|w| w.contains("in no index")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_catalog_and_missing_pack() {
    let dir = tempfile::tempdir().unwrap();
    let local = LocalDir::open(dir.path()).unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(local.clone());
    let id = age::x25519::Identity::generate();
    let repo = Repository::init(store.clone(), &[id.to_public()], Timestamp::now(), Timestamp::FOREVER)
        .await
        .unwrap();
    let name = repo
        .append_record("incident", serde_json::json!({"n": 1}), Timestamp::now(), Timestamp::FOREVER)
        .await
        .unwrap();
    let r = repo.clone();
    let rec = tokio::task::spawn_blocking(move || {
        let mut w = r.backup_writer("only", Timestamp::FOREVER);
        w.add_stream("x", &data(100_000, 5)[..], 0o600, 0).unwrap();
        w.finish(Timestamp::now()).unwrap()
    })
    .await
    .unwrap();
    tamper(&local.object_path(&name), 5);
    let pack = store.list(ObjectKind::Pack).await.unwrap()[0].name;
    std::fs::remove_file(local.object_path(&pack)).unwrap();
    let r = check(store.as_ref(), Some(&repo)).await;
    assert!(r.damaged.iter().any(|p| p.name == name.to_string()), "{r:#?}");
    assert!(r.missing.iter().any(|p| p.name == pack.to_string()), "{r:#?}");
    assert_eq!(r.affected_backups.len(), 1);
    assert_eq!(r.affected_backups[0].id, rec.id);
}
