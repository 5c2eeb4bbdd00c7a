//! `tandem ballista scheduler|executor`: the two server roles of the Ballista cluster a full
//! batch run's views can run on (`batch.engine = "ballista://HOST:PORT"`), with Tandem's session:
//! the lake of the configuration and Tandem's SQL functions.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use tandem_common::config::Config;

use super::open_lake;

#[derive(Subcommand)]
pub(crate) enum BallistaCommand {
    /// The scheduler: takes the batch run's queries, plans their stages over the lake's files,
    /// hands tasks to the executors. Runs until killed.
    Scheduler(SchedulerArgs),
    /// An executor: runs the scheduler's tasks, reading the lake itself, and serves its shuffle
    /// output to the other executors. Runs until killed.
    Executor(ExecutorArgs),
}

#[derive(Args)]
pub(crate) struct SchedulerArgs {
    /// The address to serve on.
    #[arg(long, default_value = "0.0.0.0:50050")]
    listen: SocketAddr,
    /// The host name executors reach the scheduler at.
    #[arg(long, default_value = "localhost")]
    external_host: String,
    /// The lake URL [default: lake.url of the configuration].
    #[arg(long, value_name = "URL")]
    lake: Option<String>,
}

#[derive(Args)]
pub(crate) struct ExecutorArgs {
    /// The scheduler, `host:port`.
    #[arg(long, default_value = "localhost:50050")]
    scheduler: String,
    /// The address to serve shuffle data on (Arrow Flight); the next port serves the
    /// executor's gRPC.
    #[arg(long, default_value = "0.0.0.0:50051")]
    listen: SocketAddr,
    /// The host name the scheduler and the other executors reach this one at [default: the
    /// listen address].
    #[arg(long)]
    external_host: Option<String>,
    /// Task slots [default: the cores].
    #[arg(long)]
    vcores: Option<usize>,
    /// Where shuffle files are written [default: a temporary directory].
    #[arg(long, value_name = "DIR")]
    work_dir: Option<String>,
    /// The lake URL [default: lake.url of the configuration].
    #[arg(long, value_name = "URL")]
    lake: Option<String>,
}

pub(crate) async fn ballista_command(cmd: BallistaCommand, config: &Config) -> Result<()> {
    match cmd {
        BallistaCommand::Scheduler(a) => {
            let lake = open_lake(a.lake.as_deref(), config)?;
            tracing::info!(listen = %a.listen, lake = %lake.url(), "Ballista scheduler starting.");
            tandem_batch::engine::serve_scheduler(&lake, a.listen, &a.external_host)
                .await
                .context("the Ballista scheduler stopped")
        }
        BallistaCommand::Executor(a) => {
            let lake = open_lake(a.lake.as_deref(), config)?;
            let vcores = a
                .vcores
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            tracing::info!(scheduler = %a.scheduler, listen = %a.listen, vcores, "Ballista executor starting.");
            let opts = tandem_batch::engine::ExecutorOptions {
                scheduler: a.scheduler,
                listen: a.listen,
                external_host: a.external_host,
                vcores,
                work_dir: a.work_dir,
            };
            tandem_batch::engine::serve_executor(&lake, opts)
                .await
                .context("the Ballista executor stopped")
        }
    }
}
