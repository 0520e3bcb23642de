//! Adversary A3/A4 end to end: a vault process whose store is a local directory written
//! through to a locked bucket on a real Ceph RGW captures a real PostgreSQL. Then root on the
//! vault host erases the local store and, with the vault's own S3 credential read from its
//! config, tries to delete every version (plainly and with the GOVERNANCE bypass), shorten the
//! locks or switch them to GOVERNANCE, overwrite every name with other bytes, and delete the
//! bucket. The vault restarts on the bucket alone, and `holdfast restore --latest` is exact.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use store::s3::sigv4;
use testkit::pg::{TempPg, TempPgOptions, bin, command_as_postgres};
use testkit::vault::{TempVault, TempVaultOptions};

fn holdfast() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_holdfast"))
}

const CHECKSUM: &str =
    "SELECT count(*) || ':' || md5(string_agg(id || '=' || balance, ',' ORDER BY id)) FROM accounts";

/// The adversary's own S3 requests, signed with the vault's credential.
struct Adversary {
    http: reqwest::Client,
    host: String,
    bucket: String,
    creds: sigv4::Credentials,
}

impl Adversary {
    async fn send(
        &self,
        method: Method,
        key: Option<&str>,
        query: &[(&str, &str)],
        extra: &[(&str, String)],
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
            extra.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
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
        let r = rb.body(body).send().await.unwrap();
        let status = r.status();
        (status, r.text().await.unwrap())
    }
}

fn md5_b64(b: &[u8]) -> String {
    use base64::Engine;
    use md5::Digest;
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(b))
}

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
    let creds = work.path().join("s3.credentials");
    std::fs::write(
        &creds,
        format!(
            "aws_access_key_id = {}\naws_secret_access_key = {}\n",
            testkit::ceph::ACCESS_KEY,
            testkit::ceph::SECRET_KEY
        ),
    )
    .unwrap();
    let remote = store::S3Config {
        endpoint: ceph.endpoint(),
        region: "us-east-1".into(),
        bucket: "holdfast".into(),
        prefix: "shop/".into(),
        path_style: true,
        credentials_file: Some(creds.clone()),
        ca_file: None,
        object_lock: true,
    };
    store::s3::create_bucket(&remote, true).await.unwrap();
    let table = work.path().join("store.toml");
    std::fs::write(
        &table,
        format!(
            "[store]\nkind = \"mirror\"\npath = \"store\"\n[store.remote]\nendpoint = \"{}\"\nbucket = \"holdfast\"\nprefix = \"shop/\"\ncredentials_file = \"{}\"\n",
            ceph.endpoint(),
            creds.display()
        ),
    )
    .unwrap();

    // The protected database, and a vault (mirror store) streaming from it.
    let mut pg = TempPg::start_with(TempPgOptions::default()).unwrap();
    pg.create_replication_role("holdfast_rep", "rep-secret").unwrap();
    let mut v = TempVault::start_with(
        holdfast(),
        TempVaultOptions { store_config: Some(table), retention_days: 7, ..TempVaultOptions::default() },
    )
    .unwrap();
    let pw = v.scratch().join("rep.password");
    std::fs::write(&pw, "rep-secret\n").unwrap();
    let mut conf = std::fs::OpenOptions::new().append(true).open(v.config_path()).unwrap();
    write!(
        conf,
        "\n[[cluster]]\nname = \"main\"\nhosts = [\"{}:{}\"]\nuser = \"holdfast_rep\"\npassword_file = \"{}\"\nsslmode = \"disable\"\n",
        pg.socket_dir().display(),
        pg.port(),
        pw.display()
    )
    .unwrap();
    drop(conf);
    v.kill();
    v.restart().unwrap();
    let admin = v.scratch().join("admin.token");
    let read_token = v.scratch().join("read.token");
    let ca = v.ca_path();
    cli(
        &v,
        &[
            "vault",
            "token",
            "create",
            "--url",
            v.url(),
            "--ca",
            ca.to_str().unwrap(),
            "--token-file",
            admin.to_str().unwrap(),
            "--scope",
            "read",
            "--label",
            "restore",
            "--out",
            read_token.to_str().unwrap(),
        ],
    );

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
    let adv = Adversary {
        http: reqwest::Client::new(),
        host: ceph.endpoint().trim_start_matches("http://").to_string(),
        bucket: "holdfast".into(),
        creds: sigv4::Credentials {
            access_key: testkit::ceph::ACCESS_KEY.into(),
            secret_key: testkit::ceph::SECRET_KEY.into(),
        },
    };
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
            let h = [("content-md5", md5_b64(&x)), bypass[0].clone()];
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

fn psql(report: &serde_json::Value, password: &str, sql: &str) -> String {
    let mut cmd = command_as_postgres(Path::new("env"));
    cmd.arg(format!("PGPASSWORD={password}"))
        .arg(bin("psql").unwrap())
        .arg("-h")
        .arg(report["socket_dir"].as_str().unwrap())
        .args([
            "-p",
            &report["port"].as_u64().unwrap().to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-XAtq",
            "-c",
            sql,
        ]);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
