//! Tandem's configuration: one serde tree with embedded defaults, overridden by a file, then by
//! `TANDEM__SECTION__KEY` environment variables, then by `--set section.key=value` flags.
//!
//! [`load`] reads and checks everything and reports every problem at once, each naming its key
//! and where the value came from.
//!
//! One file of ~800 lines, on purpose: it is the reference of every setting — each section's struct
//! with its documented fields, and the checks that relate settings to each other — read top to
//! bottom by whoever configures Tandem (the defaults are `config/default.toml`). Split by section,
//! [`load`]'s cross-section checks would reach into every part.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The embedded defaults.
pub const DEFAULT_TOML: &str = include_str!("config/default.toml");

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The lake (object storage).
    pub lake: LakeConfig,
    /// The event bus.
    pub bus: BusConfig,
    /// The online store.
    pub online_store: OnlineStoreConfig,
    /// The HTTP API.
    pub server: ServerConfig,
    /// Event acceptance and epochs.
    pub events: EventsConfig,
    /// `[batch]`: the nightly batch run.
    pub batch: BatchConfig,
    /// `[stream]`: the speed layer and the archiver.
    pub stream: StreamConfig,
    /// `[sql]`: the analysts' SQL server.
    pub sql: SqlConfig,
    /// Logging.
    pub log: LogConfig,
}

/// `[lake]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LakeConfig {
    /// Lake URL (`file://`, `memory://`, `s3://`, `gs://`, `az://`) or a local path.
    pub url: String,
    /// Rows per Parquet file.
    pub file_max_rows: usize,
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// zstd level of the Parquet files.
    pub zstd_level: i32,
    /// How long an ingest run's record stays valid without a refresh.
    #[serde(with = "humantime_serde")]
    pub ingest_lease: Duration,
}

/// `[bus]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    /// `local://PATH` or `fluvio://HOST:PORT/TOPIC`.
    pub url: String,
    /// Partitions of the topic.
    pub partitions: u32,
    /// How much later than its ingest time an accepted event may reach the bus (the producer's
    /// timeout and clock skew); the archiver's watermark trails by it.
    #[serde(with = "humantime_serde")]
    pub max_produce_delay: Duration,
    /// Replicas of each partition when Tandem creates the topic (Fluvio).
    pub replication: u32,
    /// How long the producer waits to batch records of concurrent callers together (Fluvio);
    /// part of every produce's acknowledgement (a produce does not flush).
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// How long a produce waits for the cluster's acknowledgement before it fails (the API then
    /// answers 503); capped at `max_produce_delay`.
    #[serde(with = "humantime_serde")]
    pub produce_timeout: Duration,
    /// The most MiB a consumer stream takes in one answer (Fluvio), per partition read: answers
    /// cut in the middle of a batch (each read again) against memory and CPU, since the client
    /// library clears and copies an answer's whole buffer (README, `bus.fetch_mib`).
    pub fetch_mib: u32,
    /// `[bus.tls]`: TLS to the Fluvio cluster.
    pub tls: BusTlsConfig,
}

/// `[bus.tls]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusTlsConfig {
    /// `disabled`, `anonymous` (TLS, the server's certificate not checked) or `verified`.
    pub mode: BusTlsMode,
    /// The name the server's certificate must carry (`verified`).
    pub domain: String,
    /// The CA certificate, PEM (`verified`).
    pub ca_cert: PathBuf,
    /// The client certificate, PEM (`verified`).
    pub cert: PathBuf,
    /// The client key, PEM (`verified`).
    pub key: PathBuf,
}

/// How Tandem talks TLS to the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BusTlsMode {
    /// Plaintext.
    Disabled,
    /// TLS without checking the server's certificate.
    Anonymous,
    /// TLS with certificates checked both ways.
    Verified,
}

/// `[online_store]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnlineStoreConfig {
    /// `redis://`, `rediss://`, `redis+cluster://` or `memory://`; a password in it is never printed.
    pub url: Secret,
}

