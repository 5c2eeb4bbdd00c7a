//! The API end to end in process: requests through the real router, events through a real
//! `local://` bus and the real speed layer, on the memory store and on a real `redis-server`.

mod edge;
mod erasure;
mod failures;
mod profile;
mod recommendations;

use crate::auth::Keys;
use crate::{App, ServeOptions, router};
use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tandem_common::bus::{Bus, Position, Record};
use tandem_common::config::{ApiKey, Scope, Secret};
use tandem_common::event::{Event, Kind};
use tandem_common::features::{ItemStats, Profile};
use tandem_common::lake::Lake;
use tandem_common::store::{
    BATCH_FAILURE_KEY, BatchOutcome, ItemRow, MemoryStore, OnlineStore, Pointer, PopularRow,
    RedisStore, SpeedEvent, UserRow, history_key, item_key, snapshot_key, user_key,
};
use tandem_common::task::Tasks;
use tandem_models::manifest::{Manifest, ModelsEntry};
use tandem_stream::speed::{SpeedOptions, run};
use tandem_testkit::RedisServer;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const HOUR: i64 = 3_600_000;

const KEY: &str = "test-key-all-scopes-0123";

const READ_ONLY: &str = "test-key-read-only-0123";

struct Fixture {
    app: Arc<App>,
    store: Arc<dyn OnlineStore>,
    bus: Arc<dyn Bus>,
    lake: Lake,
    _dir: tempfile::TempDir,
    cancel: CancellationToken,
    /// The server's followers (aborted on drop, as well as cancelled).
    _tasks: Tasks<std::io::Error>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn keys() -> Keys {
    Keys::new(&[
        ApiKey {
            name: "all".into(),
            key: Secret::new(KEY),
            scopes: vec![Scope::Ingest, Scope::Read, Scope::Admin],
        },
        ApiKey {
            name: "reader".into(),
            key: Secret::new(READ_ONLY),
            scopes: vec![Scope::Read],
        },
    ])
}

async fn fixture_with(store: Arc<dyn OnlineStore>, bus: Option<Arc<dyn Bus>>) -> Fixture {
    fixture_opts(store, bus, ServeOptions::default()).await
}

/// A fixture with `opts` (its `poll` made 20 ms, so that tests see the pointer soon).
async fn fixture_opts(
    store: Arc<dyn OnlineStore>,
    bus: Option<Arc<dyn Bus>>,
    opts: ServeOptions,
) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let bus = match bus {
        Some(b) => b,
        None => tandem_stream::bus::open(&format!("local://{}", dir.path().display()), 4)
            .await
            .unwrap(),
    };
    let cancel = CancellationToken::new();
    let opts = ServeOptions {
        poll: Duration::from_millis(20),
        ..opts
    };
    let lake = Lake::open("memory://").unwrap();
    let mut tasks = Tasks::new(&cancel);
    let app = App::start(
        store.clone(),
        bus.clone(),
        lake.clone(),
        keys(),
        opts,
        &mut tasks,
    )
    .await;
    Fixture {
        app,
        lake,
        store,
        bus,
        _dir: dir,
        cancel,
        _tasks: tasks,
    }
}

async fn fixture(store: Arc<dyn OnlineStore>) -> Fixture {
    fixture_with(store, None).await
}

impl Fixture {
    async fn call(
        &self,
        method: &str,
        uri: &str,
        key: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(k) = key {
            req = req.header(header::AUTHORIZATION, format!("Bearer {k}"));
        }
        let req = req
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.map_or_else(Body::empty, Body::from))
            .unwrap();
        let resp = router(self.app.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let retry = resp.headers().get(header::RETRY_AFTER).cloned();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let mut v: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        if let (Some(r), Value::Object(o)) = (retry, &mut v) {
            o.insert("retry_after".into(), json!(r.to_str().unwrap()));
        }
        (status, v)
    }

