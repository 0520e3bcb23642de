//! Architecture invariants from ARCHITECTURE.md, checked against `cargo metadata`.
//!
//! Trust domains meet only through API crates, and format/protocol crates stay free of IO
//! runtimes. These rules are easy to break by adding one line to a Cargo.toml, so a test
//! reads the real dependency graph rather than trusting review.

use std::collections::BTreeMap;
use std::process::Command;

/// Package name → (dependency name, optional?) for every workspace member.
fn workspace_deps() -> BTreeMap<String, Vec<(String, bool)>> {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let mut map = BTreeMap::new();
    for p in v["packages"].as_array().expect("packages") {
        let deps = p["dependencies"]
            .as_array()
            .expect("dependencies")
            .iter()
            .filter(|d| d["kind"].is_null()) // normal dependencies; dev/build deps do not ship
            .map(|d| (d["name"].as_str().unwrap().to_string(), d["optional"].as_bool().unwrap_or(false)))
            .collect();
        map.insert(p["name"].as_str().unwrap().to_string(), deps);
    }
    map
}

fn depends(map: &BTreeMap<String, Vec<(String, bool)>>, krate: &str, dep: &str) -> bool {
    map.get(krate).is_some_and(|d| d.iter().any(|(n, _)| n == dep))
}

fn depends_unconditionally(map: &BTreeMap<String, Vec<(String, bool)>>, krate: &str, dep: &str) -> bool {
    map.get(krate).is_some_and(|d| d.iter().any(|(n, opt)| n == dep && !opt))
}

#[test]
fn the_workspace_is_what_the_architecture_says() {
    let map = workspace_deps();
    for krate in [
        "store",
        "vault-api",
        "vault",
        "capture",
        "holdfast",
        "testkit",
        "pgfmt",
        "pgproto",
        "restore",
        "audit",
    ] {
        assert!(map.contains_key(krate), "crate {krate} is missing from the workspace");
    }
}

#[test]
fn trust_domains_meet_only_through_api_crates() {
    let map = workspace_deps();
    // Clients of the vault (gate, restore, and the API crate itself) never link the service.
    for client in ["gate", "restore", "vault-api", "store", "pgfmt", "pgproto", "audit"] {
        assert!(!depends(&map, client, "vault"), "{client} depends on the vault service; use vault-api");
    }
    // The store knows nothing of its callers.
    for upper in ["vault-api", "gate", "restore", "holdfast"] {
        assert!(!depends(&map, "store", upper), "store depends on {upper}");
    }
    // testkit runs throw-away servers: tests use it, and so does `holdfast demo` in the binary,
    // but no library or service crate may.
    for (krate, deps) in &map {
        if krate != "holdfast" {
            assert!(deps.iter().all(|(n, _)| n != "testkit"), "{krate} has testkit as a normal dependency");
        }
    }
    // The collector belongs to the vault's trust domain: clients never link it.
    for client in ["gate", "restore", "vault-api", "store", "audit"] {
        assert!(!depends(&map, client, "capture"), "{client} depends on the collector");
    }
}

#[test]
fn format_and_protocol_crates_do_no_io() {
    let map = workspace_deps();
    for pure in ["pgfmt", "pgproto", "guard", "audit"] {
        for runtime in ["tokio", "async-std", "reqwest", "hyper", "axum"] {
            assert!(
                !depends_unconditionally(&map, pure, runtime),
                "{pure} pulls in {runtime} unconditionally; it must stay sans-IO (put IO behind an optional feature or in another crate)"
            );
        }
    }
}
