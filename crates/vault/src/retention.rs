//! Retention: **the only module that removes anything from a store.**
//!
//! Two paths lead here, and no other: [`prune`] removes objects whose retention has passed by
//! the vault's clock and that no retained backup still needs; [`execute`] removes exactly the
//! objects a verified quorum warrant names. Both go through [`store::Expunge`], whose backends
//! re-check the authority themselves. A test (`tests/only_retention_deletes.rs`) fails if any
//! other source file calls `.expunge(` or removes files from a store.

use std::collections::{BTreeMap, BTreeSet};

use store::quorum::QuorumWarrant;
use store::{
    Expunge, ExpungeAuthority, ObjectKind, ObjectMeta, ObjectName, Repository, StoreError, Timestamp,
};

/// Errors while pruning or executing a deletion.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("reading the catalog failed: {0}")]
    Repo(#[from] store::RepoError),
    #[error("storage failed: {0}")]
    Store(#[from] StoreError),
    #[error("the warrant does not name {0}; nothing was removed")]
    NotCovered(ObjectName),
}

/// What a prune did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub now: Option<Timestamp>,
    /// Expired packs removed (or to be removed).
    pub removed: Vec<ObjectMeta>,
    pub removed_bytes: u64,
    /// Packs kept because a retained backup references them.
    pub kept_referenced: u64,
    /// Packs whose retention was lengthened to match the newest backup that needs them.
    pub extended: u64,
    /// Retained backups considered.
    pub retained_backups: u64,
}

/// Removes packs whose retention passed by `now` and that no retained backup references.
///
/// Before removing anything, every pack a retained backup needs gets its retention lengthened to
/// that backup's `retain_until`, so a pack first written for an old backup and reused by a newer
/// one lives as long as the newer one. Only packs are pruned: config, keys, index and catalog
/// objects are small and are what makes everything else readable and explainable.
pub async fn prune(
    repo: &Repository,
    store: &dyn Expunge,
    now: Timestamp,
    dry_run: bool,
) -> Result<PruneReport, RetentionError> {
    let backups = repo.backups().await?;
    let mut needed: BTreeMap<ObjectName, Timestamp> = BTreeMap::new();
    let mut retained = 0u64;
    for b in backups.iter().filter(|b| b.retain_until > now) {
        retained += 1;
        for pack in repo.referenced_packs(std::slice::from_ref(b)).await? {
            let until = needed.entry(pack).or_insert(b.retain_until);
            *until = (*until).max(b.retain_until);
        }
    }
    let mut report =
        PruneReport { dry_run, now: Some(now), retained_backups: retained, ..PruneReport::default() };
    for meta in store.list(ObjectKind::Pack).await? {
        if let Some(until) = needed.get(&meta.name) {
            report.kept_referenced += 1;
            if meta.retain_until < *until {
                report.extended += 1;
                if !dry_run {
                    store.extend_retention(&meta.name, *until).await?;
                }
            }
            continue;
        }
        if meta.retain_until > now {
            continue;
        }
        if !dry_run {
            store.expunge(&meta.name, ExpungeAuthority::Expired { now }).await?;
            tracing::info!(object = %meta.name, retain_until = %meta.retain_until, "pruned an expired pack");
        }
        report.removed_bytes += meta.size;
        report.removed.push(meta);
    }
    Ok(report)
}

/// Removes exactly `objects` under a verified quorum warrant. Every name must be covered by the
/// warrant; objects already absent are reported, not treated as errors.
pub async fn execute(
    store: &dyn Expunge,
    warrant: &QuorumWarrant,
    objects: &BTreeSet<ObjectName>,
) -> Result<(Vec<ObjectName>, Vec<ObjectName>), RetentionError> {
    if let Some(n) = objects.iter().find(|n| !warrant.covers(n)) {
        return Err(RetentionError::NotCovered(*n));
    }
    let (mut removed, mut absent) = (Vec::new(), Vec::new());
    for name in objects {
        if store.head(name).await?.is_none() {
            absent.push(*name);
            continue;
        }
        store.expunge(name, ExpungeAuthority::Quorum(warrant)).await?;
        tracing::warn!(object = %name, proposal = warrant.proposal(), signers = ?warrant.signers(), "removed an object under a quorum warrant");
        removed.push(*name);
    }
    Ok((removed, absent))
}
