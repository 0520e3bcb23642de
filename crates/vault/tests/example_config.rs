//! Every example config in the repository parses and validates.

use std::path::Path;

#[test]
fn example_vault_toml_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/vault.toml");
    let c = vault::config::Config::load(&path).unwrap();
    assert_eq!(c.quorum.threshold, 2);
    assert_eq!(c.quorum.keyholders.len(), 3);
    assert_eq!(c.listen.port(), 8443);
    assert!(c.alert_command.is_some());
    assert_eq!(c.clusters.len(), 1);
    let shop = &c.clusters[0];
    assert_eq!(
        (shop.name.as_str(), shop.slot.as_str(), shop.connections.len()),
        ("shop", "holdfast_shop", 3)
    );
    assert_eq!(shop.backup_interval, Some(std::time::Duration::from_secs(86_400)));
    assert_eq!(shop.backup_wal_share, Some(0.5));
    assert_eq!(shop.backup_min_interval, std::time::Duration::from_secs(60));
    assert_eq!(shop.backup_replay_budget, None);
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("# backup_replay_budget_seconds = 30", "backup_replay_budget_seconds = 1.5");
    let c2 = vault::config::Config::from_toml(&text, path.parent().unwrap()).unwrap();
    assert_eq!(c2.clusters[0].backup_replay_budget, Some(std::time::Duration::from_millis(1500)));
    let text = text.replace("backup_replay_budget_seconds = 1.5", "backup_replay_budget_seconds = -2");
    let err = vault::config::Config::from_toml(&text, path.parent().unwrap()).unwrap_err().to_string();
    assert!(err.contains("backup_replay_budget_seconds = -2") && err.contains("above 0"), "{err}");
    // The password is read, and never printed.
    assert!(shop.connections[0].password.is_some());
    // Detection thresholds and the catalog role, with its own password.
    let t = shop.thresholds;
    assert_eq!((t.mass_delete_rows, t.mass_update_rows, t.mass_change_min_rows), (10_000, 10_000, 1000));
    assert_eq!(t.mass_change_share, 0.5);
    assert_eq!(
        (t.window_seconds, t.window_table_delete_rows, t.window_database_delete_rows, t.window_delete_share),
        (600, 50_000, 100_000, 0.2)
    );
    assert_eq!(
        (t.window_table_update_rows, t.window_database_update_rows, t.window_update_share),
        (1_000_000, 2_000_000, 1.0)
    );
    assert_eq!((t.window_dropped_bytes, t.window_dropped_tables, t.tenant_min_rows), (1 << 30, 10, 100));
    assert_eq!(shop.tenant_column.as_deref(), Some("merchant_id"));
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("window_update_share = 1.0", "window_update_share = 0");
    let err = vault::config::Config::from_toml(&text, path.parent().unwrap()).unwrap_err().to_string();
    assert!(err.contains("window_update_share") && err.contains("above 0"), "{err}");
    assert_eq!(shop.detector_max_lag, std::time::Duration::from_secs(30));
    assert_eq!(shop.catalog_refresh, std::time::Duration::from_secs(15));
    assert_eq!(shop.catalog_connections.len(), 3);
    assert_eq!(shop.catalog_connections[0].user, "holdfast_catalog");
    assert_eq!(shop.catalog_connections[0].password.as_deref(), Some("replace-with-the-catalog-password"));
    assert_ne!(shop.catalog_connections[0].password, shop.connections[0].password);
    let text =
        std::fs::read_to_string(&path).unwrap().replace("mass_change_share = 0.5", "mass_change_share = 50");
    let err = vault::config::Config::from_toml(&text, path.parent().unwrap()).unwrap_err().to_string();
    assert!(err.contains("mass_change_share") && err.contains("at most 1"), "{err}");
    assert!(!format!("{shop:?}").contains("replace-with"));
    // Four webhooks, one of each format.
    let formats: Vec<&str> = c.webhooks.iter().map(|w| w.format.as_str()).collect();
    assert_eq!(formats, ["generic", "wecom", "dingtalk", "slack"]);
    let text = std::fs::read_to_string(&path).unwrap().replace("format = \"slack\"", "format = \"teams\"");
    let err = vault::config::Config::from_toml(&text, path.parent().unwrap()).unwrap_err().to_string();
    assert!(err.contains("teams") && err.contains("generic, wecom, dingtalk, slack"), "{err}");
    // The drill: daily, overdue after two days, two assertions.
    let d = c.drill("shop").unwrap();
    assert_eq!(d.every, Some(std::time::Duration::from_secs(86_400)));
    assert_eq!(d.overdue_after, Some(std::time::Duration::from_secs(2 * 86_400)));
    assert_eq!(d.checks.len(), 2);
    assert_eq!(d.checks[1].database, "shop");
    assert!(d.verify);
    // A misspelt drill key stops startup too.
    let text = std::fs::read_to_string(&path).unwrap().replace("overdue_after =", "overdue_afer =");
    let err = vault::config::Config::from_toml(&text, path.parent().unwrap()).unwrap_err().to_string();
    assert!(err.contains("overdue_afer"), "{err}");
    // The warm standby: ten minutes behind, on its port, checked as postgres.
    let sb = &c.standbys[0];
    assert_eq!((sb.cluster.as_str(), sb.port, sb.user.as_str()), ("shop", 5499, "postgres"));
    assert_eq!((sb.apply_delay.as_secs(), sb.max_lag.as_secs()), (600, 300));
    assert_eq!(sb.data_dir, Path::new("/var/lib/holdfast/standby/shop"));
    let text = std::fs::read_to_string(&path).unwrap();
    for (from, to, says) in [
        ("apply_delay = \"10m\"", "apply_delay = \"0s\"", "apply_delay"),
        ("apply_delay = \"10m\"", "apply_dealy = \"10m\"", "apply_dealy"),
        ("port = 5499", "port = 0", "fixed TCP port"),
        ("cluster = \"shop\"\n# Created", "cluster = \"nope\"\n# Created", "no [[cluster]] table"),
    ] {
        let bad = text.replacen(from, to, 1);
        assert_ne!(bad, text, "{from}");
        let err = vault::config::Config::from_toml(&bad, path.parent().unwrap()).unwrap_err().to_string();
        assert!(err.contains(says), "{to}: {err}");
    }
    // Debug output never carries key material: the config holds only paths and public keys.
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("AGE-SECRET-KEY"));
}

