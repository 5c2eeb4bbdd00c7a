//! Tandem's serving layer (DESIGN §7): the axum HTTP API that merges the batch snapshot and the
//! speed deltas per request.
//!
//! Nothing lives here yet; issue #5 builds it. The modules it will hold:
//!
//! | module | what |
//! |---|---|
//! | `api` | the v1 routes, OpenAPI document, `{code, message}` errors |
//! | `auth` | bearer API keys with scopes |
//! | `merge` | snapshot ⊕ speed epochs at or after its cutoff |
