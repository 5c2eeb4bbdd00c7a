//! `tandem demo`: every layer in one process on embedded defaults — a `file://` lake and a
//! `local://` bus under `--data`, the `memory://` online store (or `--redis URL`) — with a
//! generated history, a batch run, the speed layer, the archiver, the API, a live traffic
//! simulator and a web page at `/`. Running it again continues from the data on disk.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, header};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use clap::Args;
use tandem_common::config::{ApiKey, Config, Scope, Secret};
use tandem_common::event::{Event, now_ms};
use tandem_common::ingest::{IngestOptions, InputFormat};
use tandem_common::lake::Lake;
use tandem_common::store::OnlineStore;
use tandem_common::task::Tasks;
use tandem_serving::{App, ServeOptions, auth::Keys};
use tandem_testkit::generate::{GenerateOptions, Generator};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// The demo's ingest epoch: short, so that the first snapshot can cut right after the
/// generated history, and every periodic batch moves the cutoff on.
const EPOCH_MS: i64 = 10_000;

#[derive(Args)]
pub struct DemoArgs {
    /// Where the demo keeps its lake (`lake/`), bus (`bus/`) and API key.
    #[arg(long, default_value = "./tandem-data", value_name = "DIR")]
    data: PathBuf,
    /// Use this Redis (`redis://HOST:PORT`) as the online store instead of the in-process one.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// The address the API and the page listen on.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "HOST:PORT")]
    listen: SocketAddr,
    /// Users of the generated history (and of the live traffic).
    #[arg(long, default_value_t = 2000)]
    users: u32,
    /// Days of generated history.
    #[arg(long, default_value_t = 21)]
    days: u32,
    /// Live events a second from the traffic simulator (0: none).
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// How often the batch layer runs again, e.g. `5m`.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration, value_name = "DURATION")]
    batch_every: Duration,
    /// Serve without API keys (otherwise the demo makes one and prints it).
    #[arg(long)]
    no_auth: bool,
}

/// The simulator's latest events, for the page.
#[derive(Default)]
struct Live {
    events: Mutex<VecDeque<serde_json::Value>>,
}

const LIVE_KEEP: usize = 30;

