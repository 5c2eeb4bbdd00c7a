//! The batch crate's errors.

pub use tandem_common::ErrorKind;

/// Errors of the batch layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A cutoff, option or input is wrong.
    #[error("{0}")]
    User(String),
    /// DataFusion failed (a query over the lake).
    #[error("datafusion: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// Arrow failed.
    #[error("arrow: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    /// The object store failed.
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    /// Parquet encoding or decoding of a snapshot file failed.
    #[error("parquet: {0}")]
    Parquet(#[from] datafusion::parquet::errors::ParquetError),
    /// JSON of a snapshot file or store row failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// Training failed.
    #[error("models: {0}")]
    Models(#[from] tandem_models::Error),
    /// The lake's DataFusion session or the snapshot reader failed.
    #[error(transparent)]
    Sql(#[from] tandem_sql::Error),
    /// An error of the common crate (the lake, config).
    #[error(transparent)]
    Common(#[from] tandem_common::Error),
    /// An invariant was broken.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::User(_) => ErrorKind::User,
            Error::ObjectStore(_) => ErrorKind::External,
            Error::Common(e) => e.kind(),
            Error::Models(e) => e.kind(),
            Error::Sql(e) => e.kind(),
            Error::DataFusion(_)
            | Error::Arrow(_)
            | Error::Parquet(_)
            | Error::Json(_)
            | Error::Internal(_) => ErrorKind::Internal,
        }
    }
}

/// The batch crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
