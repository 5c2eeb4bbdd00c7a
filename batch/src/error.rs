//! The batch crate's errors.

pub use tandem_common::ErrorKind;

/// Errors of the batch layer. What fails in DataFusion, arrow, Parquet, the object store or
/// JSON is the lake's, and is kept as the SQL crate's error ([`Error::Sql`]), whose kinds it
/// takes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A cutoff, option or input is wrong.
    #[error("{0}")]
    User(String),
    /// The lake: its DataFusion session, a snapshot file, the object store.
    #[error(transparent)]
    Sql(#[from] tandem_sql::Error),
    /// Training failed.
    #[error("models: {0}")]
    Models(#[from] tandem_models::Error),
    /// An error of the common crate (the lake, config).
    #[error(transparent)]
    Common(#[from] tandem_common::Error),
    /// An invariant was broken.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The lake's failures reach the batch as the SQL crate's error.
macro_rules! via_sql {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Error {
                Error::Sql(e.into())
            }
        }
    )*};
}

via_sql!(
    datafusion::error::DataFusionError,
    datafusion::arrow::error::ArrowError,
    datafusion::parquet::errors::ParquetError,
    object_store::Error,
    serde_json::Error
);

impl Error {
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::User(_) => ErrorKind::User,
            Error::Sql(e) => e.kind(),
            Error::Common(e) => e.kind(),
            Error::Models(e) => e.kind(),
            Error::Internal(_) => ErrorKind::Internal,
        }
    }
}

/// The batch crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
