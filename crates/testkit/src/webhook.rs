//! A tiny HTTP receiver for alert webhooks: records the arrival time and JSON body of every
//! POST, answers 200.

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// (arrival, body) of every POST a receiver got.
pub type Received = Arc<Mutex<Vec<(Instant, serde_json::Value)>>>;

/// Starts a receiver on 127.0.0.1; returns its URL and what it received.
pub fn receiver() -> (String, Received) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a local port");
    let url = format!("http://{}/hook", listener.local_addr().expect("local address"));
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut r = BufReader::new(conn);
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            if let Ok(v) = serde_json::from_slice(&body) {
                g.lock().unwrap_or_else(|p| p.into_inner()).push((Instant::now(), v));
            }
            let _ =
                r.get_mut().write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (url, got)
}
