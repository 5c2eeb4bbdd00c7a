//! `tandem serve`: the HTTP API until SIGTERM/Ctrl-C.

use anyhow::{Context, Result, bail};
use clap::Args;
use tandem_common::config::Config;
use tandem_common::task::Tasks;

use super::{open_bus, open_lake, open_shared_store, stop_on_signals, task_failure};

#[derive(Args)]
pub(crate) struct ServeArgs {
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

pub(crate) async fn serve_command(args: ServeArgs, config: &Config) -> Result<()> {
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
    // The API, the admin listener and the server's followers: one supervisor, so that a part
    // that fails stops the others and the process exits with its error.
    let mut tasks: Tasks<anyhow::Error> = Tasks::new(&stop);
    let app = App::start(
        store,
        bus,
        lake,
        Keys::new(&config.server.api_keys),
        ServeOptions::from_config(config),
        &mut tasks,
    )
    .await;
    if !config.server.admin_listen.is_empty() {
        let at = &config.server.admin_listen;
        let l = tokio::net::TcpListener::bind(at)
            .await
            .with_context(|| format!("server.admin_listen {at}: cannot listen there"))?;
        tracing::info!(addr = %l.local_addr()?, "Serving /metrics and /readyz details.");
        let (router, opts) = (
            tandem_serving::admin_router(app.clone()),
            app.opts.edge.clone(),
        );
        tasks.spawn("the admin listener", |stop| async move {
            tandem_serving::edge::serve_router(l, router, &opts, stop)
                .await
                .context("the admin listener")
        });
    }
    tracing::info!(addr = %listener.local_addr()?, "Serving the API.");
    tasks.spawn("the API", |stop| async move {
        tandem_serving::serve(listener, app, stop)
            .await
            .context("the API")
    });
    tasks.join().await.map_err(task_failure)?;
    Ok(())
}
