//! `fluvio://HOST:PORT/TOPIC`: the bus on a Fluvio cluster, through the `fluvio` crate.
//!
//! - **Produce.** Tandem's partitioning ([`partition_for`]) is the producer's partitioner;
//!   records are sent and their positions returned once the SPU acknowledged them, or an error
//!   after `produce_timeout` (the caller answers 503; a retry is deduplicated by event id
//!   downstream). After an error the producer's error state is cleared so that the next
//!   produce can succeed once the cluster is back. A produce does not flush: the client sends
//!   each partition's batch `bus.linger` after its first record, so the produces of that window
//!   share one request. A flush per produce cost ~0.7 ms of CPU per request and capped
//!   `POST /v1/events` near 1,000 req/s here; and the 0.50 client cannot flush twice at once
//!   (each partition producer wakes the flushers with `event_listener`'s `notify(1)`, which
//!   wakes nobody new while an earlier wake-up is pending), so concurrent produces could wait
//!   for ever, until their timeout.
//! - **Fetch.** One reader task per partition owns a Fluvio consumer stream and pumps what it
//!   yields into a bounded channel; a fetch only takes from the channel, so no future of the
//!   client library is ever dropped half-way. The adapter trusts nothing it is handed: every
//!   record must carry exactly the next offset. A repeated record is dropped; a gap, an error
//!   or the end of the stream throws the reader away and the next fetch starts a new stream at
//!   the first offset not handed out (`tandem_bus_fluvio_rereads_total{reason}` counts each).
//!   Gaps do happen: the SPU cuts a stream's answer at `max_bytes` in the middle of a record
//!   batch; the client (fluvio 0.50) drops the incomplete batch but tells the SPU it has
//!   everything up to that batch's end, so the stream goes on after it and the batch's records
//!   never come (seen at the end of each stream's first megabyte: ~2% of a topic). A new stream
//!   from the first missing offset answers that batch whole. When the cut batch was the last
//!   one, no later record shows the gap: an idle reader checks the partition's end (200 ms
//!   after its last answer, then at doubling pauses up to 5 s) and is read again when the
//!   partition holds more than it delivered. A second gap at the same offset means the records
//!   are gone from the topic (retention): the fetch then fails with an error naming them,
//!   never skipping them silently.
//! - **End offsets** come from the partition's leader (a stream over its last record), not
//!   from the SC, whose view of the high watermark trails produces by seconds.
//! - **Positions** are Fluvio consumer offsets named by the group, which store the offset of
//!   the last record a stream of the group yielded: `commit` reads that record through a
//!   stream of the group, then commits and flushes; `committed` answers it plus one.
//! - **Log identity.** Fluvio gives a topic no id, and a topic deleted and created again under
//!   its name starts its offsets from 0. A partition's identity is a fingerprint of its first
//!   record (offset, time, key, value), registered as the name of a consumer offset
//!   (`tandem-log-<fingerprint>`): Fluvio deletes a partition's consumer offsets with it, so
//!   the name lives exactly as long as the log, and still names it once retention has deleted
//!   that first record. The fingerprint is the same whichever process computes it.
//!
//! The topic is created when missing with the configured partitions and replication (once
//! enough SPUs are online: up to 10 s for SPUs starting with the cluster), and
//! `connect` waits until its partitions are provisioned, connecting again when a client never
//! receives the cluster's metadata; a topic with another partition count is refused.
//! Connections are Tandem's own ([`net`]): TLS as `bus.tls` says (verified with a CA, a client
//! certificate and key, or anonymous), and acknowledgements sent at once, without which every
//! event waited up to 40 ms on its way to a consumer.
//!
//! One file (~810 lines), on purpose: each rule above involves both the producer and the consumer
//! side of the adapter, and reads best beside both; the connector's own socket code is
//! `fluvio/net.rs`, its tests `fluvio/tests.rs`.