/// `[server]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Listen address, `host:port`.
    pub listen: String,
    /// Bearer API keys.
    pub api_keys: Vec<ApiKey>,
    /// Longest wait for one online-store call before the answer degrades (snapshot-only, then
    /// popular items from memory) instead of failing.
    #[serde(with = "humantime_serde")]
    pub store_timeout: Duration,
    /// Rows of the current snapshot (users and items, each) kept in memory; rows of an
    /// immutable snapshot never change, so a cached row is never stale. Also the most item
    /// rows loaded with a snapshot beyond its popular lists' (the items similar to those).
    pub cache_rows: usize,
    /// Memory of the row caches, MiB, weighed by each entry's size (half for user rows, 3/8
    /// for item rows, 1/8 for users folded into the latent model).
    pub cache_mib: u64,
    /// Recommendations leave out the items the user already had an event with, unless the
    /// request's `exclude_seen` says otherwise.
    pub exclude_seen: bool,
    /// Longest wait for a connection's request headers; then the connection is closed.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Longest wait for a request's body; then 408.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Requests served at once; more are answered 503 `overloaded` at once.
    pub max_in_flight: usize,
    /// At shutdown, how long the requests in flight get to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Browser origins allowed to call the API (CORS); `*` allows every origin.
    pub cors_origins: Vec<String>,
    /// The operations listener (`/metrics`, `/readyz` with details), `host:port`; empty for
    /// none (then `/metrics` is on the public listener).
    pub admin_listen: String,
}

/// One API key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// A name for logs (never the key itself).
    pub name: String,
    /// The bearer token.
    pub key: Secret,
    /// What the key may do.
    pub scopes: Vec<Scope>,
}

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// `POST /v1/events`.
    Ingest,
    /// The `GET` routes.
    Read,
    /// Erasure and operations.
    Admin,
    /// Analyst SQL over the Postgres wire (`tandem sql serve`): the key's name is the user
    /// name, the key the password.
    Sql,
}

/// `[events]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// Length of an ingest-time epoch.
    #[serde(with = "humantime_serde")]
    pub epoch: Duration,
    /// Largest accepted lead of event time over ingest time.
    #[serde(with = "humantime_serde")]
    pub max_future: Duration,
}

/// `[batch]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Length of the models' training-label period and of the held-out period.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// The largest number of user segments tried.
    pub max_segments: usize,
    /// The wait between the pointer flip and deleting what only the previous snapshot's
    /// readers need (its keys, the speed epochs below the new cutoff).
    #[serde(with = "humantime_serde")]
    pub cleanup_grace: Duration,
    /// How long a batch run's lease on the store lives unless renewed (every third of it): a
    /// second run is refused meanwhile, and a killed run holds the next one back this long.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Complete snapshots kept in the lake (analysts query them as of their cutoff); a run
    /// deletes the older ones after it publishes. At least 1.
    pub keep_snapshots: usize,
    /// A run is a full recomputation (which retrains the models) when the last one is at
    /// least this old (by cutoff); otherwise it merges the previous snapshot with the events
    /// since. Zero: every run is full.
    #[serde(with = "humantime_serde")]
    pub full_every: Duration,
    /// Where the views run: `local`, or `ballista://HOST:PORT` (a Ballista scheduler).
    pub engine: String,
}

/// Where the batch views run (`batch.engine`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchEngine {
    /// In the batch process.
    Local,
    /// On the Ballista cluster of this scheduler (`host:port`).
    Ballista(String),
}

impl BatchEngine {
    /// `local`, or `ballista://HOST[:PORT]` (port 50050 when left out).
    pub fn parse(s: &str) -> Result<BatchEngine, String> {
        if s == "local" {
            return Ok(BatchEngine::Local);
        }
        let bad = || format!("`{s}` is neither `local` nor `ballista://HOST:PORT`");
        let rest = s.strip_prefix("ballista://").ok_or_else(bad)?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad())?),
            None => (rest, 50050),
        };
        let host_ok = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if !host_ok || port == 0 {
            return Err(bad());
        }
        Ok(BatchEngine::Ballista(format!("{host}:{port}")))
    }
}

