//! The bus conformance suite against a real Fluvio cluster (one SC, one SPU) that the test
//! starts on free ports and stops at the end ([`FluvioCluster`]). Each bus is a new topic. One
//! runtime for the whole suite: the `fluvio` crate runs its own executor, which keeps the tokio
//! handle it first saw.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tandem_testkit::FluvioCluster;

use super::FluvioBus;
use crate::bus::conformance::{self, Harness};
use crate::bus::{Bus, BusOptions};

struct Cluster {
    addr: String,
    n: AtomicU32,
}

#[async_trait]
impl Harness for Cluster {
    type Id = String;
    async fn fresh(&self, partitions: u32) -> (String, Arc<dyn Bus>) {
        let url = format!(
            "fluvio://{}/conformance-{}",
            self.addr,
            self.n.fetch_add(1, Ordering::Relaxed)
        );
        let bus = FluvioBus::connect(&url, partitions).await.unwrap();
        (url, Arc::new(bus))
    }
    async fn reopen(&self, url: &String, partitions: u32) -> Arc<dyn Bus> {
        Arc::new(FluvioBus::connect(url, partitions).await.unwrap())
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn conformance_on_a_real_cluster() {
    let fluvio = FluvioCluster::start();
    let cluster = Cluster {
        addr: fluvio.addr(),
        n: AtomicU32::new(0),
    };
    runtime().block_on(conformance::run_all(&cluster));
}

#[test]
fn a_topic_is_created_with_the_configured_replication_and_checked() {
    let fluvio = FluvioCluster::start();
    runtime().block_on(async {
        // One SPU cannot hold three replicas: the error says why instead of hanging.
        let opts = BusOptions {
            replication: 3,
            ..BusOptions::new(2)
        };
        // The SC learns that the SPU is online a moment after it listens (longer on a busy
        // machine; it counts none until then): `connect` waits for it, then refuses.
        let err = FluvioBus::connect_with(&fluvio.url("three"), &opts)
            .await
            .err()
            .expect("three replicas on one SPU cannot be provisioned");
        assert!(
            err.to_string().contains("bus.replication") && err.to_string().contains("has 1"),
            "{err}"
        );
        let bus = FluvioBus::connect_with(&fluvio.url("one"), &BusOptions::new(2))
            .await
            .unwrap();
        bus.produce(vec![(Bytes::from("u"), Bytes::from("v"))])
            .await
            .unwrap();
        // Another partition count for the same topic is refused, naming both.
        let err = FluvioBus::connect(&fluvio.url("one"), 3)
            .await
            .err()
            .expect("a topic keeps its partition count");
        assert!(err.to_string().contains("has 2 partitions"), "{err}");
    });
}

/// Answers cut in the middle of a record batch (the SPU cuts at the consumer's byte limit, and
/// the client then skips the batch) are read again from the first missing record: with answers
/// of 64 KiB, many cuts, and still every offset once, in order, whatever the fetch size.
#[test]
fn answers_cut_mid_batch_are_read_again() {
    let fluvio = FluvioCluster::start();
    runtime().block_on(async {
        let opts = BusOptions {
            fetch_bytes: 64 << 10,
            ..BusOptions::new(2)
        };
        let bus = FluvioBus::connect_with(&fluvio.url("cut"), &opts)
            .await
            .unwrap();
        let pad = "z".repeat(250);
        for round in 0..20 {
            let batch = (0..300)
                .map(|i| {
                    (
                        Bytes::from(format!("u{}", i % 31)),
                        Bytes::from(format!("{round}.{i}.{pad}")),
                    )
                })
                .collect();
            bus.produce(batch).await.unwrap();
        }
        for p in 0..2 {
            let end = bus.end_offset(p).await.unwrap();
            for max in [1, 7, 4096] {
                conformance::read_to_end(&bus, p, end, max, Duration::from_millis(5)).await;
            }
        }
        assert!(
            bus.rereads() > 10,
            "cut answers were met and read again: {}",
            bus.rereads()
        );
    });
}

/// End offsets come from the partition's leader: right after a produce, not seconds later.
#[test]
fn end_offsets_are_current_right_after_a_produce() {
    let fluvio = FluvioCluster::start();
    runtime().block_on(async {
        let bus = FluvioBus::connect(&fluvio.url("ends"), 1).await.unwrap();
        for n in 1..=5u64 {
            bus.produce(vec![(Bytes::from("u"), Bytes::from(n.to_string()))])
                .await
                .unwrap();
            assert_eq!(bus.end_offset(0).await.unwrap(), n);
        }
        let got = bus.fetch(0, 0, 10, Duration::ZERO).await.unwrap();
        assert_eq!(
            got.len(),
            5,
            "records there are returned by a fetch that does not wait"
        );
    });
}

/// A topic deleted and created again under its name is a new log: its identity differs, the
/// speed layer counts its events though their offsets are the old ones' again, the archiver's
/// files of the two never collide, and a consumer that was past the new log's end says so
/// instead of waiting there.
#[test]
fn a_topic_deleted_and_created_again_is_a_new_log() {
    use tandem_common::event::{Event, Kind, to_bus_value};
    use tandem_common::lake::Lake;
    use tandem_common::store::{MemoryStore, OnlineStore};
    use tokio_util::sync::CancellationToken;

    let fluvio = FluvioCluster::start();
    runtime().block_on(async {
        let url = fluvio.url("again");
        let events = |prefix: &str, n: usize| -> Vec<(Bytes, Bytes)> {
            (0..n)
                .map(|i| {
                    let user = format!("u{}", i % 7);
                    let e = Event {
                        event_id: format!("{prefix}{i}").into(),
                        user_id: user.clone().into(),
                        kind: Kind::View,
                        item_id: Some(format!("i{i}").into()),
                        category: None,
                        price: None,
                        quantity: 1,
                        rating: None,
                        query: None,
                        ts: 1_763_000_000_000,
                        session_id: None,
                        props: None,
                    };
                    (
                        Bytes::from(user),
                        Bytes::from(to_bus_value(&e, 1_763_000_000_000)),
                    )
                })
                .collect()
        };
        let store: Arc<dyn OnlineStore> = Arc::new(MemoryStore::default());
        let lake = Lake::open("memory://").unwrap();
        let catch_up = |bus: Arc<dyn Bus>| {
            let (store, lake) = (store.clone(), lake.clone());
            async move {
                let opts = crate::speed::SpeedOptions {
                    until_caught_up: true,
                    ..Default::default()
                };
                let speed = crate::speed::run(bus.clone(), store, opts, CancellationToken::new())
                    .await
                    .unwrap();
                let opts = crate::archive::ArchiveOptions {
                    until_caught_up: true,
                    ..Default::default()
                };
                let archived = crate::archive::run(bus, lake, opts, CancellationToken::new())
                    .await
                    .unwrap();
                (speed.counts.applied, archived.events)
            }
        };

        let bus: Arc<dyn Bus> = Arc::new(FluvioBus::connect(&url, 1).await.unwrap());
        bus.produce(events("old", 40)).await.unwrap();
        let old_id = bus
            .log_id(0)
            .await
            .unwrap()
            .expect("a log with records has an id");
        assert_eq!(catch_up(bus.clone()).await, (40, 40));
        assert_eq!(
            FluvioBus::connect(&url, 1)
                .await
                .unwrap()
                .log_id(0)
                .await
                .unwrap(),
            Some(old_id.clone()),
            "the same log has the same identity in every process"
        );

        let admin =
            fluvio::Fluvio::connect_with_config(&fluvio::FluvioClusterConfig::new(fluvio.addr()))
                .await
                .unwrap()
                .admin()
                .await;
        admin
            .delete::<fluvio::metadata::topic::TopicSpec>("again".to_string())
            .await
            .unwrap();
        // Deleting takes a moment; connecting creates the topic again once it is gone.
        let fresh = loop {
            match FluvioBus::connect(&url, 1).await {
                Ok(b) if b.end_offset(0).await.is_ok_and(|e| e == 0) => break b,
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        fresh.produce(events("new", 25)).await.unwrap();
        // The old consumer's stream ends (a retryable error); its next fetch finds the log
        // shorter than what it read.
        let mut tries = 0;
        let err = loop {
            let err = bus
                .fetch(0, 40, 10, Duration::ZERO)
                .await
                .expect_err("the old consumer is past the new log's end");
            tries += 1;
            if !err.is_retryable() || tries == 5 {
                break err;
            }
        };
        assert!(
            err.to_string().contains("created again") && !err.is_retryable(),
            "{err}"
        );
        let fresh: Arc<dyn Bus> = Arc::new(fresh);
        let new_id = fresh.log_id(0).await.unwrap().unwrap();
        assert_ne!(new_id, old_id, "another log, another identity");
        assert_eq!(
            catch_up(fresh).await,
            (25, 25),
            "the new log's events count, though their offsets are the old ones' again"
        );
        let rows: usize = lake
            .read_events()
            .await
            .unwrap()
            .iter()
            .map(|b| b.num_rows())
            .sum();
        assert_eq!(
            rows, 65,
            "the new log's files did not replace the old one's"
        );
        let seen: u64 = (0..7)
            .map(|u| format!("u{u}"))
            .map(|u| {
                let store = store.clone();
                async move { store.speed(&u, 0).await.unwrap().merged().events() }
            })
            .collect::<futures::stream::FuturesOrdered<_>>()
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .sum();
        assert_eq!(seen, 65);
    });
}

/// A cluster that speaks only TLS and asks for client certificates: Tandem connects with the
/// certificates of `bus.tls` (verified), and a plaintext client is refused.
#[test]
fn tls_with_client_certificates() {
    let fluvio = FluvioCluster::start_tls();
    let t = fluvio.tls().unwrap().clone();
    runtime().block_on(async {
        let opts = BusOptions {
            tls: crate::bus::BusTls::Verified {
                domain: t.domain.clone(),
                ca_cert: t.ca_cert.clone(),
                cert: t.cert.clone(),
                key: t.key.clone(),
            },
            ..BusOptions::new(2)
        };
        let bus = FluvioBus::connect_with(&fluvio.url("secret"), &opts)
            .await
            .unwrap();
        let at = bus
            .produce(vec![(Bytes::from("u1"), Bytes::from("over TLS"))])
            .await
            .unwrap();
        let got = bus
            .fetch(at[0].partition, 0, 10, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(&got[0].value[..], b"over TLS");
        bus.commit("g", at[0].partition, 1).await.unwrap();
        assert_eq!(bus.committed("g", at[0].partition).await.unwrap(), Some(1));
        let plain = tokio::time::timeout(
            Duration::from_secs(60),
            FluvioBus::connect(&fluvio.url("secret"), 2),
        )
        .await
        .expect("a plaintext client is answered, not left waiting");
        assert!(plain.is_err(), "a plaintext client is refused");
    });
}
