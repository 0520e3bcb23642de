//! Prune removes only packs whose retention passed (vault clock) and that no retained backup
//! references; a dry run removes nothing.

mod common;

use std::time::Duration;

use common::*;
use store::{ObjectKind, ObjectName, Timestamp};
use vault_api::Scope;

const DAY: Duration = Duration::from_secs(86_400);

async fn backup(
    repo: &store::Repository,
    label: &str,
    content: Vec<u8>,
    until: Timestamp,
    now: Timestamp,
) -> store::BackupRecord {
    let (repo, label) = (repo.clone(), label.to_string());
    tokio::task::spawn_blocking(move || {
        let mut w = repo.backup_writer(&label, until);
        w.add_file("base/1/1", &content[..], content.len() as u64, 0o600, 0).unwrap();
        w.finish(now).unwrap()
    })
    .await
    .unwrap()
}

fn packs(listing: &[(ObjectName, u64, Timestamp)]) -> Vec<ObjectName> {
    listing.iter().filter(|o| o.0.kind == ObjectKind::Pack).map(|o| o.0).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_keeps_what_retained_backups_need_and_removes_only_expired_packs() {
    let h = start(Opts::default()).await;
    let append = h.client(Scope::Append).await;
    let stray = h.upload(&append, b"uploaded, in no backup").await; // retained T0 + 30 days
    let (repo, store) = vault::open_repository(&h.config, None).await.unwrap();
    let short = backup(&repo, "short", vec![1u8; 50_000], T0.plus(10 * DAY), T0).await;
    let long = backup(&repo, "long", vec![2u8; 50_000], T0.plus(100 * DAY), T0).await;
    let short_packs = repo.referenced_packs(std::slice::from_ref(&short)).await.unwrap();
    let long_packs = repo.referenced_packs(std::slice::from_ref(&long)).await.unwrap();
    assert!(!short_packs.is_empty() && !long_packs.is_empty());
    let before = h.listing().await;

    // Nothing has expired yet.
    let r = vault::retention::prune(&repo, store.as_ref(), T0.plus(DAY), false).await.unwrap();
    assert!(r.removed.is_empty());
    assert_eq!(h.listing().await, before);

    // Day 11: the short backup expired. A dry run reports, and changes nothing.
    let day11 = T0.plus(11 * DAY);
    let dry = vault::retention::prune(&repo, store.as_ref(), day11, true).await.unwrap();
    let dry_removed: Vec<_> = dry.removed.iter().map(|m| m.name).collect();
    assert_eq!(dry_removed.iter().copied().collect::<std::collections::BTreeSet<_>>(), short_packs);
    assert_eq!(h.listing().await, before);
    let r = vault::retention::prune(&repo, store.as_ref(), day11, false).await.unwrap();
    assert_eq!(r.removed.len(), short_packs.len());
    let after = h.listing().await;
    let left = packs(&after);
    assert!(short_packs.iter().all(|p| !left.contains(p)));
    assert!(long_packs.iter().all(|p| left.contains(p)));
    assert!(left.contains(&stray), "the stray pack is retained until day 30");
    // Nothing but packs was removed.
    let gone: Vec<_> = before.iter().filter(|o| !after.contains(o)).collect();
    assert!(gone.iter().all(|o| o.0.kind == ObjectKind::Pack));

    // Day 31: the stray pack expired too; the long backup's packs stay.
    let r = vault::retention::prune(&repo, store.as_ref(), T0.plus(31 * DAY), false).await.unwrap();
    assert_eq!(r.removed.iter().map(|m| m.name).collect::<Vec<_>>(), vec![stray]);
    let left = packs(&h.listing().await);
    assert_eq!(left.iter().copied().collect::<std::collections::BTreeSet<_>>(), long_packs);
    // And the long backup still restores.
    let target = h.dir.path().join("restored");
    repo.restore(&long.id, &target).await.unwrap();
    assert_eq!(std::fs::read(target.join("base/1/1")).unwrap(), vec![2u8; 50_000]);
}
