//! The bus conformance suite against a real Fluvio cluster: runs when
//! `TANDEM_TEST_FLUVIO=host:port` is set, and says why it is skipped otherwise. Each bus is a
//! new topic `tandem-test-<time>-<n>`. One runtime for the whole suite: the `fluvio` crate runs
//! its own executor, which keeps the tokio handle it first saw.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;

use super::FluvioBus;
use crate::bus::Bus;
use crate::bus::conformance::{self, Harness};

struct Cluster {
    addr: String,
    run: u128,
    n: AtomicU32,
}

#[async_trait]
impl Harness for Cluster {
    type Id = String;
    async fn fresh(&self, partitions: u32) -> (String, Arc<dyn Bus>) {
        let url = format!(
            "fluvio://{}/tandem-test-{}-{}",
            self.addr,
            self.run,
            self.n.fetch_add(1, Ordering::Relaxed)
        );
        let bus = FluvioBus::connect(&url, partitions).await.unwrap();
        (url, Arc::new(bus))
    }
    async fn reopen(&self, url: &String, partitions: u32) -> Arc<dyn Bus> {
        Arc::new(FluvioBus::connect(url, partitions).await.unwrap())
    }
}

#[test]
fn conformance_on_a_real_cluster() {
    let Ok(addr) = std::env::var("TANDEM_TEST_FLUVIO") else {
        println!(
            "skipped: the Fluvio bus conformance suite needs a cluster; set TANDEM_TEST_FLUVIO=host:port (its SC address) to run it"
        );
        return;
    };
    let cluster = Cluster {
        addr,
        run: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
        n: AtomicU32::new(0),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(conformance::run_all(&cluster));
}
