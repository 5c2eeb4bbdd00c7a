//! `tandem ingest`: bulk-load JSON lines or CSV into the lake.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use tandem_common::config::Config;
use tandem_common::ingest::{self, IngestObserver, IngestOptions, InputFormat, Reject};

use super::generate::Format;
use super::open_lake;

#[derive(Args)]
pub(crate) struct IngestArgs {
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

/// Prints rejects (the first few) and keeps them all in the reject file.
pub(crate) struct Rejects {
    shown: u64,
    show: u64,
    file: Option<std::io::BufWriter<std::fs::File>>,
    csv_header: Option<Vec<u8>>,
    progress: crate::progress::Progress,
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

pub(crate) async fn ingest_command(args: IngestArgs, config: &Config) -> Result<()> {
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
        progress: crate::progress::Progress::new(show_bar, total),
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
