//! Where a full run's views run (`batch.engine`): in the batch process, or on an Apache
//! DataFusion Ballista cluster whose executors read the lake themselves (ARCHITECTURE.md §5,
//! "Ballista").
//!
//! Every role — the batch run (the client), the scheduler, the executors — builds its session
//! with [`session_state`]: the lake's object store under `tandem://lake` and Tandem's
//! `log_sum_exp` aggregate, so that a plan naming either is planned and executed the same way
//! everywhere. The client sends the views' logical plans; the scheduler lists the lake's files
//! and cuts the plans into stages; executors scan the Parquet files and shuffle among
//! themselves. The `erasures` table, an in-memory table in the local engine, is written as a
//! Parquet file in the lake's scratch area for the run (an in-memory table cannot be sent).
//!
//! `tandem ballista scheduler` and `tandem ballista executor` run the two server roles
//! ([`serve_scheduler`], [`serve_executor`]); [`standalone`] runs both in this process, for
//! the tests and the bench.

use std::sync::Arc;

use ballista::prelude::SessionContextExt;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::SessionState;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::prelude::{SessionConfig, SessionContext};
use object_store::ObjectStoreExt;
use tandem_common::lake::Lake;
use tandem_sql::context::{LAKE_URL, LakeContext, replace_table};

use crate::error::{Error, Result};

/// The lake folder of the runs' scratch files (removed at the end of each run).
pub const SCRATCH_DIR: &str = "scratch";

/// A session with the lake's object store and Tandem's functions, on `config` — what every
/// role of a Ballista cluster builds its sessions with.
pub fn session_state(
    lake: &Lake,
    config: SessionConfig,
) -> datafusion::error::Result<SessionState> {
    let state = ballista_core::utils::default_session_builder(config)?;
    register_lake(lake, state.runtime_env())?;
    let mut state = state;
    datafusion::execution::FunctionRegistry::register_udaf(
        &mut state,
        Arc::new(tandem_sql::log_sum_exp::udaf()),
    )?;
    Ok(state)
}

fn register_lake(lake: &Lake, runtime: &Arc<RuntimeEnv>) -> datafusion::error::Result<()> {
    let url = datafusion::execution::object_store::ObjectStoreUrl::parse(LAKE_URL)?;
    runtime.register_object_store(url.as_ref(), lake.store().clone());
    Ok(())
}

/// A Ballista failure, naming the role.
fn ballista(role: &str, e: impl std::fmt::Display) -> Error {
    Error::Common(tandem_common::Error::External(format!(
        "Ballista {role}: {e}"
    )))
}

/// A lake session whose queries run on the Ballista cluster of the scheduler at `scheduler`
/// (`host:port`), with the lake's tables as [`LakeContext::new`] registers them; the
/// `erasures` table is written to `scratch/<run>/erasures.parquet` first.
pub async fn lake_context(lake: &Lake, scheduler: &str, run: &str) -> Result<LakeContext> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let config = SessionConfig::new()
        .with_target_partitions(threads)
        .with_information_schema(true);
    let state = session_state(lake, config)?;
    let ctx = SessionContext::remote_with_state(&format!("df://{scheduler}"), state).await?;
    // Ballista rebuilds the session's state for itself: the aggregate again, for the planner.
    ctx.register_udaf(tandem_sql::log_sum_exp::udaf());
    let lc = LakeContext::over(ctx, lake).await?;
    if lc.erased_users > 0 {
        let batches = vec![tandem_sql::context::erasures_batch(
            &lake.erasures().await?,
        )?];
        let path = format!("{SCRATCH_DIR}/{run}/erasures/erasures.parquet");
        lake.store()
            .put(
                &lake.path(&path),
                tandem_sql::snapshots::parquet_bytes(&batches)?.into(),
            )
            .await?;
        let url = ListingTableUrl::parse(format!(
            "{LAKE_URL}/{}/",
            lake.path(&format!("{SCRATCH_DIR}/{run}/erasures"))
        ))?;
        let options =
            ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        let config = ListingTableConfig::new(url)
            .with_listing_options(options)
            .with_schema(batches[0].schema());
        replace_table(
            &lc.ctx,
            "erasures",
            Arc::new(ListingTable::try_new(config)?),
        )?;
    }
    Ok(lc)
}

