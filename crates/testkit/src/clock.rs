//! A wall clock for a test's PostgreSQL that "root on the database host" moves: a small
//! `LD_PRELOAD` library, compiled here with the system's C compiler, that adds the number of
//! seconds written in a file to `gettimeofday` and `clock_gettime(CLOCK_REALTIME…)` — what
//! PostgreSQL stamps commit records with — as `date -s` on the host would, without touching the
//! machine's clock (other tests run beside). The server reads the file at every call, so a
//! test moves the clock between statements with [`ShiftedClock::set`].

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::pg::TempPgOptions;

const SHIM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

static long long holdfast_offset(void) {
    const char *path = getenv("HOLDFAST_CLOCK_OFFSET_FILE");
    long long s = 0;
    if (!path) return 0;
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    if (fscanf(f, "%lld", &s) != 1) s = 0;
    fclose(f);
    return s;
}

int clock_gettime(clockid_t c, struct timespec *ts) {
    static int (*real)(clockid_t, struct timespec *);
    if (!real) real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    int r = real(c, ts);
    if (r == 0 && ts && (c == CLOCK_REALTIME || c == CLOCK_REALTIME_COARSE)) ts->tv_sec += holdfast_offset();
    return r;
}

int gettimeofday(struct timeval *tv, void *tz) {
    static int (*real)(struct timeval *, void *);
    if (!real) real = (int (*)(struct timeval *, void *))dlsym(RTLD_NEXT, "gettimeofday");
    int r = real(tv, tz);
    if (r == 0 && tv) tv->tv_sec += holdfast_offset();
    return r;
}
"#;

/// The library and the offset file (both readable by the `postgres` user), removed on drop.
#[derive(Debug)]
pub struct ShiftedClock {
    dir: tempfile::TempDir,
}

impl ShiftedClock {
    /// Compiles the library (`cc`); the clock starts right (offset 0).
    pub fn new() -> Result<ShiftedClock> {
        let dir = tempfile::Builder::new().prefix("holdfast-clock-").tempdir()?;
        let src = dir.path().join("shift.c");
        std::fs::write(&src, SHIM)?;
        let out = Command::new("cc")
            .args(["-shared", "-fPIC", "-O1", "-o"])
            .arg(dir.path().join("shift.so"))
            .arg(&src)
            .arg("-ldl")
            .output()
            .context("running cc (a C compiler is needed to move a test server's clock)")?;
        if !out.status.success() {
            bail!("compiling the clock shim failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let clock = ShiftedClock { dir };
        clock.set(0)?;
        Ok(clock)
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("offset")
    }

    /// From now on the server's wall clock reads real time plus `seconds`.
    pub fn set(&self, seconds: i64) -> Result<()> {
        let tmp = self.dir.path().join("offset.tmp");
        std::fs::write(&tmp, format!("{seconds}\n"))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
        std::fs::rename(&tmp, self.file())?;
        Ok(())
    }

    /// `opts` with the server's processes on this clock.
    pub fn server_options(&self, opts: TempPgOptions) -> TempPgOptions {
        opts.env("LD_PRELOAD", &self.dir.path().join("shift.so").display().to_string())
            .env("HOLDFAST_CLOCK_OFFSET_FILE", &self.file().display().to_string())
    }
}
