//! The server's state ([`App`]): the store, the bus, the lake, the keys, the snapshot followed
//! and what the server knows of erasures and the speed layer's lag; and the followers that keep
//! it current, spawned on the process's task supervisor.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tandem_common::bus::{Bus, partition_for};
use tandem_common::task::Tasks;
use tokio_util::sync::CancellationToken;

use crate::snapshot::Snapshots;
use crate::{auth, edge};

/// How the server behaves.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Longest wait for one online-store call before the answer degrades.
    pub store_timeout: Duration,
    /// Longest wait for the bus to take a request's events before answering 503.
    pub bus_timeout: Duration,
    /// How far an event's time may be past its ingest time (ms).
    pub max_future_ms: i64,
    /// Snapshot rows (users and items, each) cached in memory.
    pub cache_rows: usize,
    /// Memory of the row caches, bytes ([`Snapshots::with_cache_bytes`]).
    pub cache_bytes: u64,
    /// How often the snapshot pointer and the consumer lag are read.
    pub poll: Duration,
    /// Recommendations leave out the items the user already had an event with (the default of
    /// the request's `exclude_seen`).
    pub exclude_seen: bool,
    /// The speed layer's consumer group, whose lag the freshness block reports.
    pub speed_group: String,
    /// Longest wait for a request's body (then 408).
    pub body_timeout: Duration,
    /// Requests served at once (more get 503 `overloaded`).
    pub max_in_flight: usize,
    /// The connection limits of [`serve`].
    pub edge: edge::EdgeOptions,
    /// Browser origins allowed to call the API (CORS); `*` allows every origin.
    pub cors_origins: Vec<String>,
    /// Operations are on an admin listener ([`admin_router`]): the public one leaves out
    /// `/metrics`.
    pub admin_listener: bool,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            store_timeout: Duration::from_millis(100),
            bus_timeout: Duration::from_secs(5),
            max_future_ms: 5 * 60 * 1000,
            cache_rows: 200_000,
            cache_bytes: 512 << 20,
            poll: Duration::from_secs(1),
            exclude_seen: false,
            speed_group: "speed".into(),
            body_timeout: Duration::from_secs(30),
            max_in_flight: 256,
            edge: edge::EdgeOptions::default(),
            cors_origins: Vec::new(),
            admin_listener: false,
        }
    }
}

impl ServeOptions {
    /// The options of `config`.
    pub fn from_config(config: &tandem_common::config::Config) -> Self {
        ServeOptions {
            store_timeout: config.server.store_timeout,
            max_future_ms: config.events.max_future.as_millis() as i64,
            cache_rows: config.server.cache_rows,
            cache_bytes: config.server.cache_mib << 20,
            exclude_seen: config.server.exclude_seen,
            body_timeout: config.server.body_timeout,
            max_in_flight: config.server.max_in_flight,
            edge: edge::EdgeOptions::from_config(config),
            cors_origins: config.server.cors_origins.clone(),
            admin_listener: !config.server.admin_listen.is_empty(),
            ..Default::default()
        }
    }
}

/// Every erasure of the lake (user → latest erasure time), or None when the lake cannot say in
/// `patience`.
async fn lake_erasures(
    lake: &tandem_common::lake::Lake,
    patience: Duration,
) -> Option<std::collections::HashMap<String, i64>> {
    match tokio::time::timeout(patience.max(Duration::from_secs(5)), lake.erasures()).await {
        Ok(Ok(e)) => Some(e.into_iter().collect()),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not read the lake's erasures");
            None
        }
        Err(_) => {
            tracing::warn!("the lake did not list its erasures in time");
            None
        }
    }
}

