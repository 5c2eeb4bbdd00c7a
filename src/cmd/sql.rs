//! `tandem sql`: analyst SQL over the lake and the snapshots — statements from `-e`, files
//! (`-f`), standard input or an interactive shell — and `tandem sql serve`, the same catalog
//! over the Postgres wire protocol.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};
use tandem_common::config::{Config, Scope};
use tandem_sql::catalog::Catalog;
use tandem_sql::output::{Format as Out, write_stream};
use tandem_sql::script::{complete, only_comments};

use super::{open_lake, serve_metrics, stop_on_signals};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct SqlArgs {
    #[command(subcommand)]
    command: Option<SqlCommand>,
    /// Run these statements and exit (repeatable; one may hold several, split by `;`).
    #[arg(short = 'e', long = "execute", value_name = "SQL")]
    execute: Vec<String>,
    /// Run the statements of this file and exit (repeatable; after every -e).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Vec<PathBuf>,
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
    /// The online store `live_profiles` reads [default: online_store.url of the
    /// configuration; with memory://, there is no live_profiles].
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// Rows a table on a terminal shows before it stops with a note; 0 for all [default:
    /// sql.max_display_rows of the configuration].
    #[arg(long, value_name = "N")]
    max_rows: Option<usize>,
}

#[derive(Subcommand)]
enum SqlCommand {
    /// Serve the catalog over the Postgres wire protocol (psql, DBeaver, Metabase, Grafana)
    /// until SIGTERM/Ctrl-C.
    Serve(SqlServeArgs),
}

#[derive(Args)]
struct SqlServeArgs {
    /// Listen address [default: sql.listen of the configuration].
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<std::net::SocketAddr>,
    /// The lake URL [default: lake.url of the configuration].
    #[arg(long, value_name = "URL")]
    lake: Option<String>,
    /// The online store `live_profiles` reads [default: online_store.url of the
    /// configuration; with memory://, there is no live_profiles].
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// Serve Prometheus metrics on this address (`GET /metrics`), e.g. 0.0.0.0:9464.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum SqlFormat {
    Table,
    Csv,
    Json,
    Parquet,
}

