//! Tandem's batch layer (DESIGN §1, §5): the nightly job that recomputes every view from the
//! master dataset up to a cutoff and publishes a versioned snapshot.
//!
//! Nothing lives here yet; issue #3 builds it. The modules it will hold:
//!
//! | module | what |
//! |---|---|
//! | `cutoff` | picks the epoch-aligned cutoff at or below the lake's ingest and archive watermarks |
//! | `views` | DataFusion over the lake: profiles, items, similar items (SQL kept in `.sql` files) |
//! | `publish` | snapshot Parquet + manifest in the lake, materialisation into the online store, the pointer flip |
