//! WAL for recovery: the `restore_command` helper and the prefetcher that fills its spool.
//!
//! PostgreSQL treats a failing `restore_command` as "no such file" and ends recovery there —
//! a cluster that silently lacks data. So the helper fails that way only for files the vault
//! does not have and the plan does not need; when the vault is unreachable (after retries) or a
//! planned segment is missing, it exits with 127, which PostgreSQL treats as fatal: recovery
//! aborts and the server does not start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vault_api::VaultClient;

use crate::RestoreError;

/// Exit status that makes PostgreSQL abort recovery instead of treating the file as absent.
pub const ABORT_RECOVERY: i32 = 127;

/// What `holdfast restore-wal` needs, written next to the restored data (mode 0600: it holds a
/// read token).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HelperConfig {
    pub url: String,
    pub ca_pem: String,
    pub token: String,
    pub cluster: String,
    /// Segment files the plan needs: a miss on these aborts recovery.
    pub expected: Vec<String>,
    pub spool: PathBuf,
    /// A warm standby's helper (the vault's own): it never ends recovery, so a file the vault
    /// lacks yet — or a vault that does not answer — is "not yet" (exit 1, PostgreSQL asks again
    /// after `wal_retrieve_retry_interval`), never fatal; no spool, no retries that would hold
    /// the startup process.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub standby: bool,
    /// A standby's feed limit: a file holding an LSN (written by the vault) past which WAL is
    /// not handed over yet — the bytes after it are served as zeros, which PostgreSQL reads as
    /// "not yet" —, so the standby does not even hold WAL younger than its delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feed_until: Option<PathBuf>,
    /// A standby's staging directory: whole segments the vault has decrypted ahead of the feed
    /// (written by the vault, named as PostgreSQL asks for them). A segment found there is
    /// handed over from it — a local copy, cut at the feed limit like the vault's — instead of
    /// a request to the vault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<PathBuf>,
}

/// The name of a staged copy of segment `file` of which the vault held only the part before
/// `end` (the rest zeros): `<file>.partial.<end as 16 hex digits>`.
pub fn partial_name(file: &str, end: pgfmt::Lsn) -> String {
    format!("{file}.partial.{:016X}", end.0)
}

/// The segment name and end of a [`partial_name`].
pub fn parse_partial(name: &str) -> Option<(&str, pgfmt::Lsn)> {
    let (file, end) = name.split_once(".partial.")?;
    (end.len() == 16).then(|| u64::from_str_radix(end, 16).ok()).flatten().map(|e| (file, pgfmt::Lsn(e)))
}

/// A standby's staged copy of `file`: the whole segment, or a partial one holding everything
/// up to the feed limit `until` (the helper cuts it there).
fn staged(dir: &Path, file: &str, until: Option<pgfmt::Lsn>) -> Option<Vec<u8>> {
    if let Ok(bytes) = std::fs::read(dir.join(file)) {
        return Some(bytes);
    }
    let until = until?;
    let best = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            parse_partial(&name)
                .filter(|(f, end)| *f == file && *end >= until)
                .map(|(_, end)| (end, e.path()))
        })
        .max_by_key(|(end, _)| *end)?;
    std::fs::read(best.1).ok()
}

/// Zeroes `bytes` (a whole segment file `file`) past `until`; `None` when the segment begins
/// at or after it (nothing to hand over yet). History files are never cut.
pub fn cut_at(file: &str, mut bytes: Vec<u8>, until: pgfmt::Lsn) -> Option<Vec<u8>> {
    if file.ends_with(".history") || bytes.is_empty() {
        return Some(bytes);
    }
    let seg = bytes.len() as u64;
    let Ok((_, segno)) = pgfmt::parse_segment_name(file, seg) else { return Some(bytes) };
    let start = pgfmt::segment_start(segno, seg);
    if until <= start {
        return None;
    }
    let keep = (until.0 - start.0).min(seg) as usize;
    bytes[keep..].fill(0);
    Some(bytes)
}