pub async fn run(args: DemoArgs, config: &Config, stop: CancellationToken) -> Result<()> {
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        bail!(
            "--rate: {} is not a rate; give events a second, 0 or more",
            args.rate
        );
    }
    if args.users == 0 || args.days == 0 {
        bail!("--users and --days must be at least 1");
    }
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("--data {}: cannot create it", args.data.display()))?;
    let data = args
        .data
        .canonicalize()
        .with_context(|| format!("--data {}", args.data.display()))?;
    let lake = Lake::open(&format!("file://{}", data.join("lake").display()))?;
    let bus = tandem_stream::bus::open(
        &format!("local://{}", data.join("bus").display()),
        config.bus.partitions,
    )
    .await?;
    let store_url = args.redis.as_deref().unwrap_or("memory://");
    let store = tandem_common::store::open(store_url)
        .await
        .with_context(|| format!("--redis {store_url}"))?;
    let key = demo_key(&data)?;

    // 1. History: generated into the lake once; a later run keeps what is there.
    if lake.event_files().await?.is_empty() {
        eprintln!(
            "Generating {} days of history for {} users into {} …",
            args.days,
            args.users,
            lake.url()
        );
        let opts =
            GenerateOptions::new(args.users, args.days, 42, now_ms() / 3_600_000 * 3_600_000);
        let summary = tandem_testkit::generate::write_to_lake(
            Generator::new(opts)?,
            &lake,
            IngestOptions::from_config(config, InputFormat::Jsonl),
        )
        .await?;
        eprintln!("  {} events.", summary.accepted);
    } else {
        eprintln!("Continuing from the data in {} …", data.display());
    }

    // 2. A snapshot: the first cutoff after the history (at most one epoch away).
    let next_boundary = (now_ms() / EPOCH_MS + 1) * EPOCH_MS;
    tokio::time::sleep(Duration::from_millis(
        (next_boundary - now_ms()).max(0) as u64 + 50,
    ))
    .await;
    eprintln!("Running the batch layer (views, models, snapshot) …");
    let summary = batch(&lake, store.as_ref(), config).await?;
    eprintln!(
        "  snapshot {} at cutoff {}: {} events, {} rows in the online store.",
        summary.snapshot, summary.cutoff, summary.events, summary.store_rows
    );

    // 3. The speed layer and the archiver, following the bus.
    let memory = args.redis.is_none();
    if memory {
        // The in-process store starts empty: the speed layer applies the whole bus again
        // (what the snapshot already holds goes to epochs before its cutoff, which serving skips).
        for p in 0..bus.partitions() {
            bus.commit("demo-speed", p, 0).await?;
        }
    }
    let speed_opts = tandem_stream::speed::SpeedOptions {
        group: speed_group(memory),
        epoch_ms: EPOCH_MS,
        wait: Duration::from_millis(20),
        lake: Some(lake.clone()),
        ..tandem_stream::speed::SpeedOptions::from_config(config)
    };
    let archive_opts = tandem_stream::archive::ArchiveOptions {
        roll_age: Duration::from_secs(30),
        ..tandem_stream::archive::ArchiveOptions::from_config(config)
    };
    // Every part below runs under one supervisor: a part that fails stops the others.
    let mut tasks: Tasks<anyhow::Error> = Tasks::new(&stop);
    {
        let (bus, store) = (bus.clone(), store.clone());
        tasks.spawn("the speed layer", |stop| async move {
            tandem_stream::speed::run(bus, store, speed_opts, stop)
                .await
                .map(|_| ())
                .context("the speed layer")
        });
    }
    {
        let (bus, lake) = (bus.clone(), lake.clone());
        tasks.spawn("the archiver", |stop| async move {
            tandem_stream::archive::run(bus, lake, archive_opts, stop)
                .await
                .map(|_| ())
                .context("the archiver")
        });
    }

    // 4. The API, with the demo's page and its two helper routes.
    let keys = if args.no_auth {
        Keys::disabled()
    } else {
        Keys::new(&[ApiKey {
            name: "demo".into(),
            key: Secret::new(key.clone()),
            scopes: vec![Scope::Ingest, Scope::Read, Scope::Admin],
        }])
    };
    let opts = ServeOptions {
        speed_group: speed_group(memory),
        ..ServeOptions::from_config(config)
    };
    let app = App::start(
        store.clone(),
        bus.clone(),
        lake.clone(),
        keys,
        opts,
        &mut tasks,
    )
    .await;
    let live = Arc::new(Live::default());
    let api = tandem_serving::router(app.clone());
    let demo = axum::Router::new()
        .route("/", get(|| async { Html(tandem_serving::DEMO_PAGE) }))
        .route("/demo/events", get(live_events))
        .route("/demo/users", get(live_users))
        .with_state(live.clone());
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}: cannot listen there", args.listen))?;
    let addr = listener.local_addr()?;
    {
        let router = demo.merge(api.clone());
        let edge = tandem_serving::edge::EdgeOptions::from_config(config);
        tasks.spawn("the API", |stop| async move {
            tandem_serving::edge::serve_router(listener, router, &edge, stop)
                .await
                .context("the API")
        });
    }

    // 5. Live traffic, through the API's own handler, and the batch again every so often.
    if args.rate > 0.0 {
        let (key, live) = (key.clone(), live.clone());
        let (users, rate) = (args.users, args.rate);
        tasks.spawn("the traffic simulator", |stop| async move {
            simulate(api, &key, users, rate, live, stop).await
        });
    }
    {
        let (lake, store, config) = (lake.clone(), store.clone(), config.clone());
        let every = args.batch_every;
        tasks.spawn("the periodic batch", |stop| async move {
            loop {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(every) => {}
                }
                match batch(&lake, store.as_ref(), &config).await {
                    Ok(s) => tracing::info!(snapshot = %s.snapshot, cutoff = %s.cutoff, events = s.events, "Published a snapshot."),
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), "the periodic batch run failed; the next one retries"),
                }
            }
        });
    }

    print_banner(addr, if args.no_auth { None } else { Some(&key) });
    match tasks.join().await {
        Err(f) => Err(super::task_failure(f)),
        Ok(()) => {
            eprintln!(
                "Stopped. Run `tandem demo` again to continue from {}.",
                data.display()
            );
            Ok(())
        }
    }
}

/// The speed layer's consumer group: its own one with the in-process store, which starts empty.
fn speed_group(memory: bool) -> String {
    if memory { "demo-speed" } else { "speed" }.into()
}

/// The demo's API key: made once, kept in the data directory, readable by its owner only (a
/// key file from an older version is narrowed to that too).
fn demo_key(data: &std::path::Path) -> Result<String> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = data.join("demo-api-key");
    let owner_only = std::fs::Permissions::from_mode(0o600);
    if let Ok(k) = std::fs::read_to_string(&path) {
        let k = k.trim().to_string();
        if k.len() >= 16 {
            std::fs::set_permissions(&path, owner_only)
                .with_context(|| format!("making {} private", path.display()))?;
            return Ok(k);
        }
    }
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    let k: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let k = format!("demo-{k}");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        // `mode` applies to a new file only: a short key file left behind keeps its mode.
        f.set_permissions(owner_only.clone())?;
        f.write_all(k.as_bytes())
    };
    write().with_context(|| format!("writing {}", path.display()))?;
    Ok(k)
}

