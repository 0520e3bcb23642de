//! Recovery settings written into the restored data directory.

use std::path::{Path, PathBuf};

use crate::plan::Target;
use crate::wal::HelperConfig;
use crate::{Plan, RestoreError};

/// What PostgreSQL does when it reaches the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Stay in recovery, read-only, so the result can be inspected first (PostgreSQL's and
    /// pgBackRest's default).
    Pause,
    /// End recovery and open for writes on a new timeline.
    Promote,
}

/// The file holding the WAL helper's settings, inside the data directory.
pub const HELPER_CONFIG: &str = "holdfast_restore.json";
/// Prefetched WAL waits here (same filesystem as `pg_wal`, so handing it over is a rename).
pub const SPOOL_DIR: &str = "holdfast_spool";

/// The first line of what `holdfast restore` appends to `postgresql.auto.conf` (after a blank
/// line): everything from here on is the restore's, not the source's.
pub const ADDED_MARK: &str = "\n# Added by `holdfast restore`: recover from the holdfast vault.\n";

/// Settings for replay only (checkpoint distance), included from `postgresql.auto.conf` and
/// emptied by `holdfast restore --start --promote` once the server is promoted: a production
/// server keeps its own checkpoint settings (how long its crash recovery may take).
pub const REPLAY_CONFIG: &str = "holdfast_replay.conf";

/// The last uncommented value of `name` in a postgresql.conf text, in bytes (`shared_buffers`
/// style: a number of 8 kB pages, or with a unit).
fn setting_bytes(text: &str, name: &str) -> Option<u64> {
    let mut found = None;
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix(name) else { continue };
        let Some(v) = rest.trim_start().strip_prefix('=').or_else(|| rest.strip_prefix(' ')) else {
            continue;
        };
        let v = v.trim().trim_matches('\'').trim();
        let digits = v.len() - v.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let Ok(n) = v[..digits].parse::<u64>() else { continue };
        let unit = match v[digits..].trim() {
            "" => 8192,
            "kB" => 1 << 10,
            "MB" => 1 << 20,
            "GB" => 1 << 30,
            "TB" => 1 << 40,
            _ => continue,
        };
        found = Some(n.saturating_mul(unit));
    }
    found
}

/// The host's memory, from `/proc/meminfo` (Linux; `None` elsewhere).
fn host_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}

/// Recovery settings sized to the restore host, for replay speed (lines for
/// `postgresql.auto.conf`). `configured`: the data directory's own configuration text, whose
/// `shared_buffers` is kept when larger (production's operator sized it for its host).
///
/// Replay is one process applying records in order; what it waits on is reading the pages
/// records touch. So: a buffer cache of a quarter of the host's memory (at most 16 GB; the
/// page cache keeps the rest) instead of the 128 MB default, WAL decoded further ahead
/// (`wal_decode_buffer_size`) and the pages it names read ahead with more I/O in flight
/// (`recovery_prefetch`, `maintenance_io_concurrency`).
pub fn host_settings(configured: &str, memory: Option<u64>) -> String {
    let mut s = String::from("# Sized to this host for replay (holdfast restore).\n");
    if let Some(mem) = memory {
        let share = (mem / 4).clamp(128 << 20, 16 << 30);
        if setting_bytes(configured, "shared_buffers").is_none_or(|b| b < share) {
            s += &format!("shared_buffers = '{}MB'\n", share >> 20);
        }
    }
    s += "recovery_prefetch = 'on'\nmaintenance_io_concurrency = 64\nwal_decode_buffer_size = '4MB'\n";
    s
}

/// What [`REPLAY_CONFIG`] holds while replaying: restartpoints (the standby's, a restore's)
/// only when the WAL since the last one exceeds 16 GB or after an hour, not every 5 minutes or
/// 1 GB — each writes every page replay dirtied. A crash during a restore means restoring
/// again anyway.
pub const REPLAY_SETTINGS: &str = "# Replay only: emptied once the server is promoted (holdfast restore).\n\
checkpoint_timeout = '1h'\nmax_wal_size = '16GB'\n";

/// Quotes a value for postgresql.conf.
fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
}

/// Quotes a word for the shell that runs `restore_command`.
fn shell(v: &str) -> String {
    format!("'{}'", v.replace('\'', "'\\''"))
}

/// Where a backup's `tablespace_map` is kept once the restore has set it aside.
pub const TABLESPACE_MAP_ASIDE: &str = "holdfast_tablespace_map";

