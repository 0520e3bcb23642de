//! Architecture invariant: nothing but `vault::retention` removes anything from a store.
//!
//! Scans every `.rs` file under `crates/` (test directories excluded) for `.expunge(` and for
//! file or directory removal, and fails if one appears outside `crates/vault/src/retention.rs`
//! and the backends' own implementations (`crates/store/src/{local,s3,mirror}.rs`).

use std::path::{Path, PathBuf};

const ALLOWED: &[&str] = &[
    "crates/vault/src/retention.rs",
    "crates/store/src/local.rs",
    "crates/store/src/s3.rs",
    "crates/store/src/mirror.rs",
];
const PATTERNS: &[&str] = &[".expunge(", "remove_file", "remove_dir", "ExpungeAuthority::"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if p.is_dir() {
            if name == "tests" || name == "target" || name == "benches" {
                continue;
            }
            rust_files(&p, out);
        } else if name.ends_with(".rs") {
            out.push(p);
        }
    }
}

/// Removal outside a store is fine in a few places that never touch store paths; each is listed
/// with its reason, so adding one is a visible decision: (file, text on the line, why).
const NOT_STORE_PATHS: &[(&str, &str, &str)] = &[
    ("crates/testkit/src/vault.rs", "remove_file(&ready)", "the test vault's own ready file"),
    ("crates/testkit/src/pg.rs", "remove_file(", "a test PostgreSQL's password file and pid file"),
    ("crates/store/src/backup.rs", "remove_file(&path)", "restore replaces a symlink in the restore target"),
    ("crates/store/src/backend.rs", "ExpungeAuthority::", "the trait's own documentation of the authority"),
    (
        "crates/holdfast/src/demo/s3_act.rs",
        "std::fs::remove_dir_all(&local)",
        "demo --store s3: the insider's `rm -rf` of the demo vault's local store, the attack the act shows",
    ),
    (
        "crates/restore/src/lib.rs",
        "remove_file(&helper_path)",
        "the restore helper's config (a read token) in the restored data directory, once recovery is over",
    ),
    (
        "crates/restore/src/lib.rs",
        "remove_dir_all(opts.target_dir.join(recovery::SPOOL_DIR))",
        "the WAL prefetch spool in the restored data directory, once recovery is over",
    ),
    (
        "crates/restore/src/lib.rs",
        "std::fs::remove_dir_all(&p)",
        "clear_incomplete: the contents of a target directory holding a restore of ours that was cut short (marker present, no server running), so a rerun starts clean",
    ),
    ("crates/restore/src/lib.rs", "std::fs::remove_file(&p)", "clear_incomplete, as above"),
    (
        "crates/restore/src/lib.rs",
        "remove_file(&marker)",
        "the restore's own 'incomplete' marker in the target directory, once the restore has succeeded",
    ),
    (
        "crates/restore/src/wal.rs",
        "std::fs::remove_file(&spooled)",
        "a stale prefetched copy of a WAL segment asked for again, in the spool inside the restored data directory",
    ),
    (
        "crates/restore/src/wal.rs",
        "std::fs::remove_file(&tmp)",
        "a prefetch download that arrived after replay got the segment from the vault, in the same spool",
    ),
    (
        "crates/restore/src/wal.rs",
        "std::fs::remove_file(&path)",
        "a prefetched WAL segment replay has passed, in the spool inside the restored data directory",
    ),
    (
        "crates/restore/src/wal.rs",
        "std::fs::remove_file(&self.0)",
        "the prefetcher's 'downloading' marker for one segment, in the spool inside the restored data directory, once its download ends",
    ),
    (
        "crates/vault/src/standby.rs",
        "std::fs::remove_dir_all(&dir).map_err(|e| format!(\"removing {}",
        "a promoted standby's WAL staging directory (decrypted copies of stored segments) inside its own data directory: its restore_command is no longer used",
    ),
    (
        "crates/vault/src/standby.rs",
        "let _ = std::fs::remove_file(e.path());",
        "a staged copy of a stored WAL segment the standby's feed has passed (or a cut-short write), in the staging directory inside the standby's data directory; the vault's object is untouched",
    ),
    (
        "crates/vault/src/standby.rs",
        "let _ = std::fs::remove_file(older);",
        "the older partial staged copy of the feed's own segment, same staging directory",
    ),
    (
        "crates/audit/src/spool.rs",
        "std::fs::remove_file(dir.join(SPARE_FILE))",
        "the gate's local audit spool: a pre-zeroed spare segment (zeros, no records) left by an earlier run",
    ),
    (
        "crates/audit/src/spool.rs",
        "let _ = std::fs::remove_file(&path);",
        "the gate's local audit spool: a pre-zeroed spare segment whose preparation failed (zeros, no records)",
    ),
    (
        "crates/audit/src/spool.rs",
        "let _ = std::fs::remove_file(spare);",
        "the gate's local audit spool: the unused pre-zeroed spare segment, at close",
    ),
    (
        "crates/restore/src/recovery.rs",
        "remove_file(data.join(\"standby.signal\"))",
        "a standby.signal restored from the source, which would keep the restored cluster a standby",
    ),
    (
        "crates/vault/src/drill.rs",
        "std::fs::remove_dir_all(dir)",
        "remove_drill_dir: a drill's scratch copy or socket directory, by a name only drills make (refuses others; unit-tested)",
    ),
    (
        "crates/holdfast/src/restore_cmd.rs",
        "std::fs::remove_dir(d)",
        "a restore's private socket directory under /tmp (used only when the target path is too long for a socket), only if empty, after its server is stopped",
    ),
    (
        "crates/restore/src/lib.rs",
        "std::fs::remove_dir_all(&dir)",
        "the self-check's scratch copy of the WAL around the replay position (holdfast_check_wal inside the restore target)",
    ),
    (
        "crates/audit/src/ship.rs",
        "std::fs::remove_file(&path)",
        "the gate's local audit spool: a segment file whose records the vault has acknowledged (201), never a store object",
    ),
    (
        "crates/holdfast/src/demo/mod.rs",
        "std::fs::remove_dir_all(&data)",
        "the demo plays the insider and erases its own throw-away PostgreSQL data directories",
    ),
    (
        "crates/holdfast/src/demo/mod.rs",
        "std::fs::remove_dir_all(&p).with_context(|| format!(\"clearing",
        "an earlier demo run's gate/ and restored/ in a --dir the demo marked as its own",
    ),
    (
        "crates/repair/src/plan.rs",
        "std::fs::remove_dir_all(&self.root)",
        "a repair's scratch directory (created empty by the repair, holding its two throw-away restores), once their servers are stopped",
    ),
    (
        "crates/holdfast/src/demo/mod.rs",
        "std::fs::remove_dir(&socket)",
        "the restored server's private socket directory, once the server is stopped (only if empty)",
    ),
];

