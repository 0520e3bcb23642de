//! The one TCP accept loop of the services (the vault's and the gate's HTTPS control APIs, the
//! gate's PostgreSQL listener): accept until shutdown, keep the connections' tasks, and treat a
//! failed accept as what it is instead of spinning on it.

use std::future::Future;
use std::net::SocketAddr;

/// What happens to open connections once shutdown is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtShutdown {
    /// Wait for every connection's task to finish (each sees the shutdown signal itself and
    /// ends in its own time, e.g. an HTTP connection finishing its request).
    Wait,
    /// Abort the connections' tasks.
    Abort,
}

/// Accepts connections on `listener` until `shutdown` turns true (or its sender goes away).
/// `on_connection` is called on the accept loop for each one: it may refuse it at once (return
/// `None`, the connection is closed), or return the task that serves it.
///
/// Accepting fails when the process runs out of file descriptors; that is logged as what it
/// is, and accepting pauses 50 ms rather than spin.
pub async fn accept_loop<F, Fut>(
    listener: tokio::net::TcpListener,
    shutdown: tokio::sync::watch::Receiver<bool>,
    at_shutdown: AtShutdown,
    mut on_connection: F,
) where
    F: FnMut(tokio::net::TcpStream, SocketAddr) -> Option<Fut>,
    Fut: Future<Output = ()> + Send + 'static,
{
    accept_loop_on(listener, shutdown, at_shutdown, move |tcp, peer| {
        on_connection(tcp, peer).map(|f| (f, None))
    })
    .await
}

/// [`accept_loop`] where `on_connection` also says on which runtime the connection's task runs
/// (`None`: the accept loop's own) — the gate pins each session to one of its single-threaded
/// session runtimes. The connection's task is still the loop's: aborted or awaited at shutdown.
pub async fn accept_loop_on<F, Fut>(
    listener: tokio::net::TcpListener,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    at_shutdown: AtShutdown,
    mut on_connection: F,
) where
    F: FnMut(tokio::net::TcpStream, SocketAddr) -> Option<(Fut, Option<tokio::runtime::Handle>)>,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        // EMFILE (24), ENFILE (23).
                        if matches!(e.raw_os_error(), Some(24 | 23)) {
                            tracing::error!(error = %e, "accepting a connection failed: this process is out of file descriptors (too many open files); raise LimitNOFILE or find who holds the connections");
                        } else {
                            tracing::warn!(error = %e, "accepting a connection failed");
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                match on_connection(tcp, peer) {
                    Some((task, Some(rt))) => drop(conns.spawn_on(task, &rt)),
                    Some((task, None)) => drop(conns.spawn(task)),
                    None => {}
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    match at_shutdown {
        AtShutdown::Wait => while conns.join_next().await.is_some() {},
        AtShutdown::Abort => conns.shutdown().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Connections are served by their tasks, a refused one is closed at once, and shutdown
    /// ends the loop and the tasks it aborts.
    #[tokio::test]
    async fn serves_refuses_and_stops() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut n = 0;
        let task = tokio::spawn(accept_loop(listener, rx, AtShutdown::Abort, move |mut tcp, _| {
            n += 1;
            // Every second connection is refused.
            if n % 2 == 0 {
                return None;
            }
            Some(async move {
                let _ = tcp.write_all(b"hi").await;
                // Held open until aborted.
                let mut b = [0u8; 1];
                let _ = tcp.read(&mut b).await;
            })
        }));
        let mut served = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut b = [0u8; 2];
        served.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"hi");
        let mut refused = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert_eq!(refused.read(&mut b).await.unwrap(), 0, "a refused connection is closed");
        tx.send(true).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), task).await.unwrap().unwrap();
        assert_eq!(served.read(&mut b).await.unwrap_or(0), 0, "an aborted connection is closed");
    }
}