/// A backup of a server with tablespaces holds their files under `pg_tblspc/<oid>/` (the vault
/// stores them there) and a `tablespace_map` naming each one's location on the source's host.
/// PostgreSQL would replace each directory by a link to that location — it cannot (`could not
/// remove directory "pg_tblspc/<oid>": Directory not empty`), and must not: the path is the
/// source's, chosen by its superuser, and a drill or restore on the vault's host would write
/// there. The map is set aside and the tablespaces stay in the target directory, in place
/// (`allow_in_place_tablespaces`): the lines to add, empty without tablespaces.
fn in_place_tablespaces(data: &Path) -> Result<String, RestoreError> {
    let map = data.join("tablespace_map");
    // PostgreSQL sends an empty map for a server without tablespaces: left as it is.
    if std::fs::metadata(&map).map_or(true, |m| m.len() == 0) {
        return Ok(String::new());
    }
    let aside = data.join(TABLESPACE_MAP_ASIDE);
    std::fs::rename(&map, &aside).map_err(RestoreError::io(format!(
        "setting {} aside as {}",
        map.display(),
        aside.display()
    )))?;
    Ok("# The source's tablespaces, restored inside this directory (its tablespace_map is in holdfast_tablespace_map).\n\
        allow_in_place_tablespaces = 'on'\n"
        .to_string())
}

/// One `name = value` of a PostgreSQL configuration file: the name lower-cased, the value
/// unquoted (`''` and backslash escapes), comments and blank lines skipped.
fn config_line(line: &str) -> Option<(String, String)> {
    let line = line.trim_start();
    let name_len =
        line.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.')).unwrap_or(line.len());
    if name_len == 0 {
        return None;
    }
    let name = line[..name_len].to_ascii_lowercase();
    let rest = line[name_len..].trim_start();
    let rest = rest.strip_prefix('=').unwrap_or(rest).trim_start();
    let mut value = String::new();
    if let Some(q) = rest.strip_prefix('\'') {
        let mut chars = q.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\'' if chars.peek() == Some(&'\'') => {
                    chars.next();
                    value.push('\'');
                }
                '\'' => break,
                '\\' => value.extend(chars.next()),
                c => value.push(c),
            }
        }
    } else {
        value = rest.split(|c: char| c.is_whitespace() || c == '#').next().unwrap_or("").to_string();
    }
    Some((name, value))
}

/// The settings PostgreSQL would read for `file`, in its order: every assignment, with
/// `include`, `include_if_exists` and `include_dir` followed (relative to the including
/// file's directory, as PostgreSQL does; at most 10 deep). Unreadable files are skipped.
fn config_settings(file: &Path, depth: usize, out: &mut Vec<(String, String)>) {
    let Ok(text) = std::fs::read_to_string(file) else { return };
    let dir = file.parent().unwrap_or(Path::new("."));
    for line in text.lines() {
        let Some((name, value)) = config_line(line) else { continue };
        match name.as_str() {
            "include" | "include_if_exists" if depth < 10 => {
                config_settings(&dir.join(&value), depth + 1, out)
            }
            "include_dir" if depth < 10 => {
                let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join(&value))
                    .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
                    .unwrap_or_default();
                files.retain(|f| {
                    f.extension().is_some_and(|e| e == "conf")
                        && !f.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
                });
                files.sort();
                for f in files {
                    config_settings(&f, depth + 1, out);
                }
            }
            _ => out.push((name, value)),
        }
    }
}