    async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.call("GET", uri, Some(KEY), None).await
    }

    async fn post(&self, body: &Value) -> (StatusCode, Value) {
        self.call(
            "POST",
            "/v1/events",
            Some(KEY),
            Some(serde_json::to_vec(body).unwrap()),
        )
        .await
    }

    /// Runs the real speed layer until it has applied everything on the bus.
    async fn catch_up(&self) {
        let opts = SpeedOptions {
            until_caught_up: true,
            wait: Duration::from_millis(5),
            ..Default::default()
        };
        run(
            self.bus.clone(),
            self.store.clone(),
            opts,
            CancellationToken::new(),
        )
        .await
        .unwrap();
    }

    /// Publishes a snapshot: `users` rows, `items` rows, popular lists; flips the pointer and
    /// waits for the server to follow it.
    async fn publish(
        &self,
        id: &str,
        cutoff_ms: i64,
        users: &[(&str, Profile)],
        items: &[(&str, ItemRow)],
        popular: PopularRow,
    ) {
        let mut rows: Vec<(String, Bytes)> = Vec::new();
        for (u, p) in users {
            let row = UserRow {
                profile: p.clone(),
                segment: Some(1),
                propensity: Some(0.25),
            };
            rows.push((user_key(u, id), serde_json::to_vec(&row).unwrap().into()));
        }
        for (i, r) in items {
            rows.push((item_key(i, id), serde_json::to_vec(r).unwrap().into()));
        }
        rows.push((
            snapshot_key(id, "popular"),
            serde_json::to_vec(&popular).unwrap().into(),
        ));
        rows.push((
            snapshot_key(id, "manifest"),
            serde_json::to_vec(&Manifest {
                snapshot: id.into(),
                cutoff: tandem_common::event::format_rfc3339_ms(cutoff_ms),
                cutoff_ms,
                created_at: "2026-11-20T00:00:00Z".into(),
                code_version: env!("CARGO_PKG_VERSION").into(),
                feature_schema_version: tandem_models::vectors::FEATURE_SCHEMA_VERSION,
                events: 0,
                set_aside: 0,
                rows: Default::default(),
                durations_s: Default::default(),
                models: ModelsEntry::Skipped("a test fixture".into()),
                inputs: String::new(),
                merged_from: None,
                full_cutoff_ms: None,
                state_version: 0,
            })
            .unwrap()
            .into(),
        ));
        self.store.put(&rows).await.unwrap();
        let old = self.store.pointer().await.unwrap();
        let new = Pointer {
            snapshot: id.into(),
            cutoff_ms,
        };
        assert!(self.store.flip(old.as_ref(), &new).await.unwrap());
        for _ in 0..500 {
            if self.app.snapshots.current().is_some_and(|s| s.id() == id) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the server did not follow the pointer to {id}");
    }
}

fn event(id: &str, user: &str, kind: Kind, item: &str, cat: &str, ts: i64) -> Event<'static> {
    Event {
        event_id: id.to_string().into(),
        user_id: user.to_string().into(),
        kind,
        item_id: Some(item.to_string().into()),
        category: Some(cat.to_string().into()),
        price: (kind == Kind::Purchase).then_some(10.0),
        quantity: 1,
        rating: None,
        query: None,
        ts,
        session_id: None,
        props: None,
    }
}

fn wire(e: &Event<'_>) -> Value {
    serde_json::from_str(&e.to_json()).unwrap()
}

fn item_row(cat: &str, popularity: f64, similar: &[(&str, f64)]) -> ItemRow {
    ItemRow {
        stats: ItemStats {
            popularity,
            category: Some((cat.into(), 0)),
            ..Default::default()
        },
        similar: similar.iter().map(|(i, s)| (i.to_string(), *s)).collect(),
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

async fn redis_store(server: &RedisServer) -> Arc<dyn OnlineStore> {
    Arc::new(RedisStore::connect(&server.url()).await.unwrap())
}