impl HelperConfig {
    pub fn save(&self, path: &Path) -> Result<(), RestoreError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(RestoreError::io(format!("creating {}", path.display())))?;
        let text = serde_json::to_vec_pretty(self).map_err(|e| RestoreError::Refused(e.to_string()))?;
        f.write_all(&text).map_err(RestoreError::io(format!("writing {}", path.display())))
    }

    pub fn load(path: &Path) -> Result<HelperConfig, RestoreError> {
        let text = std::fs::read(path).map_err(RestoreError::io(format!("reading {}", path.display())))?;
        serde_json::from_slice(&text).map_err(|e| {
            RestoreError::Refused(format!("{} is not a holdfast restore config: {e}", path.display()))
        })
    }

    pub fn client(&self) -> Result<VaultClient, RestoreError> {
        Ok(VaultClient::new(&self.url, self.ca_pem.as_bytes(), Some(self.token.clone()))?)
    }
}

/// What the helper did with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// Written to the destination (`prefetched`: taken from the spool).
    Delivered { bytes: u64, prefetched: bool },
    /// The vault does not have it and the plan does not need it: the end of the archive.
    Absent,
}

/// Writes `bytes` to `dest` atomically (temp file, rename). No fsync: a restored segment is
/// read back by recovery at once, and a crash mid-restore means restoring again anyway.
fn write_atomically(dest: &Path, bytes: &[u8]) -> Result<(), RestoreError> {
    use std::io::Write;
    let tmp = dest.with_extension("holdfast-tmp");
    let mut f =
        std::fs::File::create(&tmp).map_err(RestoreError::io(format!("creating {}", tmp.display())))?;
    f.write_all(bytes).map_err(RestoreError::io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, dest).map_err(RestoreError::io(format!(
        "renaming {} to {}",
        tmp.display(),
        dest.display()
    )))
}