async fn batch(
    lake: &Lake,
    store: &dyn OnlineStore,
    config: &Config,
) -> Result<tandem_batch::run::Summary> {
    use tandem_batch::run::{RunOptions, run};
    let opts = RunOptions {
        epoch_ms: EPOCH_MS,
        ..RunOptions::from_config(config)
    };
    Ok(run(lake, store, &opts, &tandem_batch::snapshot::NoFaults, &()).await?)
}

/// Posts generated events, re-timed to now and with fresh ids, through the API's handler.
async fn simulate(
    api: axum::Router,
    key: &str,
    users: u32,
    rate: f64,
    live: Arc<Live>,
    stop: CancellationToken,
) -> Result<()> {
    let run_id = now_ms();
    // The same seed as the history: the same catalog (items keep their categories).
    let opts = GenerateOptions::new(users, 365, 42, now_ms());
    let mut generator = Generator::new(opts)?;
    let tick = Duration::from_millis(100);
    let per_tick = rate * tick.as_secs_f64();
    let mut owed = 0.0;
    let mut sent = 0u64;
    let mut interval = tokio::time::interval(tick);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(()),
            _ = interval.tick() => {}
        }
        owed += per_tick;
        let mut batch: Vec<Event<'static>> = Vec::new();
        while owed >= 1.0 {
            owed -= 1.0;
            let Some(mut e) = generator.next_event() else {
                generator = Generator::new(GenerateOptions::new(users, 365, 42, now_ms()))?;
                break;
            };
            sent += 1;
            e.event_id = format!("live-{run_id}-{sent}").into();
            e.ts = now_ms();
            batch.push(e);
        }
        if batch.is_empty() {
            continue;
        }
        let body: Vec<serde_json::Value> = batch
            .iter()
            .map(|e| serde_json::from_str(&e.to_json()).expect("an event is JSON"))
            .collect();
        let req = Request::post("/v1/events")
            .header(header::AUTHORIZATION, format!("Bearer {key}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(&body)?))?;
        let resp = api.clone().oneshot(req).await?;
        if !resp.status().is_success() {
            tracing::warn!(status = %resp.status(), "the simulator's events were not accepted");
            continue;
        }
        let mut recent = live.events.lock().expect("live lock");
        for e in body {
            recent.push_front(e);
        }
        recent.truncate(LIVE_KEEP);
    }
}

async fn live_events(State(live): State<Arc<Live>>) -> impl IntoResponse {
    let events: Vec<serde_json::Value> = live
        .events
        .lock()
        .expect("live lock")
        .iter()
        .cloned()
        .collect();
    Json(serde_json::json!({ "events": events }))
}

async fn live_users(State(live): State<Arc<Live>>) -> impl IntoResponse {
    let mut users: Vec<String> = Vec::new();
    for e in live.events.lock().expect("live lock").iter() {
        if let Some(u) = e["user_id"].as_str()
            && !users.iter().any(|x| x == u)
        {
            users.push(u.to_string());
        }
    }
    if users.is_empty() {
        users.push("u0000001".into());
    }
    Json(serde_json::json!({ "users": users }))
}

fn print_banner(addr: SocketAddr, key: Option<&str>) {
    let base = format!("http://{addr}");
    let auth = key.map_or(String::new(), |k| {
        format!(" -H 'Authorization: Bearer {k}'")
    });
    let page = match key {
        Some(k) => format!("{base}/#key={k}"),
        None => format!("{base}/"),
    };
    let ts = now_ms();
    println!();
    println!("Tandem demo is running. Open {page}");
    if let Some(k) = key {
        println!("API key: {k}");
    }
    println!();
    println!("Try:");
    println!("  curl -s{auth} {base}/v1/users/u0000001/profile");
    println!("  curl -s{auth} '{base}/v1/users/u0000001/recommendations?n=5'");
    println!(
        "  curl -s{auth} -H 'Content-Type: application/json' -d '{{\"event_id\":\"try-1\",\"user_id\":\"u0000001\",\"kind\":\"view\",\"item_id\":\"i000007\",\"ts\":{ts}}}' {base}/v1/events"
    );
    println!();
    println!("Ctrl-C stops it; running it again continues from the data on disk.");
}
