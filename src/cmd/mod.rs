//! One module per command; here what several of them share (logging, the lake, the store, the
//! bus, signals, the metrics endpoint).

#[cfg(feature = "ballista")]
pub(crate) mod ballista;
pub(crate) mod batch;
pub(crate) mod config;
pub(crate) mod demo;
pub(crate) mod generate;
pub(crate) mod ingest;
pub(crate) mod lake;
pub(crate) mod serve;
pub(crate) mod sql;
pub(crate) mod stream;

use std::io::IsTerminal;

use anyhow::{Context, Result, bail};
use tandem_common::config::{Config, LogFormat};
use tandem_common::event::parse_rfc3339_ms;
use tandem_common::lake::Lake;

/// Logging per `[log]`; `quiet` (the demo, whose terminal shows its banner) turns the default
/// `info` down to `warn`.
pub(crate) fn init_logging(config: &Config, quiet: bool) {
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

pub(crate) fn open_lake(flag: Option<&str>, config: &Config) -> Result<Lake> {
    let url = match flag {
        None | Some("config") => config.lake.url.as_str(),
        Some(u) => u,
    };
    Ok(Lake::open(url)?)
}

pub(crate) fn parse_time(s: &str, what: &str) -> Result<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    parse_rfc3339_ms(s).with_context(|| {
        format!("{what} `{s}`: expected RFC 3339 (2026-11-22T10:00:00Z) or epoch ms")
    })
}

/// The online store of `--store` (or `online_store.url`). With `refuse_memory` (why the command
/// needs a store other processes share), `memory://` is refused: it lives inside one process.
pub(crate) async fn open_shared_store(
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

pub(crate) async fn open_bus(
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

/// Cancelled on SIGTERM or SIGINT (Ctrl-C).
pub(crate) fn stop_on_signals() -> Result<tokio_util::sync::CancellationToken> {
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

/// Serves the process's one recorder ([`tandem_common::telemetry::prometheus`], the buckets and
/// upkeep `tandem serve` uses) as Prometheus text at every path of `listen`, in the background.
pub(crate) async fn serve_metrics(listen: Option<std::net::SocketAddr>) -> Result<()> {
    let Some(addr) = listen else {
        return Ok(());
    };
    let handle = tandem_common::telemetry::prometheus();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics-listen {addr}"))?;
    let app = axum::Router::new().fallback(axum::routing::get(move || {
        let handle = handle.clone();
        async move {
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                handle.render(),
            )
        }
    }));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(%addr, error = %e, "The metrics endpoint stopped.");
        }
    });
    tracing::info!(%addr, "Serving metrics.");
    Ok(())
}

/// The error a process exits with when one of its tasks failed: the task's own (it names the
/// task in its context), or its panic.
pub fn task_failure(f: tandem_common::task::TaskFailure<anyhow::Error>) -> anyhow::Error {
    match f {
        tandem_common::task::TaskFailure::Failed { error, .. } => error,
        tandem_common::task::TaskFailure::Panicked { task, message } => {
            anyhow::anyhow!("{task} panicked: {message}")
        }
    }
}
