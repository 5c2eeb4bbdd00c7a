//! The one task supervisor of every Tandem process: named tasks that stop together.
//!
//! [`Tasks`] spawns each long-running part of a process (a partition's consumer, the snapshot
//! follower, an HTTP listener) under one cancellation token. When one fails or panics, the
//! others are cancelled, and [`Tasks::join`] waits for all of them and returns the first
//! failure with the task's name; a task that returns because a stop was asked for is done, not
//! failed. `tandem stream run`, `tandem serve` and `tandem demo` all run on it.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use tandem_common::task::{TaskFailure, Tasks};
//! use tokio_util::sync::CancellationToken;
//!
//! let mut tasks: Tasks<String> = Tasks::new(&CancellationToken::new());
//! tasks.spawn("waits for the stop", |stop| async move {
//!     stop.cancelled().await;
//!     Ok(())
//! });
//! tasks.spawn("fails", |_| async { Err("disk full".to_string()) });
//! match tasks.join().await {
//!     Err(TaskFailure::Failed { task, error }) => assert_eq!((task.as_str(), error.as_str()), ("fails", "disk full")),
//!     other => panic!("{other:?}"),
//! }
//! # });
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;

use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;

/// Why [`Tasks::join`] failed: the first task that failed, or panicked.
#[derive(Debug)]
pub enum TaskFailure<E> {
    /// `task` returned `error`.
    Failed {
        /// The task's name.
        task: String,
        /// What it returned.
        error: E,
    },
    /// `task` panicked (or was aborted).
    Panicked {
        /// The task's name.
        task: String,
        /// The panic's message.
        message: String,
    },
}

impl<E: fmt::Display> fmt::Display for TaskFailure<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskFailure::Failed { task, error } => write!(f, "{task}: {error}"),
            TaskFailure::Panicked { task, message } => write!(f, "{task} panicked: {message}"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for TaskFailure<E> {}

/// Named tasks sharing one cancellation token (a child of the process's): when one fails, the
/// others are cancelled.
pub struct Tasks<E> {
    set: JoinSet<Result<(), E>>,
    names: HashMap<Id, String>,
    token: CancellationToken,
    stopped: fn(&E) -> bool,
}

impl<E> fmt::Debug for Tasks<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tasks")
            .field("tasks", &self.names.values().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl<E: fmt::Display + Send + 'static> Tasks<E> {
    /// Tasks stopped when `parent` is cancelled (or when one of them fails).
    pub fn new(parent: &CancellationToken) -> Tasks<E> {
        Tasks {
            set: JoinSet::new(),
            names: HashMap::new(),
            token: parent.child_token(),
            stopped: |_| false,
        }
    }

    /// Errors for which `stopped` is true mean "gave up because a stop was asked for": such a
    /// task counts as done.
    pub fn stopped_when(mut self, stopped: fn(&E) -> bool) -> Tasks<E> {
        self.stopped = stopped;
        self
    }

    /// The token the tasks watch: cancelled by the parent's, or when a task fails.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Spawns `f(token)` as the task `name`.
    pub fn spawn<F, Fut>(&mut self, name: impl Into<String>, f: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
    {
        let handle = self.set.spawn(f(self.token.clone()));
        self.names.insert(handle.id(), name.into());
    }

    /// How many tasks are still running or not yet joined.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// True when no task is left.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Waits for every task; the first failure cancels the others and is returned once all
    /// have stopped.
    pub async fn join(mut self) -> Result<(), TaskFailure<E>> {
        let mut first = None;
        while let Some(joined) = self.set.join_next_with_id().await {
            let failure = match joined {
                Ok((_, Ok(()))) => continue,
                Ok((_, Err(e))) if (self.stopped)(&e) => continue,
                Ok((id, Err(error))) => {
                    let task = self.names.remove(&id).unwrap_or_default();
                    tracing::error!(task = %task, error = %error, "Task failed; stopping the others.");
                    TaskFailure::Failed { task, error }
                }
                Err(e) => {
                    let task = self.names.remove(&e.id()).unwrap_or_default();
                    let message = match e.try_into_panic() {
                        Ok(p) => p
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| p.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "(no message)".into()),
                        Err(e) => e.to_string(),
                    };
                    tracing::error!(task = %task, message = %message, "Task panicked; stopping the others.");
                    TaskFailure::Panicked { task, message }
                }
            };
            self.token.cancel();
            first.get_or_insert(failure);
        }
        first.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_stops_the_others_and_is_named() {
        let parent = CancellationToken::new();
        let mut tasks: Tasks<String> = Tasks::new(&parent);
        tasks.spawn("follower", |stop| async move {
            stop.cancelled().await;
            Ok(())
        });
        tasks.spawn("listener", |_| async { panic!("bound twice") });
        match tasks.join().await {
            Err(TaskFailure::Panicked { task, message }) => {
                assert_eq!(
                    (task.as_str(), message.as_str()),
                    ("listener", "bound twice")
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(
            !parent.is_cancelled(),
            "the parent's token is not the tasks' to cancel"
        );
    }

    #[tokio::test]
    async fn a_stopped_task_is_done_and_the_parent_stops_all() {
        let parent = CancellationToken::new();
        let mut tasks: Tasks<String> =
            Tasks::new(&parent).stopped_when(|e: &String| e == "stopped");
        for name in ["a", "b"] {
            tasks.spawn(name, |stop| async move {
                stop.cancelled().await;
                Err("stopped".to_string())
            });
        }
        assert_eq!(tasks.len(), 2);
        parent.cancel();
        assert!(tasks.join().await.is_ok());
    }
}
