//! The event bus's contract: a partitioned, append-only log keyed by `user_id`, read from
//! stored positions.
//!
//! [`Bus`] is what the serving layer produces to and the speed layer and the archiver consume
//! from; it lives here, beside the event's wire format ([`crate::event`]), so that a producer
//! needs no consumer code. The backends (`local://`, `fluvio://`) and the conformance suite
//! every backend passes are in the stream crate (`tandem_stream::bus`).
//!
//! Partitioning is Tandem's, not the backend's: [`partition_for`] (FNV-1a of the key, modulo
//! the partition count) so that one user's events land in the same partition on every backend.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::ErrorKind;

/// Errors of a bus backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bus URL or option is wrong.
    #[error("{0}")]
    Config(String),
    /// The bus's files are not what they should be (another partition count, a damaged sealed segment).
    #[error("bus data: {0}")]
    Corrupt(String),
    /// Local I/O failed.
    #[error("bus i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The bus's server (Fluvio) failed or could not be reached.
    #[error("{0}")]
    Bus(String),
    /// An invariant was broken (a record out of place, a background task gone).
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Config(_) => ErrorKind::User,
            Error::Io(_) | Error::Bus(_) => ErrorKind::External,
            Error::Corrupt(_) | Error::Internal(_) => ErrorKind::Internal,
        }
    }

    /// True when retrying may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind() == ErrorKind::External
    }
}

/// A bus backend's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

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

    /// The identity of `partition`'s log: the same for as long as the log lives, another once
    /// it is deleted and created again (its offsets then start from 0 again). `None` while the
    /// partition has no record (a backend may need one to tell). The speed layer keeps it
    /// beside each user's offset and the archiver in its file names, so that a new log's
    /// offsets are never taken for the old one's.
    async fn log_id(&self, partition: u32) -> Result<Option<String>>;

    /// The stored position of consumer `group` on `partition`: the next offset to read.
    async fn committed(&self, group: &str, partition: u32) -> Result<Option<u64>>;

    /// Stores the position of consumer `group` on `partition`: 0, or one past a record the
    /// partition holds (a backend may refuse a position past its end).
    async fn commit(&self, group: &str, partition: u32, next_offset: u64) -> Result<()>;
}

/// Checks that `records` are exactly the records of `partition` from offset `from` on, with no
/// gap: what a consumer checks before it acts on a fetch, so that it never stores a position
/// past a record it was not handed (whatever a backend's client library does).
pub fn check_contiguous(partition: u32, from: u64, records: &[Record]) -> Result<()> {
    for (i, r) in records.iter().enumerate() {
        let want = from + i as u64;
        if r.partition != partition || r.offset != want {
            return Err(Error::Internal(format!(
                "the bus handed out record {}/{} where {partition}/{want} was due",
                r.partition, r.offset
            )));
        }
    }
    Ok(())
}

/// The partition of `key` among `partitions`: FNV-1a 64 of the key bytes, modulo the count.
/// Stable across versions and backends.
pub fn partition_for(key: &[u8], partitions: u32) -> u32 {
    (fnv1a(&[key]) % partitions.max(1) as u64) as u32
}

/// FNV-1a 64 of the concatenation of `parts`.
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in parts.iter().flat_map(|p| p.iter()) {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// How a bus is opened: `[bus]` of the configuration. The partition count applies to every
/// backend; the rest to Fluvio.
#[derive(Debug, Clone)]
pub struct BusOptions {
    /// Partitions of the topic (a topic that exists must have as many).
    pub partitions: u32,
    /// Replicas of each partition when the topic is created.
    pub replication: u32,
    /// How long the producer waits to batch records sent at once by concurrent callers.
    pub linger: Duration,
    /// How long a produce may wait for the cluster's acknowledgement before failing.
    pub produce_timeout: Duration,
    /// TLS to the cluster.
    pub tls: BusTls,
    /// The most bytes a consumer stream takes in one answer (Fluvio): memory per partition
    /// read against answers cut less often (at least twice the largest produce batch).
    pub fetch_bytes: usize,
}

/// TLS to a Fluvio cluster.
#[derive(Debug, Clone, PartialEq)]
pub enum BusTls {
    /// Plaintext.
    Disabled,
    /// TLS without checking the server's certificate (a server that allows anonymous TLS).
    Anonymous,
    /// TLS with the server's certificate checked against `ca_cert` for `domain`, and a client
    /// certificate.
    Verified {
        /// The name the server's certificate must carry.
        domain: String,
        /// The CA certificate (PEM).
        ca_cert: PathBuf,
        /// The client certificate (PEM).
        cert: PathBuf,
        /// The client key (PEM).
        key: PathBuf,
    },
}

impl BusOptions {
    /// The defaults, with `partitions`.
    pub fn new(partitions: u32) -> BusOptions {
        BusOptions {
            partitions,
            replication: 1,
            linger: Duration::ZERO,
            produce_timeout: Duration::from_secs(10),
            tls: BusTls::Disabled,
            fetch_bytes: 8 << 20,
        }
    }

    /// The options of `[bus]`.
    pub fn from_config(c: &crate::config::BusConfig) -> BusOptions {
        use crate::config::BusTlsMode;
        let t = &c.tls;
        BusOptions {
            partitions: c.partitions,
            replication: c.replication,
            linger: c.linger,
            // An event must reach the bus within max_produce_delay of its ingest time.
            produce_timeout: c.produce_timeout.min(c.max_produce_delay),
            fetch_bytes: (c.fetch_mib as usize) << 20,
            tls: match t.mode {
                BusTlsMode::Disabled => BusTls::Disabled,
                BusTlsMode::Anonymous => BusTls::Anonymous,
                BusTlsMode::Verified => BusTls::Verified {
                    domain: t.domain.clone(),
                    ca_cert: t.ca_cert.clone(),
                    cert: t.cert.clone(),
                    key: t.key.clone(),
                },
            },
        }
    }
}
