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

/// Quotes a value for postgresql.conf.
fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
}

/// Quotes a word for the shell that runs `restore_command`.
fn shell(v: &str) -> String {
    format!("'{}'", v.replace('\'', "'\\''"))
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
    let mut s = String::from("\n# Added by `holdfast restore`: recover from the holdfast vault.\n");
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
    // Pausing at the target needs a server that takes read-only sessions (with it off, `pause`
    // acts as `shutdown`); `holdfast restore --start --promote` pauses there and promotes.
    s += "hot_standby = 'on'\n";
    // A restored copy must not push WAL into production's archive nor wait for its standbys.
    s += "archive_mode = 'off'\nsynchronous_standby_names = ''\n";
    // Before recovery PostgreSQL fsyncs every file of a data directory it did not shut down
    // itself, one file at a time; one syncfs() per filesystem is the same guarantee, in a
    // fraction of the time (PostgreSQL 14+, Linux).
    s += "recovery_init_sync_method = 'syncfs'\n";
    let auto = data.join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
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
    fn quoting() {
        assert_eq!(quote("it's"), "'it''s'");
        assert_eq!(shell("/a b/it's"), "'/a b/it'\\''s'");
    }
}
