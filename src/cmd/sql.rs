//! `tandem sql`: analyst SQL over the lake and a snapshot (`-e`, a script, or a REPL).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use tandem_common::config::Config;

use super::open_lake;

#[derive(Args)]
pub(crate) struct SqlArgs {
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
pub(crate) enum SqlFormat {
    Table,
    Csv,
    Json,
    Parquet,
}

pub(crate) async fn sql_command(args: SqlArgs, config: &Config) -> Result<()> {
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
