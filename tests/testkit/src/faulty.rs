//! [`FaultyStore`]: the in-memory online store with failures switched on and off by a test.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use tandem_common::error::{Error, Result};
use tandem_common::store::{
    ApplyCounts, LeaseOp, LeaseState, MemoryStore, OnlineStore, Pointer, SpeedEvent, SpeedState,
};

/// A [`MemoryStore`] whose calls fail on cue: reads while [`reads_down`](Self::reads_down) is
/// set (a Redis gone away: `get`, `pointer`, `speed`, `erase_user`), the speed reads alone while
/// [`speed_down`](Self::speed_down) is set, and writes of snapshot rows (`put`) once
/// [`puts_left`](Self::puts_left) have succeeded (a Redis going away mid-run). The other calls
/// always reach the store.
#[derive(Debug)]
pub struct FaultyStore {
    inner: MemoryStore,
    /// `get`, `pointer`, `speed` and `erase_user` fail while set.
    pub reads_down: AtomicBool,
    /// `speed` fails while set.
    pub speed_down: AtomicBool,
    /// How many more `put`s succeed; `u64::MAX`: all of them.
    pub puts_left: AtomicU64,
}

impl Default for FaultyStore {
    fn default() -> FaultyStore {
        FaultyStore {
            inner: MemoryStore::default(),
            reads_down: AtomicBool::new(false),
            speed_down: AtomicBool::new(false),
            puts_left: AtomicU64::new(u64::MAX),
        }
    }
}

impl FaultyStore {
    /// A store whose `put`s fail after the first `n`.
    pub fn failing_puts_after(n: u64) -> FaultyStore {
        let s = FaultyStore::default();
        s.puts_left.store(n, Ordering::SeqCst);
        s
    }

    /// The store behind the faults.
    pub fn inner(&self) -> &MemoryStore {
        &self.inner
    }

    fn read(&self, speed: bool) -> Result<()> {
        if self.reads_down.load(Ordering::SeqCst)
            || (speed && self.speed_down.load(Ordering::SeqCst))
        {
            return Err(Error::Io(std::io::Error::other("connection refused")));
        }
        Ok(())
    }
}

#[async_trait]
impl OnlineStore for FaultyStore {
    async fn put(&self, rows: &[(String, Bytes)]) -> Result<()> {
        let left = self
            .puts_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| match n {
                0 => None,
                u64::MAX => Some(u64::MAX),
                n => Some(n - 1),
            });
        if left.is_err() {
            return Err(Error::External("injected: connection reset".into()));
        }
        self.inner.put(rows).await
    }
    async fn copy(&self, pairs: &[(String, String)]) -> Result<Vec<bool>> {
        self.inner.copy(pairs).await
    }
    async fn get(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>> {
        self.read(false)?;
        self.inner.get(keys).await
    }
    async fn pointer(&self) -> Result<Option<Pointer>> {
        self.read(false)?;
        self.inner.pointer().await
    }
    async fn flip(&self, expected: Option<&Pointer>, new: &Pointer) -> Result<bool> {
        self.inner.flip(expected, new).await
    }
    async fn lease(&self, name: &str, op: LeaseOp, owner: &str, ttl_ms: u64) -> Result<LeaseState> {
        self.inner.lease(name, op, owner, ttl_ms).await
    }
    async fn note_erasure(&self, user: &str, at_ms: i64) -> Result<()> {
        self.inner.note_erasure(user, at_ms).await
    }
    async fn drop_snapshots_older(&self, keep: &str) -> Result<u64> {
        self.inner.drop_snapshots_older(keep).await
    }
    async fn drop_epochs_before(&self, cutoff_ms: i64) -> Result<u64> {
        self.inner.drop_epochs_before(cutoff_ms).await
    }
    async fn apply(&self, log: &str, events: &[SpeedEvent<'_>]) -> Result<ApplyCounts> {
        self.inner.apply(log, events).await
    }
    async fn speed(&self, user: &str, from_epoch_ms: i64) -> Result<SpeedState> {
        self.read(true)?;
        self.inner.speed(user, from_epoch_ms).await
    }
    async fn erase_user(&self, user: &str, at_ms: i64, snapshots: &[String]) -> Result<u64> {
        self.read(false)?;
        self.inner.erase_user(user, at_ms, snapshots).await
    }
}
