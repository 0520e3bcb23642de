//! `holdfast demo`: the 2020 incident, replayed against holdfast on one machine.
//!
//! It starts a real PostgreSQL with a multi-tenant shop, a vault that pulls its WAL and a base
//! backup, then plays the insider: a mass delete and dropped tables, the vault's replication
//! slot dropped, the server killed and its data directory erased, and attacks on the vault
//! itself with a stolen token and an admin token. It ends by restoring, from the vault alone,
//! a running copy of the shop as it was just before the first destructive transaction, found
//! in the WAL, and checks that every order and gift-card balance is back.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use capture::archive::WalArchive;
use pgfmt::wal::WalReader;
use pgfmt::{Lsn, TimelineId};
use testkit::pg::{TempPg, TempPgOptions};
use vault::clock::SystemClock;
use vault::config::{Config, KeyholderFile};
use vault_api::client::VaultClient;
use vault_api::token::Scope;

/// The shop of the incident: every row carries `merchant_id`.
const SHOP: &str = "
CREATE TABLE merchants (merchant_id int PRIMARY KEY, name text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE customers (customer_id bigserial PRIMARY KEY, merchant_id int NOT NULL REFERENCES merchants, name text NOT NULL, phone text);
CREATE TABLE products (product_id bigserial PRIMARY KEY, merchant_id int NOT NULL REFERENCES merchants, title text NOT NULL, price_cents int NOT NULL);
CREATE TABLE orders (order_id bigserial PRIMARY KEY, merchant_id int NOT NULL, customer_id bigint NOT NULL, total_cents int NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE order_items (order_id bigint NOT NULL REFERENCES orders, merchant_id int NOT NULL, product_id bigint NOT NULL, qty int NOT NULL);
CREATE TABLE points_ledger (entry_id bigserial PRIMARY KEY, merchant_id int NOT NULL, customer_id bigint NOT NULL, delta int NOT NULL, reason text NOT NULL);
CREATE TABLE stored_value_cards (card_id bigserial PRIMARY KEY, merchant_id int NOT NULL, customer_id bigint NOT NULL, balance_cents bigint NOT NULL);
INSERT INTO merchants SELECT g, 'merchant ' || g FROM generate_series(1, 200) g;
INSERT INTO customers (merchant_id, name, phone) SELECT 1 + g % 200, 'customer ' || g, '138' || lpad(g::text, 8, '0') FROM generate_series(1, 20000) g;
INSERT INTO products (merchant_id, title, price_cents) SELECT 1 + g % 200, 'product ' || g, 100 + g % 9900 FROM generate_series(1, 5000) g;
INSERT INTO orders (merchant_id, customer_id, total_cents) SELECT 1 + g % 200, 1 + g % 20000, 100 + g % 50000 FROM generate_series(1, 50000) g;
INSERT INTO order_items SELECT order_id, merchant_id, 1 + order_id % 5000, 1 + order_id % 3 FROM orders;
INSERT INTO points_ledger (merchant_id, customer_id, delta, reason) SELECT 1 + g % 200, 1 + g % 20000, g % 100, 'purchase' FROM generate_series(1, 40000) g;
INSERT INTO stored_value_cards (merchant_id, customer_id, balance_cents) SELECT 1 + g % 200, 1 + g % 20000, 10000 + g % 90000 FROM generate_series(1, 8000) g;
";

/// What the merchants care about, as one comparable line.
const LEDGER: &str = "SELECT (SELECT count(*) FROM orders) || ' orders, ' || (SELECT count(*) FROM order_items) || ' order items, ' \
    || (SELECT count(*) FROM stored_value_cards) || ' gift cards holding ' || (SELECT sum(balance_cents) FROM stored_value_cards) || ' cents, ' \
    || (SELECT sum(delta) FROM points_ledger) || ' loyalty points'";

fn step(n: u32, text: &str) {
    println!("\n==> {n}. {text}");
}

fn say(text: impl AsRef<str>) {
    println!("    {}", text.as_ref());
}

/// Runs blocking work (psql, pg_ctl) without stalling the vault's async workers.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// `holdfast demo [--dir DIR]`.
pub async fn run(dir: Option<PathBuf>) -> Result<u8> {
    let started = Instant::now();
    let dir = match dir {
        Some(d) => {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
            d
        }
        None => tempfile::Builder::new().prefix("holdfast-demo-").tempdir()?.keep(),
    };
    println!("holdfast demo: the 删库跑路 incident of 2020, replayed. Files are kept in {}", dir.display());

    step(1, "Production: a PostgreSQL 15 shop with merchants, customers, orders, points and gift cards");
    let mut pg = blocking(|| TempPg::start_with(TempPgOptions::default()))?;
    blocking(|| pg.psql(SHOP))?;
    let before = blocking(|| pg.psql(LEDGER))?;
    say(format!("the shop holds {before}"));
    let rep_password = hex::encode(random::<16>()?);
    blocking(|| pg.create_replication_role("holdfast_rep", &rep_password))?;
    let pw_file = dir.join("rep.password");
    std::fs::write(&pw_file, format!("{rep_password}\n"))?;
    say("created role holdfast_rep WITH REPLICATION (and nothing else): the vault's only credential");

    step(2, "The vault, in its own trust domain: keys wrapped to an offline escrow key, 2-of-3 keyholders");
    let escrow = vault::keyfile::AgeKey::generate();
    escrow.write_new(&dir.join("escrow.key"), &store::Timestamp::now().to_string())?;
    let mut keyholders = Vec::new();
    let mut signing = Vec::new();
    for name in ["alice", "bob", "carol"] {
        let key = ed25519_dalek::SigningKey::from_bytes(&random::<32>()?);
        keyholders.push(KeyholderFile {
            name: name.into(),
            public_key: hex::encode(key.verifying_key().as_bytes()),
        });
        signing.push(key);
    }
    let cluster = capture::ClusterConfig {
        name: "shop".into(),
        hosts: vec![format!("{}:{}", pg.socket_dir().display(), pg.port())],
        user: "holdfast_rep".into(),
        password_file: Some(pw_file.clone()),
        password_env: None,
        sslmode: Some("disable".into()),
        sslrootcert: None,
        slot: None,
        application_name: None,
        synchronous: false,
        flush_interval_ms: None,
        backup_interval_minutes: None,
        ..Default::default()
    };
    let vault_dir = dir.join("vault");
    let init = vault::init(
        vault::InitOptions {
            dir: vault_dir.clone(),
            listen: "127.0.0.1:0".into(),
            escrow: vec![escrow.recipient()],
            keyholders,
            threshold: 2,
            retention_days: 30,
            wait_hours: 72,
            clusters: vec![cluster],
        },
        &SystemClock,
    )
    .await?;
    std::fs::write(vault_dir.join("admin.token"), format!("{}\n", init.admin_token.expose()))?;
    let config = Config::load(&init.config_path)?;
    let handle = vault::serve(config, Arc::new(SystemClock)).await?;
    let url = format!("https://{}", handle.addr());
    let ca = std::fs::read(&init.ca_path)?;
    let admin = VaultClient::new(&url, &ca, Some(init.admin_token.expose().to_string()))?;
    say(format!(
        "vault {} listening on {url}, store in {}",
        init.repository,
        vault_dir.join("store").display()
    ));
    let shared = handle.shared().clone();
    let collector = shared.collector.get().ok_or_else(|| anyhow!("the vault started no collector"))?.clone();
    let flush = Lsn(blocking(|| pg.psql("SELECT pg_current_wal_flush_lsn()"))?.parse::<Lsn>()?.0);
    wait_durable(&collector, flush, Duration::from_secs(30)).await?;
    say(format!("the vault pulls the WAL stream over the replication protocol: durable up to {flush}"));

    step(3, "A base backup, pulled by the vault (BASE_BACKUP, chunked, compressed, encrypted)");
    let backup = collector.backup_now("shop").await?;
    say(format!(
        "backup {} complete: {} MiB read, {} MiB stored, WAL {}..{} is in the vault",
        backup.id,
        backup.bytes >> 20,
        backup.stored_bytes >> 20,
        backup.start_lsn,
        backup.stop_lsn
    ));

    step(4, "Business as usual: new orders, each committed transaction durable in the vault within a second");
    let mut worst = Duration::ZERO;
    for i in 0..5 {
        let lsn: Lsn = blocking(|| {
            pg.psql(&format!(
                "INSERT INTO orders (merchant_id, customer_id, total_cents) SELECT 1 + g % 200, 1 + g % 20000, {i} + g FROM generate_series(1, 200) g; \
                 SELECT pg_current_wal_flush_lsn()"
            ))
        })?
        .parse()?;
        let t = Instant::now();
        wait_durable(&collector, lsn, Duration::from_secs(10)).await?;
        worst = worst.max(t.elapsed());
    }
    let last_good = blocking(|| pg.psql(LEDGER))?;
    say(format!("5 transactions; the slowest reached the vault {} ms after its commit", worst.as_millis()));
    say(format!("the shop now holds {last_good}"));

    step(5, "The insider strikes (root on the database host, PostgreSQL superuser)");
    blocking(|| pg.psql("DELETE FROM stored_value_cards"))?;
    say("DELETE FROM stored_value_cards;            -- every gift-card balance gone");
    blocking(|| pg.psql("DROP TABLE order_items; DROP TABLE orders"))?;
    say("DROP TABLE order_items; DROP TABLE orders;  -- every order gone");
    let attack_end: Lsn = blocking(|| pg.psql("SELECT pg_current_wal_flush_lsn()"))?.parse()?;
    // Let the stream carry the attack itself: the evidence belongs in the vault too.
    let _ = wait_durable(&collector, attack_end, Duration::from_secs(5)).await;
    blocking(|| drop_vault_slot(&pg))?;
    say("pg_terminate_backend(walsender); pg_drop_replication_slot('holdfast_shop');  -- cut the vault off");
    let data_dir = pg.data_dir().to_path_buf();
    blocking(|| pg.kill())?;
    std::fs::remove_dir_all(&data_dir).with_context(|| format!("removing {}", data_dir.display()))?;
    say(format!("kill -9 postgres; rm -rf {}    -- primary and its WAL destroyed", data_dir.display()));

    step(6, "The insider turns on the backups");
    let stolen = admin.create_token(Scope::Append, "stolen by the insider").await?;
    let thief = admin.with_token(Some(stolen.token.clone()));
    let some_pack = shared.repo.store().list(store::ObjectKind::Pack).await?.first().map(|m| m.name);
    if let Some(pack) = some_pack {
        let r = thief.request(reqwest::Method::DELETE, &format!("/v1/objects/{pack}")).send().await?;
        say(format!("stolen append token: DELETE /v1/objects/{pack} -> {}", r.status()));
        let r = thief.put_object(&pack, bytes::Bytes::from_static(b"ransom note")).await;
        say(format!("stolen append token: overwrite that pack -> {}", outcome(r.map(|_| ()))));
        let r = thief.create_token(Scope::Admin, "escalate").await;
        say(format!("stolen append token: mint an admin token -> {}", outcome(r.map(|_| ()))));
    }
    let r = admin.set_retention(1).await;
    say(format!("admin token: shorten retention to 1 day -> {}", outcome(r.map(|_| ()))));
    let proposal = admin
        .propose(&vault_api::wire::ProposeRequest {
            objects: Vec::new(),
            backup: Some(backup.id.clone()),
            reason: "cleanup".into(),
        })
        .await?;
    say(format!(
        "admin token: propose deleting backup {} -> recorded as {} and ALERT raised",
        backup.id, proposal.id
    ));
    let r = admin.execute(&proposal.id).await;
    say(format!("admin token: execute it now -> {}", outcome(r.map(|_| ()))));
    say("(it needs 2 of alice, bob, carol to sign, then 72 h in which any one of them can veto)");

    step(7, "What the vault saw");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = collector.status();
        let c = &st[0];
        if c.incidents.iter().any(|i| i.kind == "connection_lost") || Instant::now() > deadline {
            for i in &c.incidents {
                say(format!("INCIDENT {} at {}: {}", i.kind, i.detected_at, i.message));
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let report = store::check(shared.repo.store().as_ref(), Some(&shared.repo)).await;
    say(format!(
        "vault check: {} objects ({} MiB) re-hashed, {} damaged, {} missing",
        report.objects_checked,
        report.bytes_checked >> 20,
        report.damaged.len(),
        report.missing.len()
    ));
    if !report.damaged.is_empty() || !report.missing.is_empty() {
        bail!("the vault's store is damaged: {:?}", report.damaged);
    }

    step(8, "Recovery: find the first destructive transaction in the vault's WAL, restore to just before it");
    let t0 = Instant::now();
    let archive = WalArchive::open(&shared.repo, "shop").await?;
    let tli = TimelineId(backup.timeline);
    let seg_size = 16u64 << 20;
    let (target, what, when) = find_first_destruction(&archive, tli, backup.stop_lsn, seg_size).await?;
    say(format!("first destructive commit: {what} at LSN {target} ({when})"));
    let root = blocking(TempPg::restore_root)?;
    let data = root.path().join("data");
    let stats = shared.repo.restore(&backup.id, &data).await?;
    say(format!("restored base backup {}: {} files, {} MiB", backup.id, stats.files, stats.bytes >> 20));
    let segments = write_wal(&archive, tli, backup.start_lsn, target, seg_size, &data.join("pg_wal")).await?;
    say(format!("wrote {segments} WAL segment(s) from the vault into pg_wal"));
    std::fs::write(data.join("recovery.signal"), b"")?;
    let target_setting = format!("'{target}'");
    let restored = blocking(|| {
        TempPg::start_restored(
            root,
            &[
                ("recovery_target_lsn", target_setting.as_str()),
                ("recovery_target_inclusive", "off"),
                ("recovery_target_action", "'promote'"),
                ("restore_command", "'/bin/false'"), // the WAL is already in pg_wal
            ],
        )
    })?;
    // Recovery ends with a promotion; wait for it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while blocking(|| restored.psql("SELECT pg_is_in_recovery()"))? != "f" {
        if Instant::now() > deadline {
            bail!("the restored server did not finish recovery within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = blocking(|| restored.psql(LEDGER))?;
    say(format!("the restored shop holds {after}"));
    say(format!("restore took {:.1} s", t0.elapsed().as_secs_f64()));

    step(9, "Verdict");
    let ok = after == last_good;
    if ok {
        say(
            "every order, order item, gift-card balance and loyalty point is back, to the last transaction before the attack",
        );
    } else {
        say(format!("MISMATCH: before the attack {last_good}; restored {after}"));
    }
    say(format!(
        "demo took {:.0} s; vault files are in {}",
        started.elapsed().as_secs_f64(),
        vault_dir.display()
    ));
    drop(restored);
    handle.shutdown().await;
    Ok(if ok { 0 } else { 1 })
}

fn outcome(r: std::result::Result<(), vault_api::client::ClientError>) -> String {
    match r {
        Ok(()) => "ACCEPTED (this is a bug)".into(),
        Err(e) => format!("refused: {e}"),
    }
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).map_err(|e| anyhow!("the random number generator failed: {e}"))?;
    Ok(b)
}

async fn wait_durable(collector: &capture::Collector, lsn: Lsn, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let st = collector.status();
        if st.first().and_then(|c| c.durable_lsn).is_some_and(|d| d >= lsn) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the vault did not store WAL up to {lsn} within {} s: {:?}",
                within.as_secs(),
                st.first().map(|c| &c.last_error)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Terminates the vault's WAL sender and drops its slot, retrying while the vault reconnects.
fn drop_vault_slot(pg: &TempPg) -> Result<()> {
    for _ in 0..50 {
        let _ = pg.psql("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'holdfast_shop' AND active_pid IS NOT NULL");
        if pg.psql("SELECT pg_drop_replication_slot('holdfast_shop')").is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("could not drop the vault's slot")
}

/// Scans the stored WAL from `from` for the first transaction that dropped relations or
/// deleted 1000 rows or more. Returns the commit record's LSN, a description, and its time.
async fn find_first_destruction(
    archive: &WalArchive,
    tli: TimelineId,
    from: Lsn,
    seg_size: u64,
) -> Result<(Lsn, String, String)> {
    let map = archive.map();
    let end = map.contiguous_end(tli, from);
    let page = Lsn(from.0 - from.0 % 8192);
    let wal = archive.read_range(tli, page, end).await?;
    let mut detector = capture::detect::Detector::new(capture::detect::Thresholds {
        mass_delete_rows: 999,
        ..Default::default()
    });
    for rec in WalReader::new(&wal, page, seg_size) {
        let Ok(rec) = rec else { break };
        let Some(found) = detector.record(&rec) else { continue };
        // Only what committed: the demo restores to just before a commit.
        let Some(us) = found.commit_time_us else { continue };
        let what = match found.kind {
            capture::detect::Kind::MassDelete => format!(
                "transaction {} deleted {} rows",
                found.xid,
                found.deleted.iter().map(|(_, n)| n).sum::<u64>()
            ),
            _ => format!("transaction {} dropped {} relation file(s)", found.xid, found.dropped.len()),
        };
        let when = store::Timestamp(us / 1_000_000).to_string();
        return Ok((found.lsn, what, when));
    }
    bail!("no destructive transaction found in the vault's WAL after {from}")
}

/// Writes the segments covering `[start, target]` into `pg_wal`, zero-filling past the stored
/// end (PostgreSQL reads zeros as the end of WAL).
async fn write_wal(
    archive: &WalArchive,
    tli: TimelineId,
    start: Lsn,
    target: Lsn,
    seg_size: u64,
    pg_wal: &Path,
) -> Result<u32> {
    std::fs::create_dir_all(pg_wal)?;
    let map = archive.map();
    let stored_end = map.contiguous_end(tli, start);
    let mut seg = start.0 / seg_size;
    let mut n = 0;
    while seg * seg_size <= target.0 {
        let seg_start = Lsn(seg * seg_size);
        let seg_end = Lsn(seg_start.0 + seg_size).min(stored_end);
        let from = seg_start.max(map.first(tli).map(|p| p.start).unwrap_or(seg_start));
        let mut bytes = vec![0u8; (from.0 - seg_start.0) as usize];
        bytes.extend(archive.read_range(tli, from, seg_end).await?);
        bytes.resize(seg_size as usize, 0);
        std::fs::write(pg_wal.join(pgfmt::segment_name(tli, seg, seg_size)), bytes)?;
        seg += 1;
        n += 1;
    }
    Ok(n)
}