/// The libraries PostgreSQL may load by a path when it starts or a session begins
/// (`*_preload_libraries`): the source's superuser sets them (`ALTER SYSTEM`, or a file root
/// planted in the data directory) and they would run on the restoring host — a drill's and the
/// warm standby's are the vault's. Each is set again in the restore's section with the source's
/// plain names only (looked up in this host's `$libdir`, where a WAL resource manager's or an
/// extension's library is installed); an entry with a directory in it is dropped. The source's
/// values are read from `postgresql.conf` (includes followed) and `postgresql.auto.conf`; what
/// this misses can only lose a plain name, never keep a path: the line written last wins.
fn preload_settings(data: &Path) -> String {
    let mut all = Vec::new();
    config_settings(&data.join("postgresql.conf"), 0, &mut all);
    config_settings(&data.join("postgresql.auto.conf"), 0, &mut all);
    let mut s = String::new();
    for name in ["shared_preload_libraries", "local_preload_libraries", "session_preload_libraries"] {
        let value = all.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_str()).unwrap_or("");
        let (kept, dropped): (Vec<&str>, Vec<&str>) = value
            .split(',')
            .map(|e| e.trim().trim_matches('"'))
            .map(|e| e.strip_prefix("$libdir/").unwrap_or(e))
            .filter(|e| !e.is_empty())
            .partition(|e| !e.contains('/') && !e.contains('\\'));
        if !dropped.is_empty() {
            s +=
                &format!("# The source's {name} named by a path (not loaded here): {}\n", dropped.join(", "));
        }
        let list: Vec<String> = kept.iter().map(|e| format!("\"{}\"", e.replace('"', ""))).collect();
        s += &format!("{name} = {}\n", quote(&list.join(", ")));
    }
    // jit_provider is joined to $libdir as it is written: `../../x` loads a file elsewhere.
    s += "jit_provider = 'llvmjit'\n";
    // Files the server writes at a path of the source's choosing.
    s += "external_pid_file = ''\n";
    let log_dir =
        all.iter().rev().find(|(n, _)| n == "log_directory").map(|(_, v)| v.as_str()).unwrap_or("log");
    if log_dir.starts_with('/') || log_dir.split('/').any(|p| p == "..") {
        s += "log_directory = 'log'\n";
    }
    s
}

