//! The serving benchmark's programs (`bench/serve.sh` runs them; `make bench` runs that):
//!
//! - `serve_bench load ADDR ROUTE RATE SECONDS`: an open-loop load at RATE requests/s on
//!   keep-alive connections; each request's latency counts from when it was due, not from when a
//!   connection was free, so a slow server is not hidden by a slower load (no coordinated
//!   omission). Prints one JSON line: rate asked, rate done, p50/p90/p99/max in ms, errors.
//! - `serve_bench max ADDR ROUTE P99_MS SECONDS`: the highest load with p99 ≤ P99_MS, found by
//!   raising the rate by a quarter from 1,000 requests/s (or halving it, when that fails) until
//!   p99 or the rate done fails twice in a row at one rate.
//! - `serve_bench freshness ADDR N`: N times, POST one event for a user and GET the user's
//!   profile until it shows; prints the p50/p99 of the wait in ms.
//! - `serve_bench ceiling LISTEN STORE SNAPSHOT`: the ceiling's server, a bare axum handler
//!   doing one GET of the user's snapshot row (`GET /u/{id}`) through the same Redis client.
//!
//! ROUTE: `profile`, `recs`, `ceiling`, or `events` (POST one new event per request, 202
//! expected). Users come from the file `$BENCH_USERS` (one id per line); the API key from
//! `$BENCH_KEY`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The allocator `tandem` uses, so that the ceiling server and `tandem serve` compare on one.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Connections of the open-loop load: enough that a few slow answers do not starve it.
const CONNS: usize = 64;

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| -> Res<&str> {
        args.get(i)
            .map(String::as_str)
            .ok_or_else(|| format!("missing argument {i}; see the module docs").into())
    };
    // The ceiling's server runs as `tandem serve` does (a worker per core); the load on one.
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if arg(0)? != "ceiling" {
        rt.worker_threads(1);
    }
    let rt = rt.enable_all().build()?;
    rt.block_on(async {
        match arg(0)? {
            "load" => {
                let r = load(arg(1)?, arg(2)?, arg(3)?.parse()?, arg(4)?.parse()?).await?;
                println!("{}", r.json());
            }
            "max" => max(arg(1)?, arg(2)?, arg(3)?.parse()?, arg(4)?.parse()?).await?,
            "freshness" => freshness(arg(1)?, arg(2)?.parse()?).await?,
            "ceiling" => ceiling(arg(1)?, arg(2)?, arg(3)?).await?,
            other => return Err(format!("unknown mode `{other}`").into()),
        }
        Ok(())
    })
}

fn users() -> Res<Vec<String>> {
    let path = std::env::var("BENCH_USERS").map_err(|_| "set BENCH_USERS")?;
    let users: Vec<String> = std::fs::read_to_string(&path)?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if users.is_empty() {
        return Err(format!("{path} lists no users").into());
    }
    Ok(users)
}

fn key() -> String {
    std::env::var("BENCH_KEY").unwrap_or_default()
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: &str) -> Res<Conn> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Conn {
            s,
            buf: Vec::with_capacity(16 * 1024),
        })
    }

    /// Sends a request and reads the whole answer: (status, body).
    async fn call(&mut self, method: &str, path: &str, body: &[u8]) -> Res<(u16, Vec<u8>)> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            key(),
            body.len()
        );
        let mut req = head.into_bytes();
        req.extend_from_slice(body);
        self.s.write_all(&req).await?;
        self.buf.clear();
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end])?.to_ascii_lowercase();
                let status: u16 = head.split(' ').nth(1).ok_or("no status")?.parse()?;
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .ok_or("no content-length")?
                    .trim()
                    .parse()?;
                while self.buf.len() < end + 4 + len {
                    let n = self.s.read(&mut chunk).await?;
                    if n == 0 {
                        return Err("connection closed mid-body".into());
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                return Ok((status, self.buf[end + 4..end + 4 + len].to_vec()));
            }
            let n = self.s.read(&mut chunk).await?;
            if n == 0 {
                return Err("connection closed".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Request `k` of a load on `route` for `user`: method, path, body, and the status that means
/// success. `events` posts one new event per request (ids unique to the run).
fn request_of(route: &str, user: &str, k: u64) -> Res<(&'static str, String, String, u16)> {
    let get = |path: String| ("GET", path, String::new(), 200);
    Ok(match route {
        "profile" => get(format!("/v1/users/{user}/profile")),
        "recs" => get(format!("/v1/users/{user}/recommendations?n=10")),
        "ceiling" => get(format!("/u/{user}")),
        "events" => (
            "POST",
            "/v1/events".to_string(),
            format!(
                r#"{{"event_id":"load-{}-{k}","user_id":"{user}","kind":"view","item_id":"load-item-{}","ts":{}}}"#,
                *RUN,
                k % 1000,
                chrono::Utc::now().timestamp_millis()
            ),
            202,
        ),
        other => return Err(format!("unknown route `{other}`").into()),
    })
}

/// This run's id, in the events it posts: the process id and the start time.
static RUN: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_millis()
    )
});

