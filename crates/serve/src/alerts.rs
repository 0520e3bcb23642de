//! Alert delivery to webhooks: a generic JSON body, or the message formats of WeCom (企业微信)
//! group robots, DingTalk robots and Slack incoming webhooks. Each alert goes to every hook at
//! once, retried with backoff; what failed stays visible in `status` and `/metrics`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use vault_api::status::WebhookStatus;
use vault_types::Timestamp;

/// How a hook wants its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `{"source": "holdfast", "alert": <the alert object>}`.
    Generic,
    /// WeCom group robot: `{"msgtype": "text", "text": {"content": …}}`.
    WeCom,
    /// DingTalk robot: `{"msgtype": "text", "text": {"content": …}}`.
    DingTalk,
    /// Slack incoming webhook: `{"text": …}`.
    Slack,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "generic" => Some(Format::Generic),
            "wecom" => Some(Format::WeCom),
            "dingtalk" => Some(Format::DingTalk),
            "slack" => Some(Format::Slack),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Generic => "generic",
            Format::WeCom => "wecom",
            Format::DingTalk => "dingtalk",
            Format::Slack => "slack",
        }
    }
}

/// One configured hook.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub name: String,
    pub url: String,
    pub format: Format,
}

/// `[[webhook]]` in a TOML config (vault.toml, gate.toml): one alert receiver.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookFile {
    /// A short name for status and metrics.
    pub name: String,
    /// `https://…` (or `http://` for a receiver on this host).
    pub url: String,
    /// `generic` (default), `wecom`, `dingtalk` or `slack`.
    #[serde(default)]
    pub format: Option<String>,
}

/// Checks `[[webhook]]` tables: known format, http(s) URL, unique non-empty names. The error
/// says which hook and what to change.
pub fn validate(files: &[WebhookFile]) -> Result<Vec<Webhook>, WebhookError> {
    let mut webhooks: Vec<Webhook> = Vec::new();
    for w in files {
        let format = Format::parse(w.format.as_deref().unwrap_or("generic")).ok_or_else(|| {
            WebhookError::Format { name: w.name.clone(), format: w.format.clone().unwrap_or_default() }
        })?;
        if !(w.url.starts_with("https://") || w.url.starts_with("http://")) {
            return Err(WebhookError::Url { name: w.name.clone(), url: w.url.clone() });
        }
        if w.name.is_empty() || webhooks.iter().any(|h| h.name == w.name) {
            return Err(WebhookError::Name(w.name.clone()));
        }
        webhooks.push(Webhook { name: w.name.clone(), url: w.url.clone(), format });
    }
    Ok(webhooks)
}

/// A `[[webhook]]` table that cannot be used: which hook, and what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook {name:?}: format {format:?} is not one of generic, wecom, dingtalk, slack")]
    Format { name: String, format: String },
    #[error("webhook {name:?}: url {url:?} must start with https://")]
    Url { name: String, url: String },
    #[error("webhook name {0:?} is empty or listed twice")]
    Name(String),
}

/// One line a person reads: what happened, to which cluster, and the detail.
pub fn summary(event: &serde_json::Value) -> String {
    let kind = event["alert"].as_str().unwrap_or("alert");
    let mut s = format!("[holdfast] {}", kind.replace('_', " ").to_uppercase());
    let cluster = event["cluster"].as_str().or_else(|| event["incident"]["cluster"].as_str());
    if let Some(c) = cluster {
        s += &format!(" — cluster {c}");
    }
    for key in ["verdict", "message", "error"] {
        if let Some(v) = event[key].as_str().or_else(|| event["incident"][key].as_str()) {
            s += &format!(": {v}");
            break;
        }
    }
    if let Some(k) = event["incident"]["kind"].as_str() {
        s += &format!(" ({k})");
    }
    s
}