#[test]
fn a_misspelt_cluster_key_stops_startup() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/vault.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace("synchronous = false", "synchronus = true");
    let err = vault::config::Config::from_toml(&text, path.parent().unwrap()).unwrap_err().to_string();
    assert!(err.contains("synchronus"), "{err}");
    // A cluster without any host is refused with a message that says what to write.
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(r#"hosts = ["10.0.0.11:5432", "10.0.0.12:5432", "/var/run/postgresql:5432"]"#, "hosts = []");
    let err = vault::config::Config::from_toml(&text, path.parent().unwrap()).unwrap_err().to_string();
    assert!(err.contains("hosts") && err.contains("host:port"), "{err}");
}

/// The write-through store example (`examples/store-mirror.toml`) parses as `vault init
/// --store-config` reads it, resolves its paths, and a misspelt key in it is refused.
#[test]
fn example_mirror_store_table_is_valid() {
    use vault::config::{StoreConfig, StoreFile};
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/store-mirror.toml");
    let base = Path::new("/etc/holdfast");
    let file = StoreFile::from_file(&path).unwrap();
    let StoreConfig::Mirror { local, remote, alerts } = file.to_config(base).unwrap() else {
        panic!("not a mirror store")
    };
    assert_eq!(local, base.join("store"));
    assert_eq!(
        (remote.bucket.as_str(), remote.prefix.as_str(), remote.object_lock),
        ("holdfast-prod", "shop/", true)
    );
    assert_eq!(remote.credentials_file.as_deref(), Some(base.join("s3.credentials").as_path()));
    assert_eq!(remote.ca_file.as_deref(), Some(base.join("rgw-ca.pem").as_path()));
    assert_eq!(
        (alerts.max_pending_objects, alerts.max_pending_bytes, alerts.grace),
        (10_000, 10 << 30, std::time::Duration::from_secs(300))
    );
    let text = std::fs::read_to_string(&path).unwrap();
    for (bad, why) in [
        (text.replace("object_lock = true", "objectlock = true"), "objectlock"),
        (text.replace("[store.remote]", "[store.elsewhere]"), "elsewhere"),
        (text.replace("kind = \"mirror\"", "kind = \"s3\""), "kind = \"mirror\""),
        (text.replace("path = \"store\"\n", ""), "needs path"),
    ] {
        let f = std::env::temp_dir().join(format!("holdfast-mirror-example-{}.toml", std::process::id()));
        std::fs::write(&f, &bad).unwrap();
        let err =
            StoreFile::from_file(&f).map_err(|e| e.to_string()).and_then(|s| s.to_config(base).map(|_| ()));
        let _ = std::fs::remove_file(&f);
        let err = err.unwrap_err();
        assert!(err.contains(why), "{why}: {err}");
    }
}