struct LoadResult {
    route: String,
    rate: f64,
    done_rate: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    errors: usize,
}

impl LoadResult {
    fn json(&self) -> String {
        format!(
            "{{\"route\":\"{}\",\"rate\":{:.0},\"done_rate\":{:.0},\"p50_ms\":{:.3},\"p90_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3},\"errors\":{}}}",
            self.route,
            self.rate,
            self.done_rate,
            self.p50,
            self.p90,
            self.p99,
            self.max,
            self.errors
        )
    }
}

fn quantile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

async fn load(addr: &str, route: &str, rate: f64, seconds: f64) -> Res<LoadResult> {
    request_of(route, "x", 0)?;
    let users = Arc::new(users()?);
    let total = (rate * seconds).round() as u64;
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let start = Instant::now() + Duration::from_millis(100);
    let mut tasks = Vec::new();
    for c in 0..CONNS {
        let (users, next, errors) = (users.clone(), next.clone(), errors.clone());
        let (addr, route) = (addr.to_string(), route.to_string());
        let mut conn = Conn::open(&addr).await?;
        tasks.push(tokio::spawn(async move {
            let mut lat: Vec<u64> = Vec::new();
            let mut pick = c as u64 * 7919;
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= total {
                    return lat;
                }
                let due = start + Duration::from_secs_f64(k as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                pick = pick
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let user = &users[(pick >> 33) as usize % users.len()];
                let (method, path, body, success) =
                    request_of(&route, user, k).expect("route checked");
                let ok = match conn.call(method, &path, body.as_bytes()).await {
                    Ok((status, _)) => status == success,
                    Err(_) => {
                        if let Ok(c) = Conn::open(&addr).await {
                            conn = c;
                        }
                        false
                    }
                };
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                lat.push(due.elapsed().as_micros() as u64);
            }
        }));
    }
    let mut all = Vec::with_capacity(total as usize);
    for t in tasks {
        all.extend(t.await?);
    }
    let wall = start.elapsed().as_secs_f64();
    all.sort_unstable();
    Ok(LoadResult {
        route: route.to_string(),
        rate,
        done_rate: all.len() as f64 / wall,
        p50: quantile(&all, 0.50),
        p90: quantile(&all, 0.90),
        p99: quantile(&all, 0.99),
        max: quantile(&all, 1.0),
        errors: errors.load(Ordering::Relaxed),
    })
}

/// One step of the max-rate search: `rate` for `seconds`, passed when p99 ≤ `p99_ms`, ≥ 97% of
/// the rate done and no errors. A step that fails is run once more: on a shared 2-core machine
/// one descheduling can spoil a step's p99, and the search should not end on it (the same rule
/// for every route, the ceiling included).
async fn step(
    addr: &str,
    route: &str,
    rate: f64,
    p99_ms: f64,
    seconds: f64,
) -> Res<Option<LoadResult>> {
    for _attempt in 0..2 {
        let r = load(addr, route, rate, seconds).await?;
        eprintln!("  {}", r.json());
        // Let the server's queues drain before the next step.
        tokio::time::sleep(Duration::from_millis(500)).await;
        if r.p99 <= p99_ms && r.done_rate >= 0.97 * rate && r.errors == 0 {
            return Ok(Some(r));
        }
    }
    Ok(None)
}

