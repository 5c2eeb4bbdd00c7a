//! `tandem`: the one binary. A thin clap front: it parses flags, loads the configuration and
//! calls the library crates, which hold the logic.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tandem_common::config::{self, Config, LogFormat, Sources};
use tandem_common::event::{now_ms, parse_rfc3339_ms};
use tandem_common::generate::{GenerateOptions, Generator};
use tandem_common::ingest::{self, IngestObserver, IngestOptions, InputFormat, Reject};
use tandem_common::lake::{IngestRun, Lake, ingest_watermark};

mod demo;
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
    Demo(demo::DemoArgs),
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
    /// Analyst SQL over the lake and a snapshot: `-e "…"`, a script on standard input, or a REPL.
    Sql(SqlArgs),
    /// The speed layer and the archiver: consumers of the event bus.
    #[command(subcommand)]
    Stream(StreamCommand),
    /// The HTTP API: events in; profiles, segments and recommendations out (`/openapi.json`
    /// describes it). Runs until SIGTERM/Ctrl-C, then finishes the requests in flight.
    Serve(ServeArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Listen address [default: server.listen of the configuration].
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<std::net::SocketAddr>,
    /// The bus URL events are produced to [default: bus.url of the configuration].
    #[arg(long, value_name = "URL")]
    bus: Option<String>,
    /// The online store URL [default: online_store.url of the configuration].
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// The lake URL, where erasures leave their tombstones [default: lake.url of the
    /// configuration].
    #[arg(long, value_name = "URL")]
    lake: Option<String>,
}