use std::collections::VecDeque;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use fluvio::consumer::{
    ConsumerConfigExtBuilder, ConsumerStream, OffsetManagementStrategy, Record as FluvioRecord,
    RetryMode,
};
use fluvio::metadata::objects::ListRequest;
use fluvio::metadata::partition::PartitionSpec;
use fluvio::metadata::spu::SpuSpec;
use fluvio::metadata::topic::{TopicResolution, TopicSpec};
use fluvio::{
    Fluvio, FluvioClusterConfig, Offset, Partitioner, PartitionerConfig,
    TopicProducerConfigBuilder, TopicProducerPool,
};
use futures::StreamExt;
use tokio::sync::{Mutex, mpsc};
use tracing::warn;

use super::{Bus, BusOptions, Position, Record, partition_for};
use tandem_common::bus::{Error, Result};

/// Bytes in one produce batch.
const BATCH_BYTES: usize = 1 << 20;
/// The largest produce request: a record larger than a batch goes alone (the API takes bodies
/// of up to 1 MiB; the conformance suite sends 1.2 MB values). A consumer's answers
/// (`bus.fetch_mib`: 8 MiB by default, the least allowed) should be twice as large, so that every batch fits whole
/// in one (a batch that does not is cut, see above, and would be cut again at every try).
/// Larger answers mean fewer cut batches to read again but cost more CPU per record, not less:
/// the client library allocates each answer's buffer afresh and clears its unfilled part before
/// each socket read (memset, page clearing and copies were ~40% of `stream run`'s CPU under
/// `perf`; 5.1 µs per event at 8 MiB, 8.0 µs at 64 MiB).
const MAX_REQUEST_BYTES: usize = 4 << 20;
/// How long storing a position or reading an end offset may wait for a record.
const READ_ONE_TIMEOUT: Duration = Duration::from_secs(10);
/// Records a reader task hands over at once, and chunks it may hold ahead of the fetches.
const CHUNK: usize = 1024;
const CHUNKS_AHEAD: usize = 4;
/// The consumer-offset name that records a partition's identity: this, then the fingerprint.
const LOG_ID_PREFIX: &str = "tandem-log-";
/// Fluvio's topic of consumer offsets.
const CONSUMER_OFFSETS_TOPIC: &str = "consumer-offset";
/// How long `connect` waits for a new topic's partitions to be provisioned.
const PROVISION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `connect` waits for enough SPUs to be online to create a topic.
const SPU_WAIT: Duration = Duration::from_secs(10);
/// How long `connect` lets one client wait for the cluster's metadata before connecting again.
const METADATA_WAIT: Duration = Duration::from_secs(10);

type Stream = Box<
    dyn ConsumerStream<Item = std::result::Result<FluvioRecord, fluvio::dataplane::link::ErrorCode>>
        + Send,
>;

/// What a reader task hands over.
enum Item {
    Record(FluvioRecord),
    /// The stream failed or ended; nothing more comes from this reader.
    Failed(String),
}

/// A partition's reader: a task pumping a consumer stream into a channel.
struct Reader {
    /// The offset the next record handed out must have.
    next: u64,
    /// Nothing came from the stream yet (its first read takes a round trip or two).
    fresh: bool,
    /// When an idle reader next checks the partition's end, and the pause after that check:
    /// at once when new, then from 200 ms after the last answer, doubling up to 5 s.
    check_at: Instant,
    check_every: Duration,
    buffered: VecDeque<Item>,
    rx: mpsc::Receiver<Vec<Item>>,
    task: tokio::task::JoinHandle<()>,
}

/// Why a reader was thrown away (or a record dropped): the label of
/// `tandem_bus_fluvio_rereads_total`.
#[derive(Clone, Copy)]
enum Reset {
    /// A record came where an earlier one was due (a cut answer, or records deleted).
    Gap,
    /// A record came again (dropped; the reader is kept).
    Repeat,
    /// The stream failed or ended.
    Failed,
    /// The stream sent nothing though the partition holds more.
    Stalled,
}

const RESET_LABELS: [&str; 4] = ["gap", "repeat", "error", "stalled"];
const FIRST_CHECK: Duration = Duration::from_millis(200);
const LAST_CHECK: Duration = Duration::from_secs(5);

impl Reader {
    /// An answer came.
    fn delivered(&mut self) {
        self.fresh = false;
        self.check_at = Instant::now() + FIRST_CHECK;
        self.check_every = FIRST_CHECK;
    }

