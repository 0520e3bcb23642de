//! `check`: verify a store object by object, and (with keys) the repository built on it.
//!
//! Without keys: every object of every kind is read and re-hashed; an object whose bytes do
//! not hash to its name is damaged. With keys, additionally: every index file and catalog
//! record must open; every pack's header must open and agree with the index files; every blob
//! named by every backup's manifest must be in an index, in a pack that exists and is
//! undamaged. The report names damaged objects, missing objects, and the backups affected.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::backend::ObjectStore;
use crate::catalog::CatalogRecord;
use crate::index::{Index, IndexFile};
use crate::keys::{ChunkId, KeysFile};
use crate::name::{ObjectId, ObjectKind, ObjectName};
use crate::pack::{self, BlobEntry};
use crate::repo::{RepoConfig, Repository};
use crate::snapshot::{BackupRecord, LineSplitter};

/// One problem with one object (or blob).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Problem {
    /// `<kind>/<hash>`, or `blob <id>` for a blob that is in no index.
    pub name: String,
    /// What is wrong, in words.
    pub why: String,
}

/// A backup that cannot be fully restored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AffectedBackup {
    /// Backup id.
    pub id: String,
    /// Backup label.
    pub label: String,
    /// The damaged or missing objects it depends on (at most 20 listed).
    pub because: Vec<String>,
}

/// What `check` found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CheckReport {
    /// Whether keys were available (index, catalog, manifests checked).
    pub with_keys: bool,
    /// Objects read and re-hashed.
    pub objects_checked: u64,
    /// Bytes read.
    pub bytes_checked: u64,
    /// Backups whose manifests were walked.
    pub backups_checked: u64,
    /// Objects whose bytes are wrong (hash mismatch, do not open, malformed).
    pub damaged: Vec<Problem>,
    /// Objects (or blobs) that something refers to but the store does not hold.
    pub missing: Vec<Problem>,
    /// Backups that depend on damaged or missing objects.
    pub affected_backups: Vec<AffectedBackup>,
    /// Things that are not damage but deserve a look (e.g. packs in no index).
    pub warnings: Vec<String>,
}

impl CheckReport {
    /// Nothing damaged, nothing missing, no backup affected.
    pub fn is_clean(&self) -> bool {
        self.damaged.is_empty() && self.missing.is_empty() && self.affected_backups.is_empty()
    }
}

fn problem(name: impl ToString, why: impl ToString) -> Problem {
    Problem { name: name.to_string(), why: why.to_string() }
}