/// The request body for `format`.
pub fn body(format: Format, event: &serde_json::Value) -> serde_json::Value {
    match format {
        Format::Generic => serde_json::json!({ "source": "holdfast", "alert": event }),
        Format::WeCom | Format::DingTalk => {
            serde_json::json!({ "msgtype": "text", "text": { "content": summary(event) } })
        }
        Format::Slack => serde_json::json!({ "text": summary(event) }),
    }
}

/// The hooks, an HTTP client, and each hook's delivery record.
#[derive(Debug)]
pub struct Webhooks {
    hooks: Vec<Webhook>,
    http: reqwest::Client,
    status: Mutex<Vec<WebhookStatus>>,
    /// First retry delay (doubles, 6 attempts in all: about 31 s from 1 s).
    backoff: Duration,
}

impl Webhooks {
    pub fn new(hooks: Vec<Webhook>) -> Webhooks {
        Webhooks::with_backoff(hooks, Duration::from_secs(1))
    }

    /// [`Webhooks::new`] with another first retry delay (tests).
    pub fn with_backoff(hooks: Vec<Webhook>, backoff: Duration) -> Webhooks {
        let status = hooks
            .iter()
            .map(|h| WebhookStatus {
                name: h.name.clone(),
                format: h.format.as_str().into(),
                delivered: 0,
                failed: 0,
                last_delivered_at: None,
                last_failure_at: None,
                last_error: None,
            })
            .collect();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Webhooks { hooks, http, status: Mutex::new(status), backoff }
    }

    /// Each hook's record.
    pub fn status(&self) -> Vec<WebhookStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sends `event` to every hook in the background; `now` stamps the delivery records.
    pub fn send(
        self: &Arc<Self>,
        event: &serde_json::Value,
        now: impl Fn() -> Timestamp + Send + Sync + 'static,
    ) {
        let now = Arc::new(now);
        for (i, hook) in self.hooks.iter().enumerate() {
            let (me, hook, payload, now) =
                (self.clone(), hook.clone(), body(hook.format, event), now.clone());
            tokio::spawn(async move {
                let mut delay = me.backoff;
                let mut last_error = String::new();
                for attempt in 1..=6 {
                    match me.http.post(&hook.url).json(&payload).send().await {
                        Ok(r) if r.status().is_success() => {
                            let mut st = me.status.lock().unwrap_or_else(|p| p.into_inner());
                            st[i].delivered += 1;
                            st[i].last_delivered_at = Some(now());
                            return;
                        }
                        Ok(r) => last_error = format!("HTTP {} from {}", r.status(), hook.url),
                        Err(e) => last_error = format!("{e}"),
                    }
                    tracing::warn!(webhook = %hook.name, attempt, error = %last_error, "alert delivery failed");
                    if attempt < 6 {
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                    }
                }
                tracing::error!(webhook = %hook.name, error = %last_error, "alert not delivered after 6 attempts");
                let mut st = me.status.lock().unwrap_or_else(|p| p.into_inner());
                st[i].failed += 1;
                st[i].last_failure_at = Some(now());
                st[i].last_error = Some(last_error);
            });
        }
    }
}