    /// Whether an idle fetch should check the partition's end now (and when it next should).
    fn check_due(&mut self) -> bool {
        let now = Instant::now();
        if now < self.check_at {
            return false;
        }
        self.check_at = now + self.check_every;
        self.check_every = (self.check_every * 2).min(LAST_CHECK);
        true
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Per partition: the reader, and the offset of the last gap met (a second gap there means the
/// records are gone).
#[derive(Default)]
struct Slot {
    reader: Option<Reader>,
    gap_at: Option<u64>,
}

/// A bus on a Fluvio topic.
pub struct FluvioBus {
    fluvio: Fluvio,
    topic: String,
    partitions: u32,
    producer: TopicProducerPool,
    produce_timeout: Duration,
    fetch_bytes: i32,
    slots: Vec<Mutex<Slot>>,
    /// Per partition, its log's identity once known.
    log_ids: Vec<Mutex<Option<String>>>,
    rereads: [metrics::Counter; 4],
    /// Every reader thrown away, for tests (the metric counts them for operators).
    rereads_seen: AtomicU64,
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

/// The SC address and the topic of `fluvio://HOST:PORT/TOPIC`.
fn parse_url(url: &str) -> Result<(String, String)> {
    let parsed = url::Url::parse(url).map_err(|e| Error::Config(format!("bus `{url}`: {e}")))?;
    match (
        parsed.host_str(),
        Some(parsed.path().trim_matches('/')).filter(|t| !t.is_empty()),
    ) {
        (Some(host), Some(topic)) => Ok((
            format!("{host}:{}", parsed.port().unwrap_or(9003)),
            topic.to_string(),
        )),
        _ => Err(Error::Config(format!(
            "bus `{url}`: expected fluvio://HOST:PORT/TOPIC"
        ))),
    }
}

impl FluvioBus {
    /// Connects to `fluvio://HOST:PORT/TOPIC` with default options and `partitions`.
    pub async fn connect(url: &str, partitions: u32) -> Result<FluvioBus> {
        Self::connect_with(url, &BusOptions::new(partitions)).await
    }

    /// Connects to `fluvio://HOST:PORT/TOPIC`, creating the topic with `opts.partitions`
    /// partitions and `opts.replication` replicas when it does not exist.
    pub async fn connect_with(url: &str, opts: &BusOptions) -> Result<FluvioBus> {
        let (addr, topic) = parse_url(url)?;
        let partitions = opts.partitions;
        let config = FluvioClusterConfig::new(addr.clone());
        let connect = || async {
            Fluvio::connect_with_connector(net::Connector::for_tls(&opts.tls)?, &config)
                .await
                .map_err(|e| Error::Bus(format!("fluvio at {addr}: {e:#}")))
        };
        let mut fluvio = connect().await?;
        let admin = fluvio.admin().await;
        let found = admin
            .list::<TopicSpec, String>(vec![topic.clone()])
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
            None => {
                // The SC waits (and the call times out) for SPUs that are not there: say so.
                // SPUs that are starting with the cluster (a listening SPU registers with the
                // SC a moment later) are waited for, up to `SPU_WAIT`.
                let deadline = Instant::now() + SPU_WAIT;
                loop {
                    let online = admin
                        .all::<SpuSpec>()
                        .await
                        .map_err(fluvio_err("list SPUs"))?
                        .iter()
                        .filter(|s| s.status.is_online())
                        .count();
                    if online >= opts.replication as usize {
                        break;
                    }
                    if Instant::now() >= deadline {
                        return Err(Error::Config(format!(
                            "bus `{url}`: creating topic `{topic}` with {} replicas (bus.replication) needs as many SPUs online; the cluster has {online} (waited {SPU_WAIT:?})",
                            opts.replication
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let spec = TopicSpec::new_computed(partitions, opts.replication, None);
                match admin.create(topic.clone(), false, spec).await {
                    Ok(()) => {}
                    // Another process created it meanwhile.
                    Err(e) if format!("{e:#}").contains("already exists") => {}
                    Err(e) => return Err(fluvio_err("create topic")(e)),
                }
            }
        }
        wait_provisioned(&admin, &topic, false, url).await?;
        // Consumer positions live in Fluvio's own (system) topic, which a new cluster creates
        // once its first SPU is online, and which the client learns of a moment later.
        wait_provisioned(&admin, CONSUMER_OFFSETS_TOPIC, true, url).await?;
        // A client learns the partitions' leaders from the SC by a watch. Once, right after an
        // SC restart, a new client's first update never came (the library waits 60 s for it,
        // then fails): such a client is dropped and a new one connects.
        let deadline = Instant::now() + PROVISION_TIMEOUT;
        loop {
            match tokio::time::timeout(METADATA_WAIT, fluvio.consumer_offsets()).await {
                Ok(Ok(_)) => break,
                Ok(Err(e)) if Instant::now() >= deadline => {
                    return Err(fluvio_err("consumer offsets")(e));
                }
                Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(_) if Instant::now() >= deadline => {
                    return Err(Error::Bus(format!(
                        "bus `{url}`: the cluster's metadata did not reach the client within \
                         {METADATA_WAIT:?}, {PROVISION_TIMEOUT:?} in all"
                    )));
                }
                Err(_) => {
                    tracing::warn!(%addr, "Fluvio's metadata did not arrive; connecting again.");
                    fluvio = connect().await?;
                }
            }
        }
        let producer_config = TopicProducerConfigBuilder::default()
            .linger(opts.linger)
            .batch_size(BATCH_BYTES)
            .max_request_size(MAX_REQUEST_BYTES)
            .timeout(opts.produce_timeout)
            .partitioner(Arc::new(ByUser))
            .build()
            .map_err(|e| Error::Config(format!("fluvio producer: {e}")))?;
        let producer = fluvio
            .topic_producer_with_config(topic.clone(), producer_config)
            .await
            .map_err(fluvio_err("producer"))?;
        let reread = |reason: &'static str| metrics::counter!("tandem_bus_fluvio_rereads_total", "reason" => reason);
        let rereads = RESET_LABELS.map(reread);
        Ok(FluvioBus {
            fluvio,
            topic,
            partitions,
            producer,
            produce_timeout: opts.produce_timeout,
            fetch_bytes: opts.fetch_bytes.clamp(64 << 10, i32::MAX as usize) as i32,
            rereads_seen: AtomicU64::new(0),
            slots: (0..partitions)
                .map(|_| Mutex::new(Slot::default()))
                .collect(),
            log_ids: (0..partitions).map(|_| Mutex::new(None)).collect(),
            rereads,
        })
    }

    /// How many times a reader was thrown away and its partition read again (gaps, errors).
    pub fn rereads(&self) -> u64 {
        self.rereads_seen.load(Ordering::Relaxed)
    }

    fn slot(&self, partition: u32) -> Result<&Mutex<Slot>> {
        self.slots
            .get(partition as usize)
            .ok_or_else(|| Error::Config(format!("partition {partition} does not exist")))
    }

    async fn stream(
        &self,
        partition: u32,
        start: Offset,
        group: Option<&str>,
        continuous: bool,
    ) -> Result<Stream> {
        let mut b = ConsumerConfigExtBuilder::default();
        b.topic(self.topic.clone())
            .partition(partition)
            .offset_start(start)
            .disable_continuous(!continuous)
            .max_bytes(self.fetch_bytes)
            // Errors come to the adapter, which starts again from what it handed out.
            .retry_mode(RetryMode::Disabled);
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

    async fn reader_at(&self, partition: u32, offset: u64) -> Result<Reader> {
        let start = Offset::absolute(offset as i64).map_err(|e| Error::Bus(e.to_string()))?;
        let stream = self.stream(partition, start, None, true).await?;
        let (tx, rx) = mpsc::channel(CHUNKS_AHEAD);
        let task = tokio::spawn(pump(stream, tx));
        Ok(Reader {
            next: offset,
            fresh: true,
            check_at: Instant::now(),
            check_every: FIRST_CHECK,
            buffered: VecDeque::new(),
            rx,
            task,
        })
    }

    /// The first record a stream from `start` yields, if one comes within `READ_ONE_TIMEOUT`
    /// (not continuous: `None` at once when there is none).
    async fn read_one(
        &self,
        partition: u32,
        start: Offset,
        group: Option<&str>,
    ) -> Result<Option<(FluvioRecord, Stream)>> {
        let mut stream = self.stream(partition, start, group, false).await?;
        match tokio::time::timeout(READ_ONE_TIMEOUT, stream.next()).await {
            Ok(Some(Ok(r))) => Ok(Some((r, stream))),
            Ok(Some(Err(e))) => Err(Error::Bus(format!(
                "fluvio read of partition {partition}: {e}"
            ))),
            Ok(None) => Ok(None),
            Err(_) => Err(Error::Bus(format!(
                "fluvio read of partition {partition}: no answer in {READ_ONE_TIMEOUT:?}"
            ))),
        }
    }

    /// The SC's view of the partition's high watermark.
    async fn sc_high_watermark(&self, partition: u32) -> Result<u64> {
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
}

/// Waits until every partition of `topic` (a `system` topic or not) has a leader.
async fn wait_provisioned(
    admin: &fluvio::FluvioAdmin,
    topic: &str,
    system: bool,
    url: &str,
) -> Result<()> {
    let deadline = Instant::now() + PROVISION_TIMEOUT;
    loop {
        let request = ListRequest::new(topic, false).system(system);
        let found = admin
            .list_with_config::<TopicSpec, String>(request)
            .await
            .map_err(fluvio_err("list topics"))?;
        let status = found.iter().find(|t| t.name == topic).map(|t| &t.status);
        match status {
            Some(s) if s.resolution == TopicResolution::Provisioned => return Ok(()),
            _ if Instant::now() >= deadline => {
                let (resolution, reason) = status
                    .map(|s| (format!("{:?}", s.resolution), s.reason.clone()))
                    .unwrap_or_else(|| ("missing".into(), String::new()));
                return Err(Error::Bus(format!(
                    "bus `{url}`: topic `{topic}` is not provisioned after {PROVISION_TIMEOUT:?} \
                     ({resolution}{}); is an SPU online?",
                    if reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {reason}")
                    }
                )));
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A reader task: everything `stream` yields goes to `tx` in chunks of what is ready at once.
/// The task owns the stream, so no `next()` of it is ever dropped half-way; it ends after the
/// first error or the end of the stream, or when the reader is dropped (aborted).
async fn pump(stream: Stream, tx: mpsc::Sender<Vec<Item>>) {
    let mut chunks = stream.ready_chunks(CHUNK);
    while let Some(chunk) = chunks.next().await {
        let mut items = Vec::with_capacity(chunk.len());
        let mut failed = false;
        for r in chunk {
            match r {
                Ok(r) => items.push(Item::Record(r)),
                Err(e) => {
                    items.push(Item::Failed(format!("the stream failed: {e}")));
                    failed = true;
                    break;
                }
            }
        }
        if tx.send(items).await.is_err() || failed {
            return;
        }
    }
    let _ = tx.send(vec![Item::Failed("the stream ended".into())]).await;
}

fn record(partition: u32, r: &FluvioRecord) -> Record {
    Record {
        partition,
        offset: r.offset() as u64,
        timestamp_ms: r.timestamp(),
        // The record's buffers are shared, not copied.
        key: r.get_key().map(|k| k.deref().clone()).unwrap_or_default(),
        value: r.get_value().deref().clone(),
    }
}

#[async_trait]
impl Bus for FluvioBus {
    fn partitions(&self) -> u32 {
        self.partitions
    }

    async fn produce(&self, records: Vec<(Bytes, Bytes)>) -> Result<Vec<Position>> {
        let sent = tokio::time::timeout(self.produce_timeout, async {
            let mut outputs = Vec::with_capacity(records.len());
            for (key, value) in records {
                outputs.push(
                    self.producer
                        .send(Vec::from(key), Vec::from(value))
                        .await
                        .map_err(fluvio_err("produce"))?,
                );
            }
            // No flush: each partition producer sends within `linger` of a batch's first
            // record, one request for every produce in that window (see the module doc).
            let mut positions = Vec::with_capacity(outputs.len());
            for o in outputs {
                let meta = o.wait().await.map_err(fluvio_err("produce"))?;
                positions.push(Position {
                    partition: meta.partition_id(),
                    offset: meta.offset() as u64,
                });
            }
            Ok(positions)
        })
        .await
        .unwrap_or_else(|_| {
            Err(Error::Bus(format!(
                "fluvio produce: not acknowledged within {:?}",
                self.produce_timeout
            )))
        });
        if sent.is_err() {
            // A partition producer keeps its error until cleared: the next produce may succeed.
            self.producer.clear_errors().await;
        }
        sent
    }

    async fn fetch(
        &self,
        partition: u32,
        offset: u64,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Record>> {
        let mut slot = self.slot(partition)?.lock().await;
        if slot.reader.as_ref().is_none_or(|r| r.next != offset) {
            slot.reader = None;
            // A log that ends before what a consumer reached was deleted and created again (or
            // cut): waiting at `offset` would skip everything the new log holds below it.
            let end = self.end_offset(partition).await?;
            if end < offset {
                *self.log_ids[partition as usize].lock().await = None;
                return Err(Error::Corrupt(format!(
                    "fluvio partition {partition} of `{}` ends at offset {end}, before offset {offset} that was read: \
                     the topic was deleted and created again; start the consumer again to read it as a new log",
                    self.topic
                )));
            }
            slot.reader = Some(self.reader_at(partition, offset).await?);
        }
        let reader = slot.reader.as_mut().expect("a reader was just made");
        let deadline = tokio::time::Instant::now() + wait;
        let mut out = Vec::new();
        let reset = loop {
            if out.len() >= max.max(1) {
                break None;
            }
            if let Some(item) = reader.buffered.pop_front() {
                match item {
                    Item::Record(r) => {
                        let at = r.offset() as u64;
                        if at == reader.next {
                            out.push(record(partition, &r));
                            reader.next += 1;
                        } else if at < reader.next {
                            self.rereads[Reset::Repeat as usize].increment(1);
                        } else {
                            break Some((
                                Reset::Gap,
                                format!("record {at} came where {} was due", reader.next),
                            ));
                        }
                    }
                    Item::Failed(why) => break Some((Reset::Failed, why)),
                }
                continue;
            }
            // Only the first record is waited for; the rest only when already there.
            let chunk = if out.is_empty() {
                tokio::time::timeout_at(deadline, reader.rx.recv())
                    .await
                    .map_err(|_| ())
            } else {
                match reader.rx.try_recv() {
                    Ok(chunk) => Ok(Some(chunk)),
                    Err(mpsc::error::TryRecvError::Empty) => Err(()),
                    Err(mpsc::error::TryRecvError::Disconnected) => Ok(None),
                }
            };
            match chunk {
                Ok(Some(chunk)) => {
                    reader.delivered();
                    reader.buffered.extend(chunk);
                }
                Ok(None) => break Some((Reset::Failed, "the reader stopped".into())),
                Err(()) if !out.is_empty() || !reader.check_due() => break None,
                // Nothing came. A stream owes nothing only when the partition ends where it
                // is: a new one may not have answered yet (wait for it), and one whose last
                // answer was cut at the partition's end never sends the rest (read again).
                Err(()) => {
                    if self.end_offset(partition).await? <= reader.next {
                        break None;
                    }
                    if !reader.fresh {
                        break Some((
                            Reset::Stalled,
                            "the stream stopped short of the partition's end".into(),
                        ));
                    }
                    match tokio::time::timeout(READ_ONE_TIMEOUT, reader.rx.recv()).await {
                        Ok(Some(chunk)) => {
                            reader.delivered();
                            reader.buffered.extend(chunk);
                        }
                        Ok(None) => break Some((Reset::Failed, "the reader stopped".into())),
                        Err(_) => {
                            break Some((
                                Reset::Stalled,
                                format!(
                                    "no record in {READ_ONE_TIMEOUT:?} though the partition has some"
                                ),
                            ));
                        }
                    }
                }
            }
        };
        let Some((reset, why)) = reset else {
            if !out.is_empty() {
                slot.gap_at = None;
            }
            return Ok(out);
        };
        // The reader cannot be trusted past this point: the next fetch starts a new stream at
        // the first offset not handed out.
        let next = reader.next;
        slot.reader = None;
        self.rereads[reset as usize].increment(1);
        self.rereads_seen.fetch_add(1, Ordering::Relaxed);
        warn!(partition, offset = next, reason = %why, "Fluvio stream reset; reading again from the first record not handed out.");
        match reset {
            Reset::Gap if slot.gap_at == Some(next) && out.is_empty() => {
                Err(Error::Corrupt(format!(
                    "fluvio partition {partition} of `{}`: records from offset {next} are missing \
                     ({why}, twice); they were deleted from the topic (retention?) before they were consumed",
                    self.topic
                )))
            }
            Reset::Gap => {
                slot.gap_at = Some(next);
                Ok(out)
            }
            // Nothing lost, nothing wrong with the cluster: the next fetch reads again.
            Reset::Stalled | Reset::Repeat => Ok(out),
            Reset::Failed if out.is_empty() => Err(Error::Bus(format!(
                "fluvio fetch of partition {partition} at offset {next}: {why}"
            ))),
            Reset::Failed => Ok(out),
        }
    }

    async fn end_offset(&self, partition: u32) -> Result<u64> {
        self.slot(partition)?;
        // The last record as the partition's leader sees it; with none (an empty or wholly
        // expired partition), the SC's view.
        match self.read_one(partition, Offset::from_end(1), None).await? {
            Some((r, _)) => Ok(r.offset() as u64 + 1),
            None => self.sc_high_watermark(partition).await,
        }
    }

    async fn log_id(&self, partition: u32) -> Result<Option<String>> {
        self.slot(partition)?;
        let mut known = self.log_ids[partition as usize].lock().await;
        if let Some(id) = known.as_ref() {
            return Ok(Some(id.clone()));
        }
        let offsets = self
            .fluvio
            .consumer_offsets()
            .await
            .map_err(fluvio_err("consumer offsets"))?;
        let registered = offsets
            .iter()
            .filter(|o| o.topic == self.topic && o.partition == partition)
            .filter_map(|o| o.consumer_id.strip_prefix(LOG_ID_PREFIX))
            .min()
            .map(str::to_string);
        let id = match registered {
            Some(id) => id,
            None => {
                let Some((first, _)) = self.read_one(partition, Offset::beginning(), None).await?
                else {
                    return Ok(None);
                };
                let id = format!(
                    "{:016x}",
                    super::fnv1a(&[
                        &first.offset().to_le_bytes(),
                        &first.timestamp().to_le_bytes(),
                        first.key().unwrap_or_default(),
                        first.value(),
                    ])
                );
                // Registered by reading that record as the consumer named by the id.
                let name = format!("{LOG_ID_PREFIX}{id}");
                let start =
                    Offset::absolute(first.offset()).map_err(|e| Error::Bus(e.to_string()))?;
                if let Some((_, mut stream)) = self.read_one(partition, start, Some(&name)).await? {
                    stream
                        .offset_commit()
                        .await
                        .map_err(|e| Error::Bus(format!("fluvio offset commit: {e}")))?;
                    stream
                        .offset_flush()
                        .await
                        .map_err(|e| Error::Bus(format!("fluvio offset flush: {e}")))?;
                }
                id
            }
        };
        *known = Some(id.clone());
        Ok(Some(id))
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
        let at = next_offset - 1;
        let start = Offset::absolute(at as i64).map_err(|e| Error::Bus(e.to_string()))?;
        let mut stream = match self.read_one(partition, start, Some(group)).await? {
            Some((r, stream)) if r.offset() as u64 == at => stream,
            _ => {
                return Err(Error::Config(format!(
                    "cannot store position {next_offset} of partition {partition}: record {at} is not there"
                )));
            }
        };
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

mod net;
#[cfg(test)]
mod tests;
