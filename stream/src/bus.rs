//! The event bus's backends: [`local`] (`local://PATH`, embedded and file-backed, for one
//! machine) and [`fluvio`] (`fluvio://HOST:PORT/TOPIC`, a Fluvio cluster). Every backend must
//! pass the same [`conformance`] suite. The contract they implement ([`Bus`], [`Record`],
//! [`partition_for`], the options) is `tandem_common::bus`, re-exported here.

use std::sync::Arc;

pub use tandem_common::bus::*;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod fluvio;
pub mod local;

/// Opens the bus at `url` with `partitions` partitions and default options.
pub async fn open(url: &str, partitions: u32) -> Result<Arc<dyn Bus>> {
    open_with(url, &BusOptions::new(partitions)).await
}

/// Opens the bus at `url`: `local://PATH[?fsync=always|never]` (the embedded log) or
/// `fluvio://HOST:PORT/TOPIC` (a Fluvio cluster; the topic is created when missing).
pub async fn open_with(url: &str, opts: &BusOptions) -> Result<Arc<dyn Bus>> {
    match url.split_once("://") {
        Some(("local", _)) => Ok(Arc::new(local::LocalBus::open_url(url, opts.partitions)?)),
        Some(("fluvio", _)) => Ok(Arc::new(fluvio::FluvioBus::connect_with(url, opts).await?)),
        _ => Err(Error::Config(format!(
            "bus `{url}`: expected local://PATH or fluvio://HOST:PORT/TOPIC"
        ))),
    }
}