/// Deletes the scratch files of `run`.
pub async fn remove_scratch(lake: &Lake, run: &str) -> Result<()> {
    use futures::TryStreamExt;
    let prefix = lake.path(&format!("{SCRATCH_DIR}/{run}"));
    let files: Vec<_> = lake
        .store()
        .list(Some(&prefix))
        .map_ok(|m| m.location)
        .try_collect()
        .await?;
    for f in files {
        lake.store().delete(&f).await?;
    }
    Ok(())
}

/// A scheduler and `executors` executors (each with `vcores` task slots) in this process,
/// serving on loopback ports; returns the scheduler's `host:port`. They stop with the runtime.
#[cfg(feature = "ballista-server")]
pub async fn standalone(lake: &Lake, executors: usize, vcores: usize) -> Result<String> {
    use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
    let state = session_state(lake, SessionConfig::new())?;
    let addr = ballista_scheduler::standalone::new_standalone_scheduler_from_state(&state)
        .await
        .map_err(|e| ballista("scheduler", e))?;
    let url = format!("http://localhost:{}", addr.port());
    let mut tries = 0;
    let client = loop {
        match SchedulerGrpcClient::connect(url.clone()).await {
            Ok(c) => break c,
            Err(e) if tries == 100 => {
                return Err(ballista("scheduler", format!("{url} does not answer: {e}")));
            }
            Err(_) => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };
    for _ in 0..executors {
        ballista_executor::new_standalone_executor_from_state(client.clone(), vcores, &state)
            .await
            .map_err(|e| ballista("executor", e))?;
    }
    Ok(format!("localhost:{}", addr.port()))
}

/// `tandem ballista scheduler`: a Ballista scheduler on `listen` whose sessions know the lake
/// and Tandem's functions. Runs until the process ends.
#[cfg(feature = "ballista-server")]
pub async fn serve_scheduler(
    lake: &Lake,
    listen: std::net::SocketAddr,
    external_host: &str,
) -> Result<()> {
    use ballista_scheduler::cluster::BallistaCluster;
    use ballista_scheduler::config::SchedulerConfig;
    let lake = lake.clone();
    let builder = Arc::new(move |config: SessionConfig| session_state(&lake, config));
    let config = SchedulerConfig {
        bind_host: listen.ip().to_string(),
        bind_port: listen.port(),
        external_host: external_host.to_string(),
        ..SchedulerConfig::default()
    }
    .with_override_session_builder(builder);
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(|e| ballista("scheduler", e))?;
    ballista_scheduler::scheduler_process::start_server(cluster, listen, Arc::new(config))
        .await
        .map_err(|e| ballista("scheduler", e))
}

/// What `tandem ballista executor` is asked to do.
#[cfg(feature = "ballista-server")]
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The scheduler, `host:port`.
    pub scheduler: String,
    /// The address to serve shuffle data (Arrow Flight) on; its port, and the next one for
    /// the executor's gRPC service.
    pub listen: std::net::SocketAddr,
    /// The host name other executors and the scheduler reach this one at.
    pub external_host: Option<String>,
    /// Task slots.
    pub vcores: usize,
    /// Where shuffle files are written.
    pub work_dir: Option<String>,
}

