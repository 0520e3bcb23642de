//! Architecture invariants from ARCHITECTURE.md, checked on the resolved dependency graph.
//!
//! Trust domains meet only through API crates, and format/protocol crates stay free of IO
//! runtimes. These rules are easy to break by adding one line to a Cargo.toml — directly or
//! through a crate that itself depends on the forbidden one — so the test reads the graph cargo
//! resolved (`cargo metadata`) and checks every rule on the *transitive* closure, and a test
//! below feeds the same checks a forbidden graph to show they fail.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::process::Command;

/// One dependency edge: normal (linked) dependencies only; dev and build dependencies do not
/// ship.
#[derive(Debug, Clone)]
struct Edge {
    to: String,
    /// Declared `optional` by the dependent and not switched on by its default features: only
    /// a feature someone asks for links it.
    optional: bool,
    /// An optional dependency the dependent's default features switch on.
    by_default: bool,
}

/// Package name → its normal dependencies, as resolved by cargo.
#[derive(Debug, Default)]
struct Graph {
    edges: BTreeMap<String, Vec<Edge>>,
}

/// Which edges a closure follows.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Features {
    /// Every resolved edge, optional or not (what any feature combination may link).
    All,
    /// Only what the crate links with its default features.
    Default,
    /// What `--no-default-features` links from the root; default features below it.
    RootWithoutDefaults,
}

impl Graph {
    fn add(&mut self, from: &str, to: &str, optional: bool) {
        self.add_edge(from, Edge { to: to.to_string(), optional, by_default: false });
    }

    fn add_edge(&mut self, from: &str, e: Edge) {
        let to = e.to.clone();
        self.edges.entry(from.to_string()).or_default().push(e);
        self.edges.entry(to.to_string()).or_default();
    }

    /// The path from `from` to `to` following the edges `features` allows, if there is one.
    fn path(&self, from: &str, to: &str, features: Features) -> Option<Vec<String>> {
        let mut parent: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = VecDeque::from([from]);
        let mut seen = BTreeSet::from([from]);
        while let Some(n) = queue.pop_front() {
            if n == to {
                let mut path = vec![to.to_string()];
                let mut at = to;
                while let Some(&p) = parent.get(at) {
                    path.push(p.to_string());
                    at = p;
                }
                path.reverse();
                return Some(path);
            }
            for e in self.edges.get(n).into_iter().flatten() {
                let follow = match features {
                    Features::All => true,
                    Features::Default => !e.optional,
                    // Defaults switch on nothing at the root; below it each crate is built with
                    // its defaults (what its dependents ask for).
                    Features::RootWithoutDefaults => !(e.optional || (n == from && e.by_default)),
                };
                if follow && seen.insert(e.to.as_str()) {
                    parent.insert(e.to.as_str(), n);
                    queue.push_back(e.to.as_str());
                }
            }
        }
        None
    }
}

/// Every feature a crate's `default` feature switches on, recursively, and the optional
/// dependencies they enable (`dep:x`, `x` naming an optional dependency, `x/feature`).
fn default_enabled(features: &serde_json::Map<String, serde_json::Value>) -> BTreeSet<String> {
    let mut on = BTreeSet::new();
    let mut todo = vec!["default".to_string()];
    while let Some(f) = todo.pop() {
        if !on.insert(f.clone()) {
            continue;
        }
        for item in features.get(&f).and_then(|v| v.as_array()).into_iter().flatten() {
            let item = item.as_str().unwrap_or_default();
            if let Some(dep) = item.strip_prefix("dep:") {
                on.insert(dep.to_string());
            } else if let Some((dep, _)) = item.split_once('/') {
                // `x?/f` only passes a feature to x if something else enables it.
                if !dep.ends_with('?') {
                    on.insert(dep.to_string());
                }
            } else {
                todo.push(item.to_string());
            }
        }
    }
    on
}

/// The graph cargo resolved for this workspace (with every member's default features).
fn workspace_graph() -> Graph {
    // Resolved for this machine's platform: other platforms' dependencies (Windows consoles…)
    // are not downloaded here, and do not ship in the binary built here either.
    let rustc = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("-vV")
        .output()
        .expect("rustc -vV runs");
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .expect("rustc -vV names the host");
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--offline", "--filter-platform", &host])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    from_metadata(&v)
}