/// `[sql]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlConfig {
    /// Address the Postgres-wire server listens on.
    pub listen: String,
    /// Connections open at once; more are refused.
    pub max_connections: usize,
    /// The longest a query message may run, planning and every row sent included; then it is
    /// cancelled (SQLSTATE 57014). A client cannot raise it.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// Memory, MiB, one session's queries may hold at once (DataFusion's memory pool); past
    /// it a query spills where it can, else fails with "resources exhausted".
    pub memory_limit_mib: usize,
    /// How often the server looks for a newer snapshot and new event files.
    #[serde(with = "humantime_serde")]
    pub refresh: Duration,
    /// PEM certificate chain and PKCS#8 key: both set, the server speaks TLS (and refuses
    /// plain connections); both empty, plain TCP.
    pub tls_cert: String,
    /// See `tls_cert`.
    pub tls_key: String,
    /// Users a scan of `live_profiles` without a `user_id` filter reads at most (it reads the
    /// online store user by user); past it the query fails and says how to name users.
    pub live_scan_limit: usize,
    /// Rows a terminal's table output shows before it stops with a note (`tandem sql`);
    /// 0 for no limit. Files and pipes get every row.
    pub max_display_rows: usize,
}

/// `[stream]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// Records per fetch and per pipelined apply of the speed layer.
    pub batch: usize,
    /// How long a consumer's fetch waits for records when there are none (a new record ends
    /// the wait at once).
    #[serde(with = "humantime_serde")]
    pub wait: Duration,
    /// How often the speed layer stores its consumer positions (and when it stops); a restart
    /// re-reads at most this much, which the store skips as replays.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Rows after which the archiver makes a file visible.
    pub archive_roll_rows: usize,
    /// Age after which the archiver makes a file with rows visible.
    #[serde(with = "humantime_serde")]
    pub archive_roll_age: Duration,
}

/// `[log]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter directive.
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Pretty on a terminal, JSON otherwise.
    Auto,
    /// One JSON object a line.
    Json,
    /// Human-readable.
    Pretty,
}

/// A secret string: printed as `***` by `Debug`, `Display` and `Serialize`; URLs keep all
/// but their password visible.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself; call only where it is used, never to print.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// What may be printed: a URL with its password replaced by `***`, anything else `***`.
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut u) if u.has_host() || u.scheme() == "memory" => {
                if u.password().is_some() {
                    let _ = u.set_password(Some("***"));
                }
                u.to_string()
            }
            // Not a URL the parser takes (a cluster URL lists several hosts): hide the password
            // between `://user:` and the last `@`; anything else may be a bare secret.
            _ => match self.0.split_once("://") {
                Some((scheme, rest)) => match rest.rsplit_once('@') {
                    Some((auth, hosts)) => match auth.split_once(':') {
                        Some((user, _)) => format!("{scheme}://{user}:***@{hosts}"),
                        None => self.0.clone(),
                    },
                    None => self.0.clone(),
                },
                None => "***".to_string(),
            },
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

/// Where to read configuration from, beyond the embedded defaults and the environment.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// A TOML file.
    pub file: Option<PathBuf>,
    /// `section.key=value` overrides, applied last; values are TOML (`8`, `true`, `"x"`) or bare text.
    pub overrides: Vec<String>,
    /// Environment variables to read instead of the process's (for tests).
    pub env: Option<Vec<(String, String)>>,
}

/// Every problem found while loading and checking the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} configuration problem(s):", self.0.len())?;
        for p in &self.0 {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigErrors> for crate::Error {
    fn from(e: ConfigErrors) -> Self {
        crate::Error::Config(e.to_string())
    }
}

const ENV_PREFIX: &str = "TANDEM__";

fn figment(sources: &Sources, problems: &mut Vec<String>) -> Figment {
    let mut f = Figment::from(Toml::string(DEFAULT_TOML));
    if let Some(path) = &sources.file {
        if path.is_file() {
            f = f.merge(Toml::file_exact(path));
        } else {
            problems.push(format!("config file {}: not found", path.display()));
        }
    }
    let env = Env::prefixed(ENV_PREFIX).split("__");
    f = match &sources.env {
        Some(vars) => {
            let vars = vars.clone();
            // figment reads the process environment; for an explicit list, feed the same
            // key mapping through a Serialized provider per variable.
            let mut f = f;
            for (k, v) in vars {
                if let Some(rest) = k.strip_prefix(ENV_PREFIX) {
                    let key = rest
                        .split("__")
                        .map(str::to_lowercase)
                        .collect::<Vec<_>>()
                        .join(".");
                    f = f.merge(Serialized::global(&key, parse_value(&v)));
                }
            }
            f
        }
        None => f.merge(env),
    };
    for o in &sources.overrides {
        match o.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                f = f.merge(Serialized::global(k.trim(), parse_value(v.trim())));
            }
            _ => problems.push(format!("--set {o}: expected section.key=value")),
        }
    }
    f
}

