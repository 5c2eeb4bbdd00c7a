//! One call to the online store: under the store timeout, timed, and with what a failure is.

use super::*;

/// Why a store call gave nothing: it failed, it took longer than the store timeout, or what it
/// gave cannot be decoded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreFailure {
    /// The store answered with an error.
    #[error("online store error: {0}")]
    Error(String),
    /// No answer within the timeout.
    #[error("online store timed out after {0:?}")]
    Timeout(Duration),
    /// A snapshot row is there but is not a row this server can read (written by a faulty or
    /// newer batch): logged with its key and counted (`tandem_serving_row_errors_total`).
    #[error("{0}")]
    BadRow(String),
}

impl StoreFailure {
    /// Why an answer is degraded, as its `degraded_reason` says.
    pub fn reason(&self) -> &'static str {
        match self {
            StoreFailure::Error(_) => "store_error",
            StoreFailure::Timeout(_) => "store_timeout",
            StoreFailure::BadRow(_) => "bad_snapshot_row",
        }
    }
}

/// A snapshot row of `kind` at `key` that does not decode: logged with its key, counted, and
/// the failure the request degrades on.
pub(super) fn bad_row(kind: &'static str, key: &str, e: serde_json::Error) -> StoreFailure {
    metrics::counter!("tandem_serving_row_errors_total", "kind" => kind).increment(1);
    tracing::error!(key, error = %e, "A snapshot row cannot be decoded; the answer is degraded.");
    StoreFailure::BadRow(format!("{kind} row `{key}` cannot be decoded: {e}"))
}

/// Runs one store call under `timeout`, recording its latency as
/// `tandem_serving_store_seconds{op}` and its failures as `tandem_serving_store_errors_total{op}`.
pub async fn timed<T>(
    op: &'static str,
    timeout: Duration,
    call: impl Future<Output = tandem_common::Result<T>>,
) -> Result<T, StoreFailure> {
    let start = Instant::now();
    let out = match tokio::time::timeout(timeout, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(StoreFailure::Error(e.to_string())),
        Err(_) => Err(StoreFailure::Timeout(timeout)),
    };
    store_latency(op).record(start.elapsed().as_secs_f64());
    if let Err(e) = &out {
        metrics::counter!("tandem_serving_store_errors_total", "op" => op).increment(1);
        tracing::warn!(op, error = %e, "online store call failed");
    }
    out
}

/// The handle of `tandem_serving_store_seconds{op}`, registered on first use and then shared
/// (a read lock and a lookup among a few ops, not a registry lookup by labels per call).
fn store_latency(op: &'static str) -> metrics::Histogram {
    static HANDLES: OnceLock<RwLock<HashMap<&'static str, metrics::Histogram>>> = OnceLock::new();
    let handles = HANDLES.get_or_init(Default::default);
    if let Some(h) = handles.read().expect("store metrics lock").get(op) {
        return h.clone();
    }
    // A handle taken before the recorder is installed would record nowhere, for good.
    tandem_common::telemetry::prometheus();
    let made = metrics::histogram!("tandem_serving_store_seconds", "op" => op);
    let mut handles = handles.write().expect("store metrics lock");
    handles.entry(op).or_insert(made).clone()
}
