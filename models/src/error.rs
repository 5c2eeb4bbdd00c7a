//! The models crate's errors.

pub use tandem_common::ErrorKind;

/// Errors of training, loading and inference.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// There is not enough data to train (too few users, a single class).
    #[error("{0}")]
    NotEnoughData(String),
    /// A serialised model does not fit this code (feature schema version, feature names).
    #[error("{0}")]
    Incompatible(String),
    /// linfa failed.
    #[error("linfa: {0}")]
    Linfa(String),
    /// A model file is not valid JSON of a model.
    #[error("model json: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotEnoughData(_) | Error::Incompatible(_) => ErrorKind::User,
            Error::Linfa(_) | Error::Json(_) => ErrorKind::Internal,
        }
    }
}

/// The models crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