/// Delivers `event` once, now, and waits: to `command` (the JSON on its stdin, 60 s at most)
/// and to every hook (one attempt each, 10 s). For an offline tool that exits right after —
/// `holdfast vault recover-admin` — where background retries would die with the process.
/// Returns whether anything accepted it.
pub async fn deliver_now(command: Option<&[String]>, hooks: &[Webhook], event: &serde_json::Value) -> bool {
    use tokio::io::AsyncWriteExt;
    let mut delivered = false;
    if let Some(cmd) = command.filter(|c| !c.is_empty()) {
        let child = tokio::process::Command::new(&cmd[0])
            .args(&cmd[1..])
            .stdin(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        match child {
            Ok(mut child) => {
                if let Some(mut stdin) = child.stdin.take() {
                    let _ = stdin.write_all(event.to_string().as_bytes()).await;
                }
                match tokio::time::timeout(Duration::from_secs(60), child.wait()).await {
                    Ok(Ok(s)) if s.success() => delivered = true,
                    other => tracing::error!(program = %cmd[0], outcome = ?other, "the alert command failed"),
                }
            }
            Err(e) => {
                tracing::error!(program = %cmd[0], error = %e, "the alert command could not be started")
            }
        }
    }
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default();
    for hook in hooks {
        match http.post(&hook.url).json(&body(hook.format, event)).send().await {
            Ok(r) if r.status().is_success() => delivered = true,
            Ok(r) => tracing::error!(webhook = %hook.name, status = %r.status(), "alert not delivered"),
            Err(e) => tracing::error!(webhook = %hook.name, error = %e, "alert not delivered"),
        }
    }
    delivered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        let ev = serde_json::json!({"alert": "drill_failed", "cluster": "shop", "verdict": "FAILED: shop (4/5 checks passed)"});
        assert_eq!(summary(&ev), "[holdfast] DRILL FAILED — cluster shop: FAILED: shop (4/5 checks passed)");
        assert_eq!(body(Format::Slack, &ev)["text"], summary(&ev));
        assert_eq!(body(Format::WeCom, &ev)["msgtype"], "text");
        assert_eq!(body(Format::DingTalk, &ev)["text"]["content"], summary(&ev));
        assert_eq!(body(Format::Generic, &ev)["alert"], ev);
        let inc = serde_json::json!({"alert": "incident", "incident": {"cluster": "shop", "kind": "slot_dropped", "message": "the slot is gone"}});
        assert_eq!(summary(&inc), "[holdfast] INCIDENT — cluster shop: the slot is gone (slot_dropped)");
    }

    #[tokio::test]
    async fn every_hook_gets_its_format_and_failures_are_recorded() {
        let received = Arc::new(Mutex::new(Vec::<(String, serde_json::Value)>::new()));
        let r2 = received.clone();
        let app = axum::Router::new().route(
            "/{hook}",
            axum::routing::post(
                move |axum::extract::Path(hook): axum::extract::Path<String>,
                      axum::Json(v): axum::Json<serde_json::Value>| {
                    let r2 = r2.clone();
                    async move {
                        r2.lock().unwrap().push((hook, v));
                        "ok"
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        // A port nothing listens on: held bound but not listening for the whole test (a port
        // merely closed again could be taken by another test's server, which would answer).
        let held = tokio::net::TcpSocket::new_v4().unwrap();
        held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let dead = held.local_addr().unwrap();
        let hook = |name: &str, url: String, format| Webhook { name: name.into(), url, format };
        let hooks = Arc::new(Webhooks::with_backoff(
            vec![
                hook("ops", format!("http://{addr}/generic"), Format::Generic),
                hook("wecom", format!("http://{addr}/wecom"), Format::WeCom),
                hook("ding", format!("http://{addr}/dingtalk"), Format::DingTalk),
                hook("slack", format!("http://{addr}/slack"), Format::Slack),
                hook("down", format!("http://{dead}/x"), Format::Generic),
            ],
            Duration::from_millis(10),
        ));
        let ev = serde_json::json!({"alert": "incident", "incident": {"cluster": "shop", "kind": "wal_gap", "message": "WAL recycled"}});
        let t0 = std::time::Instant::now();
        hooks.send(&ev, || Timestamp(1_000));
        loop {
            let st = hooks.status();
            if st.iter().filter(|s| s.delivered == 1).count() == 4 && st[4].failed == 1 {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "{st:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let got = received.lock().unwrap().clone();
        let by = |h: &str| got.iter().find(|(k, _)| k == h).map(|(_, v)| v.clone()).unwrap();
        assert_eq!(by("generic")["alert"], ev);
        assert_eq!(by("wecom")["text"]["content"], summary(&ev));
        assert_eq!(by("dingtalk")["msgtype"], "text");
        assert_eq!(by("slack")["text"], summary(&ev));
        let down = &hooks.status()[4];
        assert_eq!((down.delivered, down.failed), (0, 1));
        assert!(down.last_error.is_some() && down.last_failure_at == Some(Timestamp(1_000)), "{down:?}");
    }
}
