//! `tandem generate`: a synthetic storefront's events, as JSON lines, into the lake or onto
//! the bus.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use tandem_common::config::Config;
use tandem_common::event::now_ms;
use tandem_common::ingest::{IngestOptions, InputFormat};
use tandem_testkit::generate::{GenerateOptions, Generator};

use super::{open_bus, open_lake, parse_time};

#[derive(Args)]
pub(crate) struct GenerateArgs {
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
    /// With --lake: write the events as the archiver would have had they streamed in, each
    /// stamped with its event time plus a delivery delay (5% hours to days late), into its
    /// ingest date's folder, instead of as one bulk load stamped now. A history spread over
    /// ingest time: what incremental batch runs (`tandem batch run`) see in production.
    #[arg(long, requires = "lake")]
    streamed: bool,
    /// Send onto this bus (URL) instead, stamped with the ingest time of sending, as the API
    /// does; `config` means bus.url.
    #[arg(long, value_name = "URL")]
    bus: Option<String>,
    /// Write JSON lines to this file instead of standard output.
    #[arg(long, short, value_name = "FILE", conflicts_with_all = ["lake", "bus"])]
    output: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Format {
    Jsonl,
    Csv,
}

pub(crate) async fn generate(args: GenerateArgs, config: &Config) -> Result<()> {
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
        if args.streamed {
            let started = std::time::Instant::now();
            let (events, files) = tandem_testkit::generate::write_streamed_to_lake(
                generator,
                &lake,
                options.writer,
                args.seed,
            )
            .await?;
            println!(
                "{}",
                serde_json::json!({
                    "events": events,
                    "files": files.len(),
                    "bytes": files.iter().map(|f| f.bytes).sum::<u64>(),
                    "seconds": started.elapsed().as_secs_f64(),
                })
            );
            return Ok(());
        }
        let summary = tandem_testkit::generate::write_to_lake(generator, &lake, options).await?;
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

pub(crate) fn write_jsonl(mut generator: Generator, mut out: Box<dyn Write + Send>) -> Result<()> {
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

/// Sends generated events onto the bus in chunks, each stamped with the time it is sent.
pub(crate) async fn send_to_bus(
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
