//! Issue 15, vault side: the least privileged token cannot write the vault's history, store
//! junk, or fill the disk; one admin cannot lock everyone out or delete what a quorum may
//! never delete; keyholders see what they sign. Each attack is refused, alerted, and the store
//! is compared before and after.

mod common;

use std::time::Duration;

use common::*;
use store::{ObjectKind, ObjectName, ObjectStore};
use vault_api::{ProposeRequest, Scope};

const HOUR: Duration = Duration::from_secs(3600);

/// An alert command writing each alert's JSON into a file of its own in a directory, and the
/// directory. (Alert commands run concurrently: appends of two to one file can interleave.)
fn alert_sink() -> (tempfile::TempDir, std::path::PathBuf, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("alerts");
    std::fs::create_dir(&file).unwrap();
    let cmd = vec![
        "sh".into(),
        "-c".into(),
        format!("cat > \"$(mktemp -p {f} alert.XXXXXX)\"", f = file.display()),
    ];
    (dir, file, cmd)
}

/// Every alert received so far, one per file (one still being written is left out).
fn received(dir: &std::path::Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        out.extend(serde_json::from_str::<serde_json::Value>(&text).ok());
    }
    out
}

/// Waits (up to 10 s) until an alert whose `alert` field is `kind` reached the alert command.
async fn alerted(file: &std::path::Path, kind: &str) -> serde_json::Value {
    alerted_where(file, kind, |_| true).await
}

