//! `RepoError`: everything that can go wrong above the object store, written for the operator.

use crate::backend::StoreError;
use crate::name::ObjectName;

/// Errors from the repository layer (keys, envelope, packs, index, catalog, backups, restore).
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// The object store refused or failed an operation.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A sealed object or blob did not decrypt: wrong key, or the bytes were altered.
    #[error(
        "cannot open {what}: authentication failed (the bytes were altered, or this is not this repository's key); run `check` to find damaged objects"
    )]
    Tampered { what: String },
    /// A sealed object is structurally invalid (too short, unknown version, bad compression).
    #[error("{what} is malformed: {why}; run `check` to find damaged objects")]
    Malformed { what: String, why: String },
    /// No keys object could be opened with the identities supplied.
    #[error(
        "none of the {identities} identity file(s) given opens any of the {keys} keys object(s) in this repository: supply the vault identity or an escrow identity it was wrapped to"
    )]
    NoMatchingKey { identities: usize, keys: usize },
    /// Wrapping keys failed (for example, no recipient given).
    #[error("cannot wrap the master keys: {0}; give at least one age X25519 recipient (age1…)")]
    Wrap(String),
    /// The store holds no repository.
    #[error("no repository here: the store has no config object; run init first")]
    NotInitialised,
    /// The store already holds a repository.
    #[error("a repository already exists here (config {0}); open it instead of initialising again")]
    AlreadyInitialised(ObjectName),
    /// The store holds more than one config object: someone wrote a second one.
    #[error(
        "the store holds {0} config objects; exactly one is allowed: find out who wrote the extra one before using this repository"
    )]
    AmbiguousConfig(usize),
    /// Randomness was unavailable.
    #[error("the operating system random number generator failed: {0}")]
    Random(String),
    /// A blob named by a manifest or request is in no index.
    #[error("blob {0} is not in any index: the repository is incomplete; run `check`")]
    BlobNotFound(String),
    /// A restored chunk did not hash to its id.
    #[error("blob {id} read from {pack} does not match its id: the pack is damaged; run `check`")]
    ChunkMismatch { id: String, pack: ObjectName },
    /// A chunk of a file being read is damaged or missing (the cause names the object).
    #[error("chunk {chunk} of {file} cannot be read: {cause}")]
    ChunkUnreadable { chunk: String, file: String, cause: String },
    /// No backup with this id.
    #[error("no backup with id {0:?}: list backups to see which exist")]
    NoSuchBackup(String),
    /// A path in a backup or restore request is unsafe or not valid UTF-8.
    #[error("refusing path {0:?}: paths must be relative, UTF-8, without `..`, empty or NUL components")]
    BadPath(String),
    /// A catalog record kind is not a lowercase dotted word.
    #[error("bad catalog record kind {0:?}: use lowercase words separated by dots, e.g. \"token.created\"")]
    BadKind(String),
    /// Local I/O failed (reading input files, writing restored files).
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A background task of the backup pipeline died.
    #[error("backup pipeline failed: {0}")]
    Pipeline(String),
    /// The backup writer was used after an earlier error.
    #[error("this backup writer failed earlier ({0}); start a new backup")]
    Poisoned(String),
}

impl RepoError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> RepoError {
        RepoError::Io { what: what.into(), source }
    }

    pub(crate) fn malformed(what: impl Into<String>, why: impl std::fmt::Display) -> RepoError {
        RepoError::Malformed { what: what.into(), why: why.to_string() }
    }
}

/// What a vault client is told: storage and local I/O failures name their kind, not the
/// vault host's paths, backend addresses or OS messages (those go to the vault's log).
impl vault_types::UserFacing for RepoError {
    fn user_message(&self) -> String {
        match self {
            RepoError::Store(e) => e.user_message(),
            RepoError::Io { .. } => "a local file operation on the vault host failed".into(),
            RepoError::Random(_) => "the vault host's random number generator failed".into(),
            RepoError::Pipeline(_) => "the backup pipeline failed".into(),
            other => other.to_string(),
        }
    }
}
