//! Adversary A3/A4 end to end: a vault process whose store is a local directory written
//! through to a locked bucket on a real Ceph RGW captures a real PostgreSQL. Then root on the
//! vault host erases the local store and, with the vault's own S3 credential read from its
//! config, tries to delete every version (plainly and with the GOVERNANCE bypass), shorten the
//! locks or switch them to GOVERNANCE, overwrite every name with other bytes, and delete the
//! bucket. The vault restarts on the bucket alone, and `holdfast restore --latest` is exact.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use testkit::pg::{TempPg, TempPgOptions, bin, command_as_postgres, psql_at};
use testkit::s3::{Adversary, content_md5};
use testkit::vault::{TempVault, TempVaultOptions};

fn holdfast() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_holdfast"))
}

const CHECKSUM: &str =
    "SELECT count(*) || ':' || md5(string_agg(id || '=' || balance, ',' ORDER BY id)) FROM accounts";

fn cli(v: &TempVault, args: &[&str]) -> std::process::Output {
    let out = v.holdfast(args).unwrap();
    assert!(
        out.status.success(),
        "holdfast {}: {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr),
        v.log()
    );
    out
}

fn status(v: &TempVault) -> serde_json::Value {
    let admin = v.scratch().join("admin.token");
    let mut args = vec!["status".to_string(), "--json".into()];
    args.extend(v.remote_args(&admin));
    let out = cli(v, &args.iter().map(String::as_str).collect::<Vec<_>>());
    serde_json::from_slice(&out.stdout).unwrap()
}

