//! `tandem`: the one binary. A thin clap front: it parses flags, loads the configuration and
//! calls the command's module (`cmd/`), which calls the library crates that hold the logic.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use tandem_common::config::{self, Sources};

use cmd::batch::{BatchCommand, batch_run};
use cmd::config::{ConfigCommand, config_command};
use cmd::generate::{GenerateArgs, generate};
use cmd::ingest::{IngestArgs, ingest_command};
use cmd::lake::{LakeCommand, lake_status};
use cmd::serve::{ServeArgs, serve_command};
use cmd::sql::{SqlArgs, sql_command};
use cmd::stream::{StreamCommand, stream_command};
use cmd::{init_logging, stop_on_signals};

mod cmd;
mod progress;

/// mimalloc rather than glibc's malloc: the API's worker threads contended on malloc's arena
/// locks (a profile of `tandem serve` under load), and DataFusion's batch allocates in many threads.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tandem: real-time personalization, batch plus stream.
#[derive(Parser)]
#[command(name = "tandem", version, about, propagate_version = true)]
struct Cli {
    /// A TOML configuration file (over the embedded defaults; see `tandem config show`).
    #[arg(long, global = true, env = "TANDEM_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Override one setting, e.g. `--set lake.url=s3://bucket/tandem`; repeatable; wins over
    /// the file and TANDEM__SECTION__KEY variables.
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    set: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Everything in one process on embedded defaults: generated history, a batch run, the
    /// speed layer, the archiver, the API with a web page, and live traffic. Ctrl-C stops it.
    Demo(cmd::demo::DemoArgs),
    /// Check or print the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Generate a synthetic storefront's events, as JSON lines or straight into the lake.
    Generate(GenerateArgs),
    /// Bulk-load JSON lines or CSV into the lake, stamping ingest time.
    Ingest(IngestArgs),
    /// Inspect the lake.
    #[command(subcommand)]
    Lake(LakeCommand),
    /// The batch layer: recompute the views, retrain the models, publish a snapshot.
    #[command(subcommand)]
    Batch(BatchCommand),
    /// The Ballista cluster a full batch run's views can run on (`batch.engine`): its scheduler
    /// and executors, with the lake and Tandem's SQL functions.
    #[cfg(feature = "ballista")]
    #[command(subcommand)]
    Ballista(cmd::ballista::BallistaCommand),
    /// Analyst SQL over the lake and a snapshot: `-e "…"`, a script on standard input, or a REPL.
    Sql(SqlArgs),
    /// The speed layer and the archiver: consumers of the event bus.
    #[command(subcommand)]
    Stream(StreamCommand),
    /// The HTTP API: events in; profiles, segments and recommendations out (`/openapi.json`
    /// describes it). Runs until SIGTERM/Ctrl-C, then finishes the requests in flight.
    Serve(ServeArgs),
}

fn main() -> ExitCode {
    // Fail points armed by `FAILPOINTS` (the fault tests; only with the `failpoints` feature).
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let sources = Sources {
        file: cli.config.clone(),
        overrides: cli.set.clone(),
        env: None,
    };
    if let Command::Config(cmd) = &cli.command {
        return config_command(cmd, &sources);
    }
    let config = config::load(&sources).map_err(|e| anyhow::anyhow!("{e}"))?;
    init_logging(&config, matches!(cli.command, Command::Demo(_)));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Config(_) => unreachable!("handled above"),
            Command::Generate(args) => generate(args, &config).await,
            Command::Ingest(args) => ingest_command(args, &config).await,
            Command::Lake(LakeCommand::Status) => lake_status(&config).await,
            Command::Batch(BatchCommand::Run(args)) => batch_run(args, &config).await,
            Command::Sql(args) => sql_command(args, &config).await,
            #[cfg(feature = "ballista")]
            Command::Ballista(cmd) => cmd::ballista::ballista_command(cmd, &config).await,
            Command::Stream(cmd) => stream_command(cmd, &config).await,
            Command::Serve(args) => serve_command(args, &config).await,
            Command::Demo(args) => cmd::demo::run(args, &config, stop_on_signals()?).await,
        }
    })?;
    Ok(ExitCode::SUCCESS)
}
