//! TLS for the clients that use it (`rediss://`, the cloud lakes `s3://`, `gs://`, `az://`, and
//! Fluvio with `bus.tls`):
//! one process-wide rustls crypto provider. Two providers are compiled in (aws-lc-rs and ring,
//! each wanted by a dependency), so rustls cannot choose by itself and would panic at the first
//! handshake; [`init`] installs aws-lc-rs before any client is built.

/// Installs the crypto provider once; later calls do nothing.
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Fails only when the process already installed one, which serves as well.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}
