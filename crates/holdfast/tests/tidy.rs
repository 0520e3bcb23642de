//! Tidiness checks on the repository itself: the docs name tests that exist, no test file is
//! left out of the test binaries, and no crate declares a dependency it does not use.
//!
//! `docs/threat-model.md` maps each adversary to the tests that show what they cannot do; a
//! renamed or deleted test would leave the claim standing with nothing behind it. And since the
//! integration tests of most crates are one binary (`tests/suite.rs`, with `autotests = false`),
//! a new file in `tests/` that nobody adds there would silently never run.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// Every `.rs` file under `dir`, relative to the repository, skipping `target/` and hidden dirs.
fn rust_files(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with('.') || name == "target" {
            continue;
        }
        if p.is_dir() {
            rust_files(root, &p, out);
        } else if name.ends_with(".rs") {
            out.push(p.strip_prefix(root).unwrap().to_string_lossy().to_string());
        }
    }
}

/// The code references in a markdown text: (file, optional `::path::to::item`), from
/// backticked spans such as `crates/x/tests/y.rs::name`, `y.rs::name` (a file named so
/// somewhere) and `…::name` (the file last named on the same line).
fn references(markdown: &str) -> Vec<(String, Option<String>, String)> {
    let mut refs = Vec::new();
    for line in markdown.lines() {
        let mut last_file: Option<String> = None;
        for (i, span) in line.split('`').enumerate() {
            if i % 2 == 0 {
                continue; // outside backticks
            }
            let (file, item) = match span.split_once(".rs") {
                Some((f, rest))
                    if !f.is_empty() && f.chars().all(|c| c.is_alphanumeric() || "_/.-".contains(c)) =>
                {
                    let item = rest.strip_prefix("::").map(str::to_string);
                    if !rest.is_empty() && item.is_none() {
                        continue;
                    }
                    (format!("{f}.rs"), item)
                }
                _ => match (span.strip_prefix("…::"), &last_file) {
                    (Some(item), Some(f)) => (f.clone(), Some(item.to_string())),
                    _ => continue,
                },
            };
            last_file = Some(file.clone());
            refs.push((file, item, span.to_string()));
        }
    }
    refs
}

/// What is wrong with one reference, if anything.
fn check_reference(files: &[String], root: &Path, file: &str, item: Option<&str>) -> Option<String> {
    let matches: Vec<&String> =
        files.iter().filter(|f| f.as_str() == file || f.ends_with(&format!("/{file}"))).collect();
    if matches.is_empty() {
        return Some(format!("no file {file}"));
    }
    let item = item?;
    let name = item.rsplit("::").next().unwrap();
    if !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
        return Some(format!("{item:?} is not a test name"));
    }
    let found = matches.iter().any(|f| {
        let text = std::fs::read_to_string(root.join(f)).unwrap_or_default();
        text.contains(&format!("fn {name}(")) || text.contains(&format!("mod {name} {{"))
    });
    (!found).then(|| {
        format!("no fn {name} in {}", matches.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "))
    })
}

#[test]
fn every_test_the_docs_name_exists() {
    let root = repo();
    let mut files = Vec::new();
    rust_files(&root, &root.join("crates"), &mut files);
    let mut docs: Vec<PathBuf> = vec![root.join("ARCHITECTURE.md"), root.join("README.md")];
    docs.extend(std::fs::read_dir(root.join("docs")).unwrap().flatten().map(|e| e.path()));
    let mut checked = 0;
    let mut missing = Vec::new();
    for doc in docs.iter().filter(|d| d.extension().is_some_and(|e| e == "md")) {
        let text = std::fs::read_to_string(doc).unwrap();
        for (file, item, span) in references(&text) {
            checked += 1;
            if let Some(why) = check_reference(&files, &root, &file, item.as_deref()) {
                missing.push(format!("{}: `{span}`: {why}", doc.strip_prefix(&root).unwrap().display()));
            }
        }
    }
    assert!(checked > 40, "only {checked} references found: is the parser still reading the docs?");
    assert!(missing.is_empty(), "the docs name code that does not exist:\n{}", missing.join("\n"));
}