fn from_metadata(v: &serde_json::Value) -> Graph {
    let packages: BTreeMap<&str, &serde_json::Value> = v["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| (p["id"].as_str().expect("package id"), p))
        .collect();
    let mut g = Graph::default();
    for node in v["resolve"]["nodes"].as_array().expect("resolve.nodes") {
        let from = packages[node["id"].as_str().expect("node id")];
        let from_name = from["name"].as_str().expect("name");
        let declared = from["dependencies"].as_array().expect("dependencies");
        let defaults = default_enabled(from["features"].as_object().expect("features"));
        g.edges.entry(from_name.to_string()).or_default();
        for dep in node["deps"].as_array().expect("deps") {
            let normal = dep["dep_kinds"].as_array().expect("dep_kinds").iter().any(|k| k["kind"].is_null());
            if !normal {
                continue;
            }
            let to = packages[dep["pkg"].as_str().expect("dep pkg")]["name"].as_str().expect("name");
            // The dependency as declared (normal kind), by package name or rename.
            let decl = declared
                .iter()
                .filter(|d| d["kind"].is_null() && d["name"] == to)
                .map(|d| (d["optional"].as_bool().unwrap_or(false), d["rename"].as_str().unwrap_or(to)))
                .collect::<Vec<_>>();
            let always = decl.iter().any(|(opt, _)| !opt);
            let by_default = decl.iter().any(|(_, name)| defaults.contains(*name));
            g.add_edge(
                from_name,
                Edge {
                    to: to.to_string(),
                    optional: !always && !by_default,
                    by_default: !always && by_default,
                },
            );
        }
    }
    g
}

/// Every rule of ARCHITECTURE.md on the dependency graph; one line per broken rule, naming the
/// path that breaks it.
fn violations(g: &Graph) -> Vec<String> {
    let mut v = Vec::new();
    let mut never = |from: &str, to: &str, features: Features, why: &str| {
        if let Some(path) = g.path(from, to, features) {
            v.push(format!("{from} reaches {to} ({}): {why}", path.join(" → ")));
        }
    };
    // Clients of the vault talk to it through vault-api only, and never link the service.
    for client in
        ["gate", "restore", "repair", "vault-api", "store", "pgfmt", "pgproto", "audit", "guard", "capture"]
    {
        never(client, "vault", Features::All, "clients of the vault use vault-api, never the service");
    }
    // The collector belongs to the vault's trust domain: clients never link it.
    for client in ["gate", "restore", "repair", "vault-api", "store", "audit", "guard", "pgfmt", "pgproto"] {
        never(client, "capture", Features::All, "the collector is the vault's; clients never link it");
    }
    // No client of the vault links the encrypted storage engine: the plain types they share
    // with it live in vault-types.
    for client in
        ["gate", "restore", "repair", "vault-api", "audit", "guard", "pgfmt", "pgproto", "vault-types"]
    {
        never(
            client,
            "store",
            Features::All,
            "clients share plain types through vault-types, never the store",
        );
    }
    // vault-api is wire types and a client: what serves HTTPS (the `serve` crate, axum and its
    // router, certificate generation) is linked by the services, never by a client through it.
    for server in ["serve", "axum", "axum-core", "matchit", "rcgen"] {
        never(
            "vault-api",
            server,
            Features::All,
            "vault-api is wire types and a client; serving lives in the `serve` crate",
        );
    }
    // What the services share to serve knows nothing of the services, nor of the store.
    for upper in ["vault", "gate", "store", "capture", "restore", "holdfast"] {
        never("serve", upper, Features::All, "serve is shared by the services and knows none of them");
    }
    // The gate and restore are separate trust domains.
    never("gate", "restore", Features::All, "the gate and restore are separate trust domains");
    never("restore", "gate", Features::All, "the gate and restore are separate trust domains");
    // Repair is the operator's, like restore: it reaches the live database only as a client
    // (through the gate's port when one is configured), never by linking the gate.
    never("gate", "repair", Features::All, "the gate and repair are separate trust domains");
    never("repair", "gate", Features::All, "the gate and repair are separate trust domains");
    // The store knows nothing of its callers.
    for upper in ["vault-api", "vault", "gate", "restore", "repair", "capture", "holdfast", "audit", "guard"]
    {
        never("store", upper, Features::All, "the store knows nothing of its callers");
        never("vault-types", upper, Features::All, "plain types know nothing of their users");
    }
    // Formats and protocols do no IO: no async runtime or HTTP stack with default features.
    for pure in ["pgfmt", "pgproto", "guard", "audit", "vault-types"] {
        for runtime in ["tokio", "async-std", "reqwest", "hyper", "axum", "mio"] {
            never(
                pure,
                runtime,
                Features::Default,
                "it must stay sans-IO (IO goes behind an optional feature)",
            );
        }
    }
    // The test harness (throw-away clusters and vaults) ships in no library or service crate,
    // and not in the holdfast binary built for production hosts (without the `demo` feature).
    for (krate, _) in g.edges.iter().filter(|(k, _)| k.as_str() != "testkit") {
        let features = if krate == "holdfast" { Features::RootWithoutDefaults } else { Features::All };
        never(
            krate,
            "testkit",
            features,
            "testkit is the test harness; only tests and `holdfast demo` use it",
        );
    }
    v
}

#[test]
fn the_workspace_is_what_the_architecture_says() {
    let g = workspace_graph();
    for krate in [
        "store",
        "vault-api",
        "serve",
        "vault",
        "capture",
        "holdfast",
        "testkit",
        "pgfmt",
        "pgproto",
        "restore",
        "repair",
        "audit",
        "gate",
        "guard",
    ] {
        assert!(g.edges.contains_key(krate), "crate {krate} is missing from the workspace");
    }
}

#[test]
fn every_rule_holds_on_the_transitive_dependency_graph() {
    let g = workspace_graph();
    let broken = violations(&g);
    assert!(broken.is_empty(), "the dependency graph breaks ARCHITECTURE.md:\n{}", broken.join("\n"));
    // The demo is the only way testkit gets into holdfast: on by default, out of the build for
    // production hosts.
    assert!(g.path("holdfast", "testkit", Features::Default).is_some(), "holdfast demo needs testkit");
    assert!(g.path("holdfast", "testkit", Features::RootWithoutDefaults).is_none());
}

/// The checks themselves: a graph with forbidden edges two and three steps away is caught,
/// with the path named; the same graph without them passes.
#[test]
fn a_forbidden_transitive_edge_is_caught() {
    let mut g = Graph::default();
    for (from, to) in [
        ("gate", "vault-api"),
        ("gate", "guard"),
        ("restore", "vault-api"),
        ("vault", "store"),
        ("vault", "vault-api"),
        ("holdfast", "gate"),
        ("pgproto", "pgfmt"),
        ("guard", "pg_query"),
    ] {
        g.add(from, to, false);
    }
    g.add("pgproto", "tokio", true);
    g.add_edge("holdfast", Edge { to: "testkit".into(), optional: false, by_default: true });
    assert_eq!(violations(&g), Vec::<String>::new());

    // vault-api now links a crate that links the vault service; guard a helper that pulls tokio;
    // holdfast links testkit unconditionally through a helper crate.
    g.add("vault-api", "helpers", false);
    g.add("helpers", "vault", false);
    g.add("pg_query", "tokio-util", false);
    g.add("tokio-util", "tokio", false);
    g.add("holdfast", "harness-glue", false);
    g.add("harness-glue", "testkit", false);
    // vault-api regains a server stack through a helper.
    g.add("vault-api", "web-helpers", false);
    g.add("web-helpers", "axum", false);
    let broken = violations(&g);
    for expected in [
        "gate reaches vault (gate → vault-api → helpers → vault)",
        "restore reaches vault (restore → vault-api → helpers → vault)",
        "guard reaches tokio (guard → pg_query → tokio-util → tokio)",
        "holdfast reaches testkit (holdfast → harness-glue → testkit)",
        "gate reaches store (gate → vault-api → helpers → vault → store)",
        "vault-api reaches axum (vault-api → web-helpers → axum)",
    ] {
        assert!(
            broken.iter().any(|b| b.starts_with(expected)),
            "not caught: {expected}\n{}",
            broken.join("\n")
        );
    }
    // An optional edge is no violation of a "with default features" rule, but is one of an
    // "any feature" rule.
    let mut g = Graph::default();
    g.add("pgproto", "tokio", true);
    g.add("store", "vault-api", true);
    let broken = violations(&g);
    assert_eq!(broken.len(), 1, "{broken:?}");
    assert!(broken[0].starts_with("store reaches vault-api"));
}