/// [`alerted`], for an alert that also satisfies `f` (alert commands run concurrently, so
/// alerts may arrive in any order).
async fn alerted_where(
    file: &std::path::Path,
    kind: &str,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + testkit::wait::budget(Duration::from_secs(30));
    loop {
        let all = received(file);
        if let Some(v) = all.iter().find(|v| v["alert"] == kind && f(v)) {
            return v.clone();
        }
        assert!(std::time::Instant::now() < deadline, "no {kind} alert; got:\n{all:#?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn append_token_cannot_forge_incidents_drills_or_any_vault_record() {
    let (_d, file, cmd) = alert_sink();
    let h = start(Opts { alert_command: Some(cmd), ..Opts::default() }).await;
    let append = h.client(Scope::Append).await;
    let read = h.client(Scope::Read).await;
    let before = h.listing().await;
    let forged_incident = serde_json::json!({
        "cluster": "main", "kind": "relations_dropped", "detected_at": 1_800_000_000,
        "message": "forged", "lsn": "0/1000000", "xid": 1,
        "restore_target": {"before_lsn": {"lsn": "0/1000000"}}, "objects": []
    });
    for kind in ["incident", "drill", "drill.report", "backup.complete", "wal.segment", "token.upload"] {
        let err = append.append_record(kind, forged_incident.clone()).await.unwrap_err();
        assert_eq!(err.status(), Some(403), "{kind}: {err}");
        assert!(err.to_string().contains("written only by the vault itself"), "{err}");
    }
    let a = alerted_where(&file, "record.refused", |v| v["kind"] == "incident").await;
    assert!(a["token"].is_string(), "the alert names the token: {a}");
    assert_eq!(h.listing().await, before, "a refused record left something in the store");
    // What the gate really ships still works, and is stamped with its author.
    let rec = append.append_record("audit.batch", serde_json::json!({"gate": "g1"})).await.unwrap();
    let (repo, _) = vault::open_repository(&h.config, None).await.unwrap();
    let stored = repo.records().await.unwrap().into_iter().find(|(n, _)| *n == rec.name).unwrap().1;
    assert_eq!(stored.author.as_deref(), Some(append_token_id(&h, "test append").await.as_str()));
    assert_eq!(read.list_records(Some("incident")).await.unwrap().records.len(), 0);
}

async fn append_token_id(h: &Harness, label: &str) -> String {
    let tokens = h.admin.list_tokens().await.unwrap().tokens;
    tokens.into_iter().find(|t| t.label == label).unwrap().id
}

#[tokio::test]
async fn junk_foreign_and_lying_packs_are_refused_and_nothing_is_stored() {
    let h = start(Opts::default()).await;
    let append = h.client(Scope::Append).await;
    let before = h.listing().await;
    // Any bytes under their own hash.
    let junk = b"ransom note".to_vec();
    let name = ObjectName::for_bytes(ObjectKind::Pack, &junk);
    let err = append.put_object(&name, junk.into()).await.unwrap_err();
    assert_eq!(err.status(), Some(422), "{err}");
    assert!(err.to_string().contains("not a well-formed pack of repository"), "{err}");
    // A well-formed pack of another repository (other keys).
    let keys = store::MasterKeys::from_bytes([9; 32], [8; 32]);
    let mut p = store::pack::Packer::new(1 << 20);
    let sealed = keys.seal(b"foreign", 3).unwrap();
    p.add(keys.chunk_id(b"foreign"), store::pack::BlobType::Data, &sealed, 7);
    let foreign = p.finish(&keys, 3).unwrap();
    assert_eq!(status(append.put_object(&foreign.name, foreign.bytes).await), 422);
    // A pack of this repository whose header lies about a blob's id.
    let good = h.pack(b"honest").await;
    let (repo, _) = vault::open_repository(&h.config, None).await.unwrap();
    let k = repo.keys();
    let mut p = store::pack::Packer::new(1 << 20);
    p.add(k.chunk_id(b"other"), store::pack::BlobType::Data, &k.seal(b"honest", 3).unwrap(), 6);
    let lying = p.finish(k, 3).unwrap();
    let err = append.put_object(&lying.name, lying.bytes).await.unwrap_err();
    assert!(err.to_string().contains("does not hash to its id"), "{err}");
    assert_eq!(h.listing().await, before, "a refused pack left something in the store");
    // A real pack goes in, and `check` with keys still finds no damage.
    append.put_object(&good.name, good.bytes).await.unwrap();
    let report = store::check(repo.store().as_ref(), Some(&repo)).await;
    assert!(report.is_clean(), "{report:?}");
}

#[tokio::test]
async fn token_daily_quota_and_write_rate_are_enforced_alerted_and_survive_a_restart() {
    let (_d, file, cmd) = alert_sink();
    let limits = vault::config::Limits {
        token_quota_bytes_per_day: 4096,
        token_writes_per_minute: 1000,
        ..vault::config::Limits::default()
    };
    let mut h =
        start(Opts { alert_command: Some(cmd), limits: Some(limits.clone()), ..Opts::default() }).await;
    let append_token = h.admin.create_token(Scope::Append, "gate").await.unwrap().token;
    let append = h.admin.with_token(Some(append_token.clone()));
    let body = serde_json::json!({"records": "x".repeat(1000)});
    let mut stored = 0;
    let err = loop {
        match append.append_record("audit.batch", body.clone()).await {
            Ok(_) => stored += 1,
            Err(e) => break e,
        }
        assert!(stored < 10, "the quota was never enforced");
    };
    assert_eq!(stored, 4, "4 KiB of quota hold four 1 KiB bodies");
    assert_eq!(err.status(), Some(507), "{err}");
    assert!(err.to_string().contains("quota"), "{err}");
    let a = alerted(&file, "token.quota_exceeded").await;
    assert_eq!(a["quota_bytes_per_day"], 4096);
    // Uploads count against the same quota.
    let pack = h.pack(&[5u8; 100]).await;
    assert_eq!(status(append.put_object(&pack.name, pack.bytes).await), 507);
    // Another token is not affected.
    let other = h.client(Scope::Append).await;
    other.append_record("audit.batch", body.clone()).await.unwrap();
    // The usage is in the catalog: a restarted vault still refuses.
    let before = h.listing().await;
    h.handle.take().unwrap().shutdown().await;
    let mut config = h.config.clone();
    config.limits = limits;
    let handle = vault::serve(config, h.clock.clone()).await.unwrap();
    let ca = std::fs::read(h.dir.path().join("vault/tls/cert.pem")).unwrap();
    let append =
        vault_api::VaultClient::new(&format!("https://{}", handle.addr()), &ca, Some(append_token)).unwrap();
    assert_eq!(status(append.append_record("audit.batch", body.clone()).await), 507);
    assert_eq!(h.listing().await, before, "a refused write stored something");
    // The quota is per day of the vault's clock: tomorrow the gate can ship again.
    h.clock.advance(Duration::from_secs(86_400));
    append.append_record("audit.batch", body.clone()).await.unwrap();
    handle.shutdown().await;

    // The write rate: the 4th write in a minute is refused with 429.
    let (_d2, file2, cmd2) = alert_sink();
    let limits = vault::config::Limits { token_writes_per_minute: 3, ..vault::config::Limits::default() };
    let h = start(Opts { alert_command: Some(cmd2), limits: Some(limits), ..Opts::default() }).await;
    let append = h.client(Scope::Append).await;
    for _ in 0..3 {
        append.append_record("audit.batch", serde_json::json!({})).await.unwrap();
    }
    let err = append.append_record("audit.batch", serde_json::json!({})).await.unwrap_err();
    assert_eq!(err.status(), Some(429), "{err}");
    alerted(&file2, "token.rate_limited").await;
}

#[tokio::test]
async fn the_last_admin_token_cannot_be_revoked_and_token_changes_are_alerted() {
    let (_d, file, cmd) = alert_sink();
    let h = start(Opts { alert_command: Some(cmd), ..Opts::default() }).await;
    let first = h.admin.list_tokens().await.unwrap().tokens[0].id.clone();
    let err = h.admin.revoke_token(&first).await.unwrap_err();
    assert_eq!(err.status(), Some(409), "{err}");
    assert!(err.to_string().contains("last admin token"), "{err}");
    // A second admin: alerted; then the first can go (alerted), and the second is the last.
    let second = h.admin.create_token(Scope::Admin, "deputy").await.unwrap();
    let a = alerted(&file, "token.created").await;
    assert_eq!(a["token"], second.id.as_str());
    let deputy = h.admin.with_token(Some(second.token.clone()));
    deputy.revoke_token(&first).await.unwrap();
    let a = alerted(&file, "token.revoked").await;
    assert_eq!(a["token"], first.as_str());
    assert_eq!(status(deputy.revoke_token(&second.id).await), 409);
    // Other scopes can always be revoked.
    let read = deputy.create_token(Scope::Read, "r").await.unwrap();
    deputy.revoke_token(&read.id).await.unwrap();
    assert_eq!(
        deputy.list_tokens().await.unwrap().tokens.iter().filter(|t| t.revoked_at.is_none()).count(),
        1
    );
}

#[tokio::test]
async fn recover_admin_offline_mints_a_recorded_and_alerted_admin_token() {
    let (_d, file, cmd) = alert_sink();
    let h = start(Opts { alert_command: Some(cmd.clone()), ..Opts::default() }).await;
    let mut config = h.config.clone();
    config.alert_command = Some(cmd);
    // The vault keeps running: recovery works next to it, on the vault host.
    let r = vault::recover_admin(&config, None, "alice: every admin token was lost", h.clock.as_ref())
        .await
        .unwrap();
    assert!(r.alerted);
    let a = alerted(&file, "admin.recovered").await;
    assert_eq!(a["token"], r.token.id());
    let admin = h.admin.with_token(Some(r.token.expose()));
    let deadline = std::time::Instant::now() + testkit::wait::budget(Duration::from_secs(30));
    let tokens = loop {
        match admin.list_tokens().await {
            Ok(l) => break l.tokens,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "the running vault never accepted it: {e}")
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let t = tokens.iter().find(|t| t.id == r.token.id()).unwrap();
    assert_eq!(t.scope, Scope::Admin);
    assert!(t.created_by.contains("recover-admin") && t.created_by.contains("alice"), "{}", t.created_by);
    // Without the vault key nothing can be recovered.
    let mut keyless = h.config.clone();
    keyless.key_file = h.dir.path().join("nope.key");
    assert!(vault::recover_admin(&keyless, None, "mallory", h.clock.as_ref()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_cannot_target_keys_config_or_history_and_sign_sees_what_goes() {
    let (_d, file, cmd) = alert_sink();
    let h = start(Opts { alert_command: Some(cmd), ..Opts::default() }).await;
    let store = h.store();
    let (repo, _) = vault::open_repository(&h.config, None).await.unwrap();
    let before = h.listing().await;
    let mut forbidden: Vec<ObjectName> = Vec::new();
    for kind in [ObjectKind::Keys, ObjectKind::Config, ObjectKind::Index] {
        forbidden.extend(store.list(kind).await.unwrap().into_iter().map(|m| m.name));
    }
    // The vault's own history: the token record.
    let token_record =
        repo.records().await.unwrap().into_iter().find(|(_, r)| r.kind == "token.created").unwrap().0;
    forbidden.push(token_record);
    assert!(
        forbidden.iter().any(|n| n.kind == ObjectKind::Keys)
            && forbidden.iter().any(|n| n.kind == ObjectKind::Config)
    );
    for n in &forbidden {
        let req = ProposeRequest { objects: vec![*n], backup: None, reason: "tidy up".into() };
        let err = h.admin.propose(&req).await.unwrap_err();
        assert_eq!(err.status(), Some(403), "{n}: {err}");
    }
    assert_eq!(h.listing().await, before, "a refused proposal was recorded");

    // A backup proposal: the keyholder sees the backup, the kinds and the bytes.
    let now = vault::clock::Clock::now(h.clock.as_ref());
    let (r2, until) = (repo.clone(), now.plus(30 * 24 * HOUR));
    let backup = tokio::task::spawn_blocking(move || {
        let mut w = r2.backup_writer("nightly", until);
        w.add_file("base/1/1", &[3u8; 40_000][..], 40_000, 0o600, 0).unwrap();
        w.finish(now).unwrap()
    })
    .await
    .unwrap();
    let p = h
        .admin
        .propose(&ProposeRequest { objects: vec![], backup: Some(backup.id.clone()), reason: "space".into() })
        .await
        .unwrap();
    let view = h.admin.proposal(&p.id).await.unwrap();
    let e = view.effects.expect("the vault says what would be deleted");
    assert_eq!(e.records_by_kind.get("backup"), Some(&1), "{e:?}");
    assert!(e.objects_by_kind.get("pack").copied().unwrap_or(0) >= 1, "{e:?}");
    assert_eq!(e.backups.len(), 1);
    assert_eq!((e.backups[0].id.as_str(), e.backups[0].how.as_str()), (backup.id.as_str(), "record"));
    assert!(e.bytes > 0 && e.absent == 0, "{e:?}");
    // Signing is alerted.
    let s0 = h.signature(0, &p.id).await;
    h.admin.sign(&p.id, &s0).await.unwrap();
    let a = alerted(&file, "deletion.signed").await;
    assert_eq!(a["proposal"], p.id.as_str());
    let s1 = h.signature(1, &p.id).await;
    h.admin.sign(&p.id, &s1).await.unwrap();
    h.clock.advance(73 * HOUR);
    h.admin.execute(&p.id).await.unwrap();
    let read = h.client(Scope::Read).await;
    assert!(read.backups().await.unwrap().backups.iter().all(|b| b.id != backup.id));
}

#[tokio::test]
async fn metrics_need_a_token_and_do_not_list_the_store_per_request() {
    let h = start(Opts::default()).await;
    let none = h.admin.with_token(None);
    assert_eq!(status(none.metrics().await), 401);
    let append = h.client(Scope::Append).await;
    assert_eq!(status(append.metrics().await), 403);
    let read = h.client(Scope::Read).await;
    let packs = |m: &str| {
        m.lines().find_map(|l| l.strip_prefix("holdfast_vault_objects{kind=\"pack\"} ")).unwrap().to_string()
    };
    let first = packs(&read.metrics().await.unwrap());
    h.upload(&append, b"new pack").await;
    // The listing is reused for a minute: a flood of scrapes costs one listing.
    for _ in 0..20 {
        assert_eq!(packs(&read.metrics().await.unwrap()), first);
    }
}

#[tokio::test]
async fn a_proposal_recorded_by_an_older_vault_still_cannot_delete_keys() {
    let mut h = start(Opts::default()).await;
    let keys = h.store().list(ObjectKind::Keys).await.unwrap()[0].name;
    // What an older vault accepted: a proposal naming the repository's keys.
    let (repo, _) = vault::open_repository(&h.config, None).await.unwrap();
    let now = vault::clock::Clock::now(h.clock.as_ref());
    let statement = store::quorum::DeletionStatement {
        purpose: store::quorum::DELETION_PURPOSE.into(),
        repository: repo.id().to_string(),
        proposal: "00112233445566ff".into(),
        proposed_at: now,
        not_before: now.plus(72 * HOUR),
        objects: [keys].into_iter().collect(),
        reason: "cleanup".into(),
    };
    let rec = vault::state::DeletionProposed { statement, proposed_by: "old".into(), backup: None };
    repo.append_record("deletion.proposed", serde_json::to_value(&rec).unwrap(), now, now.plus(72 * HOUR))
        .await
        .unwrap();
    h.handle.take().unwrap().shutdown().await;
    let handle = vault::serve(h.config.clone(), h.clock.clone()).await.unwrap();
    let ca = std::fs::read(h.dir.path().join("vault/tls/cert.pem")).unwrap();
    let admin =
        vault_api::VaultClient::new(&format!("https://{}", handle.addr()), &ca, Some(h.admin_token.clone()))
            .unwrap();
    h.handle = Some(handle);
    let before = h.listing().await;
    for i in 0..2 {
        let view = admin.proposal("00112233445566ff").await.unwrap();
        let bytes = view.statement.canonical_bytes();
        let req = vault_api::SignRequest {
            public_key: hex::encode(h.keys[i].verifying_key().as_bytes()),
            signature: hex::encode(ed25519_dalek::Signer::sign(&h.keys[i], &bytes).to_bytes()),
        };
        admin.sign("00112233445566ff", &req).await.unwrap();
    }
    h.clock.advance(100 * HOUR);
    let err = admin.execute("00112233445566ff").await.unwrap_err();
    assert_eq!(err.status(), Some(403), "{err}");
    assert!(err.to_string().contains("kept for the life of the repository"), "{err}");
    assert!(h.store().head(&keys).await.unwrap().is_some(), "the repository keys were deleted");
    let after = h.listing().await;
    assert!(before.iter().all(|o| after.contains(o)), "something was removed");
}