/// A flag or variable value as TOML when it reads as TOML (`8`, `true`, `[1]`), else as text.
fn parse_value(v: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {v}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(v.to_string()))
}

/// Where a key's value came from, for error messages: the last source that set it.
fn origin(f: &Figment, sources: &Sources, key: &str) -> String {
    let set_by_flag = sources
        .overrides
        .iter()
        .filter_map(|o| o.split_once('=').map(|(k, _)| k.trim()))
        .any(|k| {
            k == key || key.starts_with(&format!("{k}.")) || k.starts_with(&format!("{key}."))
        });
    if set_by_flag {
        return " (from --set)".into();
    }
    let var = format!("{ENV_PREFIX}{}", key.replace('.', "__").to_uppercase());
    let in_env = match &sources.env {
        Some(vars) => vars.iter().any(|(k, _)| k.eq_ignore_ascii_case(&var)),
        None => std::env::var_os(&var).is_some(),
    };
    if in_env {
        return format!(" (from {var})");
    }
    match f.find_metadata(key).and_then(|m| m.source.as_ref()) {
        Some(figment::Source::File(p)) => format!(" (from {})", p.display()),
        _ => String::new(),
    }
}

/// Loads the configuration and checks it, reporting every problem at once.
pub fn load(sources: &Sources) -> Result<Config, ConfigErrors> {
    let mut problems = Vec::new();
    let f = figment(sources, &mut problems);

    // Extract section by section so that a bad value in one does not hide those in another.
    const SECTIONS: [&str; 9] = [
        "lake",
        "bus",
        "online_store",
        "server",
        "events",
        "batch",
        "stream",
        "sql",
        "log",
    ];
    match f.extract::<toml::Table>() {
        Ok(table) => {
            for k in table.keys() {
                if !SECTIONS.contains(&k.as_str()) {
                    problems.push(format!(
                        "unknown section `{k}`{}; expected one of {}",
                        origin(&f, sources, k),
                        SECTIONS.join(", ")
                    ));
                }
            }
        }
        Err(e) => problems.extend(e.into_iter().map(|e| e.to_string())),
    }
    fn section<T: serde::de::DeserializeOwned>(
        f: &Figment,
        sources: &Sources,
        name: &str,
        problems: &mut Vec<String>,
    ) -> Option<T> {
        match f.extract_inner::<T>(name) {
            Ok(v) => Some(v),
            Err(e) => {
                for e in e {
                    // figment's path order varies with where the error arose; rebuild it.
                    let rest: Vec<&str> = e
                        .path
                        .iter()
                        .map(String::as_str)
                        .filter(|p| *p != name)
                        .collect();
                    let key = if rest.is_empty() {
                        name.to_string()
                    } else {
                        format!("{name}.{}", rest.join("."))
                    };
                    problems.push(format!("{key}: {}{}", e.kind, origin(f, sources, &key)));
                }
                None
            }
        }
    }
    let lake = section::<LakeConfig>(&f, sources, "lake", &mut problems);
    let bus = section::<BusConfig>(&f, sources, "bus", &mut problems);
    let online_store = section::<OnlineStoreConfig>(&f, sources, "online_store", &mut problems);
    let server = section::<ServerConfig>(&f, sources, "server", &mut problems);
    let events = section::<EventsConfig>(&f, sources, "events", &mut problems);
    let batch = section::<BatchConfig>(&f, sources, "batch", &mut problems);
    let stream = section::<StreamConfig>(&f, sources, "stream", &mut problems);
    let sql = section::<SqlConfig>(&f, sources, "sql", &mut problems);
    let log = section::<LogConfig>(&f, sources, "log", &mut problems);
    // Sections that did not parse stand in with their defaults, so the semantic checks of the
    // others still run; problems of a stand-in are not reported (it is the defaults).
    let complete = lake.is_some()
        && bus.is_some()
        && online_store.is_some()
        && server.is_some()
        && events.is_some()
        && batch.is_some()
        && stream.is_some()
        && sql.is_some()
        && log.is_some();
    let d: Config = Figment::from(Toml::string(DEFAULT_TOML))
        .extract()
        .expect("the embedded defaults parse");
    let failed: Vec<&str> = [
        ("lake", lake.is_none()),
        ("bus", bus.is_none()),
        ("online_store", online_store.is_none()),
        ("server", server.is_none()),
        ("events", events.is_none()),
        ("batch", batch.is_none()),
        ("stream", stream.is_none()),
        ("sql", sql.is_none()),
        ("log", log.is_none()),
    ]
    .into_iter()
    .filter_map(|(n, f)| f.then_some(n))
    .collect();
    let merged = Config {
        lake: lake.unwrap_or(d.lake),
        bus: bus.unwrap_or(d.bus),
        online_store: online_store.unwrap_or(d.online_store),
        server: server.unwrap_or(d.server),
        events: events.unwrap_or(d.events),
        batch: batch.unwrap_or(d.batch),
        stream: stream.unwrap_or(d.stream),
        sql: sql.unwrap_or(d.sql),
        log: log.unwrap_or(d.log),
    };
    for (key, p) in merged.problems() {
        if !failed.iter().any(|s| key.starts_with(&format!("{s}."))) {
            problems.push(format!("{key}: {p}{}", origin(&f, sources, key)));
        }
    }
    let config = complete.then_some(merged);
    match config {
        Some(c) if problems.is_empty() => Ok(c),
        _ => Err(ConfigErrors(problems)),
    }
}

