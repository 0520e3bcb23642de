//! `holdfast gate …`: run the gate, and talk to its control API as a person (pending requests,
//! approve, reject, just-in-time grants, break-glass), plus the helpers that make a person's
//! credentials (SCRAM verifier, TOTP secret).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum GateCommand {
    /// Run the gate (PostgreSQL protocol proxy + control API) until SIGTERM / ctrl-c.
    Serve {
        /// gate.toml
        #[arg(long)]
        config: PathBuf,
    },
    /// Sessions, pending requests, grants, the audit spool (backlog, last shipment, public key)
    /// and webhook deliveries.
    Status {
        #[command(flatten)]
        who: Who,
        #[arg(long)]
        json: bool,
    },
    /// Requests waiting for a decision, recent decisions and active grants.
    Pending {
        #[command(flatten)]
        who: Who,
        #[arg(long)]
        json: bool,
    },
    /// Approve a held statement, grant or access request (needs the approver role and a TOTP code).
    Approve {
        id: String,
        #[command(flatten)]
        who: Who,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Reject a held statement, grant or access request.
    Reject {
        id: String,
        #[command(flatten)]
        who: Who,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Ask for a role for a limited time; another approver must approve it.
    Request {
        #[arg(long)]
        role: String,
        /// e.g. 1h
        #[arg(long = "for")]
        for_: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        who: Who,
    },
    /// Emergency: your destructive statements run without approval for a while; always alerts.
    BreakGlass {
        #[arg(long = "for", default_value = "30m")]
        for_: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        who: Who,
    },
    /// Prints a SCRAM-SHA-256 verifier for a password read from stdin (for [[person]] scram).
    HashPassword,
    /// Prints a new TOTP secret and its otpauth:// URI (for [[person]] totp_secret).
    TotpSecret {
        /// The person's name, shown in the authenticator app.
        #[arg(long, default_value = "holdfast")]
        name: String,
    },
    /// Prints the current TOTP code for a secret (scripts and tests; people use their app).
    #[command(hide = true)]
    TotpCode {
        #[arg(long, env = "HOLDFAST_GATE_TOTP_SECRET")]
        secret: String,
    },
}

/// Who is asking, and where the gate's control API is.
#[derive(Args)]
pub struct Who {
    /// e.g. https://127.0.0.1:6433
    #[arg(long, env = "HOLDFAST_GATE_URL")]
    gate: String,
    /// The gate's certificate (state_dir/tls/cert.pem).
    #[arg(long, env = "HOLDFAST_GATE_CA")]
    ca: PathBuf,
    /// Your gate name.
    #[arg(long, env = "HOLDFAST_GATE_USER")]
    user: String,
    /// Your gate password (prefer the environment variable).
    #[arg(long, env = "HOLDFAST_GATE_PASSWORD", hide_env_values = true)]
    password: String,
    /// Your current one-time code.
    #[arg(long, env = "HOLDFAST_GATE_TOTP", hide_env_values = true)]
    totp: Option<String>,
}

impl Who {
    fn client(&self) -> Result<reqwest::Client> {
        let pem = std::fs::read(&self.ca)
            .with_context(|| format!("reading the gate's certificate {}", self.ca.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem).context("the gate's certificate is not PEM")?;
        reqwest::Client::builder()
            .add_root_certificate(cert)
            .timeout(Duration::from_secs(30))
            .build()
            .context("building the HTTPS client")
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let url = format!("{}{path}", self.gate.trim_end_matches('/'));
        let mut req = self.client()?.request(method, &url).basic_auth(&self.user, Some(&self.password));
        if let Some(t) = &self.totp {
            req = req.header("x-holdfast-totp", t.trim());
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.with_context(|| format!("reaching the gate at {url}"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("the gate answered {status}: {text}");
        }
        serde_json::from_str(&text).map_err(|e| anyhow!("unreadable answer from the gate: {e}"))
    }
}

pub async fn run(cmd: GateCommand) -> Result<u8> {
    match cmd {
        GateCommand::Serve { config } => {
            let cfg = gate::Config::load(&config)?;
            let handle = gate::start(cfg).await?;
            eprintln!("gate listening on {} (control API https://{})", handle.addr, handle.control_addr);
            eprintln!("gate console: https://{}/console/", handle.control_addr);
            vault::shutdown_signal().await;
            handle.stop().await;
            Ok(0)
        }
        GateCommand::Status { who, json } => {
            let v = who.call(reqwest::Method::GET, "/v1/status", None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(0);
            }
            let a = &v["audit"];
            let b = &v["budgets"];
            println!(
                "row budgets: {} rows per person and table{} per {} s",
                b["limits"]["rows"],
                b["limits"]["table_percent"]
                    .as_f64()
                    .map(|p| format!(" (or {p} % of a table)"))
                    .unwrap_or_default(),
                b["limits"]["window_seconds"],
            );
            for u in b["used"].as_array().into_iter().flatten() {
                println!(
                    "  {} on {}: {} rows in {} statements (latest: {})",
                    u["person"].as_str().unwrap_or(""),
                    u["table"].as_str().unwrap_or(""),
                    u["rows"],
                    u["statements"],
                    u["recent"].as_array().and_then(|r| r.last()).and_then(|x| x.as_str()).unwrap_or("")
                );
            }
            println!(
                "sessions: {}   pending requests: {}   grants: {}",
                v["active_sessions"],
                v["pending"],
                v["grants"].as_array().map(Vec::len).unwrap_or(0)
            );
            println!(
                "audit: last seq {}, shipped to the vault up to {}, {} records ({} bytes) waiting{}",
                a["last_seq"],
                a["shipped_seq"],
                a["pending_records"],
                a["pending_bytes"],
                a["last_ship_error"].as_str().map(|e| format!(", last error: {e}")).unwrap_or_default()
            );
            println!(
                "audit signing key (for `holdfast audit verify --trust-key`): {}",
                a["public_key"].as_str().unwrap_or("")
            );
            Ok(0)
        }
        GateCommand::Pending { who, json } => {
            let v = who.call(reqwest::Method::GET, "/v1/pending", None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(0);
            }
            let reqs = v["requests"].as_array().cloned().unwrap_or_default();
            if reqs.is_empty() {
                println!("no requests");
            }
            for r in reqs {
                let what = match r["ask"]["kind"].as_str() {
                    Some("statement") => {
                        let p = &r["ask"]["parameters"];
                        let params = match p["count"].as_u64() {
                            None => String::new(),
                            Some(n) => match p["values"].as_array() {
                                Some(vs) if !vs.is_empty() => format!(
                                    " [{n} parameters, {}: {}]",
                                    p["values_are"].as_str().unwrap_or(""),
                                    vs.iter()
                                        .map(|v| v.as_str().map_or("NULL".to_string(), |s| format!("{s:?}")))
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                ),
                                _ => format!(
                                    " [{n} parameters, values {}]",
                                    p["values_are"].as_str().unwrap_or("")
                                ),
                            },
                        };
                        format!("statement: {}{params}", r["ask"]["sql"].as_str().unwrap_or(""))
                    }
                    Some("grant") => format!(
                        "grant of role {} for {}s: {}",
                        r["ask"]["role"].as_str().unwrap_or(""),
                        r["ask"]["secs"],
                        r["reason"].as_str().unwrap_or("")
                    ),
                    _ => format!("access: {}", r["ask"]["why"].as_str().unwrap_or("")),
                };
                println!(
                    "{:<10} {:<9} {:<12} {:<22} {}",
                    r["id"].as_str().unwrap_or(""),
                    r["state"]["state"].as_str().unwrap_or(""),
                    r["person"].as_str().unwrap_or(""),
                    r["client"].as_str().unwrap_or(""),
                    what
                );
            }
            for g in v["grants"].as_array().cloned().unwrap_or_default() {
                println!(
                    "grant {} role {} to {} until {} (approved by {})",
                    g["id"].as_str().unwrap_or(""),
                    g["role"].as_str().unwrap_or(""),
                    g["person"].as_str().unwrap_or(""),
                    g["until"],
                    g["approved_by"].as_str().unwrap_or("")
                );
            }
            Ok(0)
        }
        GateCommand::Approve { id, who, reason } => decide(&who, &id, "approve", reason).await,
        GateCommand::Reject { id, who, reason } => decide(&who, &id, "reject", reason).await,
        GateCommand::Request { role, for_, reason, who } => {
            let v = who
                .call(
                    reqwest::Method::POST,
                    "/v1/grants",
                    Some(serde_json::json!({"role": role, "for": for_, "reason": reason})),
                )
                .await?;
            println!("{}", v["id"].as_str().unwrap_or(""));
            eprintln!(
                "grant request {} sent: another approver must approve it (holdfast gate approve {})",
                v["id"].as_str().unwrap_or(""),
                v["id"].as_str().unwrap_or("")
            );
            Ok(0)
        }
        GateCommand::BreakGlass { for_, reason, who } => {
            let v = who
                .call(
                    reqwest::Method::POST,
                    "/v1/break-glass",
                    Some(serde_json::json!({"for": for_, "reason": reason})),
                )
                .await?;
            eprintln!(
                "BREAK-GLASS active until {} for {}: every destructive statement alerts",
                v["until"], who.user
            );
            Ok(0)
        }
        GateCommand::HashPassword => {
            let mut pw = String::new();
            std::io::stdin().read_line(&mut pw).context("reading the password from stdin")?;
            let pw = pw.trim_end_matches(['\n', '\r']);
            if pw.len() < 8 {
                bail!("the password is shorter than 8 characters");
            }
            println!("{}", gate::scram::Verifier::generate(pw));
            Ok(0)
        }
        GateCommand::TotpSecret { name } => {
            let s = gate::totp::new_secret();
            println!("{s}");
            eprintln!("otpauth://totp/holdfast:{name}?secret={s}&issuer=holdfast");
            Ok(0)
        }
        GateCommand::TotpCode { secret } => {
            let key =
                gate::totp::base32_decode(&secret).ok_or_else(|| anyhow!("the secret is not base32"))?;
            let step = gate::approvals::unix_now() / 30;
            println!("{:06}", gate::totp::code_at(&key, step));
            Ok(0)
        }
    }
}

async fn decide(who: &Who, id: &str, verb: &str, reason: Option<String>) -> Result<u8> {
    let v = who
        .call(
            reqwest::Method::POST,
            &format!("/v1/approvals/{id}/{verb}"),
            Some(serde_json::json!({"reason": reason})),
        )
        .await?;
    println!("{} {}", v["id"].as_str().unwrap_or(id), v["state"]["state"].as_str().unwrap_or(""));
    Ok(0)
}
