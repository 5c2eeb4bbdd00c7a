//! The event bus: a partitioned, append-only log keyed by `user_id`, read from stored positions.
//!
//! [`Bus`] is what the serving layer produces to and the speed layer and the archiver consume
//! from. Backends: [`local`] (`local://PATH`, embedded and file-backed, for one machine) and
//! [`fluvio`] (`fluvio://HOST:PORT/TOPIC`, a Fluvio cluster). Every backend must pass the same
//! [`conformance`] suite.
//!
//! Partitioning is Tandem's, not the backend's: [`partition_for`] (FNV-1a of the key, modulo
//! the partition count) so that one user's events land in the same partition on every backend.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{Error, Result};

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod fluvio;
pub mod local;

/// A record read from the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its partition.
    pub partition: u32,
    /// Its offset in the partition: 0, 1, 2, … with no gaps.
    pub offset: u64,
    /// When the bus appended it, epoch ms.
    pub timestamp_ms: i64,
    /// The key (a `user_id`).
    pub key: Bytes,
    /// The value (an event's JSON).
    pub value: Bytes,
}

/// Where a produced record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// The partition.
    pub partition: u32,
    /// The offset.
    pub offset: u64,
}

/// A partitioned log.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// The number of partitions.
    fn partitions(&self) -> u32;

    /// Appends records (key, value); each goes to [`partition_for`] its key, and records of one
    /// key keep their order. Returns each record's position, in input order, once the records
    /// are durable as the backend defines it. At least once: on error, some may have landed.
    async fn produce(&self, records: Vec<(Bytes, Bytes)>) -> Result<Vec<Position>>;

    /// Up to `max` records of `partition` from `offset` on, in offset order. When there are none
    /// yet, waits up to `wait` for some to arrive; an empty answer is not an error.
    async fn fetch(
        &self,
        partition: u32,
        offset: u64,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Record>>;

    /// The offset the next record of `partition` will get.
    async fn end_offset(&self, partition: u32) -> Result<u64>;

    /// The stored position of consumer `group` on `partition`: the next offset to read.
    async fn committed(&self, group: &str, partition: u32) -> Result<Option<u64>>;

    /// Stores the position of consumer `group` on `partition`.
    async fn commit(&self, group: &str, partition: u32, next_offset: u64) -> Result<()>;
}

/// The partition of `key` among `partitions`: FNV-1a 64 of the key bytes, modulo the count.
/// Stable across versions and backends.
pub fn partition_for(key: &[u8], partitions: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % partitions.max(1) as u64) as u32
}

/// Opens the bus at `url` with `partitions` partitions: `local://PATH[?fsync=always|never]`
/// (the embedded log) or `fluvio://HOST:PORT/TOPIC` (a Fluvio cluster; the topic is created
/// when missing).
pub async fn open(url: &str, partitions: u32) -> Result<Arc<dyn Bus>> {
    match url.split_once("://") {
        Some(("local", _)) => Ok(Arc::new(local::LocalBus::open_url(url, partitions)?)),
        Some(("fluvio", _)) => Ok(Arc::new(fluvio::FluvioBus::connect(url, partitions).await?)),
        _ => Err(Error::Config(format!(
            "bus `{url}`: expected local://PATH or fluvio://HOST:PORT/TOPIC"
        ))),
    }
}