pub(crate) async fn sql_command(args: SqlArgs, config: &Config) -> Result<()> {
    if let Some(SqlCommand::Serve(s)) = args.command {
        return serve(s, config).await;
    }
    let format = match args.format {
        SqlFormat::Table => Out::Table,
        SqlFormat::Csv => Out::Csv,
        SqlFormat::Json => Out::Json,
        SqlFormat::Parquet => Out::Parquet,
    };
    let to_terminal = args.output.is_none() && std::io::stdout().is_terminal();
    if format == Out::Parquet && to_terminal {
        bail!("--format parquet writes binary: give --output FILE or redirect standard output");
    }
    let lake = open_lake(args.lake.as_deref(), config)?;
    let catalog = with_live(
        Catalog::open(&lake, args.snapshot.as_deref()).await?,
        args.store.as_deref(),
        config,
    )
    .await?;
    let out: Box<dyn Write + Send> = match &args.output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("--output {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    let max_rows = args.max_rows.unwrap_or(config.sql.max_display_rows);
    let mut shell = Shell {
        catalog,
        format,
        out,
        table_limit: (to_terminal && max_rows > 0).then_some(max_rows),
        timing: false,
        results: 0,
    };
    if !args.execute.is_empty() || !args.file.is_empty() {
        for (i, sql) in args.execute.iter().enumerate() {
            shell.script(sql, &format!("-e #{}", i + 1)).await?;
        }
        for f in &args.file {
            let text = std::fs::read_to_string(f).with_context(|| format!("-f {}", f.display()))?;
            shell.script(&text, &f.display().to_string()).await?;
        }
        return shell.finish();
    }
    if std::io::stdin().is_terminal() {
        shell.interactive().await?;
        return shell.finish();
    }
    let text = std::io::read_to_string(std::io::stdin()).context("reading standard input")?;
    shell.script(&text, "<stdin>").await?;
    shell.finish()
}

/// Statements and backslash commands, run against the catalog.
struct Shell {
    catalog: Catalog,
    format: Out,
    out: Box<dyn Write + Send>,
    /// Rows a table shows (a terminal's); `None`: every row.
    table_limit: Option<usize>,
    timing: bool,
    /// Results written so far (a Parquet output holds one).
    results: usize,
}

/// What a line of input did.
enum Step {
    Continue,
    Quit,
}

impl Shell {
    /// Runs a script: statements ended by `;` (the last may lack it) and backslash commands on
    /// lines of their own. The first failure stops it, naming where it was.
    async fn script(&mut self, text: &str, origin: &str) -> Result<()> {
        let mut buf = String::new();
        let mut start = 1;
        for (n, line) in text.lines().enumerate() {
            if buf.trim().is_empty() && line.trim_start().starts_with('\\') {
                match self.command(line.trim()).await {
                    Ok(Step::Continue) => continue,
                    Ok(Step::Quit) => return Ok(()),
                    Err(e) => bail!("{origin}:{}: {e}", n + 1),
                }
            }
            if buf.trim().is_empty() {
                start = n + 1;
            }
            buf.push_str(line);
            buf.push('\n');
            if complete(&buf) {
                let sql = std::mem::take(&mut buf);
                self.run(&sql)
                    .await
                    .map_err(|e| anyhow!("{origin}:{start}: {e}"))?;
            }
        }
        if !only_comments(&buf) {
            self.run(&buf)
                .await
                .map_err(|e| anyhow!("{origin}:{start}: {e}"))?;
        }
        Ok(())
    }

    /// The shell on a terminal: line editing, history, multi-line statements; an error is
    /// shown and the shell goes on.
    async fn interactive(&mut self) -> Result<()> {
        use rustyline::error::ReadlineError;
        let mut editor = rustyline::DefaultEditor::new()?;
        let history =
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".tandem_sql_history"));
        if let Some(h) = &history {
            let _ = editor.load_history(h);
        }
        eprintln!(
            "tandem sql — snapshot {}. \\d lists the tables, \\? the commands; end statements with ;, quit with \\q or Ctrl-D.",
            self.catalog.snapshot.as_deref().unwrap_or("(none yet)")
        );
        let mut buf = String::new();
        loop {
            let prompt = if buf.is_empty() {
                "tandem> "
            } else {
                "   ...> "
            };
            let line = match tokio::task::block_in_place(|| editor.readline(prompt)) {
                Ok(l) => l,
                Err(ReadlineError::Interrupted) => {
                    buf.clear();
                    continue;
                }
                Err(ReadlineError::Eof) => break,
                Err(e) => return Err(e.into()),
            };
            if buf.is_empty() && line.trim_start().starts_with('\\') {
                let _ = editor.add_history_entry(line.as_str());
                match self.command(line.trim()).await {
                    Ok(Step::Continue) => {}
                    Ok(Step::Quit) => break,
                    Err(e) => eprintln!("error: {e}"),
                }
                continue;
            }
            buf.push_str(&line);
            buf.push('\n');
            if complete(&buf) {
                let sql = std::mem::take(&mut buf);
                let _ = editor.add_history_entry(sql.trim());
                if let Err(e) = self.run(&sql).await {
                    eprintln!("error: {e}");
                }
            }
        }
        if let Some(h) = &history {
            let _ = editor.save_history(h);
        }
        Ok(())
    }

    /// Runs every statement of `sql`, writing each result.
    async fn run(&mut self, sql: &str) -> Result<()> {
        let statements = self.catalog.parse(sql).map_err(|e| anyhow!("{e}"))?;
        for st in statements {
            let started = Instant::now();
            if self.format == Out::Parquet && self.results > 0 {
                bail!("--format parquet holds one result; run one query per output file");
            }
            let df = self.catalog.plan(st).await.map_err(|e| anyhow!("{e}"))?;
            let stream = df.execute_stream().await?;
            let written = write_stream(stream, self.format, &mut self.out, self.table_limit)
                .await
                .map_err(|e| anyhow!("{e}"))?;
            self.out.flush()?;
            self.results += 1;
            if self.timing {
                eprintln!(
                    "Time: {:.3} ms ({} row{})",
                    started.elapsed().as_secs_f64() * 1e3,
                    written.rows,
                    if written.rows == 1 { "" } else { "s" }
                );
            }
        }
        Ok(())
    }

    /// A backslash command.
    async fn command(&mut self, line: &str) -> Result<Step> {
        let mut words = line.split_whitespace();
        let cmd = words.next().unwrap_or("");
        let arg = words.next();
        if words.next().is_some() {
            bail!("{cmd}: too many arguments");
        }
        match (cmd, arg) {
            ("\\q", None) => return Ok(Step::Quit),
            ("\\timing", None) => {
                self.timing = !self.timing;
                eprintln!("Timing is {}.", if self.timing { "on" } else { "off" });
            }
            ("\\timing", Some(v @ ("on" | "off"))) => {
                self.timing = v == "on";
                eprintln!("Timing is {v}.");
            }
            ("\\d", None) => {
                self.run(
                    "SELECT table_name AS \"table\", table_type AS type \
                     FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1;",
                )
                .await?;
                eprintln!(
                    "Other snapshots: profiles_at('ID'), affinity_at, items_at, similar_items_at, segments_at (ids in `snapshots`); the engine's columns: raw.profiles, raw.items, raw.similar_items, raw.segments."
                );
            }
            ("\\d", Some(name)) => {
                let (schema, table) = name.split_once('.').unwrap_or(("public", name));
                let word = |w: &str| {
                    !w.is_empty() && w.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                };
                if !word(schema) || !word(table) {
                    bail!(
                        "\\d {name}: a table name is letters, digits and _ (raw.profiles for a raw one)"
                    );
                }
                let filter = format!("table_schema = '{schema}' AND table_name = '{table}'");
                let found: usize = self
                    .catalog
                    .sql(&format!(
                        "SELECT column_name FROM information_schema.columns WHERE {filter}"
                    ))
                    .await
                    .map_err(|e| anyhow!("{e}"))?
                    .iter()
                    .map(|b| b.num_rows())
                    .sum();
                if found == 0 {
                    bail!("\\d {name}: no such table (\\d lists them)");
                }
                self.run(&format!(
                    "SELECT column_name AS \"column\", data_type AS type, is_nullable AS nullable \
                     FROM information_schema.columns WHERE {filter} ORDER BY ordinal_position;"
                ))
                .await?;
            }
            ("\\?", None) => eprintln!(
                "\\d            list the tables\n\\d TABLE      a table's columns\n\\timing [on|off]  show each statement's time\n\\q            quit"
            ),
            _ => bail!("unknown command `{line}` (\\? lists them)"),
        }
        Ok(Step::Continue)
    }

    fn finish(mut self) -> Result<()> {
        self.out.flush()?;
        Ok(())
    }
}