fn poll(what: &str, v: &TempVault, limit: Duration, mut f: impl FnMut(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        let st = status(v);
        if f(&st) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {st}\n{}", v.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_erases_the_local_store_and_attacks_the_bucket_yet_restore_latest_is_exact() {
    let ceph = testkit::ceph::TempCeph::start().unwrap();
    let work = tempfile::tempdir().unwrap();
    let remote = testkit::s3::config(&ceph, "holdfast", "shop/").unwrap();
    store::s3::create_bucket(&remote, true).await.unwrap();
    let table = work.path().join("store.toml");
    std::fs::write(&table, testkit::s3::mirror_table(&remote)).unwrap();

    // The protected database, and a vault (mirror store) streaming from it.
    let mut pg = TempPg::start_with(TempPgOptions::default()).unwrap();
    pg.create_replication_role("holdfast_rep", "rep-secret").unwrap();
    let mut v = TempVault::start_with(
        holdfast(),
        TempVaultOptions { store_config: Some(table), retention_days: 7, ..TempVaultOptions::default() },
    )
    .unwrap();
    v.protect(&pg, "").unwrap();
    let admin = v.scratch().join("admin.token");
    let read_token = v.scratch().join("read.token");
    v.create_token("read", "restore", &read_token).unwrap();

    pg.psql("CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL); INSERT INTO accounts SELECT g, g % 97 FROM generate_series(1, 20000) g").unwrap();
    let mut args = vec!["backup".to_string(), "--cluster".into(), "main".into()];
    args.extend(v.remote_args(&admin));
    cli(&v, &args.iter().map(String::as_str).collect::<Vec<_>>());
    pg.psql(
        "UPDATE accounts SET balance = balance * 2 WHERE id % 3 = 0; DELETE FROM accounts WHERE id % 11 = 0",
    )
    .unwrap();
    let committed = pg.psql(CHECKSUM).unwrap();
    let flush: pgfmt::Lsn = pg.psql("SELECT pg_current_wal_flush_lsn()").unwrap().parse().unwrap();
    poll("the WAL durable in the vault and uploaded to the bucket", &v, Duration::from_secs(90), |st| {
        let durable = st["clusters"][0]["durable_lsn"].as_str().and_then(|s| s.parse::<pgfmt::Lsn>().ok());
        let bucket = &st["stores"][1];
        durable.is_some_and(|d| d >= flush) && bucket["pending_objects"] == 0 && bucket["reconciled"] == true
    });
    let st = status(&v);
    assert_eq!(st["stores"][1]["lock_mode"], "object_lock_compliance", "{st}");

    // The attack. The database is destroyed; root stops the vault and erases its local store …
    pg.kill().unwrap();
    let data = pg.data_dir().to_path_buf();
    std::fs::remove_dir_all(&data).unwrap();
    v.terminate();
    let local = v.vault_dir().join("store");
    std::fs::remove_dir_all(&local).unwrap();
    // … and uses the S3 credential from the vault's config on every version in the bucket.
    let adv = Adversary::new(&ceph, "holdfast");
    let bucket = store::S3Store::open(remote.clone()).await.unwrap();
    let versions = bucket.list_versions("shop/").await.unwrap();
    assert!(versions.len() >= 5, "{versions:?}");
    let bypass = [("x-amz-bypass-governance-retention", "true".to_string())];
    let sooner = store::Timestamp(store::Timestamp::now().0 + 60).to_string();
    for ver in &versions {
        let (k, vid) = (ver.key.as_str(), ver.version_id.as_str());
        for extra in [&[][..], &bypass[..]] {
            let (st, body) = adv.send(Method::DELETE, Some(k), &[("versionId", vid)], extra, vec![]).await;
            assert_eq!(st, StatusCode::FORBIDDEN, "delete {k}@{vid}: {body}");
        }
        for mode in ["COMPLIANCE", "GOVERNANCE"] {
            let x = format!(
                "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>{mode}</Mode><RetainUntilDate>{sooner}</RetainUntilDate></Retention>"
            )
            .into_bytes();
            let h = [("content-md5", content_md5(&x)), bypass[0].clone()];
            let (st, body) =
                adv.send(Method::PUT, Some(k), &[("retention", ""), ("versionId", vid)], &h, x).await;
            assert!(!st.is_success(), "{mode} until {sooner} on {k}@{vid} accepted: {body}");
        }
        let (st, body) = adv.send(Method::PUT, Some(k), &[], &[], b"ransom note".to_vec()).await;
        assert!(st.is_success(), "overwrite {k}: {st} {body}");
    }
    let (st, body) = adv.send(Method::DELETE, None, &[], &[], vec![]).await;
    assert_eq!(st, StatusCode::CONFLICT, "bucket delete: {body}");

    // The vault restarts with no local store at all and serves from the bucket alone.
    assert!(!local.exists());
    v.restart().unwrap();
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let dir = root.path().join("recovered");
    let mut cmd = std::process::Command::new(holdfast());
    cmd.arg("restore")
        .args(["--cluster", "main", "--latest", "--target-dir", dir.to_str().unwrap(), "--start", "--json"])
        .args(v.remote_args(&read_token))
        .env("PGPASSWORD", pg.superuser_password());
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "restore: {}\n{}", String::from_utf8_lossy(&out.stderr), v.log());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let restored = psql(&report, pg.superuser_password(), CHECKSUM);
    assert_eq!(restored, committed, "rows lost");
    let st = status(&v);
    assert!(st["stores"][1]["fallback_reads"].as_u64().unwrap() > 0, "{st}");
    let mut stop = command_as_postgres(&bin("pg_ctl").unwrap());
    stop.arg("-D").arg(&dir).args(["-m", "immediate", "-w", "stop"]);
    let _ = stop.output();
    // `vault check` names the local copy as missing and the bucket as whole (exit 3: damage).
    v.terminate();
    let out = v.holdfast(&["vault", "check", "--config", v.config_path().to_str().unwrap()]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(text.contains("MISSING locally") && !text.contains("MISSING in the bucket"), "{text}");
}

/// psql against a restored server (socket dir and port from the restore report).
fn psql(report: &serde_json::Value, password: &str, sql: &str) -> String {
    let (dir, port) = (report["socket_dir"].as_str().unwrap(), report["port"].as_u64().unwrap());
    psql_at(Path::new(dir), port as u16, password, "postgres", sql).unwrap()
}