fn allowed_elsewhere(rel: &str, line: &str) -> bool {
    !line.contains(".expunge(")
        && NOT_STORE_PATHS.iter().any(|(file, text, _)| rel == *file && line.contains(text))
}

#[test]
fn only_retention_removes_from_a_store() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap();
    let mut files = Vec::new();
    rust_files(&root.join("crates"), &mut files);
    assert!(files.len() > 20, "scan found too few files: {}", files.len());
    let mut offences = Vec::new();
    for f in files {
        let rel = f.strip_prefix(&root).unwrap().to_string_lossy().replace('\\', "/");
        if ALLOWED.contains(&rel.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        // Unit tests at the bottom of a file are test code.
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for (i, line) in code.lines().enumerate() {
            let trimmed = line.trim_start();
            if trimmed.starts_with("//") {
                continue;
            }
            if PATTERNS.iter().any(|p| line.contains(p)) && !allowed_elsewhere(&rel, line) {
                offences.push(format!("{rel}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    assert!(offences.is_empty(), "removal outside vault::retention:\n{}", offences.join("\n"));
}

#[test]
fn the_scan_would_catch_an_offender() {
    // The detector itself must fire on the patterns it looks for.
    let line = "    store.expunge(&name, ExpungeAuthority::Expired { now }).await?;";
    assert!(PATTERNS.iter().any(|p| line.contains(p)));
    assert!(!allowed_elsewhere("crates/gate/src/lib.rs", line));
    assert!(!allowed_elsewhere("crates/vault/src/api.rs", "std::fs::remove_file(path)"));
}
