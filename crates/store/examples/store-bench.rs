//! `store-bench`: ingest a directory tree into a holdfast repository and print figures as JSON.
//!
//! Usage: `cargo run --release -p store --example store-bench -- <source-dir> <repo-dir> [label]`.
//! The first run initialises the repository and writes an age identity to `<repo-dir>.identity`
//! (benchmarks only: a real vault keeps its identity elsewhere and wraps to escrow recipients).
//! `HOLDFAST_PAGES_PER_CHUNK=n` sets the relation-file chunk size of a new repository,
//! `HOLDFAST_ZSTD_LEVEL=n` its compression level.

use std::sync::Arc;
use std::time::Instant;

use store::{LocalDir, ObjectKind, ObjectStore, Repository, Timestamp};

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: store-bench <source-dir> <repo-dir> [label]");
        std::process::exit(2);
    }
    let (src, repo_dir) = (std::path::PathBuf::from(&args[1]), std::path::PathBuf::from(&args[2]));
    let label = args.get(3).cloned().unwrap_or_else(|| "bench".into());
    let id_path = repo_dir.with_extension("identity");
    let store: Arc<dyn ObjectStore> = Arc::new(LocalDir::open(&repo_dir)?);
    let repo = if store.list(ObjectKind::Config).await?.is_empty() {
        let id = age::x25519::Identity::generate();
        std::fs::write(&id_path, age::secrecy::ExposeSecret::expose_secret(&id.to_string()))?;
        let mut options = store::InitOptions::default();
        if let Ok(n) = std::env::var("HOLDFAST_PAGES_PER_CHUNK") {
            options.chunker.pages_per_chunk = n.parse()?;
        }
        if let Ok(n) = std::env::var("HOLDFAST_ZSTD_LEVEL") {
            options.zstd_level = n.parse()?;
        }
        Repository::init_with(store.clone(), &[id.to_public()], Timestamp::now(), Timestamp::FOREVER, options)
            .await?
    } else {
        let id: age::x25519::Identity =
            std::fs::read_to_string(&id_path)?.trim().parse().map_err(|e: &str| e.to_string())?;
        Repository::open(store.clone(), &[id]).await?
    };
    let t0 = Instant::now();
    let r = repo.clone();
    let rec = tokio::task::spawn_blocking(move || -> Result<_, store::RepoError> {
        let mut w =
            r.backup_writer(&label, Timestamp::now().plus(std::time::Duration::from_secs(86_400 * 30)));
        w.add_tree(&src)?;
        w.finish(Timestamp::now())
    })
    .await??;
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "backup": rec.id, "files": rec.files, "bytes": rec.bytes, "stored_bytes": rec.stored_bytes,
            "seconds": secs, "mb_per_s": rec.bytes as f64 / 1e6 / secs, "index_blobs": repo.index_len(),
        })
    );
    Ok(())
}
