//! The vault's copies of its objects, watched: lock mode and minimum retain-until per store for
//! `vault status` and `/metrics`, and for a write-through (mirror) store the upload queue's
//! alerts — backlog past a bound, uploads failing longer than a grace period, objects lost
//! before upload — and the recovery alert once it drains.

use std::sync::Arc;
use std::time::{Duration, Instant};

use store::{Expunge, MirrorStore, StoreStatus};
use tokio::sync::watch;

use crate::config::UploadAlerts;

/// How long a listing of the store (for minimum retain-until) is reused.
const LISTING_TTL: Duration = Duration::from_secs(60);

/// What the vault knows about its stores. One per running vault.
#[derive(Default)]
pub struct Stores {
    /// The write-through store, if the vault has one (its queue is read without listing).
    pub mirror: Option<MirrorStore>,
    pub alerts: Option<UploadAlerts>,
    listing: tokio::sync::Mutex<Option<(Instant, Vec<StoreStatus>)>>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores").field("mirror", &self.mirror).field("alerts", &self.alerts).finish()
    }
}

impl Stores {
    pub fn new(mirror: Option<MirrorStore>, alerts: Option<UploadAlerts>) -> Stores {
        Stores { mirror, alerts, listing: tokio::sync::Mutex::new(None) }
    }

    /// Every copy: from a listing at most [`LISTING_TTL`] old, with the upload queue's figures
    /// as they are now.
    pub async fn status(&self, store: &dyn Expunge) -> Vec<StoreStatus> {
        let mut cached = self.listing.lock().await;
        let mut list = match cached.as_ref() {
            Some((at, l)) if at.elapsed() < LISTING_TTL => l.clone(),
            _ => {
                let l = store.status().await;
                *cached = Some((Instant::now(), l.clone()));
                l
            }
        };
        drop(cached);
        if let Some(m) = &self.mirror {
            let now = m.upload_status();
            for s in &mut list {
                if s.role == now.role {
                    *s = now.clone();
                }
            }
        }
        list
    }
}

/// Prometheus lines for the stores.
pub fn metrics(out: &mut String, stores: &[StoreStatus]) {
    use std::fmt::Write;
    if stores.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "# HELP holdfast_store_object_lock 1 if the store itself refuses deletion before retain-until (S3 Object Lock COMPLIANCE), by copy.\n# TYPE holdfast_store_object_lock gauge"
    );
    for s in stores {
        let _ = writeln!(
            out,
            "holdfast_store_object_lock{{role=\"{}\",mode=\"{}\"}} {}",
            s.role,
            s.lock_mode,
            u8::from(s.lock_mode == "object_lock_compliance")
        );
    }
    let _ = writeln!(
        out,
        "# HELP holdfast_store_min_retain_until_timestamp_seconds Earliest retain-until among the objects known in each copy.\n# TYPE holdfast_store_min_retain_until_timestamp_seconds gauge"
    );
    for s in stores {
        if let Some(t) = s.min_retain_until {
            let _ = writeln!(
                out,
                "holdfast_store_min_retain_until_timestamp_seconds{{role=\"{}\"}} {}",
                s.role,
                t.as_secs()
            );
        }
    }
    for s in stores.iter().filter(|s| s.pending_objects.is_some()) {
        let _ = writeln!(
            out,
            "# HELP holdfast_store_pending_objects Objects written locally and not yet confirmed in the bucket.\n# TYPE holdfast_store_pending_objects gauge\nholdfast_store_pending_objects {}\n# HELP holdfast_store_pending_bytes Bytes written locally and not yet confirmed in the bucket.\n# TYPE holdfast_store_pending_bytes gauge\nholdfast_store_pending_bytes {}\n# HELP holdfast_store_upload_failing 1 while uploads to the bucket fail.\n# TYPE holdfast_store_upload_failing gauge\nholdfast_store_upload_failing {}\n# HELP holdfast_store_uploaded_bytes_total Bytes uploaded to the bucket by this process.\n# TYPE holdfast_store_uploaded_bytes_total counter\nholdfast_store_uploaded_bytes_total {}\n# HELP holdfast_store_fallback_reads_total Reads the local copy could not serve, served from the bucket.\n# TYPE holdfast_store_fallback_reads_total counter\nholdfast_store_fallback_reads_total {}\n# HELP holdfast_store_lost_before_upload_total Objects that vanished locally before reaching the bucket.\n# TYPE holdfast_store_lost_before_upload_total counter\nholdfast_store_lost_before_upload_total {}",
            s.pending_objects.unwrap_or(0),
            s.pending_bytes.unwrap_or(0),
            u8::from(s.failing_since.is_some()),
            s.uploaded_bytes,
            s.fallback_reads,
            s.lost_before_upload
        );
    }
}

