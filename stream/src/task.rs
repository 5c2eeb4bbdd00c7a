//! Running the per-partition loops: the process's task supervisor with the stream's error, and
//! retries of what may succeed on a second try.

use std::future::Future;
use std::time::Duration;

use tandem_common::task::TaskFailure;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::bus::Bus;
use crate::error::{Error, Result};

/// The stream's tasks: [`tandem_common::task::Tasks`] with the stream's error, a task that
/// gave up because a stop was asked for ([`Error::Stopped`]) counting as done.
pub struct Tasks(tandem_common::task::Tasks<Error>);

impl Tasks {
    /// Tasks stopped when `parent` is cancelled (or when one of them fails).
    pub fn new(parent: CancellationToken) -> Tasks {
        Tasks(
            tandem_common::task::Tasks::new(&parent)
                .stopped_when(|e| matches!(e, Error::Stopped(_))),
        )
    }

    /// The token the tasks watch.
    pub fn token(&self) -> CancellationToken {
        self.0.token()
    }

    /// Spawns `f(token)` as the task `name`.
    pub fn spawn<F, Fut>(&mut self, name: String, f: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        self.0.spawn(name, f)
    }

    /// Waits for every task; returns the first failure, named.
    pub async fn join(self) -> Result<()> {
        self.0.join().await.map_err(|f| match f {
            TaskFailure::Failed { task, error } => Error::Task(task, Box::new(error)),
            TaskFailure::Panicked { task, message } => {
                Error::Internal(format!("{task} panicked: {message}"))
            }
        })
    }
}

/// Runs `f` until it succeeds, retrying errors that may succeed later (external ones) with a
/// growing pause (100 ms to 5 s). Gives up with [`Error::Stopped`] when `stop` is cancelled
/// during a pause, and at once on any other error.
pub async fn retry<T, E, F, Fut>(stop: &CancellationToken, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, E>>,
    E: Into<Error>,
{
    let mut pause = Duration::from_millis(100);
    loop {
        let e: Error = match f().await {
            Ok(v) => return Ok(v),
            Err(e) => e.into(),
        };
        if !e.is_retryable() {
            return Err(e);
        }
        warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "Could not {what}; retrying.");
        tokio::select! {
            biased;
            _ = stop.cancelled() => return Err(Error::Stopped(what.to_string())),
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// The partitions to consume: `wanted`, checked against the bus, or all when empty.
pub fn partitions(bus: &dyn Bus, wanted: &[u32]) -> Result<Vec<u32>> {
    let n = bus.partitions();
    if wanted.is_empty() {
        return Ok((0..n).collect());
    }
    if let Some(bad) = wanted.iter().find(|p| **p >= n) {
        return Err(Error::Config(format!(
            "partition {bad} does not exist: the bus has partitions 0..{}",
            n - 1
        )));
    }
    let mut v = wanted.to_vec();
    v.sort_unstable();
    v.dedup();
    Ok(v)
}
