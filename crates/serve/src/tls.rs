//! Server-side TLS set-up shared by the vault and the gate: a self-signed pair for the embedded
//! default, and a rustls server config from PEM files.

use std::io::Write;
use std::path::Path;

/// Creates a self-signed certificate for 127.0.0.1 and localhost if neither file exists (the
/// key written 0600). Returns whether it created one. One file without the other is an error:
/// the message says to restore it or remove both.
pub fn ensure_self_signed(cert: &Path, key: &Path) -> Result<bool, TlsError> {
    match (cert.exists(), key.exists()) {
        (true, true) => return Ok(false),
        (false, false) => {}
        _ => {
            return Err(TlsError::HalfPair { cert: cert.into(), key: key.into() });
        }
    }
    let sans = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    let ck = rcgen::generate_simple_self_signed(sans).map_err(TlsError::Generate)?;
    for p in [cert, key] {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).map_err(|e| TlsError::io("creating", dir, e))?;
        }
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(key).map_err(|e| TlsError::io("writing", key, e))?;
    f.write_all(ck.signing_key.serialize_pem().as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| TlsError::io("writing", key, e))?;
    std::fs::write(cert, ck.cert.pem()).map_err(|e| TlsError::io("writing", cert, e))?;
    tracing::info!(cert = %cert.display(), "generated a self-signed TLS certificate for 127.0.0.1 and localhost");
    Ok(true)
}

/// A rustls server config (aws-lc-rs, safe defaults, no client certificates) from PEM files.
pub fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Pem { what: "certificates", path: cert.into(), source: e })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(cert.into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Pem {
        what: "the private key",
        path: key.into(),
        source: e,
    })?;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Rustls)?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(TlsError::Pair)
}

/// Why the TLS set-up failed: which file, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "only one of {} and {} exists: restore the other, or remove both to generate a new self-signed pair",
        cert.display(),
        key.display()
    )]
    HalfPair { cert: std::path::PathBuf, key: std::path::PathBuf },
    #[error("generating a certificate: {0}")]
    Generate(#[source] rcgen::Error),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading {what} from {}: {source}", path.display())]
    Pem {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{} holds no certificate", .0.display())]
    NoCertificate(std::path::PathBuf),
    #[error("{0}")]
    Rustls(#[source] rustls::Error),
    #[error("the certificate and key do not form a usable pair: {0}")]
    Pair(#[source] rustls::Error),
}

impl TlsError {
    fn io(what: &'static str, path: &Path, source: std::io::Error) -> TlsError {
        TlsError::Io { what, path: path.into(), source }
    }
}

/// Limits on connections that have not shown a valid token yet.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Connections one IP address may hold open before one of its requests with a token is
    /// answered with anything but 401. The next one is closed at once, before TLS.
    pub unauthenticated_per_address: usize,
    /// How long a TLS handshake may take.
    pub handshake: std::time::Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits { unauthenticated_per_address: 32, handshake: std::time::Duration::from_secs(10) }
    }
}

/// Unauthenticated connections per address.
type Counts = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>;

/// One unauthenticated connection's place in [`Counts`]; given back when dropped.
struct Unauthenticated {
    counts: Counts,
    ip: std::net::IpAddr,
}

impl Unauthenticated {
    fn acquire(counts: &Counts, ip: std::net::IpAddr, limit: usize) -> Option<Unauthenticated> {
        let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = c.entry(ip).or_default();
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(Unauthenticated { counts: counts.clone(), ip })
    }
}

impl Drop for Unauthenticated {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = c.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.remove(&self.ip);
            }
        }
    }
}

/// [`serve_https_limited`] with the default [`ConnLimits`].
pub async fn serve_https(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    router: axum::Router,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    serve_https_limited(listener, acceptor, router, shutdown, ConnLimits::default()).await
}

/// Accepts TCP connections, completes TLS, and serves HTTP/1.1 with `router` on each until
/// `shutdown` turns true (then in-flight requests get 10 s to finish).
///
/// Unauthenticated connections are what an attacker without a token can open by the thousand:
/// each address may hold `limits.unauthenticated_per_address` of them (a connection stops
/// counting once a request on it carrying a token is answered with anything but 401), and a TLS
/// handshake gets `limits.handshake`. Accepting is [`crate::accept::accept_loop`].
pub async fn serve_https_limited(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    router: axum::Router,
    shutdown: tokio::sync::watch::Receiver<bool>,
    limits: ConnLimits,
) {
    let counts: Counts = Default::default();
    let mut refused: u64 = 0;
    let on_connection = |tcp: tokio::net::TcpStream, peer: std::net::SocketAddr| {
        let Some(place) = Unauthenticated::acquire(&counts, peer.ip(), limits.unauthenticated_per_address)
        else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(%peer, refused, limit = limits.unauthenticated_per_address, "closed a connection: too many unauthenticated connections from this address");
            }
            return None;
        };
        let (acceptor, router, mut shutdown) = (acceptor.clone(), router.clone(), shutdown.clone());
        Some(async move {
            let tls = match tokio::time::timeout(limits.handshake, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let place = std::sync::Arc::new(std::sync::Mutex::new(Some(place)));
            let service =
                hyper::service::service_fn(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    let (router, place) = (router.clone(), place.clone());
                    // Handlers that record who asked (the gate's console) read the peer here.
                    req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                    let has_token = req.headers().contains_key(axum::http::header::AUTHORIZATION);
                    async move {
                        let resp = tower::ServiceExt::oneshot(router, req).await;
                        if let Ok(r) = &resp
                            && has_token
                            && r.status() != axum::http::StatusCode::UNAUTHORIZED
                        {
                            place.lock().unwrap_or_else(|p| p.into_inner()).take();
                        }
                        resp
                    }
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(30))
                .max_buf_size(64 * 1024)
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r { tracing::debug!(%peer, error = %e, "connection ended with an error"); }
                }
                _ = shutdown.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), conn.as_mut()).await;
                }
            }
        })
    };
    crate::accept::accept_loop(listener, shutdown.clone(), crate::accept::AtShutdown::Wait, on_connection)
        .await
}
