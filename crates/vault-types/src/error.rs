//! Errors with two audiences: the log, which gets the whole story (`Display` and the source
//! chain), and the person on the other side of an API or CLI, who gets what failed and what to
//! do, without the service's internals (paths on the vault host, backend messages, addresses).
//! The split follows neon's `UserFacingError`.

/// An error that knows what may be told to the user.
pub trait UserFacing: std::error::Error {
    /// What the user is told. By default the whole `Display`: override it where that names
    /// internals.
    fn user_message(&self) -> String {
        self.to_string()
    }
}
