//! The stream crate's errors.

pub use tandem_common::ErrorKind;

/// Errors of the bus and the speed layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bus URL or option is wrong.
    #[error("{0}")]
    Config(String),
    /// Local I/O failed.
    #[error("bus i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The bus failed: its files, its server, its records ([`tandem_common::bus::Error`]).
    #[error(transparent)]
    Bus(#[from] tandem_common::bus::Error),
    /// A background task failed.
    #[error("internal error: {0}")]
    Internal(String),
    /// An error of the common crate (the online store, the lake, events).
    #[error(transparent)]
    Common(#[from] tandem_common::Error),
    /// A task gave up on `what` because a stop was asked for.
    #[error("stopped before it could {0}")]
    Stopped(String),
    /// The named task failed.
    #[error("{0}: {1}")]
    Task(String, Box<Error>),
}

impl Error {
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Config(_) => ErrorKind::User,
            Error::Io(_) => ErrorKind::External,
            Error::Bus(e) => e.kind(),
            Error::Internal(_) => ErrorKind::Internal,
            Error::Common(e) => e.kind(),
            Error::Stopped(_) => ErrorKind::Internal,
            Error::Task(_, e) => e.kind(),
        }
    }

    /// True when retrying may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind() == ErrorKind::External
    }

    /// True when the online store refused the data itself ([`tandem_common::Error::Rejected`]).
    pub fn is_rejected(&self) -> bool {
        match self {
            Error::Common(tandem_common::Error::Rejected(_)) => true,
            Error::Task(_, e) => e.is_rejected(),
            _ => false,
        }
    }
}

/// The stream crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_common::bus::Error as BusError;

    /// A backend's error keeps its kind, and so whether the speed layer retries it, when it
    /// becomes the stream's.
    #[test]
    fn a_bus_error_keeps_its_kind() {
        let cases = [
            BusError::Config("bad url".into()),
            BusError::Corrupt("torn segment".into()),
            BusError::Io(std::io::Error::other("disk")),
            BusError::Bus("SPU gone".into()),
            BusError::Internal("gap".into()),
        ];
        for e in cases {
            let (kind, retryable, text) = (e.kind(), e.is_retryable(), e.to_string());
            let s = Error::from(e);
            assert_eq!((s.kind(), s.is_retryable()), (kind, retryable), "{text}");
            assert_eq!(s.to_string(), text);
        }
    }
}