/// Writes `recovery.signal`, the helper's config and the recovery settings.
pub fn write(
    data: &Path,
    plan: &Plan,
    action: Action,
    exclusive: bool,
    holdfast_exe: &Path,
    helper: &HelperConfig,
) -> Result<PathBuf, RestoreError> {
    let spool = data.join(SPOOL_DIR);
    std::fs::create_dir_all(&spool).map_err(RestoreError::io(format!("creating {}", spool.display())))?;
    let cfg_path = data.join(HELPER_CONFIG);
    helper.save(&cfg_path)?;
    let restore_command = format!(
        "{} restore-wal --config {} %f %p",
        shell(&holdfast_exe.display().to_string()),
        shell(&cfg_path.display().to_string())
    );
    let mut s = String::from(ADDED_MARK);
    s += &format!("restore_command = {}\n", quote(&restore_command));
    match &plan.target {
        Target::Latest => {}
        // A numeric offset: time zone abbreviations such as `Z` are not loaded yet when the
        // postmaster reads its configuration, and PostgreSQL rejects them there.
        Target::Time(t) => {
            let utc = t.to_string().replace('T', " ").trim_end_matches('Z').to_string() + "+00";
            s += &format!("recovery_target_time = {}\n", quote(&utc))
        }
        Target::Lsn(l) => s += &format!("recovery_target_lsn = {}\n", quote(&l.to_string())),
        Target::Xid(x) => s += &format!("recovery_target_xid = {}\n", quote(&x.to_string())),
        Target::Name(n) => s += &format!("recovery_target_name = {}\n", quote(n)),
    }
    if exclusive && matches!(plan.target, Target::Time(_) | Target::Lsn(_) | Target::Xid(_)) {
        // Stop just before the target: its transaction (or record) is not replayed.
        s += "recovery_target_inclusive = 'false'\n";
    }
    if plan.target != Target::Latest {
        s += &format!(
            "recovery_target_action = {}\n",
            quote(match action {
                Action::Pause => "pause",
                Action::Promote => "promote",
            })
        );
    }
    s += "recovery_target_timeline = 'latest'\n";
    s += &in_place_tablespaces(data)?;
    // Pausing at the target needs a server that takes read-only sessions (with it off, `pause`
    // acts as `shutdown`); `holdfast restore --start --promote` pauses there and promotes.
    s += "hot_standby = 'on'\n";
    // A restored copy must not push WAL into production's archive nor wait for its standbys.
    s += "archive_mode = 'off'\nsynchronous_standby_names = ''\n";
    // Commands in the source's configuration would run on this host — a drill's and the
    // standby's are the vault's — and its superuser sets them (ALTER SYSTEM): none is run, and
    // libraries are looked up only where this host's PostgreSQL installed them.
    s += "recovery_end_command = ''\narchive_cleanup_command = ''\narchive_command = ''\n\
          ssl_passphrase_command = ''\ndynamic_library_path = '$libdir'\n";
    s += &preload_settings(data);
    // Before recovery PostgreSQL fsyncs every file of a data directory it did not shut down
    // itself, one file at a time; one syncfs() per filesystem is the same guarantee, in a
    // fraction of the time (PostgreSQL 14+, Linux).
    s += "recovery_init_sync_method = 'syncfs'\n";
    let auto = data.join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
    let configured = std::fs::read_to_string(data.join("postgresql.conf")).unwrap_or_default() + &text;
    s += &host_settings(&configured, host_memory());
    let replay = data.join(REPLAY_CONFIG);
    std::fs::write(&replay, REPLAY_SETTINGS)
        .map_err(RestoreError::io(format!("writing {}", replay.display())))?;
    s += &format!("include_if_exists = {}\n", quote(REPLAY_CONFIG));
    text += &s;
    std::fs::write(&auto, text).map_err(RestoreError::io(format!("writing {}", auto.display())))?;
    let signal = data.join("recovery.signal");
    std::fs::write(&signal, b"").map_err(RestoreError::io(format!("writing {}", signal.display())))?;
    // Left over by the source's own standby setup, it would make this a standby forever.
    let _ = std::fs::remove_file(data.join("standby.signal"));
    Ok(cfg_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_settings_are_sized_to_the_host_and_keep_a_larger_shared_buffers() {
        let gb = 1u64 << 30;
        let s = host_settings("shared_buffers = 128MB\t# min 128kB\n", Some(24 * gb));
        assert!(s.contains("shared_buffers = '6144MB'"), "{s}");
        assert!(s.contains("wal_decode_buffer_size = '4MB'") && s.contains("recovery_prefetch = 'on'"));
        // Production's own larger setting is kept (the last one wins, as in PostgreSQL).
        let s = host_settings(
            "shared_buffers = 1GB\n#shared_buffers = 1\nshared_buffers = '64GB'\n",
            Some(24 * gb),
        );
        assert!(!s.contains("shared_buffers"), "{s}");
        assert_eq!(setting_bytes("shared_buffers=16384", "shared_buffers"), Some(128 << 20));
        // A small host: at least PostgreSQL's default; an unknown one: left alone.
        assert!(host_settings("", Some(gb)).contains("shared_buffers = '256MB'"));
        assert!(!host_settings("", None).contains("shared_buffers"));
        assert_eq!(setting_bytes("shared_buffers_x = 1GB", "shared_buffers"), None);
    }

    #[test]
    fn preload_libraries_by_a_path_are_dropped_and_plain_names_kept() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("conf.d")).unwrap();
        std::fs::write(
            d.path().join("postgresql.conf"),
            "shared_preload_libraries = 'pg_stat_statements' # a comment\n\
             include_dir 'conf.d'\ninclude_if_exists = 'missing.conf'\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("conf.d/10.conf"),
            "session_preload_libraries='lib/x.so, auto_explain'\n",
        )
        .unwrap();
        std::fs::write(d.path().join("conf.d/.hidden.conf"), "local_preload_libraries = '/tmp/y'\n").unwrap();
        std::fs::write(
            d.path().join("postgresql.auto.conf"),
            "# Do not edit this file manually!\nSHARED_PRELOAD_LIBRARIES = '\"pg_stat_statements\", lib/evil.so, $libdir/auto_explain, $libdir/../x'\n\
             log_directory = '/etc/cron.d'\n",
        )
        .unwrap();
        let s = preload_settings(d.path());
        assert!(s.contains("shared_preload_libraries = '\"pg_stat_statements\", \"auto_explain\"'\n"), "{s}");
        assert!(s.contains("session_preload_libraries = '\"auto_explain\"'\n"), "{s}");
        assert!(s.contains("local_preload_libraries = ''\n"), "{s}");
        assert!(
            s.contains("lib/evil.so") && s.contains("../x") && s.contains("lib/x.so"),
            "dropped ones named: {s}"
        );
        assert!(s.contains("log_directory = 'log'") && s.contains("external_pid_file = ''"), "{s}");
        assert_eq!(config_line("  a.b = 'it''s' # c"), Some(("a.b".into(), "it's".into())));
        assert_eq!(config_line("x 5"), Some(("x".into(), "5".into())));
        assert_eq!(config_line("# x = 1"), None);
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("it's"), "'it''s'");
        assert_eq!(shell("/a b/it's"), "'/a b/it'\\''s'");
    }
}
