//! PostgreSQL v3 wire protocol, client side, sans-IO, with the physical replication
//! sub-protocol (`IDENTIFY_SYSTEM`, slots, `START_REPLICATION`, `BASE_BACKUP`).
//!
//! The core is bytes in, values out: [`message::Decoder`] frames backend messages,
//! [`message::frontend`] encodes requests, [`auth::Authenticator`] answers SCRAM-SHA-256 / md5 /
//! password requests, [`replication`] builds commands and parses their results and the
//! streaming messages, [`basebackup::BaseBackupStream`] turns a `BASE_BACKUP` response into
//! archive and manifest events. The `tokio` feature adds [`conn::ReplicationConnection`],
//! which drives all of that over a Unix socket or TCP (optionally TLS).
//!
//! ```
//! use pgproto::replication::{commands, ReplicationMessage};
//! let cmd = commands::start_replication(Some("holdfast"), "0/3000000".parse().unwrap(), None).unwrap();
//! assert_eq!(cmd, "START_REPLICATION SLOT \"holdfast\" PHYSICAL 0/3000000");
//! let keepalive = bytes::Bytes::from_static(b"k\0\0\0\0\x03\0\0\0\0\0\0\0\0\0\0\0\x01");
//! assert!(matches!(ReplicationMessage::parse(&keepalive).unwrap(),
//!     ReplicationMessage::PrimaryKeepalive(k) if k.reply_requested));
//! ```
//!
//! Architecture invariant: without the `tokio` feature this crate does no IO and pulls in
//! no async runtime.

pub mod auth;
pub mod basebackup;
#[cfg(feature = "tokio")]
pub mod conn;
pub mod message;
pub mod replication;

pub use message::{BackendMessage, ServerError};

/// What can go wrong talking to PostgreSQL. Messages are written for the person running
/// holdfast: what failed, why, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server rejected the password (SQLSTATE 28P01).
    #[error("authentication failed for user {user:?}: check the password in {password_source}")]
    AuthFailed {
        /// The role name.
        user: String,
        /// Where the password came from, e.g. "the vault's source configuration".
        password_source: String,
    },
    /// The server asked for a password and none was configured.
    #[error("the server asks for a password for user {user:?} but none was given")]
    PasswordRequired {
        /// The role name.
        user: String,
    },
    /// The server offered an authentication method this client does not speak.
    #[error("unsupported authentication method: {0}")]
    UnsupportedAuth(String),
    /// The host, port or socket could not be reached.
    #[error(
        "cannot reach PostgreSQL at {target}: {source}: check that the server is running and the address is right"
    )]
    Unreachable {
        /// The address or socket path tried.
        target: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The role may log in but not start a WAL sender.
    #[error("role {user:?} lacks the REPLICATION attribute: run ALTER ROLE {user} REPLICATION")]
    NoReplicationPrivilege {
        /// The role name.
        user: String,
    },
    /// The server is older than PostgreSQL 14.
    #[error("PostgreSQL {version} is too old: holdfast needs PostgreSQL 14 or later")]
    ServerTooOld {
        /// `server_version` as reported.
        version: String,
    },
    /// A replication slot named in a command does not exist.
    #[error(
        "replication slot {slot:?} does not exist: create it first (CREATE_REPLICATION_SLOT or pg_create_physical_replication_slot)"
    )]
    SlotNotFound {
        /// The slot name.
        slot: String,
    },
    /// Any other ErrorResponse from the server.
    #[error("server error: {0}")]
    Server(ServerError),
    /// TLS could not be set up.
    #[error("TLS: {0}")]
    Tls(String),
    /// The server sent something this client does not understand.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// A caller passed a value that cannot be sent (bad slot name, NUL in a string…).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The connection ended.
    #[error("connection to PostgreSQL closed unexpectedly")]
    Closed,
    /// The server ended the WAL stream itself (CommandComplete while streaming): it is
    /// shutting down cleanly, or a switchover is under way.
    #[error(
        "the server ended the WAL stream (it is shutting down, or a switchover is under way); reconnecting"
    )]
    StreamEnded,
    /// Reading or writing the connection failed.
    #[error("connection to PostgreSQL failed: {0}")]
    Io(#[from] std::io::Error),
    /// Connecting took too long.
    #[error("connecting to PostgreSQL at {0} timed out")]
    Timeout(String),
}

impl Error {
    /// The SQLSTATE of a server error, if this is one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Server(e) => Some(&e.code),
            _ => None,
        }
    }
}

/// Turns an ErrorResponse received during startup into the specific error it means.
pub fn classify_startup_error(e: ServerError, user: &str, password_source: &str) -> Error {
    match e.code.as_str() {
        // invalid_password
        "28P01" => Error::AuthFailed { user: user.to_owned(), password_source: password_source.to_owned() },
        // insufficient_privilege: "must be superuser or replication role to start walsender"
        // (PostgreSQL 14/15) or "permission denied to start WAL sender" (16+).
        "42501" if e.message.contains("walsender") || e.message.contains("WAL sender") => {
            Error::NoReplicationPrivilege { user: user.to_owned() }
        }
        _ => Error::Server(e),
    }
}

/// Turns an ErrorResponse to a slot command into [`Error::SlotNotFound`] when it says so.
pub fn classify_slot_error(e: ServerError, slot: &str) -> Error {
    if e.code == "42704" && e.message.contains("replication slot") {
        Error::SlotNotFound { slot: slot.to_owned() }
    } else {
        Error::Server(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(code: &str, message: &str) -> ServerError {
        ServerError {
            severity: "FATAL".into(),
            code: code.into(),
            message: message.into(),
            ..Default::default()
        }
    }

    #[test]
    fn classifies_errors_with_clear_messages() {
        let e = classify_startup_error(
            err("28P01", "password authentication failed for user \"rep\""),
            "rep",
            "the source configuration",
        );
        assert_eq!(
            e.to_string(),
            "authentication failed for user \"rep\": check the password in the source configuration"
        );
        let e = classify_startup_error(
            err("42501", "must be superuser or replication role to start walsender"),
            "app",
            "",
        );
        assert_eq!(
            e.to_string(),
            "role \"app\" lacks the REPLICATION attribute: run ALTER ROLE app REPLICATION"
        );
        let e = classify_startup_error(err("42501", "permission denied to start WAL sender"), "a", "");
        assert!(matches!(e, Error::NoReplicationPrivilege { .. }));
        let e = classify_startup_error(err("3D000", "database \"x\" does not exist"), "a", "");
        assert_eq!(e.to_string(), "server error: FATAL 3D000: database \"x\" does not exist");
        let e = classify_slot_error(err("42704", "replication slot \"s\" does not exist"), "s");
        assert!(matches!(e, Error::SlotNotFound { .. }));
        assert_eq!(e.sqlstate(), None);
    }
}
