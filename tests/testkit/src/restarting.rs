//! [`RestartingRedis`]: a real Redis that loses its data at a chosen moment.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use super::RedisServer;
use tandem_common::error::Result;
use tandem_common::store::{
    ApplyCounts, LeaseOp, LeaseState, OnlineStore, Pointer, RedisStore, SpeedEvent, SpeedState,
};

/// When a [`RestartingRedis`] restarts its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartAfter {
    /// Right after the nth `put` (writes of snapshot rows).
    Put(u64),
    /// Right after the nth `apply` (the speed layer's batches).
    Apply(u64),
}

/// A [`RedisStore`] whose server is killed (SIGKILL) and started again empty on the same port —
/// a Redis without persistence restarted — once, right after the call [`RestartAfter`] names.
#[derive(Debug)]
pub struct RestartingRedis {
    inner: RedisStore,
    server: Mutex<RedisServer>,
    when: RestartAfter,
    puts: AtomicU64,
    applies: AtomicU64,
}

impl RestartingRedis {
    /// Connects to `server`, which it owns from now on.
    pub async fn new(server: RedisServer, when: RestartAfter) -> RestartingRedis {
        RestartingRedis {
            inner: RedisStore::connect(&server.url())
                .await
                .expect("connect to the test's redis-server"),
            server: Mutex::new(server),
            when,
            puts: AtomicU64::new(0),
            applies: AtomicU64::new(0),
        }
    }

    /// Restarts the server now (empty).
    pub fn restart(&self) {
        self.server.lock().expect("server lock").restart();
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.server.lock().expect("server lock").port()
    }

    /// How many `put` calls were made.
    pub fn puts(&self) -> u64 {
        self.puts.load(Ordering::SeqCst)
    }

    /// Counts a call on `counter`; restarts the server when it is the `at`th.
    fn after(&self, counter: &AtomicU64, at: Option<u64>) {
        if at == Some(counter.fetch_add(1, Ordering::SeqCst) + 1) {
            self.restart();
        }
    }
}

#[async_trait]
impl OnlineStore for RestartingRedis {
    async fn put(&self, rows: &[(String, Bytes)]) -> Result<()> {
        let r = self.inner.put(rows).await;
        let at = match self.when {
            RestartAfter::Put(n) => Some(n),
            RestartAfter::Apply(_) => None,
        };
        self.after(&self.puts, at);
        r
    }
    async fn copy(&self, pairs: &[(String, String)]) -> Result<Vec<bool>> {
        self.inner.copy(pairs).await
    }
    async fn get(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>> {
        self.inner.get(keys).await
    }
    async fn pointer(&self) -> Result<Option<Pointer>> {
        self.inner.pointer().await
    }
    async fn flip(&self, expected: Option<&Pointer>, new: &Pointer) -> Result<bool> {
        self.inner.flip(expected, new).await
    }
    async fn drop_snapshots_older(&self, keep: &str) -> Result<u64> {
        self.inner.drop_snapshots_older(keep).await
    }
    async fn lease(&self, name: &str, op: LeaseOp, owner: &str, ttl_ms: u64) -> Result<LeaseState> {
        self.inner.lease(name, op, owner, ttl_ms).await
    }
    async fn drop_epochs_before(&self, cutoff_ms: i64) -> Result<u64> {
        self.inner.drop_epochs_before(cutoff_ms).await
    }
    async fn apply(&self, log: &str, events: &[SpeedEvent<'_>]) -> Result<ApplyCounts> {
        let r = self.inner.apply(log, events).await;
        let at = match self.when {
            RestartAfter::Apply(n) => Some(n),
            RestartAfter::Put(_) => None,
        };
        self.after(&self.applies, at);
        r
    }
    async fn speed(&self, user: &str, from_epoch_ms: i64) -> Result<SpeedState> {
        self.inner.speed(user, from_epoch_ms).await
    }
    async fn erase_user(&self, user: &str, at_ms: i64, snapshots: &[String]) -> Result<u64> {
        self.inner.erase_user(user, at_ms, snapshots).await
    }
    async fn note_erasure(&self, user: &str, at_ms: i64) -> Result<()> {
        self.inner.note_erasure(user, at_ms).await
    }
}
