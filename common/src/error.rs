//! The crate's error type, and the error kinds every Tandem crate shares.

use std::fmt;

/// What kind of failure an error is, so that callers retry only what can succeed and the
/// HTTP layer can map failures to status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input or the configuration is wrong; retrying the same request cannot succeed.
    User,
    /// A dependency (object store, bus, online store) failed; retrying may succeed.
    External,
    /// A bug or a broken invariant inside Tandem.
    Internal,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::User => "user",
            ErrorKind::External => "external",
            ErrorKind::Internal => "internal",
        })
    }
}

/// Errors of the common crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value, URL or flag is wrong.
    #[error("{0}")]
    Config(String),
    /// Input data (an event, a file) is wrong.
    #[error("{0}")]
    Input(String),
    /// The object store failed.
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    /// Arrow failed (a schema or array mismatch: a bug, since Tandem builds its own batches).
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// Parquet encoding or decoding failed.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// Local I/O failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// JSON that Tandem wrote itself could not be read back.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// A dependency (the online store) failed; retrying may succeed.
    #[error("{0}")]
    External(String),
    /// The online store refused this data (a script error, a key of the wrong type, keys in
    /// several cluster slots): retrying the same data cannot succeed, so the consumer sets it
    /// aside (the dead-letter) and moves on.
    #[error("{0}")]
    Rejected(String),
    /// An invariant was broken.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Config(_) | Error::Input(_) | Error::Rejected(_) => ErrorKind::User,
            Error::ObjectStore(object_store::Error::NotFound { .. }) => ErrorKind::User,
            Error::ObjectStore(_) | Error::Io(_) | Error::External(_) => ErrorKind::External,
            Error::Arrow(_) | Error::Parquet(_) | Error::Json(_) | Error::Internal(_) => {
                ErrorKind::Internal
            }
        }
    }

    /// True when retrying the same operation may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind() == ErrorKind::External
    }
}

/// The common crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