/// The highest rate with p99 ≤ `p99_ms`: up by a quarter from 1,000/s until a step fails (or,
/// when 1,000/s fails, down by halves until one passes, to 62.5/s), then three halvings of the
/// interval between the last step passed and the one failed (a resolution of 3%).
async fn max(addr: &str, route: &str, p99_ms: f64, seconds: f64) -> Res<()> {
    let mut rate = 1000.0;
    let mut best = step(addr, route, rate, p99_ms, seconds).await?;
    let mut failed = rate;
    if best.is_some() {
        loop {
            rate *= 1.25;
            match step(addr, route, rate, p99_ms, seconds).await? {
                Some(r) => best = Some(r),
                None => break,
            }
        }
        failed = rate;
    } else {
        while best.is_none() && rate > 62.5 {
            failed = rate;
            rate /= 2.0;
            best = step(addr, route, rate, p99_ms, seconds).await?;
        }
    }
    if let Some(b) = &best {
        let (mut lo, mut hi) = (b.rate, failed);
        for _ in 0..3 {
            let mid = (lo + hi) / 2.0;
            match step(addr, route, mid, p99_ms, seconds).await? {
                Some(r) => {
                    lo = mid;
                    best = Some(r);
                }
                None => hi = mid,
            }
        }
    }
    match best {
        Some(b) => println!("{}", b.json()),
        None => println!(
            "{{\"route\":\"{route}\",\"rate\":0,\"done_rate\":0,\"p50_ms\":null,\"p90_ms\":null,\"p99_ms\":null,\"max_ms\":null,\"errors\":0}}"
        ),
    }
    Ok(())
}

fn events_of(body: &[u8]) -> Res<u64> {
    let v: serde_json::Value = serde_json::from_slice(body)?;
    v["profile"]["events"]
        .as_u64()
        .ok_or_else(|| format!("no profile.events in {v}").into())
}

async fn freshness(addr: &str, n: usize) -> Res<()> {
    let users = users()?;
    let mut get = Conn::open(addr).await?;
    let mut post = Conn::open(addr).await?;
    let run = std::process::id();
    let mut waits = Vec::with_capacity(n);
    for i in 0..n {
        let user = &users[(i * 7919) % users.len()];
        let path = format!("/v1/users/{user}/profile");
        let (status, body) = get.call("GET", &path, b"").await?;
        let before = if status == 200 { events_of(&body)? } else { 0 };
        let now_ms = chrono::Utc::now().timestamp_millis();
        let event = format!(
            r#"{{"event_id":"fresh-{run}-{i}","user_id":"{user}","kind":"view","item_id":"fresh-item","ts":{now_ms}}}"#
        );
        let sent = Instant::now();
        let (status, body) = post.call("POST", "/v1/events", event.as_bytes()).await?;
        if status != 202 {
            return Err(
                format!("POST answered {status}: {}", String::from_utf8_lossy(&body)).into(),
            );
        }
        loop {
            let (status, body) = get.call("GET", &path, b"").await?;
            if status == 200 && events_of(&body)? > before {
                break;
            }
            if sent.elapsed() > Duration::from_secs(10) {
                return Err(format!("event {i} of {user} not visible after 10 s").into());
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        waits.push(sent.elapsed().as_micros() as u64);
        // Apart, as a storefront's users are: each event on its own.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    waits.sort_unstable();
    println!(
        "{{\"n\":{n},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3}}}",
        quantile(&waits, 0.5),
        quantile(&waits, 0.99),
        quantile(&waits, 1.0)
    );
    Ok(())
}

async fn ceiling(listen: &str, store_url: &str, snapshot: &str) -> Res<()> {
    use axum::extract::{Path, State};
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let store = tandem_common::store::open(store_url).await?;
    let snapshot = snapshot.to_string();
    let state = Arc::new((store, snapshot));
    type S = Arc<(Arc<dyn tandem_common::store::OnlineStore>, String)>;
    async fn get_row(State(s): State<S>, Path(user): Path<String>) -> axum::response::Response {
        let key = tandem_common::store::user_key(&user, &s.1);
        match s.0.get(std::slice::from_ref(&key)).await {
            Ok(mut rows) => match rows.pop().flatten() {
                Some(b) => ([("content-type", "application/json")], b).into_response(),
                None => StatusCode::NOT_FOUND.into_response(),
            },
            Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        }
    }
    let app = axum::Router::new()
        .route("/u/{id}", axum::routing::get(get_row))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
