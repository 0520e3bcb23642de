//! Ports for tests, chosen so that nothing else on the machine takes them meanwhile.
//!
//! Binding port 0 and closing the listener is not enough when a server binds the port later
//! (or again, after a restart): the kernel hands out the same ephemeral range as source ports
//! for every outgoing connection, and on a CI machine running a connection flood or a pgbench
//! beside this test, one of them can take the port in between — the server then fails with
//! "address in use". [`port_to_reuse`] picks a free port *below* the ephemeral range, which
//! the kernel never gives out on its own. A test that needs an address where nothing answers
//! holds a [`RefusingPort`]: bound, never listening, so connections are refused and nobody else
//! can bind it while the test runs.

use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};

use anyhow::{Context, Result, bail};

/// Lowest port [`port_to_reuse`] picks from.
const FIXED_RANGE_START: u16 = 20_000;

/// The first port of the kernel's ephemeral range (Linux's default 32768 when unreadable).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
        .unwrap_or(32_768)
}

/// A port on 127.0.0.1 that is free now and that the kernel will not hand to anyone as an
/// ephemeral port: for a server the test starts, stops and starts again on the same address.
/// Falls back to a kernel-chosen port when the ephemeral range leaves no room below it.
pub fn port_to_reuse() -> Result<u16> {
    let end = ephemeral_start();
    if end <= FIXED_RANGE_START + 1_000 {
        return Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port());
    }
    let span = u64::from(end - FIXED_RANGE_START);
    for _ in 0..200 {
        // RandomState is seeded randomly per instance: a random number without a crate.
        let r = std::collections::hash_map::RandomState::new().build_hasher().finish();
        let port = FIXED_RANGE_START + (r % span) as u16;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port in {FIXED_RANGE_START}..{end}")
}

/// A port on 127.0.0.1 where connections are refused: bound (so nobody else can take it) but
/// never listening, for as long as this value lives.
#[derive(Debug)]
pub struct RefusingPort {
    _socket: tokio::net::TcpSocket,
    addr: SocketAddr,
}

impl RefusingPort {
    /// Binds a kernel-chosen port without listening on it.
    pub fn new() -> Result<RefusingPort> {
        let socket = tokio::net::TcpSocket::new_v4().context("creating a socket")?;
        socket.bind((Ipv4Addr::LOCALHOST, 0).into()).context("binding a port")?;
        let addr = socket.local_addr()?;
        Ok(RefusingPort { _socket: socket, addr })
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_to_reuse_is_below_the_ephemeral_range_and_bindable() {
        let p = port_to_reuse().unwrap();
        if ephemeral_start() > FIXED_RANGE_START + 1_000 {
            assert!((FIXED_RANGE_START..ephemeral_start()).contains(&p), "{p}");
        }
        drop(TcpListener::bind((Ipv4Addr::LOCALHOST, p)).unwrap());
    }

    #[test]
    fn a_refusing_port_refuses_and_cannot_be_taken() {
        let r = RefusingPort::new().unwrap();
        let e = std::net::TcpStream::connect(r.addr()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
        assert!(TcpListener::bind(r.addr()).is_err(), "another socket bound a held port");
    }
}
