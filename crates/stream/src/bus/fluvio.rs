//! `fluvio://HOST:PORT/TOPIC`: the bus on a Fluvio cluster, through the `fluvio` crate.
//!
//! Thin by design: Tandem's partitioning ([`partition_for`]) is installed as the producer's
//! partitioner; records are produced with batching and a short linger, at least once, and their
//! positions returned once the cluster acknowledged them; a fetch reads from a consumer stream
//! kept per partition while reads continue where the last one stopped; consumer positions are
//! Fluvio consumer offsets (named by the group), which store the offset of the last record
//! processed — `committed` answers it plus one. The topic is created with the configured
//! partition count when missing; a topic with another count is refused.
//!
//! The connection is plaintext (Fluvio's `TlsPolicy::Disabled`); a cluster behind TLS is not
//! supported yet. The conformance suite runs against a real cluster when
//! `TANDEM_TEST_FLUVIO=host:port` is set (`tests.rs`).

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fluvio::consumer::{
    ConsumerConfigExtBuilder, ConsumerStream, OffsetManagementStrategy, Record as FluvioRecord,
};
use fluvio::metadata::partition::PartitionSpec;
use fluvio::metadata::topic::TopicSpec;
use fluvio::{
    Fluvio, FluvioClusterConfig, Offset, Partitioner, PartitionerConfig,
    TopicProducerConfigBuilder, TopicProducerPool,
};
use futures::{FutureExt, StreamExt};
use tokio::sync::Mutex;

use super::{Bus, Position, Record, partition_for};
use crate::error::{Error, Result};

/// How long produced records wait to be batched together.
const LINGER: Duration = Duration::from_millis(5);
/// Bytes in one produce batch.
const BATCH_BYTES: usize = 1 << 20;
/// How long storing a position may wait for the record before it.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

type Stream = Box<
    dyn ConsumerStream<Item = std::result::Result<FluvioRecord, fluvio::dataplane::link::ErrorCode>>
        + Send,
>;

/// A bus on a Fluvio topic.
pub struct FluvioBus {
    fluvio: Fluvio,
    topic: String,
    partitions: u32,
    producer: TopicProducerPool,
    /// Per partition: a stream and the offset its next record has.
    streams: Vec<Mutex<Option<(u64, Stream)>>>,
}

fn fluvio_err<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> Error + '_ {
    move |e| Error::Bus(format!("fluvio {what}: {e:#}"))
}

/// Tandem's partitioning as Fluvio's producer partitioner.
struct ByUser;

impl Partitioner for ByUser {
    fn partition(&self, config: &PartitionerConfig, key: Option<&[u8]>, _value: &[u8]) -> u32 {
        partition_for(key.unwrap_or_default(), config.partition_count)
    }
}

impl FluvioBus {
    /// Connects to `fluvio://HOST:PORT/TOPIC`, creating the topic with `partitions` partitions
    /// when it does not exist.
    pub async fn connect(url: &str, partitions: u32) -> Result<FluvioBus> {
        let parsed =
            url::Url::parse(url).map_err(|e| Error::Config(format!("bus `{url}`: {e}")))?;
        let (Some(host), Some(topic)) = (
            parsed.host_str(),
            Some(parsed.path().trim_matches('/')).filter(|t| !t.is_empty()),
        ) else {
            return Err(Error::Config(format!(
                "bus `{url}`: expected fluvio://HOST:PORT/TOPIC"
            )));
        };
        let addr = format!("{host}:{}", parsed.port().unwrap_or(9003));
        let fluvio = Fluvio::connect_with_config(&FluvioClusterConfig::new(addr.clone()))
            .await
            .map_err(|e| Error::Bus(format!("fluvio at {addr}: {e:#}")))?;
        let admin = fluvio.admin().await;
        let found = admin
            .list::<TopicSpec, String>(vec![topic.to_string()])
            .await
            .map_err(fluvio_err("list topics"))?;
        match found.iter().find(|t| t.name == topic) {
            Some(t) if t.spec.partitions() != partitions => {
                return Err(Error::Config(format!(
                    "bus `{url}`: topic `{topic}` has {} partitions, the configuration says {partitions} (bus.partitions)",
                    t.spec.partitions()
                )));
            }
            Some(_) => {}
            None => admin
                .create(
                    topic.to_string(),
                    false,
                    TopicSpec::new_computed(partitions, 1, None),
                )
                .await
                .map_err(fluvio_err("create topic"))?,
        }
        let config = TopicProducerConfigBuilder::default()
            .linger(LINGER)
            .batch_size(BATCH_BYTES)
            .partitioner(std::sync::Arc::new(ByUser))
            .build()
            .map_err(|e| Error::Config(format!("fluvio producer: {e}")))?;
        let producer = fluvio
            .topic_producer_with_config(topic, config)
            .await
            .map_err(fluvio_err("producer"))?;
        Ok(FluvioBus {
            fluvio,
            topic: topic.to_string(),
            partitions,
            producer,
            streams: (0..partitions).map(|_| Mutex::new(None)).collect(),
        })
    }