/// The catalog with `live_profiles` over the online store of `--store` or the configuration,
/// unless that is `memory://` (which only the process that made it can see).
async fn with_live(catalog: Catalog, store: Option<&str>, config: &Config) -> Result<Catalog> {
    let url = store.unwrap_or(config.online_store.url.expose());
    if url.starts_with("memory://") {
        return Ok(catalog);
    }
    let store = tandem_common::store::open(url).await?;
    catalog
        .with_live(store, config.sql.live_scan_limit)
        .map_err(|e| anyhow!("{e}"))
}

/// `tandem sql serve`.
async fn serve(args: SqlServeArgs, config: &Config) -> Result<()> {
    use tandem_sql::wire::{Server, WireOptions};
    let lake = open_lake(args.lake.as_deref(), config)?;
    let users: Vec<(String, String)> = config
        .server
        .api_keys
        .iter()
        .filter(|k| k.scopes.contains(&Scope::Sql))
        .map(|k| (k.name.clone(), k.key.expose().to_string()))
        .collect();
    let listen = match args.listen {
        Some(a) => a,
        None => config
            .sql
            .listen
            .parse()
            .with_context(|| format!("sql.listen `{}`", config.sql.listen))?,
    };
    let s = &config.sql;
    let opts = WireOptions {
        listen,
        max_connections: s.max_connections,
        statement_timeout: s.statement_timeout,
        memory_limit: s.memory_limit_mib << 20,
        refresh: s.refresh,
        tls: (!s.tls_cert.is_empty())
            .then(|| (PathBuf::from(&s.tls_cert), PathBuf::from(&s.tls_key))),
        users,
    };
    let catalog = with_live(
        Catalog::open(&lake, None).await?,
        args.store.as_deref(),
        config,
    )
    .await?;
    let snapshot = catalog.snapshot.clone();
    let server = Server::bind(catalog, &opts)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    tracing::info!(
        listen = %server.local_addr().map_err(|e| anyhow!("{e}"))?,
        snapshot = snapshot.as_deref().unwrap_or("(none yet)"),
        users = opts.users.len(),
        tls = opts.tls.is_some(),
        "SQL server listening (Postgres wire)"
    );
    serve_metrics(args.metrics_listen).await?;
    let stop = stop_on_signals()?;
    tokio::select! {
        r = server.run() => r.map_err(|e| anyhow!("{e}")),
        () = stop.cancelled() => {
            tracing::info!("SQL server stopped");
            Ok(())
        }
    }
}