/// The checker itself: a renamed test, a moved file and a `…::` continuation are each caught.
#[test]
fn a_stale_test_name_is_caught() {
    let root = repo();
    let mut files = Vec::new();
    rust_files(&root, &root.join("crates"), &mut files);
    let refs = references(
        "| x | `crates/holdfast/tests/tidy.rs::a_stale_test_name_is_caught`, `…::no_such_test_here` |\n\
         | y | `tidy.rs::every_test_the_docs_name_exists`, `crates/holdfast/tests/gone.rs`, `a.rs` and `not code` |",
    );
    let verdicts: Vec<(String, Option<String>)> = refs
        .iter()
        .map(|(f, i, _)| {
            (i.clone().unwrap_or_else(|| f.clone()), check_reference(&files, &root, f, i.as_deref()))
        })
        .collect();
    assert_eq!(verdicts.len(), 5, "{verdicts:?}");
    assert_eq!(verdicts[0], ("a_stale_test_name_is_caught".into(), None));
    assert!(
        verdicts[1].1.as_deref().is_some_and(|w| w.starts_with("no fn no_such_test_here")),
        "{verdicts:?}"
    );
    assert_eq!(verdicts[2], ("every_test_the_docs_name_exists".into(), None));
    assert_eq!(verdicts[3].1.as_deref(), Some("no file crates/holdfast/tests/gone.rs"));
    assert_eq!(verdicts[4].1.as_deref(), Some("no file a.rs"));
}

/// A crate with `autotests = false` runs only the test targets it lists: every file directly
/// in its `tests/` must be one of them or a `#[path]` module of one.
#[test]
fn every_test_file_is_in_a_test_binary() {
    let root = repo();
    let mut left_out = Vec::new();
    for krate in std::fs::read_dir(root.join("crates")).unwrap().flatten() {
        let manifest = std::fs::read_to_string(krate.path().join("Cargo.toml")).unwrap();
        let Ok(tests) = std::fs::read_dir(krate.path().join("tests")) else { continue };
        if !manifest.lines().any(|l| l.replace(' ', "") == "autotests=false") {
            continue;
        }
        let targets: Vec<String> = manifest
            .lines()
            .filter_map(|l| l.trim().strip_prefix("path = \"tests/")?.strip_suffix('"').map(str::to_string))
            .collect();
        let included: String = targets
            .iter()
            .map(|t| std::fs::read_to_string(krate.path().join("tests").join(t)).unwrap_or_default())
            .collect();
        for f in tests.flatten() {
            let name = f.file_name().to_string_lossy().to_string();
            if !name.ends_with(".rs") || targets.contains(&name) {
                continue;
            }
            if !included.contains(&format!("#[path = \"{name}\"]")) {
                left_out.push(format!("{}/tests/{name}", krate.file_name().to_string_lossy()));
            }
        }
    }
    assert!(
        left_out.is_empty(),
        "test files that no test binary includes (add them to the crate's tests/suite.rs): {left_out:?}"
    );
}