    async fn stream_at(&self, partition: u32, offset: u64, group: Option<&str>) -> Result<Stream> {
        let mut b = ConsumerConfigExtBuilder::default();
        b.topic(self.topic.clone())
            .partition(partition)
            .offset_start(Offset::absolute(offset as i64).map_err(|e| Error::Bus(e.to_string()))?);
        if let Some(g) = group {
            b.offset_consumer(g.to_string())
                .offset_strategy(OffsetManagementStrategy::Manual);
        }
        let config = b
            .build()
            .map_err(|e| Error::Config(format!("fluvio consumer: {e}")))?;
        let stream = self
            .fluvio
            .consumer_with_config(config)
            .await
            .map_err(fluvio_err("consume"))?;
        Ok(Box::new(stream))
    }
}

fn record(partition: u32, r: &FluvioRecord) -> Record {
    Record {
        partition,
        offset: r.offset() as u64,
        timestamp_ms: r.timestamp(),
        key: Bytes::copy_from_slice(r.key().unwrap_or_default()),
        value: Bytes::copy_from_slice(r.value()),
    }
}

#[async_trait]
impl Bus for FluvioBus {
    fn partitions(&self) -> u32 {
        self.partitions
    }

    async fn produce(&self, records: Vec<(Bytes, Bytes)>) -> Result<Vec<Position>> {
        let mut outputs = Vec::with_capacity(records.len());
        for (key, value) in records {
            outputs.push(
                self.producer
                    .send(key.to_vec(), value.to_vec())
                    .await
                    .map_err(fluvio_err("produce"))?,
            );
        }
        self.producer.flush().await.map_err(fluvio_err("flush"))?;
        let mut positions = Vec::with_capacity(outputs.len());
        for o in outputs {
            let meta = o.wait().await.map_err(fluvio_err("produce"))?;
            positions.push(Position {
                partition: meta.partition_id(),
                offset: meta.offset() as u64,
            });
        }
        Ok(positions)
    }

    async fn fetch(
        &self,
        partition: u32,
        offset: u64,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Record>> {
        let slot = self
            .streams
            .get(partition as usize)
            .ok_or_else(|| Error::Config(format!("partition {partition} does not exist")))?;
        let mut slot = slot.lock().await;
        let mut stream = match slot.take() {
            Some((next, s)) if next == offset => s,
            _ => self.stream_at(partition, offset, None).await?,
        };
        let mut out = Vec::new();
        // The first record may be waited for; the rest only while they are already there.
        let first = tokio::time::timeout(wait, stream.next())
            .await
            .ok()
            .flatten();
        let mut next = first;
        while let Some(item) = next {
            let r = item.map_err(|e| Error::Bus(format!("fluvio fetch: {e}")))?;
            out.push(record(partition, &r));
            if out.len() >= max.max(1) {
                break;
            }
            next = stream.next().now_or_never().flatten();
        }
        let resume = out.last().map_or(offset, |r| r.offset + 1);
        *slot = Some((resume, stream));
        Ok(out)
    }

    async fn end_offset(&self, partition: u32) -> Result<u64> {
        let name = format!("{}-{partition}", self.topic);
        let admin = self.fluvio.admin().await;
        let parts = admin
            .list::<PartitionSpec, String>(vec![name.clone()])
            .await
            .map_err(fluvio_err("list partitions"))?;
        let p = parts
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| Error::Bus(format!("fluvio: no partition {name}")))?;
        Ok(p.status.leader.hw.max(0) as u64)
    }

    async fn committed(&self, group: &str, partition: u32) -> Result<Option<u64>> {
        let offsets = self
            .fluvio
            .consumer_offsets()
            .await
            .map_err(fluvio_err("consumer offsets"))?;
        Ok(offsets
            .iter()
            .find(|o| o.consumer_id == group && o.topic == self.topic && o.partition == partition)
            .map(|o| (o.offset + 1) as u64))
    }

    async fn commit(&self, group: &str, partition: u32, next_offset: u64) -> Result<()> {
        if next_offset == 0 {
            return match self
                .fluvio
                .delete_consumer_offset(group, (self.topic.clone(), partition))
                .await
            {
                Ok(()) => Ok(()),
                // Nothing stored yet is what position 0 means.
                Err(_) if self.committed(group, partition).await?.is_none() => Ok(()),
                Err(e) => Err(fluvio_err("delete consumer offset")(e)),
            };
        }
        // Fluvio stores the offset of the last record a consumer stream yielded: read that
        // record through a stream of the group, then commit and flush.
        let mut stream = self
            .stream_at(partition, next_offset - 1, Some(group))
            .await?;
        match tokio::time::timeout(COMMIT_TIMEOUT, stream.next()).await {
            Ok(Some(Ok(r))) if r.offset() as u64 == next_offset - 1 => {}
            Ok(Some(Err(e))) => return Err(Error::Bus(format!("fluvio commit: {e}"))),
            _ => {
                return Err(Error::Config(format!(
                    "cannot store position {next_offset} of partition {partition}: record {} is not there",
                    next_offset - 1
                )));
            }
        }
        stream
            .offset_commit()
            .await
            .map_err(|e| Error::Bus(format!("fluvio offset commit: {e}")))?;
        stream
            .offset_flush()
            .await
            .map_err(|e| Error::Bus(format!("fluvio offset flush: {e}")))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