/// The server's state, shared by every request.
pub struct App {
    /// The online store.
    pub store: Arc<dyn tandem_common::store::OnlineStore>,
    /// The bus events are produced to.
    pub bus: Arc<dyn Bus>,
    /// The lake, where erasures leave their tombstones for the batch layer.
    pub lake: tandem_common::lake::Lake,
    /// The snapshot followed.
    pub snapshots: Arc<Snapshots>,
    /// The accepted API keys.
    pub keys: auth::Keys,
    /// Options.
    pub opts: ServeOptions,
    /// Per partition: records the speed layer has yet to apply, when last measured.
    lag: RwLock<Vec<Option<u64>>>,
    /// The erasures known from the lake's tombstones (read at start, and again whenever the
    /// store is found to have lost its data, its erasure markers with it) and from this
    /// server's own erasures: a user erased counts as erased whatever the store says.
    erasures: RwLock<std::collections::HashMap<String, i64>>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("store", &self.store)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl App {
    /// The state of a server on `store` and `bus`; loads the current snapshot (if the store
    /// answers) and starts following the pointer, the lake's erasures and the consumer lag, as
    /// tasks of `tasks` (until their token is cancelled).
    pub async fn start<E: std::fmt::Display + Send + 'static>(
        store: Arc<dyn tandem_common::store::OnlineStore>,
        bus: Arc<dyn Bus>,
        lake: tandem_common::lake::Lake,
        keys: auth::Keys,
        opts: ServeOptions,
        tasks: &mut Tasks<E>,
    ) -> Arc<App> {
        tandem_common::telemetry::prometheus();
        let snapshots = Arc::new(
            Snapshots::new(store.clone(), opts.cache_rows, opts.store_timeout)
                .with_cache_bytes(opts.cache_bytes),
        );
        if let Err(e) = snapshots.refresh_noted().await {
            tracing::warn!(error = %e, "no snapshot loaded at start; retrying in the background");
        }
        let known = lake_erasures(&lake, opts.store_timeout).await;
        let erasures_loaded = known.is_some();
        let erasures = RwLock::new(known.unwrap_or_default());
        let app = Arc::new(App {
            lag: RwLock::new(vec![None; bus.partitions() as usize]),
            erasures,
            store,
            bus,
            lake,
            snapshots: snapshots.clone(),
            keys,
            opts,
        });
        let poll = app.opts.poll;
        tasks.spawn("the snapshot follower", |stop| async move {
            snapshots.follow(poll, stop).await;
            Ok(())
        });
        let a = app.clone();
        tasks.spawn("the erasure follower", |stop| async move {
            a.follow_erasures(erasures_loaded, stop).await;
            Ok(())
        });
        let a = app.clone();
        tasks.spawn("the lag follower", |stop| async move {
            a.follow_lag(stop).await;
            Ok(())
        });
        app
    }

    /// When `user` was erased, as far as this server knows without the store.
    pub fn erased_at(&self, user: &str) -> Option<i64> {
        self.erasures
            .read()
            .expect("erasures lock")
            .get(user)
            .copied()
    }

    /// Notes an erasure this server made.
    pub fn note_erasure(&self, user: &str, at_ms: i64) {
        let mut e = self.erasures.write().expect("erasures lock");
        let at = e.entry(user.to_string()).or_insert(at_ms);
        *at = (*at).max(at_ms);
    }

    /// Reads the lake's erasures again each time the snapshot follower finds the store lost its
    /// data (checked every `opts.poll`; and until they are read once, if they could not be at
    /// start), until `cancel`.
    async fn follow_erasures(self: Arc<Self>, loaded: bool, cancel: CancellationToken) {
        let mut seen = match loaded {
            true => Some(self.snapshots.losses()),
            false => None,
        };
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(self.opts.poll) => {}
            }
            let losses = self.snapshots.losses();
            if seen == Some(losses) {
                continue;
            }
            match lake_erasures(
                &self.lake,
                self.opts.store_timeout.max(Duration::from_secs(5)),
            )
            .await
            {
                Some(found) => {
                    for (user, at) in found {
                        self.note_erasure(&user, at);
                    }
                    seen = Some(losses);
                }
                None => tracing::warn!("could not read the lake's erasures; trying again"),
            }
        }
    }

    /// The speed layer's lag on `user`'s partition, when last measured.
    pub fn lag_of(&self, user: &str) -> Option<u64> {
        let p = partition_for(user.as_bytes(), self.bus.partitions()) as usize;
        self.lag.read().expect("lag lock").get(p).copied().flatten()
    }

    /// Measures the speed layer's lag per partition every `opts.poll`:
    /// `tandem_serving_freshness_lag_events{partition}`.
    async fn follow_lag(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            for p in 0..self.bus.partitions() {
                let end = self.bus.end_offset(p).await;
                let done = self.bus.committed(&self.opts.speed_group, p).await;
                let lag = match (end, done) {
                    (Ok(end), Ok(done)) => Some(end.saturating_sub(done.unwrap_or(0))),
                    (Err(e), _) | (_, Err(e)) => {
                        tracing::debug!(partition = p, error = %e, "could not measure the lag");
                        None
                    }
                };
                if let Some(l) = lag {
                    metrics::gauge!("tandem_serving_freshness_lag_events", "partition" => p.to_string())
                        .set(l as f64);
                }
                if let Some(slot) = self.lag.write().expect("lag lock").get_mut(p as usize) {
                    *slot = lag;
                }
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(self.opts.poll) => {}
            }
        }
    }
}