impl Config {
    /// The embedded defaults alone (what `tandem demo` and tests start from).
    pub fn defaults() -> Config {
        load(&Sources {
            env: Some(Vec::new()),
            ..Sources::default()
        })
        .expect("the embedded defaults are valid")
    }

    /// Semantic problems of a well-typed configuration, as (key, problem).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        let scheme_of = |url: &str| url.split_once("://").map(|(s, _)| s.to_string());
        match scheme_of(&self.lake.url).as_deref() {
            None
            | Some("file" | "memory" | "s3" | "s3a" | "gs" | "az" | "abfs" | "abfss" | "azure") => {
            }
            Some(s) => p.push((
                "lake.url",
                format!("unsupported scheme `{s}`; expected file, memory, s3, gs, az or a path"),
            )),
        }
        if self.batch.window < Duration::from_secs(3600) {
            p.push((
                "batch.window",
                format!(
                    "must be at least 1h, got {}",
                    humantime::format_duration(self.batch.window)
                ),
            ));
        }
        if !(1..=1_000_000).contains(&self.stream.batch) {
            p.push((
                "stream.batch",
                format!("must be 1–1000000, got {}", self.stream.batch),
            ));
        }
        if self.stream.wait > Duration::from_secs(60) {
            p.push(("stream.wait", "must be at most 60s".to_string()));
        }
        if self.sql.listen.parse::<SocketAddr>().is_err() {
            p.push((
                "sql.listen",
                format!("`{}` is not a host:port address", self.sql.listen),
            ));
        }
        if self.batch.keep_snapshots == 0 {
            p.push(("batch.keep_snapshots", "must be at least 1".to_string()));
        }
        if let Err(e) = BatchEngine::parse(&self.batch.engine) {
            p.push(("batch.engine", e));
        }
        if self.sql.max_connections == 0 {
            p.push(("sql.max_connections", "must be at least 1".to_string()));
        }
        if self.sql.memory_limit_mib < 16 {
            p.push((
                "sql.memory_limit_mib",
                format!("must be at least 16, got {}", self.sql.memory_limit_mib),
            ));
        }
        if self.sql.statement_timeout.is_zero() {
            p.push(("sql.statement_timeout", "must be more than 0".to_string()));
        }
        if self.sql.refresh < Duration::from_secs(1) {
            p.push(("sql.refresh", "must be at least 1s".to_string()));
        }
        if self.sql.tls_cert.is_empty() != self.sql.tls_key.is_empty() {
            p.push((
                "sql.tls_cert",
                "tls_cert and tls_key are set together or not at all".to_string(),
            ));
        }
        if self.stream.commit_interval > Duration::from_secs(600) {
            p.push(("stream.commit_interval", "must be at most 10m".to_string()));
        }
        if self.stream.archive_roll_rows == 0 {
            p.push(("stream.archive_roll_rows", "must be at least 1".to_string()));
        }
        if self.stream.archive_roll_age.is_zero() {
            p.push((
                "stream.archive_roll_age",
                "must be longer than 0s".to_string(),
            ));
        }
        if !(2..=64).contains(&self.batch.max_segments) {
            p.push((
                "batch.max_segments",
                format!("must be 2–64, got {}", self.batch.max_segments),
            ));
        }
        if self.lake.row_group_rows < 1024 {
            p.push((
                "lake.row_group_rows",
                format!("must be ≥ 1024, got {}", self.lake.row_group_rows),
            ));
        }
        if self.lake.file_max_rows < self.lake.row_group_rows {
            p.push((
                "lake.file_max_rows",
                format!(
                    "must be ≥ lake.row_group_rows ({}), got {}",
                    self.lake.row_group_rows, self.lake.file_max_rows
                ),
            ));
        }
        if !(1..=22).contains(&self.lake.zstd_level) {
            p.push((
                "lake.zstd_level",
                format!("must be 1–22, got {}", self.lake.zstd_level),
            ));
        }
        if self.lake.ingest_lease < Duration::from_secs(60) {
            p.push(("lake.ingest_lease", "must be at least 1m".to_string()));
        }
        match scheme_of(&self.bus.url).as_deref() {
            Some("local") => {
                if self.bus.url.len() <= "local://".len() {
                    p.push((
                        "bus.url",
                        "local:// needs a path, e.g. local://./tandem-data/bus".to_string(),
                    ));
                }
            }
            Some("fluvio") => match url::Url::parse(&self.bus.url) {
                Ok(u) if u.host_str().is_some() && !u.path().trim_matches('/').is_empty() => {}
                _ => p.push(("bus.url", "expected fluvio://HOST:PORT/TOPIC".to_string())),
            },
            other => p.push((
                "bus.url",
                format!(
                    "unsupported bus `{}`; expected local://PATH or fluvio://HOST:PORT/TOPIC",
                    other.unwrap_or(&self.bus.url)
                ),
            )),
        }
        if !(1..=4096).contains(&self.bus.partitions) {
            p.push((
                "bus.partitions",
                format!("must be 1–4096, got {}", self.bus.partitions),
            ));
        }
        if !(1..=7).contains(&self.bus.replication) {
            p.push((
                "bus.replication",
                format!("must be 1–7, got {}", self.bus.replication),
            ));
        }
        if self.bus.linger > Duration::from_secs(1) {
            p.push(("bus.linger", "must be at most 1s".to_string()));
        }
        if self.bus.produce_timeout.is_zero() {
            p.push(("bus.produce_timeout", "must be more than 0".to_string()));
        }
        // At least twice the largest produce request (4 MiB), so that every batch fits whole.
        if !(8..=1024).contains(&self.bus.fetch_mib) {
            p.push((
                "bus.fetch_mib",
                format!("must be 8–1024, got {}", self.bus.fetch_mib),
            ));
        }
        let tls = &self.bus.tls;
        if tls.mode == BusTlsMode::Verified {
            if tls.domain.is_empty() {
                p.push((
                    "bus.tls.domain",
                    "required when bus.tls.mode = \"verified\"".to_string(),
                ));
            }
            for (key, path) in [
                ("bus.tls.ca_cert", &tls.ca_cert),
                ("bus.tls.cert", &tls.cert),
                ("bus.tls.key", &tls.key),
            ] {
                if !path.is_file() {
                    p.push((
                        key,
                        format!(
                            "`{}` is not a readable file (required when bus.tls.mode = \"verified\")",
                            path.display()
                        ),
                    ));
                }
            }
        }
        if tls.mode != BusTlsMode::Disabled && !self.bus.url.starts_with("fluvio://") {
            p.push((
                "bus.tls.mode",
                "TLS applies to fluvio:// buses only".to_string(),
            ));
        }
        match scheme_of(self.online_store.url.expose()).as_deref() {
            Some("redis" | "rediss" | "redis+cluster" | "rediss+cluster" | "memory") => {}
            _ => p.push(("online_store.url", format!("unsupported store `{}`; expected redis://, rediss://, redis+cluster:// or memory://", self.online_store.url.redacted()))),
        }
        if self.server.listen.parse::<SocketAddr>().is_err() {
            p.push((
                "server.listen",
                format!(
                    "`{}` is not host:port (e.g. 127.0.0.1:8080)",
                    self.server.listen
                ),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for k in &self.server.api_keys {
            if !names.insert(k.name.as_str()) {
                p.push((
                    "server.api_keys",
                    format!("name `{}` is used twice", k.name),
                ));
            }
            if k.key.expose().len() < 16 {
                p.push((
                    "server.api_keys",
                    format!("key `{}` is shorter than 16 characters", k.name),
                ));
            }
            if k.scopes.is_empty() {
                p.push(("server.api_keys", format!("key `{}` has no scopes", k.name)));
            }
        }
        if self.server.store_timeout.is_zero() {
            p.push(("server.store_timeout", "must be more than 0".to_string()));
        }
        if self.batch.lease < Duration::from_secs(3) {
            p.push(("batch.lease", "must be at least 3s".to_string()));
        }
        if self.server.cache_rows == 0 {
            p.push(("server.cache_rows", "must be at least 1".to_string()));
        }
        if self.server.cache_mib == 0 || self.server.cache_mib > 1 << 30 {
            p.push((
                "server.cache_mib",
                "must be between 1 and 2^30 (MiB)".to_string(),
            ));
        }
        for (key, d) in [
            ("server.header_timeout", self.server.header_timeout),
            ("server.body_timeout", self.server.body_timeout),
        ] {
            if d.is_zero() {
                p.push((key, "must be more than 0".to_string()));
            }
        }
        if !self.server.admin_listen.is_empty()
            && self.server.admin_listen.parse::<SocketAddr>().is_err()
        {
            p.push((
                "server.admin_listen",
                format!(
                    "`{}` is not host:port (e.g. 0.0.0.0:9464), nor empty",
                    self.server.admin_listen
                ),
            ));
        }
        for (key, n) in [
            ("server.max_connections", self.server.max_connections),
            ("server.max_in_flight", self.server.max_in_flight),
        ] {
            if n == 0 {
                p.push((key, "must be at least 1".to_string()));
            }
        }
        let day = Duration::from_secs(86_400);
        let epoch = self.events.epoch;
        if epoch < Duration::from_secs(1)
            || epoch > day
            || !day.as_millis().is_multiple_of(epoch.as_millis().max(1))
        {
            p.push((
                "events.epoch",
                format!(
                    "must be between 1s and 24h and divide a day evenly, got {}",
                    humantime::format_duration(epoch)
                ),
            ));
        }
        if self.events.max_future > Duration::from_secs(86_400) {
            p.push(("events.max_future", "must be at most 24h".to_string()));
        }
        p
    }

    /// The configuration as TOML, secrets hidden.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self)
            .unwrap_or_else(|e| format!("# cannot print the configuration: {e}"))
    }

    /// Acceptance bounds for events stamped at `now_ms`.
    pub fn acceptance(&self, now_ms: i64) -> crate::event::Acceptance {
        crate::event::Acceptance {
            now_ms,
            max_future_ms: self.events.max_future.as_millis() as i64,
        }
    }
}

#[cfg(test)]
mod tests;
