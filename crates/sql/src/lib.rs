//! Tandem's analyst SQL (DESIGN §1): one DataFusion catalog over the lake (events) and the
//! snapshots (profiles, items, similar items, segments).
//!
//! Nothing lives here yet; issue #3 builds it. The modules it will hold:
//!
//! | module | what |
//! |---|---|
//! | `catalog` | the lake and snapshot tables, the current snapshot by default |
//! | `cli` | `tandem sql -e`, the REPL, table/CSV/JSON/Parquet output |