/// `tandem ballista executor`: an executor of the scheduler's cluster that reads the lake
/// itself and knows Tandem's functions. Runs until the process ends.
#[cfg(feature = "ballista-server")]
pub async fn serve_executor(lake: &Lake, opts: ExecutorOptions) -> Result<()> {
    use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
    let (host, port) = opts
        .scheduler
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
        .ok_or_else(|| Error::User(format!("--scheduler `{}` is not host:port", opts.scheduler)))?;
    let state = session_state(lake, SessionConfig::new())?;
    let runtime = state.runtime_env().clone();
    let config = ExecutorProcessConfig {
        bind_host: opts.listen.ip().to_string(),
        port: opts.listen.port(),
        grpc_port: opts.listen.port().wrapping_add(1),
        external_host: opts.external_host,
        scheduler_host: host,
        scheduler_port: port,
        vcores: opts.vcores,
        work_dir: opts.work_dir,
        print_thread_info: false,
        override_function_registry: Some(Arc::new((&state).into())),
        override_runtime_producer: Some(Arc::new(move |_| Ok(runtime.clone()))),
        ..ExecutorProcessConfig::default()
    };
    start_executor_process(Arc::new(config))
        .await
        .map_err(|e| ballista("executor", e))
}

#[cfg(all(test, feature = "ballista-server"))]
mod tests {
    use super::*;
    use crate::run::incremental::tests::{DAY, END, assert_same_views, options};
    use crate::run::{RunOptions, run};
    use crate::snapshot::NoFaults;
    use crate::views::tests::{lake_of, stamped_with};
    use tandem_common::config::BatchEngine;
    use tandem_common::lake::Tombstone;
    use tandem_common::store::MemoryStore;

    /// A full run with its views on an in-process Ballista cluster (a scheduler, two
    /// executors) publishes the snapshot the local engine does, erasures included, and leaves
    /// no scratch files.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_views_on_ballista_equal_the_local_engine_s() {
        let events = stamped_with(80, 5, 21);
        let (local, remote) = (lake_of(&events).await, lake_of(&events).await);
        let erased = Tombstone {
            user_id: events[3].0.user_id.to_string(),
            erased_ms: END - 2 * DAY,
        };
        for lake in [&local, &remote] {
            lake.record_erasure(&erased).await.unwrap();
        }
        let scheduler = standalone(&remote, 2, 2).await.unwrap();
        // The views' queries are planned for the cluster, not run here.
        let lc = lake_context(&remote, &scheduler, "explain").await.unwrap();
        let plan = lc
            .ctx
            .sql("EXPLAIN SELECT user_id, log_sum_exp(CAST(quantity AS DOUBLE)) FROM events_all GROUP BY user_id")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&plan)
            .unwrap()
            .to_string();
        assert!(
            text.contains("distributed_plan") && text.contains("ShuffleWriterExec"),
            "{text}"
        );
        remove_scratch(&remote, "explain").await.unwrap();
        let cutoff = END + DAY;
        let a = run(
            &local,
            &MemoryStore::default(),
            &options(cutoff, true),
            &NoFaults,
            &(),
        )
        .await
        .unwrap();
        let on_ballista = RunOptions {
            engine: BatchEngine::Ballista(scheduler),
            ..options(cutoff, true)
        };
        let b = run(
            &remote,
            &MemoryStore::default(),
            &on_ballista,
            &NoFaults,
            &(),
        )
        .await
        .unwrap();
        assert_eq!(a.events, b.events);
        assert!(b.events > 0 && a.erased_users == 1);
        assert_same_views(&local, &a.snapshot, &remote, &b.snapshot).await;
        // The models learn from the same events, folded as they stream from the cluster.
        use tandem_models::manifest::ModelsEntry;
        match (a.models.unwrap(), b.models.unwrap()) {
            // (The training rows' negatives are sampled: their number varies run to run.)
            (ModelsEntry::Trained(ma), ModelsEntry::Trained(mb)) => assert_eq!(
                (ma.split, ma.train_users, ma.eval_users),
                (mb.split, mb.train_users, mb.eval_users)
            ),
            other => panic!("models: {other:?}"),
        }
        let scratch = remote.path(SCRATCH_DIR);
        use futures::TryStreamExt;
        let left: Vec<_> = remote
            .store()
            .list(Some(&scratch))
            .try_collect()
            .await
            .unwrap();
        assert!(left.is_empty(), "{left:?}");
    }
}
