//! Decode + detect throughput over stored WAL segment files, on one thread: what
//! `bench/detect.sh` times against `pg_waldump` over the same files.
//!
//! `detect_wal DIR` reads every segment file of the lowest timeline in DIR in order, decodes
//! each record (CRC checked) and feeds it to the destruction detector, as the vault does on the
//! live stream, then prints one JSON line: bytes, records, findings, seconds and MB/s.

use std::time::Instant;

use capture::detect::{Detector, Thresholds};
use pgfmt::Lsn;
use pgfmt::wal::WalReader;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).ok_or("usage: detect_wal DIR_WITH_WAL_SEGMENTS")?;
    let seg_size: u64 =
        std::env::var("WAL_SEGMENT_SIZE").ok().and_then(|v| v.parse().ok()).unwrap_or(16 << 20);
    let mut names: Vec<String> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.len() == 24 && n.chars().all(|c| c.is_ascii_hexdigit()))
        .collect();
    names.sort();
    let Some(first) = names.first() else { return Err(format!("no WAL segment files in {dir}").into()) };
    let tli = first[..8].to_string();
    names.retain(|n| n[..8] == tli);
    let started = Instant::now();
    let mut detector = Detector::new(Thresholds::default());
    let (mut bytes, mut records, mut findings) = (0u64, 0u64, 0u64);
    // WAL not yet decoded (a record continuing into the next segment) and where it starts.
    let mut buf: Vec<u8> = Vec::new();
    let mut buf_start = Lsn(0);
    let mut next: Option<Lsn> = None;
    let mut expected_seg = None;
    for name in &names {
        let (_, segno) = pgfmt::parse_segment_name(name, seg_size)?;
        if expected_seg.is_some_and(|e| e != segno) {
            return Err(format!("segment {name} does not follow the one before: a gap").into());
        }
        expected_seg = Some(segno + 1);
        let data = std::fs::read(std::path::Path::new(&dir).join(name))?;
        bytes += data.len() as u64;
        if buf.is_empty() {
            buf_start = pgfmt::segment_start(segno, seg_size);
        }
        buf.extend_from_slice(&data);
        let mut reader = WalReader::new(&buf, buf_start, seg_size);
        for rec in reader.by_ref() {
            let rec = rec?;
            if next.is_some_and(|n| rec.lsn < n) {
                continue;
            }
            records += 1;
            if detector.record(&rec)?.is_some() {
                findings += 1;
            }
        }
        if let Some(n) = reader.next_lsn() {
            next = Some(n);
        }
        // Keep from the page where the next record starts.
        let keep_from = next.map_or(buf_start, |n| Lsn(n.0 - n.0 % 8192)).max(buf_start);
        let cut = ((keep_from.0 - buf_start.0) as usize).min(buf.len());
        buf.drain(..cut);
        buf_start = keep_from;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{{\"segments\": {}, \"bytes\": {bytes}, \"records\": {records}, \"findings\": {findings}, \"seconds\": {secs:.3}, \"mb_per_s\": {:.1}}}",
        names.len(),
        bytes as f64 / 1e6 / secs
    );
    Ok(())
}
