//! The process's metrics: one Prometheus recorder for every layer and every command, with the
//! histogram buckets of the `*_seconds` metrics. `tandem serve` shows it at `/metrics`; the
//! stream commands at `--metrics-listen`.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Histogram buckets (seconds) of every `*_seconds` histogram: 0.25 ms to 2.5 s.
pub const BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// How often the recorder's histogram samples are bucketed.
const UPKEEP_EVERY: Duration = Duration::from_millis(100);

/// The process's Prometheus recorder: installed on first use, with histogram buckets for the
/// `*_seconds` metrics and an upkeep thread. Every layer's metrics in the process land in it.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .expect("the buckets are not empty");
            let handle = match builder.install_recorder() {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(error = %e, "a metrics recorder is already installed; /metrics shows only this one's");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            };
            // A histogram keeps every sample until upkeep buckets them. Upkeep runs often so
            // that each run is short: at 40k requests/s, a run every 5 s bucketed ~400k samples
            // at once, milliseconds of one of the cores the API's workers need.
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_EVERY);
                        upkeep.run_upkeep();
                    }
                })
                .expect("spawn the metrics upkeep thread");
            handle
        })
        .clone()
}
