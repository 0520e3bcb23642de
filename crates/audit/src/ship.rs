//! The shipper: sends spooled records to the vault as signed `audit.batch` records, in order,
//! and marks them shipped only after the vault answered 201.

use std::time::Duration;

use vault_api::VaultClient;

use crate::batch::{BATCH_KIND, Batch, validate_gate_id};
use crate::error::AuditError;
use crate::spool::{AuditLog, Cursor, GATE_FILE, Position, SHIPPED_FILE, read_batch, write_atomically};
use crate::time::AuditTime;

const MAX_BACKOFF: Duration = Duration::from_secs(10);

impl AuditLog {
    /// Ships unshipped records to the vault until the task is aborted: a batch of up to
    /// `batch_max_records` every `ship_interval` (at once while a full batch is waiting),
    /// retried with backoff while the vault is unreachable or refuses, never reordered. A
    /// failed batch is resent unchanged. Errors show in [`AuditLog::status`].
    ///
    /// A spool ships under one gate id for its whole life: a different `gate_id` is refused
    /// (and shown in `status`), since the chain would otherwise appear to start mid-way.
    pub fn spawn_shipper(&self, client: VaultClient, gate_id: String) -> tokio::task::JoinHandle<()> {
        let log = self.clone();
        tokio::spawn(async move {
            if let Err(e) = log.claim_gate_id(&gate_id) {
                tracing::error!(error = %e, "audit shipper not started");
                log.inner.shared().last_ship_error = Some(e.to_string());
                return;
            }
            log.ship_forever(client, gate_id).await
        })
    }

    fn claim_gate_id(&self, gate_id: &str) -> Result<(), AuditError> {
        validate_gate_id(gate_id)?;
        let path = self.inner.dir.join(GATE_FILE);
        match std::fs::read_to_string(&path) {
            Ok(existing) if existing.trim() == gate_id => Ok(()),
            Ok(existing) => Err(AuditError::GateMismatch {
                shipped: existing.trim().to_string(),
                asked: gate_id.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                write_atomically(&self.inner.dir, GATE_FILE, format!("{gate_id}\n").as_bytes())
            }
            Err(e) => Err(AuditError::io("cannot read the spool's gate id", path, e)),
        }
    }

    async fn ship_forever(&self, client: VaultClient, gate: String) {
        let opts = self.inner.opts.clone();
        let mut cursor = Cursor { next_seq: self.inner.shared().shipped.seq + 1, at: None };
        let mut backoff = opts.ship_interval;
        let mut last_logged: Option<String> = None;
        loop {
            // Send at once while a full batch waits; otherwise gather for one interval.
            let (last_seq, shipped) = {
                let s = self.inner.shared();
                (s.last_seq, s.shipped.seq)
            };
            if last_seq - shipped < opts.batch_max_records as u64 {
                tokio::time::sleep(opts.ship_interval).await;
            }
            let (segments, last_seq) = {
                let s = self.inner.shared();
                (s.segments.clone(), s.last_seq)
            };
            if cursor.next_seq > last_seq {
                continue;
            }
            let (max_r, max_b) = (opts.batch_max_records, opts.batch_max_bytes);
            let read =
                tokio::task::spawn_blocking(move || read_batch(&segments, cursor, last_seq, max_r, max_b))
                    .await
                    .unwrap_or_else(|e| Err(AuditError::Failed(format!("the spool reader panicked: {e}"))));
            let (records, bytes, next_cursor) = match read {
                Ok(r) if !r.0.is_empty() => r,
                Ok(_) => continue,
                Err(e) => {
                    self.ship_error(&mut last_logged, format!("reading the spool: {e}"));
                    tokio::time::sleep(MAX_BACKOFF).await;
                    cursor.at = None;
                    continue;
                }
            };
            let last = records.last().map(|r| Position { seq: r.seq, hash: r.hash, time: r.time });
            let Some(last) = last else { continue };
            let batch = match Batch::sign(&gate, records, &self.inner.key) {
                Ok(b) => b,
                Err(e) => {
                    self.ship_error(&mut last_logged, format!("building a batch: {e}"));
                    tokio::time::sleep(MAX_BACKOFF).await;
                    continue;
                }
            };
            let body = match serde_json::to_value(&batch) {
                Ok(b) => b,
                Err(e) => {
                    self.ship_error(&mut last_logged, format!("encoding a batch: {e}"));
                    tokio::time::sleep(MAX_BACKOFF).await;
                    continue;
                }
            };
            // The same batch until the vault takes it: never reordered, never re-cut.
            loop {
                match client.append_record(BATCH_KIND, body.clone()).await {
                    Ok(_) => break,
                    Err(e) => {
                        self.ship_error(
                            &mut last_logged,
                            format!("shipping seqs {}–{} to the vault: {e}", batch.first_seq, batch.last_seq),
                        );
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
            backoff = opts.ship_interval;
            if last_logged.take().is_some() {
                tracing::info!(seq = last.seq, "audit shipping resumed");
            }
            self.mark_shipped(last, bytes).await;
            cursor = next_cursor;
        }
    }

    fn ship_error(&self, last_logged: &mut Option<String>, msg: String) {
        // Log a failure when it starts or changes, not on every retry.
        let kind: String = msg.chars().take(60).collect();
        if last_logged.as_deref() != Some(kind.as_str()) {
            tracing::warn!(error = %msg, "audit shipping failed; retrying with backoff");
            *last_logged = Some(kind);
        }
        self.inner.shared().last_ship_error = Some(msg);
    }

    /// Records the vault's acknowledgement: persists the position, frees the backlog, and
    /// removes segments whose records are all in the vault.
    async fn mark_shipped(&self, last: Position, bytes: u64) {
        let dir = self.inner.dir.clone();
        let state = serde_json::to_vec(&last).unwrap_or_default();
        let persisted =
            tokio::task::spawn_blocking(move || write_atomically(&dir, SHIPPED_FILE, &state)).await;
        let failed = match persisted {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(e) = failed {
            // Only costs a duplicate batch after a restart, which verify accepts.
            tracing::warn!(error = %e, "cannot record the shipped position");
        }
        let removable: Vec<std::path::PathBuf> = {
            let mut s = self.inner.shared();
            s.shipped = last;
            s.pending_bytes = s.pending_bytes.saturating_sub(bytes);
            s.last_shipped_at = Some(AuditTime::now());
            s.last_ship_error = None;
            // A segment is done when the next one starts at or before the next unshipped seq.
            let firsts: Vec<u64> = s.segments.keys().copied().collect();
            let mut done = Vec::new();
            for w in firsts.windows(2) {
                if w[1] <= last.seq + 1 {
                    done.push(w[0]);
                }
            }
            done.into_iter().filter_map(|f| s.segments.remove(&f)).collect()
        };
        for path in removable {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(segment = %path.display(), error = %e, "cannot remove a shipped spool segment");
            }
        }
    }
}