/// Watches the upload queue once a second and raises the vault's alerts (log, counter, alert
/// command, webhooks): `store.upload_backlog` past a bound, `store.upload_failing` after the
/// grace period, `store.lost_before_upload`, and `store.upload_recovered` once the queue is
/// empty and uploads succeed after either of the first two.
pub async fn watch(shared: Arc<crate::service::Shared>, mut stop: watch::Receiver<bool>) {
    let (Some(mirror), Some(bounds)) = (shared.stores.mirror.clone(), shared.stores.alerts) else { return };
    let (mut backlog_alerted, mut failing_alerted, mut lost_alerted) = (false, false, 0u64);
    let mut failing_seen: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let st = mirror.upload_status();
        let (n, bytes) = (st.pending_objects.unwrap_or(0), st.pending_bytes.unwrap_or(0));
        failing_seen = match (st.failing_since, failing_seen) {
            (None, _) => None,
            (Some(_), None) => Some(Instant::now()),
            (Some(_), seen) => seen,
        };
        if !backlog_alerted && (n > bounds.max_pending_objects || bytes > bounds.max_pending_bytes) {
            backlog_alerted = true;
            shared.alert(serde_json::json!({
                "alert": "store.upload_backlog",
                "pending_objects": n,
                "pending_bytes": bytes,
                "max_pending_objects": bounds.max_pending_objects,
                "max_pending_bytes": bounds.max_pending_bytes,
                "bucket": st.location,
                "last_error": st.last_error,
                "what_to_do": "backups are durable on the vault host only until the queue drains: check the S3 endpoint, the credential and the network (holdfast status shows the last error)",
            }));
        }
        if !failing_alerted && failing_seen.is_some_and(|t| t.elapsed() >= bounds.grace) {
            failing_alerted = true;
            shared.alert(serde_json::json!({
                "alert": "store.upload_failing",
                "since": st.failing_since,
                "grace_seconds": bounds.grace.as_secs(),
                "pending_objects": n,
                "pending_bytes": bytes,
                "bucket": st.location,
                "last_error": st.last_error,
                "what_to_do": "uploads to the off-host bucket fail: new backups exist only on the vault host, where root can erase them; fix the bucket's endpoint or credential",
            }));
        }
        if st.lost_before_upload > lost_alerted {
            shared.alert(serde_json::json!({
                "alert": "store.lost_before_upload",
                "objects": st.lost_before_upload - lost_alerted,
                "bucket": st.location,
                "what_to_do": "objects vanished from the local store before they reached the bucket: someone with root on the vault host is deleting backups; run `holdfast vault check`",
            }));
            lost_alerted = st.lost_before_upload;
        }
        if (backlog_alerted || failing_alerted)
            && n == 0
            && st.reconciled == Some(true)
            && st.failing_since.is_none()
        {
            shared.alert(serde_json::json!({
                "alert": "store.upload_recovered",
                "uploaded_objects": st.uploaded_objects,
                "uploaded_bytes": st.uploaded_bytes,
                "bucket": st.location,
            }));
            backlog_alerted = false;
            failing_alerted = false;
        }
    }
}