#[derive(Subcommand)]
enum StreamCommand {
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
enum DeadLetterCommand {
    /// Print every record set aside, one JSON line each: layer, partition, offset,
    /// set_aside_at, reason, key, value.
    List(DeadLetterArgs),
    /// Produce the records that are valid events back onto the bus (once what refused them is
    /// fixed) and remove them from the dead-letter; print a JSON summary.
    Replay(DeadLetterArgs),
}

#[derive(Args)]
struct DeadLetterArgs {
    /// The lake URL [default: lake.url of the configuration].
    #[arg(long, value_name = "URL")]
    lake: Option<String>,
    /// The bus URL replayed records go to [default: bus.url of the configuration].
    #[arg(long, value_name = "URL")]
    bus: Option<String>,
}

#[derive(Args)]
struct StreamArgs {
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
struct StreamRunArgs {
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
struct StreamArchiveArgs {
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

#[derive(Args)]
struct SqlArgs {
    /// Run this statement and exit (repeatable; run in order).
    #[arg(short = 'e', long = "execute", value_name = "SQL")]
    execute: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: SqlFormat,
    /// Write the output here instead of standard output (required for parquet on a terminal).
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
    /// The snapshot whose views are the tables [default: the newest complete one].
    #[arg(long, value_name = "ID")]
    snapshot: Option<String>,
    /// The lake URL [default: lake.url of the configuration].
    #[arg(long, value_name = "URL")]
    lake: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum SqlFormat {
    Table,
    Csv,
    Json,
    Parquet,
}

#[derive(Subcommand)]
enum BatchCommand {
    /// One batch run (the nightly CronJob): exit 0 only when the snapshot is published; one
    /// JSON summary line on standard output.
    Run(BatchRunArgs),
}

#[derive(Args)]
struct BatchRunArgs {
    /// The cutoff: `now` (the latest the lake allows) or a time (RFC 3339 or epoch ms), rounded
    /// down to an epoch boundary.
    #[arg(long, default_value = "now")]
    cutoff: String,
    /// Say what would be done (cutoff, snapshot id, files) and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// The lake URL [default: lake.url of the configuration].
    #[arg(long, value_name = "URL")]
    lake: Option<String>,
    /// The online store URL [default: online_store.url of the configuration].
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// No progress display even on a terminal.
    #[arg(long)]
    no_progress: bool,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Load the configuration and print every problem at once; exit 1 if there is one.
    Check,
    /// Print the configuration in effect, secrets hidden.
    Show,
}

#[derive(Subcommand)]
enum LakeCommand {
    /// Event files, rows, bytes and the ingest watermark, as JSON.
    Status,
}

#[derive(Args)]
struct GenerateArgs {
    /// Number of users.
    #[arg(long, default_value_t = 10_000)]
    users: u32,
    /// Number of items [default: users / 2, at least 100].
    #[arg(long)]
    items: Option<u32>,
    /// Number of categories.
    #[arg(long, default_value_t = 24)]
    categories: u32,
    /// Days of history.
    #[arg(long, default_value_t = 30)]
    days: u32,
    /// Average sessions per user per day.
    #[arg(long, default_value_t = 0.5)]
    sessions_per_day: f64,
    /// Seed: the same flags give the same events.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Share of invalid events to mix in (JSON lines only), e.g. 0.01.
    #[arg(long, default_value_t = 0.0)]
    bad_rate: f64,
    /// Share of events sent twice with the same event_id, as by a retrying producer.
    #[arg(long, default_value_t = 0.0)]
    dup_rate: f64,
    /// End of the history: RFC 3339 or epoch ms [default: the start of the current hour].
    #[arg(long)]
    end: Option<String>,
    /// Stop after this many events.
    #[arg(long)]
    events: Option<u64>,
    /// Write into this lake (URL) instead of printing JSON lines; `config` means lake.url.
    #[arg(long, value_name = "URL", conflicts_with = "bus")]
    lake: Option<String>,
    /// Send onto this bus (URL) instead, stamped with the ingest time of sending, as the API
    /// does; `config` means bus.url.
    #[arg(long, value_name = "URL")]
    bus: Option<String>,
    /// Write JSON lines to this file instead of standard output.
    #[arg(long, short, value_name = "FILE", conflicts_with_all = ["lake", "bus"])]
    output: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Jsonl,
    Csv,
}

#[derive(Args)]
struct IngestArgs {
    /// The input file, or `-` for standard input.
    input: String,
    /// Input format [default: csv for *.csv, else jsonl].
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Write rejected lines here, as they were, to fix and load again.
    #[arg(long, value_name = "FILE")]
    reject_file: Option<PathBuf>,
    /// The lake URL [default: lake.url of the configuration].
    #[arg(long, value_name = "URL")]
    lake: Option<String>,
    /// How many rejected lines to describe on standard error (all are counted).
    #[arg(long, default_value_t = 100)]
    show_rejects: u64,
    /// No progress bar even on a terminal.
    #[arg(long)]
    no_progress: bool,
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
            Command::Stream(cmd) => stream_command(cmd, &config).await,
            Command::Serve(args) => serve_command(args, &config).await,
            Command::Demo(args) => demo::run(args, &config, stop_on_signals()?).await,
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn batch_run(args: BatchRunArgs, config: &Config) -> Result<()> {
    use tandem_batch::run::{RunOptions, run};
    let cutoff_ms = match args.cutoff.as_str() {
        "now" => None,
        s => Some(parse_time(s, "--cutoff")?),
    };
    let lake = open_lake(args.lake.as_deref(), config)?;
    let store = open_shared_store(
        args.store.as_deref(),
        config,
        (!args.dry_run).then_some("a batch run would publish into nothing"),
    )
    .await?;
    let opts = RunOptions {
        cutoff_ms,
        dry_run: args.dry_run,
        ..RunOptions::from_config(config)
    };
    let show = !args.no_progress && std::io::stderr().is_terminal();
    let steps = progress::Steps::new(show);
    let summary = run(
        &lake,
        store.as_ref(),
        &opts,
        &tandem_batch::snapshot::NoFaults,
        &steps,
    )
    .await;
    steps.finish();
    if !args.dry_run {
        record_batch_outcome(store.as_ref(), &summary).await;
    }
    let summary = summary?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

/// Leaves the run's outcome in the store for serving's `tandem_batch_last_*` gauges; a store
/// that cannot take it is logged, not fatal (the run's own result stands).
async fn record_batch_outcome(
    store: &dyn tandem_common::store::OnlineStore,
    summary: &tandem_batch::Result<tandem_batch::run::Summary>,
) {
    use tandem_common::store::{BATCH_FAILURE_KEY, BATCH_SUCCESS_KEY, BatchOutcome};
    let (key, outcome) = match summary {
        Ok(s) => (
            BATCH_SUCCESS_KEY,
            BatchOutcome {
                at_ms: now_ms(),
                snapshot: Some(s.snapshot.clone()),
                error: None,
            },
        ),
        Err(e) => (
            BATCH_FAILURE_KEY,
            BatchOutcome {
                at_ms: now_ms(),
                snapshot: None,
                error: Some(e.to_string()),
            },
        ),
    };
    let row = match serde_json::to_vec(&outcome) {
        Ok(v) => (key.to_string(), bytes::Bytes::from(v)),
        Err(e) => return tracing::warn!(error = %e, "could not encode the batch outcome"),
    };
    if let Err(e) = store.put(&[row]).await {
        tracing::warn!(error = %e, key, "could not record the batch outcome in the online store");
    }
}

async fn sql_command(args: SqlArgs, config: &Config) -> Result<()> {
    use tandem_sql::output::{Format as Out, write};
    let format = match args.format {
        SqlFormat::Table => Out::Table,
        SqlFormat::Csv => Out::Csv,
        SqlFormat::Json => Out::Json,
        SqlFormat::Parquet => Out::Parquet,
    };
    if format == Out::Parquet && args.output.is_none() && std::io::stdout().is_terminal() {
        bail!("--format parquet writes binary: give --output FILE or redirect standard output");
    }
    let lake = open_lake(args.lake.as_deref(), config)?;
    let catalog = tandem_sql::catalog::Catalog::open(&lake, args.snapshot.as_deref()).await?;
    let mut out: Box<dyn Write> = match &args.output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("--output {}", p.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    if !args.execute.is_empty() {
        for sql in &args.execute {
            let batches = catalog.sql(sql).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            write(&batches, format, &mut out)?;
        }
        return Ok(out.flush()?);
    }
    // A script on standard input, or a REPL on a terminal: statements end with `;`.
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "tandem sql — snapshot {}; tables: events, events_all, profiles, items, similar_items, segments, snapshots. End statements with ;, quit with Ctrl-D.",
            catalog.snapshot.as_deref().unwrap_or("(none yet)")
        );
    }
    let mut failed = false;
    let mut statement = String::new();
    let mut lines = std::io::stdin().lines();
    loop {
        if interactive {
            eprint!(
                "{}",
                if statement.is_empty() {
                    "tandem> "
                } else {
                    "   ...> "
                }
            );
        }
        let Some(line) = lines.next() else { break };
        let line = line?;
        statement.push_str(&line);
        statement.push('\n');
        if !line.trim_end().ends_with(';') {
            continue;
        }
        let sql = std::mem::take(&mut statement);
        match catalog.sql(sql.trim()).await {
            Ok(batches) => {
                write(&batches, format, &mut out)?;
                out.flush()?;
            }
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
            }
        }
    }
    if !statement.trim().is_empty() {
        eprintln!(
            "error: the input ended inside a statement (no closing `;`): {}",
            statement.trim()
        );
        failed = true;
    }
    out.flush()?;
    if failed && !interactive {
        bail!("some statements failed (see above)");
    }
    Ok(())
}

fn config_command(cmd: &ConfigCommand, sources: &Sources) -> Result<ExitCode> {
    match (cmd, config::load(sources)) {
        (ConfigCommand::Check, Ok(_)) => {
            println!("configuration is valid");
            Ok(ExitCode::SUCCESS)
        }
        (ConfigCommand::Show, Ok(c)) => {
            print!("{}", c.to_redacted_toml());
            Ok(ExitCode::SUCCESS)
        }
        (_, Err(e)) => {
            eprint!("{e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Logging per `[log]`; `quiet` (the demo, whose terminal shows its banner) turns the default
/// `info` down to `warn`.
fn init_logging(config: &Config, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let level = match config.log.level.as_str() {
        "info" if quiet => "warn",
        l => l,
    };
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match config.log.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn open_lake(flag: Option<&str>, config: &Config) -> Result<Lake> {
    let url = match flag {
        None | Some("config") => config.lake.url.as_str(),
        Some(u) => u,
    };
    Ok(Lake::open(url)?)
}

fn parse_time(s: &str, what: &str) -> Result<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    parse_rfc3339_ms(s).with_context(|| {
        format!("{what} `{s}`: expected RFC 3339 (2026-11-22T10:00:00Z) or epoch ms")
    })
}

async fn generate(args: GenerateArgs, config: &Config) -> Result<()> {
    let end_ms = match &args.end {
        Some(s) => parse_time(s, "--end")?,
        None => now_ms() / 3_600_000 * 3_600_000,
    };
    let mut opts = GenerateOptions::new(args.users, args.days, args.seed, end_ms);
    if let Some(items) = args.items {
        opts.items = items;
    }
    opts.categories = args.categories;
    opts.sessions_per_user_day = args.sessions_per_day;
    opts.bad_rate = args.bad_rate;
    opts.dup_rate = args.dup_rate;
    opts.max_events = args.events;
    if (args.lake.is_some() || args.bus.is_some()) && args.bad_rate > 0.0 {
        bail!(
            "--bad-rate makes invalid events, which only JSON lines can carry; drop --lake/--bus or --bad-rate"
        );
    }
    let generator = Generator::new(opts)?;
    if let Some(url) = &args.bus {
        let bus = open_bus(Some(url), config).await?;
        let summary = send_to_bus(generator, bus.as_ref()).await?;
        println!("{summary}");
        return Ok(());
    }
    if let Some(url) = &args.lake {
        let lake = open_lake(Some(url), config)?;
        let options = IngestOptions::from_config(config, InputFormat::Jsonl);
        let summary = tandem_common::generate::write_to_lake(generator, &lake, options).await?;
        println!("{}", serde_json::to_string(&summary)?);
        return Ok(());
    }
    let out: Box<dyn Write + Send> = match &args.output {
        Some(path) => Box::new(
            std::fs::File::create(path).with_context(|| format!("--output {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout()),
    };
    tokio::task::spawn_blocking(move || write_jsonl(generator, out)).await?
}

fn write_jsonl(mut generator: Generator, mut out: Box<dyn Write + Send>) -> Result<()> {
    let mut buf = Vec::with_capacity(1 << 20);
    loop {
        let more = generator.next_json(&mut buf);
        if buf.len() >= (1 << 20) - 4096 || !more {
            match out.write_all(&buf) {
                Ok(()) => {}
                // A closed pipe (`tandem generate | head`) ends generation quietly.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                Err(e) => return Err(e).context("writing events"),
            }
            buf.clear();
        }
        if !more {
            break;
        }
    }
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing events"),
        _ => Ok(()),
    }
}

/// Prints rejects (the first few) and keeps them all in the reject file.
struct Rejects {
    shown: u64,
    show: u64,
    file: Option<std::io::BufWriter<std::fs::File>>,
    csv_header: Option<Vec<u8>>,
    progress: progress::Progress,
    error: Option<std::io::Error>,
}

impl IngestObserver for Rejects {
    fn rejected(&mut self, r: &Reject) {
        if self.shown < self.show {
            self.progress
                .println(&format!("line {}: {}", r.line, r.message));
        }
        self.shown += 1;
        if let Some(f) = &mut self.file {
            let mut res = Ok(());
            if let Some(h) = self.csv_header.take() {
                res = f.write_all(&h).and_then(|_| f.write_all(b"\n"));
            }
            if let Err(e) = res
                .and_then(|_| f.write_all(&r.raw))
                .and_then(|_| f.write_all(b"\n"))
                && self.error.is_none()
            {
                self.error = Some(e);
            }
        }
    }

    fn progress(&mut self, input_bytes: u64, accepted: u64, rejected: u64) {
        self.progress.update(input_bytes, accepted, rejected);
    }
}

async fn ingest_command(args: IngestArgs, config: &Config) -> Result<()> {
    let lake = open_lake(args.lake.as_deref(), config)?;
    let format = match args.format {
        Some(Format::Jsonl) => InputFormat::Jsonl,
        Some(Format::Csv) => InputFormat::Csv,
        None => InputFormat::from_path(&args.input),
    };
    let (input, total): (Box<dyn Read + Send>, Option<u64>) = if args.input == "-" {
        (Box::new(std::io::stdin()), None)
    } else {
        let f = std::fs::File::open(&args.input)
            .with_context(|| format!("input file {}", args.input))?;
        let len = f.metadata().ok().map(|m| m.len());
        (Box::new(f), len)
    };
    let csv_header = match (format, args.input.as_str()) {
        // The reject file of a CSV input starts with the input's header, so it loads again.
        (InputFormat::Csv, path) if path != "-" => {
            let text = std::fs::read(path).unwrap_or_default();
            text.split(|b| *b == b'\n')
                .next()
                .map(|h| h.strip_suffix(b"\r").unwrap_or(h).to_vec())
        }
        _ => None,
    };
    let file = match &args.reject_file {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("--reject-file {}", p.display()))?,
        )),
        None => None,
    };
    let show_bar = !args.no_progress && std::io::stderr().is_terminal();
    let mut observer = Rejects {
        shown: 0,
        show: args.show_rejects,
        file,
        csv_header,
        progress: progress::Progress::new(show_bar, total),
        error: None,
    };
    let summary = ingest::ingest(
        &lake,
        input,
        IngestOptions::from_config(config, format),
        &mut observer,
    )
    .await?;
    observer.progress.finish();
    if let Some(f) = &mut observer.file {
        f.flush().context("writing the reject file")?;
    }
    if let Some(e) = observer.error {
        return Err(e).context("writing the reject file");
    }
    if summary.rejected > observer.show {
        eprintln!(
            "… and {} more rejected lines not described{}",
            summary.rejected - observer.show,
            if args.reject_file.is_some() {
                " (all are in the reject file)"
            } else {
                ""
            }
        );
    }
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

/// The online store of `--store` (or `online_store.url`). With `refuse_memory` (why the command
/// needs a store other processes share), `memory://` is refused: it lives inside one process.
async fn open_shared_store(
    flag: Option<&str>,
    config: &Config,
    refuse_memory: Option<&str>,
) -> Result<std::sync::Arc<dyn tandem_common::store::OnlineStore>> {
    let url = flag.unwrap_or(config.online_store.url.expose());
    if let Some(why) = refuse_memory
        && url.starts_with("memory://")
    {
        bail!(
            "online_store.url is memory://, which lives only inside one process: {why}. \
             Use --store redis://HOST:PORT (or set online_store.url), or `tandem demo`, which runs everything in one process"
        );
    }
    Ok(tandem_common::store::open(url).await?)
}

async fn open_bus(
    flag: Option<&str>,
    config: &Config,
) -> Result<std::sync::Arc<dyn tandem_stream::bus::Bus>> {
    let url = match flag {
        None | Some("config") => config.bus.url.as_str(),
        Some(u) => u,
    };
    let opts = tandem_stream::bus::BusOptions::from_config(&config.bus);
    Ok(tandem_stream::bus::open_with(url, &opts).await?)
}

/// Sends generated events onto the bus in chunks, each stamped with the time it is sent.
async fn send_to_bus(
    mut generator: Generator,
    bus: &dyn tandem_stream::bus::Bus,
) -> Result<serde_json::Value> {
    use bytes::Bytes;
    let started = std::time::Instant::now();
    let mut sent = 0u64;
    loop {
        let ingest_ts = now_ms();
        let chunk: Vec<(Bytes, Bytes)> = std::iter::from_fn(|| generator.next_event())
            .take(8192)
            .map(|e| {
                let key = Bytes::from(e.user_id.to_string());
                (
                    key,
                    Bytes::from(tandem_common::event::to_bus_value(&e, ingest_ts)),
                )
            })
            .collect();
        if chunk.is_empty() {
            break;
        }
        sent += chunk.len() as u64;
        bus.produce(chunk).await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(serde_json::json!({
        "sent": sent,
        "seconds": seconds,
        "events_per_second": sent as f64 / seconds.max(1e-9),
    }))
}

/// Cancelled on SIGTERM or SIGINT (Ctrl-C).
fn stop_on_signals() -> Result<tokio_util::sync::CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let token = tokio_util::sync::CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "Stopping."),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "Stopping."),
        }
        cancel.cancel();
        // A second signal means now: what was in flight is replayed at the next start.
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("error: stopped by a second signal before finishing");
        std::process::exit(130);
    });
    Ok(token)
}

fn serve_metrics(listen: Option<std::net::SocketAddr>) -> Result<()> {
    if let Some(addr) = listen {
        // The same histogram buckets as serve's, so that dashboards read every layer alike.
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                tandem_serving::ops::BUCKETS,
            )?
            .install()
            .with_context(|| format!("--metrics-listen {addr}"))?;
        tracing::info!(%addr, "Serving metrics.");
    }
    Ok(())
}

/// What the speed layer does when the store lost its work: publish the lake's snapshot again
/// ([`tandem_batch::run::restore`]).
fn restore_snapshot(
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

async fn stream_command(cmd: StreamCommand, config: &Config) -> Result<()> {
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
            serve_metrics(args.stream.metrics_listen)?;
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
            serve_metrics(args.stream.metrics_listen)?;
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

async fn serve_command(args: ServeArgs, config: &Config) -> Result<()> {
    use tandem_serving::{App, ServeOptions, auth::Keys};
    if config.server.api_keys.is_empty() {
        bail!(
            "server.api_keys is empty: every route but /healthz, /readyz, /metrics and /openapi.json needs a key. \
             Add [[server.api_keys]] entries (name, key of 16+ characters, scopes from ingest/read/admin) to the config file"
        );
    }
    let lake = open_lake(args.lake.as_deref(), config)?;
    if lake.url().starts_with("memory://") {
        bail!(
            "lake `memory://` is this process's alone: the batch layer would never see the API's erasure tombstones. \
             Use the lake the batch layer reads (--lake or lake.url)"
        );
    }
    let store = open_shared_store(
        args.store.as_deref(),
        config,
        Some("the API would read nothing the batch and speed layers write"),
    )
    .await?;
    let bus = open_bus(args.bus.as_deref(), config).await?;
    let listen = match args.listen {
        Some(a) => a,
        None => config
            .server
            .listen
            .parse()
            .with_context(|| format!("server.listen `{}`", config.server.listen))?,
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let stop = stop_on_signals()?;
    let app = App::start(
        store,
        bus,
        lake,
        Keys::new(&config.server.api_keys),
        ServeOptions::from_config(config),
        stop.clone(),
    )
    .await;
    let admin = if config.server.admin_listen.is_empty() {
        None
    } else {
        let at = &config.server.admin_listen;
        let l = tokio::net::TcpListener::bind(at)
            .await
            .with_context(|| format!("server.admin_listen {at}: cannot listen there"))?;
        tracing::info!(addr = %l.local_addr()?, "Serving /metrics and /readyz details.");
        let (router, opts, stop) = (
            tandem_serving::admin_router(app.clone()),
            app.opts.edge.clone(),
            stop.clone(),
        );
        Some(tokio::spawn(async move {
            tandem_serving::edge::serve_router(l, router, &opts, stop).await
        }))
    };
    tracing::info!(addr = %listener.local_addr()?, "Serving the API.");
    tandem_serving::serve(listener, app, stop).await?;
    if let Some(admin) = admin {
        admin.await.context("the admin listener")??;
    }
    Ok(())
}

async fn lake_status(config: &Config) -> Result<()> {
    let lake = open_lake(None, config)?;
    let files = lake.event_files().await?;
    let runs = IngestRun::list(&lake).await?;
    let now = now_ms();
    let watermark =
        ingest_watermark(&lake, now, config.lake.ingest_lease.as_millis() as i64).await?;
    let status = serde_json::json!({
        "lake": lake.url(),
        "event_files": files.len(),
        "event_bytes": files.iter().map(|f| f.size).sum::<u64>(),
        "events_in_finished_runs": runs.iter().filter(|r| r.finished).map(|r| r.events).sum::<u64>(),
        "ingest_runs": runs.len(),
        "ingest_runs_unfinished": runs.iter().filter(|r| !r.finished).count(),
        "ingest_watermark": tandem_common::event::format_rfc3339_ms(watermark),
    });
    println!("{}", serde_json::to_string_pretty(&status)?);
    Ok(())
}