/// Checks `store`; with `repo`, also the repository's index, catalog and backups.
pub async fn check(store: &dyn ObjectStore, repo: Option<&Repository>) -> CheckReport {
    let mut r = CheckReport { with_keys: repo.is_some(), ..CheckReport::default() };
    let keys = repo.map(|x| x.keys());
    let mut damaged: HashSet<ObjectName> = HashSet::new();
    let mut present: HashSet<ObjectName> = HashSet::new();
    let mut headers: HashMap<ObjectId, Vec<BlobEntry>> = HashMap::new();
    let mut index_files: Vec<(ObjectName, IndexFile)> = Vec::new();
    let mut backups: Vec<BackupRecord> = Vec::new();

    for kind in ObjectKind::ALL {
        let listed = match store.list(kind).await {
            Ok(l) => l,
            Err(e) => {
                r.warnings.push(format!("cannot list {kind} objects: {e}"));
                continue;
            }
        };
        for meta in listed {
            let name = meta.name;
            present.insert(name);
            let bytes = match store.get(&name).await {
                Ok(b) => b,
                Err(e) => {
                    r.damaged.push(problem(name, format!("cannot be read: {e}")));
                    damaged.insert(name);
                    continue;
                }
            };
            r.objects_checked += 1;
            r.bytes_checked += bytes.len() as u64;
            let actual = ObjectId::of(&bytes);
            if actual != name.id {
                r.damaged.push(problem(
                    name,
                    format!("content hashes to {actual}, not to its name: the bytes were altered"),
                ));
                damaged.insert(name);
                continue;
            }
            let why = match (kind, keys) {
                (ObjectKind::Config, _) => serde_json::from_slice::<RepoConfig>(&bytes)
                    .err()
                    .map(|e| format!("not a valid config: {e}")),
                (ObjectKind::Keys, _) => KeysFile::from_bytes(&bytes).err().map(|e| e.to_string()),
                (ObjectKind::Pack, Some(k)) => match pack::header_from_bytes(k, &name, &bytes) {
                    Ok(h) => {
                        headers.insert(name.id, h);
                        None
                    }
                    Err(e) => Some(e.to_string()),
                },
                (ObjectKind::Index, Some(k)) => match IndexFile::open(k, &name, &bytes) {
                    Ok(f) => {
                        index_files.push((name, f));
                        None
                    }
                    Err(e) => Some(e.to_string()),
                },
                (ObjectKind::Catalog, Some(k)) => match CatalogRecord::open(k, &name, &bytes) {
                    Ok(rec) if rec.kind == "backup" => match serde_json::from_value::<BackupRecord>(rec.body)
                    {
                        Ok(b) => {
                            backups.push(b);
                            None
                        }
                        Err(e) => Some(format!("backup record body is malformed: {e}")),
                    },
                    Ok(_) => None,
                    Err(e) => Some(e.to_string()),
                },
                _ => None,
            };
            if let Some(why) = why {
                r.damaged.push(problem(name, why));
                damaged.insert(name);
            }
        }
    }

    let Some(repo) = repo else {
        r.damaged.sort();
        return r;
    };

    // Index files against the store and the pack headers.
    let mut index = Index::default();
    let mut indexed_packs: HashSet<ObjectId> = HashSet::new();
    for (iname, file) in &index_files {
        for p in &file.packs {
            let Ok(pid) = p.pack_id() else {
                r.damaged.push(problem(iname, format!("names an invalid pack {:?}", p.pack)));
                continue;
            };
            let pname = ObjectName { kind: ObjectKind::Pack, id: pid };
            indexed_packs.insert(pid);
            if !present.contains(&pname) {
                r.missing.push(problem(pname, format!("listed by {iname} but not in the store")));
            } else if let Some(h) = headers.get(&pid)
                && h != &p.blobs
            {
                r.damaged
                    .push(problem(iname, format!("its entry for {pname} disagrees with that pack's header")));
            }
            if let Err(e) = index.add_pack(pid, &p.blobs) {
                r.damaged.push(problem(iname, e));
            }
        }
    }
    for pid in headers.keys() {
        if !indexed_packs.contains(pid) {
            r.warnings.push(format!(
                "pack/{pid} is in no index file (an interrupted backup, or a lost index: re-index to use it)"
            ));
        }
    }
    let missing_packs: HashSet<ObjectName> = r
        .missing
        .iter()
        .filter_map(|p| p.name.parse::<ObjectName>().ok())
        .filter(|n| n.kind == ObjectKind::Pack)
        .collect();

    // Every blob of every backup.
    let mut missing_blobs: BTreeMap<ChunkId, String> = BTreeMap::new();
    backups.sort_by(|a, b| (a.finished, &a.id).cmp(&(b.finished, &b.id)));
    for b in &backups {
        r.backups_checked += 1;
        let mut because: BTreeSet<String> = BTreeSet::new();
        let mut note = |id: &ChunkId, because: &mut BTreeSet<String>| match index.get(id) {
            None => {
                missing_blobs
                    .entry(*id)
                    .or_insert_with(|| format!("used by backup {} but in no index", b.id));
                because.insert(format!("blob {id} (in no index)"));
                false
            }
            Some(loc) => {
                let pack = index.pack_name(loc.pack);
                if damaged.contains(&pack) {
                    because.insert(format!("{pack} (damaged)"));
                    false
                } else if missing_packs.contains(&pack) || !present.contains(&pack) {
                    because.insert(format!("{pack} (missing)"));
                    false
                } else {
                    true
                }
            }
        };
        let mut split = LineSplitter::default();
        let mut manifest_ok = true;
        for t in &b.tree {
            if !note(t, &mut because) {
                manifest_ok = false;
                break;
            }
            match read_blob(store, repo, &index, t).await {
                Ok(bytes) => match split.feed(&bytes) {
                    Ok(entries) => {
                        for e in entries {
                            for c in &e.chunks {
                                note(c, &mut because);
                            }
                        }
                    }
                    Err(e) => {
                        because.insert(format!("its manifest is unreadable: {e}"));
                        manifest_ok = false;
                        break;
                    }
                },
                Err(e) => {
                    because.insert(format!("its manifest is unreadable: {e}"));
                    manifest_ok = false;
                    break;
                }
            }
        }
        if manifest_ok && split.finish().is_err() {
            because.insert("its manifest is truncated".into());
        }
        if !because.is_empty() {
            r.affected_backups.push(AffectedBackup {
                id: b.id.clone(),
                label: b.label.clone(),
                because: because.into_iter().take(20).collect(),
            });
        }
    }
    for (id, why) in missing_blobs {
        r.missing.push(problem(format!("blob {id}"), why));
    }
    r.damaged.sort();
    r.missing.sort();
    r
}

/// Why `check` could not read a blob.
#[derive(Debug, thiserror::Error)]
enum BlobError {
    #[error("blob {0} is in no index")]
    NotIndexed(ChunkId),
    #[error(transparent)]
    Store(#[from] crate::StoreError),
    #[error(transparent)]
    Open(#[from] crate::RepoError),
    #[error("blob {id} in {pack} does not match its id")]
    Mismatch { id: ChunkId, pack: ObjectName },
}

async fn read_blob(
    store: &dyn ObjectStore,
    repo: &Repository,
    index: &Index,
    id: &ChunkId,
) -> Result<Vec<u8>, BlobError> {
    let loc = index.get(id).ok_or(BlobError::NotIndexed(*id))?;
    let pack = index.pack_name(loc.pack);
    let env = store.get_range(&pack, loc.offset as u64..loc.offset as u64 + loc.length as u64).await?;
    let plain = repo.keys().open_named(&env, format_args!("blob {id} in {pack}"))?;
    if repo.keys().chunk_id(&plain) != *id {
        return Err(BlobError::Mismatch { id: *id, pack });
    }
    Ok(plain)
}
