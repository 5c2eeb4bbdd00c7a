//! Running the per-partition loops: named tasks that stop together, and retries of what may
//! succeed on a second try.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::bus::Bus;
use crate::error::{Error, Result};

/// Named tasks sharing one cancellation token: when one fails, the others are cancelled, and
/// [`join`](Tasks::join) returns the first failure.
pub struct Tasks {
    set: JoinSet<(String, Result<()>)>,
    token: CancellationToken,
}

impl Tasks {
    /// Tasks stopped when `parent` is cancelled (or when one of them fails).
    pub fn new(parent: CancellationToken) -> Tasks {
        Tasks {
            set: JoinSet::new(),
            token: parent.child_token(),
        }
    }

    /// The token the tasks watch.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Spawns `f(token)` as the task `name`.
    pub fn spawn<F, Fut>(&mut self, name: String, f: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        let fut = f(self.token.clone());
        self.set.spawn(async move { (name, fut.await) });
    }

    /// Waits for every task. A task stopped by cancellation counts as done.
    pub async fn join(mut self) -> Result<()> {
        let mut first: Option<Error> = None;
        while let Some(joined) = self.set.join_next().await {
            let failure = match joined {
                Ok((_, Ok(()))) | Ok((_, Err(Error::Stopped(_)))) => continue,
                Ok((name, Err(e))) => {
                    error!(task = %name, error = %e, "Task failed; stopping the others.");
                    Error::Task(name, Box::new(e))
                }
                Err(e) => Error::Internal(format!("a task panicked: {e}")),
            };
            self.token.cancel();
            first.get_or_insert(failure);
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
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