/// One file from the vault, retried with backoff while the vault is unreachable.
async fn from_vault(
    client: &VaultClient,
    cluster: &str,
    file: &str,
) -> Result<Option<bytes::Bytes>, RestoreError> {
    match crate::with_retry(file, || client.wal_file(cluster, file)).await {
        Ok((bytes, _valid)) => Ok(Some(bytes)),
        Err(vault_api::ClientError::Api { status: 404, .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Serves one `restore_command` request: `file` (PostgreSQL's `%f`) into `dest` (`%p`).
pub async fn fetch(cfg: &HelperConfig, file: &str, dest: &Path) -> Result<Fetched, RestoreError> {
    if file.contains('/') || file.starts_with('.') {
        return Err(RestoreError::Refused(format!("{file:?} is not a WAL file name")));
    }
    if cfg.standby {
        // The vault's copy of a segment only ever grows: a standby asks again for the segment it
        // is in until the vault has it whole, which is how it follows the vault's WAL.
        let until = match &cfg.feed_until {
            Some(p) => {
                match std::fs::read_to_string(p).ok().and_then(|t| t.trim().parse::<pgfmt::Lsn>().ok()) {
                    Some(l) => Some(l),
                    // No limit readable: hand over nothing rather than too much.
                    None => return Ok(Fetched::Absent),
                }
            }
            None => None,
        };
        if let Some(staged) = cfg.stage.as_ref().and_then(|d| staged(d, file, until)) {
            // Staged by the vault ahead of the feed: cut at the limit like the vault's copy,
            // so the standby gets no more than it would from the vault.
            let bytes = match until {
                Some(u) => match cut_at(file, staged, u) {
                    Some(b) => b,
                    None => return Ok(Fetched::Absent),
                },
                None => staged,
            };
            write_atomically(dest, &bytes)?;
            return Ok(Fetched::Delivered { bytes: bytes.len() as u64, prefetched: true });
        }
        return match cfg.client()?.wal_file(&cfg.cluster, file).await {
            Ok((bytes, _valid)) => {
                let bytes = match until {
                    Some(u) => match cut_at(file, bytes.to_vec(), u) {
                        Some(b) => b,
                        None => return Ok(Fetched::Absent),
                    },
                    None => bytes.to_vec(),
                };
                write_atomically(dest, &bytes)?;
                Ok(Fetched::Delivered { bytes: bytes.len() as u64, prefetched: false })
            }
            Err(vault_api::ClientError::Api { status: 404, .. }) => Ok(Fetched::Absent),
            Err(e) => {
                tracing::warn!(file, error = %e, "the vault did not serve the segment; the standby asks again");
                Ok(Fetched::Absent)
            }
        };
    }
    // Tell the prefetcher how far replay has got, so it skips what is no longer needed.
    if cfg.expected.iter().any(|e| e == file) {
        let tmp = cfg.spool.join(".requested.tmp");
        if std::fs::write(&tmp, file).and_then(|_| std::fs::rename(&tmp, cfg.spool.join(REQUESTED))).is_err()
        {
            tracing::debug!("could not record the requested segment for the prefetcher");
        }
    }
    // A segment asked for a second time (at the end of recovery PostgreSQL re-reads the last
    // one) must come from the vault: a spooled copy may be older and shorter than the one
    // replay already used — the prefetcher's download can finish after the helper fetched the
    // segment itself — and replaying less than before makes PostgreSQL PANIC. The vault's
    // copy only ever grows.
    let spooled = cfg.spool.join(file);
    let served = cfg.spool.join(format!(".served-{file}"));
    if !served.exists() {
        // The prefetcher may be downloading it right now (the first segment, asked for as the
        // server starts, always is): wait for that copy rather than fetch the same segment a
        // second time, on the same cores.
        let fetching = cfg.spool.join(format!(".fetching-{file}"));
        let t0 = Instant::now();
        while fetching.exists() && !spooled.exists() && t0.elapsed() < PREFETCH_WAIT {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    if served.exists() {
        if std::fs::remove_file(&spooled).is_ok() {
            tracing::debug!(file, "dropped a spooled copy of a segment already served");
        }
    } else if let Err(e) = std::fs::write(&served, b"") {
        tracing::debug!(error = %e, "could not mark the segment as served");
    }
    if let Ok(meta) = std::fs::metadata(&spooled) {
        std::fs::rename(&spooled, dest).map_err(RestoreError::io(format!(
            "moving {} to {}",
            spooled.display(),
            dest.display()
        )))?;
        return Ok(Fetched::Delivered { bytes: meta.len(), prefetched: true });
    }
    match from_vault(&cfg.client()?, &cfg.cluster, file).await? {
        Some(bytes) => {
            write_atomically(dest, &bytes)?;
            Ok(Fetched::Delivered { bytes: bytes.len() as u64, prefetched: false })
        }
        None if cfg.expected.iter().any(|e| e == file) => Err(RestoreError::Refused(format!(
            "WAL segment {file} is needed to reach the target but the vault no longer has it; \
             recovery is aborted so that the cluster does not start with missing data (run `holdfast vault check`)"
        ))),
        None => Ok(Fetched::Absent),
    }
}

/// A file removed when dropped.
struct Marker(PathBuf);

impl Drop for Marker {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Counters of the prefetcher.
#[derive(Debug, Default)]
pub struct PrefetchStats {
    pub segments: AtomicU64,
    pub bytes: AtomicU64,
    /// Microseconds spent fetching.
    pub busy_us: AtomicU64,
}

/// How long the helper waits for a segment the prefetcher is downloading before it fetches
/// the segment itself.
const PREFETCH_WAIT: Duration = Duration::from_secs(30);

/// In the spool: the name of the segment PostgreSQL asked for last (written by the helper).
const REQUESTED: &str = ".requested";

/// Index in `expected` of the segment PostgreSQL asked for last.
fn requested_index(cfg: &HelperConfig) -> Option<usize> {
    let name = std::fs::read_to_string(cfg.spool.join(REQUESTED)).ok()?;
    cfg.expected.iter().position(|e| *e == name.trim())
}

/// Segment files waiting in the spool, with their index in `expected`.
fn spooled(cfg: &HelperConfig) -> Vec<(usize, PathBuf)> {
    let Ok(dir) = std::fs::read_dir(&cfg.spool) else { return Vec::new() };
    dir.filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            cfg.expected.iter().position(|x| *x == name).map(|i| (i, e.path()))
        })
        .collect()
}

/// Downloads the planned segments into the spool, `parallel` at a time and at most `ahead`
/// files waiting there, so replay does not wait on the network. It follows replay: segments
/// PostgreSQL has already asked for (the helper records the last one) are skipped, and spooled
/// copies replay has passed are dropped. Stops at the end of the list or on an error (the
/// helper then fetches itself and reports the error where PostgreSQL sees it). `owner`: the
/// user the server runs as, who must be able to take the files over.
pub async fn prefetch(
    cfg: HelperConfig,
    ahead: usize,
    parallel: usize,
    owner: Option<(u32, u32)>,
    stats: Arc<PrefetchStats>,
) {
    let client = match cfg.client() {
        Ok(c) => c,
        Err(e) => return tracing::warn!(error = %e, "prefetch disabled"),
    };
    let cfg = Arc::new(cfg);
    let mut next = 0usize;
    let mut inflight = tokio::task::JoinSet::new();
    loop {
        let requested = requested_index(&cfg);
        let mut waiting = 0;
        for (i, path) in spooled(&cfg) {
            if requested.is_some_and(|r| i < r) {
                // Replay is past it (the helper fetched it itself): it will never be used.
                if std::fs::remove_file(&path).is_ok() {
                    tracing::debug!(file = %path.display(), "prefetch: dropped a segment replay has passed");
                }
            } else {
                waiting += 1;
            }
        }
        if let Some(r) = requested {
            next = next.max(r + 1);
        }
        while inflight.len() < parallel.max(1)
            && waiting + inflight.len() < ahead
            && next < cfg.expected.len()
        {
            let (cfg, client, stats, file) =
                (cfg.clone(), client.clone(), stats.clone(), cfg.expected[next].clone());
            inflight.spawn(async move {
                let t0 = Instant::now();
                // Tells the helper this segment is on its way (removed on every way out).
                let marker = Marker(cfg.spool.join(format!(".fetching-{file}")));
                let _ = std::fs::write(&marker.0, b"");
                let bytes = from_vault(&client, &cfg.cluster, &file)
                    .await?
                    .ok_or_else(|| RestoreError::Refused(format!("the vault does not have {file}")))?;
                let path = cfg.spool.join(&file);
                let tmp = cfg.spool.join(format!("{file}.prefetch-tmp"));
                write_atomically(&tmp, &bytes)?;
                if let Some((uid, gid)) = owner {
                    std::os::unix::fs::chown(&tmp, Some(uid), Some(gid))
                        .map_err(RestoreError::io(format!("changing the owner of {}", tmp.display())))?;
                }
                if cfg.spool.join(format!(".served-{file}")).exists() {
                    // Replay already got this segment from the vault: a late copy is never used.
                    let _ = std::fs::remove_file(&tmp);
                    return Ok(());
                }
                std::fs::rename(&tmp, &path)
                    .map_err(RestoreError::io(format!("renaming {}", tmp.display())))?;
                stats.segments.fetch_add(1, Ordering::Relaxed);
                stats.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                stats.busy_us.fetch_add(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
                Ok::<(), RestoreError>(())
            });
            next += 1;
        }
        if inflight.is_empty() {
            if next >= cfg.expected.len() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        tokio::select! {
            Some(r) = inflight.join_next() => match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return tracing::warn!(error = %e, "prefetch stopped"),
                Err(e) => return tracing::warn!(error = %e, "prefetch stopped"),
            },
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standby_feed_is_cut_at_its_limit() {
        let seg = 16 << 20;
        let name = "000000010000000000000004";
        let whole = vec![7u8; seg];
        // Segment 4 starts at 0/4000000: a limit inside it keeps what lies before.
        let cut = cut_at(name, whole.clone(), pgfmt::Lsn(0x0400_0100)).unwrap();
        assert!(cut[..0x100].iter().all(|b| *b == 7) && cut[0x100..].iter().all(|b| *b == 0));
        assert_eq!(cut_at(name, whole.clone(), pgfmt::Lsn(0x0400_0000)), None);
        assert_eq!(cut_at(name, whole.clone(), pgfmt::Lsn(0x0600_0000)).unwrap(), whole);
        assert_eq!(
            cut_at("00000002.history", b"1\t0/5000000\tx\n".to_vec(), pgfmt::Lsn(1)).unwrap().len(),
            14
        );
    }

    /// A warm standby's WAL staged ahead of the feed is never handed over past the feed: the
    /// helper cuts a staged segment at the limit the vault writes, and answers "not yet" for
    /// one that begins at or after it — without asking the vault (there is none here: a request
    /// would fail, and a standby's failed request is "not yet", never a delivery).
    #[tokio::test]
    async fn staged_wal_is_never_handed_over_past_the_feed() {
        let dir = tempfile::tempdir().unwrap();
        let (stage, feed) = (dir.path().join("stage"), dir.path().join("feed"));
        std::fs::create_dir(&stage).unwrap();
        let seg = 16usize << 20;
        let (s4, s5) = ("000000010000000000000004", "000000010000000000000005");
        std::fs::write(stage.join(s4), vec![7u8; seg]).unwrap();
        std::fs::write(stage.join(s5), vec![9u8; seg]).unwrap();
        let cfg = HelperConfig {
            url: "https://127.0.0.1:1".into(),
            ca_pem: String::new(),
            token: "t".into(),
            cluster: "main".into(),
            expected: Vec::new(),
            spool: dir.path().join("spool"),
            standby: true,
            feed_until: Some(feed.clone()),
            stage: Some(stage.clone()),
        };
        let dest = dir.path().join("RECOVERYXLOG");
        // The feed inside segment 4: what lies before it, zeros after.
        std::fs::write(&feed, "0/4000100\n").unwrap();
        assert_eq!(
            fetch(&cfg, s4, &dest).await.unwrap(),
            Fetched::Delivered { bytes: seg as u64, prefetched: true }
        );
        let got = std::fs::read(&dest).unwrap();
        assert!(got[..0x100].iter().all(|b| *b == 7) && got[0x100..].iter().all(|b| *b == 0));
        // Segment 5 is staged whole, but begins past the feed: nothing of it.
        std::fs::remove_file(&dest).unwrap();
        assert_eq!(fetch(&cfg, s5, &dest).await.unwrap(), Fetched::Absent);
        assert!(!dest.exists());
        // Without a readable feed limit, nothing at all.
        std::fs::write(&feed, "garbage").unwrap();
        assert_eq!(fetch(&cfg, s4, &dest).await.unwrap(), Fetched::Absent);
        assert!(!dest.exists());
        // A segment the vault held only in part is used only when it holds all up to the feed.
        let s6 = "000000010000000000000006";
        std::fs::write(stage.join(partial_name(s6, pgfmt::Lsn(0x0600_0100))), vec![5u8; seg]).unwrap();
        std::fs::write(&feed, "0/6000080\n").unwrap();
        fetch(&cfg, s6, &dest).await.unwrap();
        let got = std::fs::read(&dest).unwrap();
        assert!(got[..0x80].iter().all(|b| *b == 5) && got[0x80..].iter().all(|b| *b == 0));
        std::fs::remove_file(&dest).unwrap();
        // Past its end it is not used: the helper turns to the vault (none here: no delivery).
        std::fs::write(&feed, "0/6000200\n").unwrap();
        assert!(!matches!(fetch(&cfg, s6, &dest).await, Ok(Fetched::Delivered { .. })));
        assert!(!dest.exists());
        assert_eq!(
            parse_partial(&partial_name(s6, pgfmt::Lsn(0x0600_0100))),
            Some((s6, pgfmt::Lsn(0x0600_0100)))
        );
        // The feed raised past segment 4: all of it, and of 5 up to the new limit.
        std::fs::write(&feed, "0/5000040\n").unwrap();
        fetch(&cfg, s4, &dest).await.unwrap();
        assert!(std::fs::read(&dest).unwrap().iter().all(|b| *b == 7));
        fetch(&cfg, s5, &dest).await.unwrap();
        let got = std::fs::read(&dest).unwrap();
        assert!(got[..0x40].iter().all(|b| *b == 9) && got[0x40..].iter().all(|b| *b == 0));
    }
}