/// The dependencies a crate declares (`[dependencies]`, `[dev-dependencies]`,
/// `[build-dependencies]`, also under `[target.'cfg(..)']`) that none of its `.rs` files names,
/// judged the way `cargo machete` judges (this replaced it in `./run test`: compiling machete on a
/// fresh CI machine took minutes): a dependency `foo-bar` is used where `foo_bar::`,
/// `use foo_bar` or `extern crate foo_bar` appears. A dependency used under another name (md-5 is
/// `md5`) is listed in `[package.metadata.cargo-machete] ignored`, with the reason beside it.
fn unused_dependencies(krate: &Path) -> Vec<String> {
    let manifest: toml::Table =
        std::fs::read_to_string(krate.join("Cargo.toml")).unwrap().parse().expect("Cargo.toml parses");
    let ignored: Vec<&str> = manifest
        .get("package")
        .and_then(|p| p.get("metadata")?.get("cargo-machete")?.get("ignored")?.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    let mut tables = vec![&manifest];
    if let Some(targets) = manifest.get("target").and_then(|t| t.as_table()) {
        tables.extend(targets.values().filter_map(|t| t.as_table()));
    }
    let declared: BTreeSet<&String> = tables
        .iter()
        .flat_map(|t| ["dependencies", "dev-dependencies", "build-dependencies"].map(|k| t.get(k)))
        .flatten()
        .filter_map(|deps| deps.as_table())
        .flat_map(|deps| deps.keys())
        .collect();
    let mut files = Vec::new();
    rust_files(krate, krate, &mut files);
    let sources: String =
        files.iter().map(|f| std::fs::read_to_string(krate.join(f)).unwrap() + "\n").collect();
    declared
        .into_iter()
        .filter(|d| !ignored.contains(&d.as_str()) && !names_crate(&sources, &d.replace('-', "_")))
        .cloned()
        .collect()
}

/// Whether `sources` name the crate `name` as a path (`name::`), in a `use` or an `extern crate`.
fn names_crate(sources: &str, name: &str) -> bool {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    sources.match_indices(name).any(|(i, _)| {
        let (head, after) = (&sources[..i], &sources[i + name.len()..]);
        if head.ends_with(is_ident) || after.starts_with(is_ident) {
            return false; // part of a longer identifier
        }
        let head = head.trim_end();
        let keyword = |k: &str| head.strip_suffix(k).is_some_and(|h| !h.ends_with(is_ident));
        after.starts_with("::") || keyword("use") || keyword("extern crate")
    })
}

#[test]
fn every_declared_dependency_is_used() {
    let root = repo();
    let mut crates = 0;
    let mut unused = Vec::new();
    for krate in std::fs::read_dir(root.join("crates")).unwrap().flatten() {
        if !krate.path().join("Cargo.toml").exists() {
            continue;
        }
        crates += 1;
        for dep in unused_dependencies(&krate.path()) {
            unused.push(format!("{}: {dep}", krate.file_name().to_string_lossy()));
        }
    }
    assert!(crates >= 10, "only {crates} crates found under crates/");
    assert!(
        unused.is_empty(),
        "declared but never named in the crate's sources (remove them, or list them under \
         [package.metadata.cargo-machete] ignored with the reason): {unused:?}"
    );
}

/// The checker itself, on a planted crate: unused dependencies of every kind are caught; names
/// used as a path, in a `use` or an `extern crate` count; a longer identifier or a word in a
/// comment does not; `ignored` is honoured.
#[test]
fn an_unused_dependency_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let krate = dir.path();
    std::fs::create_dir_all(krate.join("src")).unwrap();
    std::fs::create_dir_all(krate.join("tests")).unwrap();
    std::fs::write(
        krate.join("Cargo.toml"),
        r#"
[package]
name = "planted"

[dependencies]
serde = { version = "1", features = ["derive"] }
tokio.workspace = true
md-5 = "0.11"
unused-dep = "1"
never = "1"
renamed = { package = "serde_json", version = "1" }

[dev-dependencies]
libc = "0.2"
unused-dev = "1"

[target.'cfg(unix)'.dependencies]
unused-on-unix = "1"

[build-dependencies]
unused-build = "1"

[package.metadata.cargo-machete]
ignored = ["md-5"]
"#,
    )
    .unwrap();
    std::fs::write(
        krate.join("src/lib.rs"),
        "use serde::Serialize;\n// never used, and not_unused_dep::x nor unused_devs::y name them\n\
         pub fn f() { tokio::spawn(async {}); let _ = renamed::Value::Null; }\n",
    )
    .unwrap();
    std::fs::write(krate.join("tests/t.rs"), "extern crate libc;\nuse unused_dev_x as y;\n").unwrap();
    assert_eq!(
        unused_dependencies(krate),
        ["never", "unused-build", "unused-dep", "unused-dev", "unused-on-unix"],
        "the planted crate's unused dependencies, and only those"
    );
}
