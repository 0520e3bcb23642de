//! Architecture invariant: the vault's HTTP module is a leaf. Only `serve` (in `lib.rs`) mounts
//! `api::router`; drills, the collector's host and everything else work through
//! `vault::service`, and the service knows nothing of HTTP (no axum, no status codes).

use std::path::Path;

/// Lines of `text` (a file of `crates/vault/src`) that break the layering, with why.
fn violations(file: &str, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        // `vault_api::` is the wire crate, not the HTTP module.
        let uses_api = code.replace("vault_api::", "").contains("api::");
        if uses_api && file != "api.rs" && !(file == "lib.rs" && code.contains("api::router(")) {
            out.push(format!("{file}:{}: imports the HTTP module: {}", i + 1, line.trim()));
        }
        if file == "service.rs" && (code.contains("axum") || code.contains("StatusCode")) {
            out.push(format!("{file}:{}: the service speaks HTTP: {}", i + 1, line.trim()));
        }
    }
    out
}

#[test]
fn only_serve_imports_the_http_module() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    let mut files = 0;
    for e in std::fs::read_dir(&src).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".rs") {
            files += 1;
            found.extend(violations(&name, &std::fs::read_to_string(e.path()).unwrap()));
        }
    }
    assert!(files >= 5 && src.join("service.rs").exists(), "the scan must see the vault's modules");
    assert!(found.is_empty(), "the vault's layering is broken:\n{}", found.join("\n"));
    // The check itself catches what it is for.
    assert_eq!(violations("drill.rs", "use crate::api::Shared;").len(), 1);
    assert_eq!(violations("service.rs", "use axum::http::StatusCode;").len(), 1);
    assert!(violations("drill.rs", "use vault_api::drill::DrillReport;").is_empty());
}
