//! `tandem stream run|archive|dead-letter`: the speed layer, the archiver and the dead-letter.

use anyhow::Result;
use clap::{Args, Subcommand};
use tandem_common::config::Config;
use tandem_common::lake::Lake;

use super::{open_bus, open_lake, open_shared_store, serve_metrics, stop_on_signals};

#[derive(Subcommand)]
pub(crate) enum StreamCommand {
    /// The speed layer: apply each event's deltas to the online store, exactly once in effect.
    /// Runs until SIGTERM/Ctrl-C (then finishes its batches and stores their positions).
    Run(StreamRunArgs),
    /// The archiver: write the bus into Parquet files in the lake and publish per-partition
    /// watermarks for the batch cutoff. Runs until SIGTERM/Ctrl-C (then makes its files visible).
    Archive(StreamArchiveArgs),
    /// The dead-letter: records the speed layer set aside (not valid events, or refused by the
    /// online store), with their reasons, in the lake under `dead_letter/`.
    #[command(subcommand)]
    DeadLetter(DeadLetterCommand),
}

#[derive(Subcommand)]
pub(crate) enum DeadLetterCommand {
    /// Print every record set aside, one JSON line each: layer, partition, offset,
    /// set_aside_at, reason, key, value.
    List(DeadLetterArgs),
    /// Produce the records that are valid events back onto the bus (once what refused them is
    /// fixed) and remove them from the dead-letter; print a JSON summary.
    Replay(DeadLetterArgs),
}

#[derive(Args)]
pub(crate) struct DeadLetterArgs {
    /// The lake URL [default: lake.url of the configuration].
    #[arg(long, value_name = "URL")]
    lake: Option<String>,
    /// The bus URL replayed records go to [default: bus.url of the configuration].
    #[arg(long, value_name = "URL")]
    bus: Option<String>,
}

#[derive(Args)]
pub(crate) struct StreamArgs {
    /// The bus URL [default: bus.url of the configuration].
    #[arg(long, value_name = "URL")]
    bus: Option<String>,
    /// The partitions to consume, e.g. `0,1,2` [default: all].
    #[arg(long, value_delimiter = ',', value_name = "P,…")]
    partitions: Vec<u32>,
    /// Stop once caught up with the end the bus had at start, and print a JSON summary.
    #[arg(long)]
    until_caught_up: bool,
    /// The consumer group whose positions are stored on the bus [default: speed, or archive].
    #[arg(long, value_name = "NAME")]
    group: Option<String>,
    /// Serve Prometheus metrics on this address (`GET /metrics`), e.g. 0.0.0.0:9464.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(Args)]
pub(crate) struct StreamRunArgs {
    #[command(flatten)]
    stream: StreamArgs,
    /// The online store URL [default: online_store.url of the configuration].
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// Records per fetch and per pipelined apply [default: stream.batch of the configuration].
    #[arg(long)]
    batch: Option<usize>,
    /// The lake URL: its erasure tombstones are noted in the store at start, and records set
    /// aside go to its `dead_letter/speed/` [default: lake.url of the configuration].
    #[arg(long, value_name = "URL")]
    lake: Option<String>,
}

#[derive(Args)]
pub(crate) struct StreamArchiveArgs {
    #[command(flatten)]
    stream: StreamArgs,
    /// The lake URL [default: lake.url of the configuration].
    #[arg(long, value_name = "URL")]
    lake: Option<String>,
    /// Rows per file [default: stream.archive_roll_rows of the configuration].
    #[arg(long)]
    roll_rows: Option<usize>,
    /// Largest age of an open file, e.g. `30s` [default: stream.archive_roll_age].
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    roll_age: Option<std::time::Duration>,
}

/// What the speed layer does when the store lost its work: publish the lake's snapshot again
/// ([`tandem_batch::run::restore`]).
pub(crate) fn restore_snapshot(
    lake: Lake,
    store: std::sync::Arc<dyn tandem_common::store::OnlineStore>,
    config: &Config,
) -> tandem_stream::speed::OnStoreLost {
    let config = config.clone();
    tandem_stream::speed::OnStoreLost(std::sync::Arc::new(move || {
        let (lake, store) = (lake.clone(), store.clone());
        let opts = tandem_batch::run::RunOptions::from_config(&config);
        Box::pin(async move {
            match tandem_batch::run::restore(&lake, store.as_ref(), &opts).await {
                Ok(Some(s)) => Ok(format!("snapshot {} ({:?})", s.snapshot, s.outcome)),
                Ok(None) => Ok(
                    "nothing to publish: the store holds its snapshot whole, or the lake has none"
                        .into(),
                ),
                Err(e) => Err(e.to_string()),
            }
        })
    }))
}

pub(crate) async fn stream_command(cmd: StreamCommand, config: &Config) -> Result<()> {
    match cmd {
        StreamCommand::Run(args) => {
            let bus = open_bus(args.stream.bus.as_deref(), config).await?;
            let store = open_shared_store(
                args.store.as_deref(),
                config,
                Some("the speed layer would apply into nothing that serving can read"),
            )
            .await?;
            let lake = open_lake(args.lake.as_deref(), config)?;
            serve_metrics(args.stream.metrics_listen).await?;
            let defaults = tandem_stream::speed::SpeedOptions::from_config(config);
            let opts = tandem_stream::speed::SpeedOptions {
                group: args.stream.group.unwrap_or(defaults.group),
                partitions: args.stream.partitions,
                batch: args.batch.unwrap_or(defaults.batch),
                until_caught_up: args.stream.until_caught_up,
                lake: Some(lake.clone()),
                on_store_lost: Some(restore_snapshot(lake, store.clone(), config)),
                ..defaults
            };
            let summary = tandem_stream::speed::run(bus, store, opts, stop_on_signals()?).await?;
            println!("{}", serde_json::to_string(&summary)?);
        }
        StreamCommand::Archive(args) => {
            let bus = open_bus(args.stream.bus.as_deref(), config).await?;
            let lake = open_lake(args.lake.as_deref(), config)?;
            serve_metrics(args.stream.metrics_listen).await?;
            let defaults = tandem_stream::archive::ArchiveOptions::from_config(config);
            let opts = tandem_stream::archive::ArchiveOptions {
                group: args.stream.group.unwrap_or(defaults.group),
                partitions: args.stream.partitions,
                roll_rows: args.roll_rows.unwrap_or(defaults.roll_rows),
                roll_age: args.roll_age.unwrap_or(defaults.roll_age),
                until_caught_up: args.stream.until_caught_up,
                ..defaults
            };
            let summary = tandem_stream::archive::run(bus, lake, opts, stop_on_signals()?).await?;
            println!("{}", serde_json::to_string(&summary)?);
        }
        StreamCommand::DeadLetter(DeadLetterCommand::List(args)) => {
            let lake = open_lake(args.lake.as_deref(), config)?;
            for (_, letters) in tandem_stream::dead_letter::list(&lake).await? {
                for l in letters {
                    println!("{}", serde_json::to_string(&l)?);
                }
            }
        }
        StreamCommand::DeadLetter(DeadLetterCommand::Replay(args)) => {
            let lake = open_lake(args.lake.as_deref(), config)?;
            let bus = open_bus(args.bus.as_deref(), config).await?;
            let summary = tandem_stream::dead_letter::replay(&lake, bus.as_ref()).await?;
            println!("{}", serde_json::to_string(&summary)?);
        }
    }
    Ok(())
}
