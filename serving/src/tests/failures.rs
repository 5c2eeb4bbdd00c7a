//! Failing dependencies: a store that fails, a bus that is down.

use super::*;

/// A store whose calls fail while `down` is set.
#[derive(Debug, Default)]
struct Flaky {
    inner: MemoryStore,
    speed_down: AtomicBool,
    all_down: AtomicBool,
}

impl Flaky {
    fn check(&self, speed: bool) -> tandem_common::Result<()> {
        if self.all_down.load(Ordering::SeqCst) || (speed && self.speed_down.load(Ordering::SeqCst))
        {
            return Err(tandem_common::Error::Io(std::io::Error::other(
                "connection refused",
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl OnlineStore for Flaky {
    async fn put(&self, rows: &[(String, Bytes)]) -> tandem_common::Result<()> {
        self.inner.put(rows).await
    }
    async fn get(&self, keys: &[String]) -> tandem_common::Result<Vec<Option<Bytes>>> {
        self.check(false)?;
        self.inner.get(keys).await
    }
    async fn pointer(&self) -> tandem_common::Result<Option<Pointer>> {
        self.check(false)?;
        self.inner.pointer().await
    }
    async fn flip(&self, expected: Option<&Pointer>, new: &Pointer) -> tandem_common::Result<bool> {
        self.inner.flip(expected, new).await
    }
    async fn lease(
        &self,
        name: &str,
        op: tandem_common::store::LeaseOp,
        owner: &str,
        ttl_ms: u64,
    ) -> tandem_common::Result<tandem_common::store::LeaseState> {
        self.inner.lease(name, op, owner, ttl_ms).await
    }
    async fn note_erasure(&self, user: &str, at_ms: i64) -> tandem_common::Result<()> {
        self.inner.note_erasure(user, at_ms).await
    }
    async fn drop_snapshots_older(&self, keep: &str) -> tandem_common::Result<u64> {
        self.inner.drop_snapshots_older(keep).await
    }
    async fn drop_epochs_before(&self, cutoff_ms: i64) -> tandem_common::Result<u64> {
        self.inner.drop_epochs_before(cutoff_ms).await
    }
    async fn apply(
        &self,
        log: &str,
        events: &[SpeedEvent<'_>],
    ) -> tandem_common::Result<ApplyCounts> {
        self.inner.apply(log, events).await
    }
    async fn speed(&self, user: &str, from_epoch_ms: i64) -> tandem_common::Result<SpeedState> {
        self.check(true)?;
        self.inner.speed(user, from_epoch_ms).await
    }
    async fn erase_user(
        &self,
        user: &str,
        at_ms: i64,
        snapshots: &[String],
    ) -> tandem_common::Result<u64> {
        self.check(false)?;
        self.inner.erase_user(user, at_ms, snapshots).await
    }
}

#[tokio::test]
async fn a_failing_store_degrades_answers_instead_of_failing() {
    let store = Arc::new(Flaky::default());
    let f = fixture(store.clone()).await;
    let mut row = Profile::new();
    row.apply(&event(
        "a1",
        "erin",
        Kind::View,
        "i1",
        "shoes",
        now() - 10 * HOUR,
    ));
    let popular = PopularRow {
        overall: vec!["h1".into(), "i1".into()],
        ..Default::default()
    };
    f.publish(
        "s1",
        (now() / HOUR - 2) * HOUR,
        &[("erin", row)],
        &[("i1", item_row("shoes", 1.0, &[]))],
        popular,
    )
    .await;
    let (status, b) = f.get("/v1/users/erin/profile").await;
    assert_eq!(status, StatusCode::OK, "{b}");
    assert_eq!(b["profile"]["counts"]["view"], 1, "{b}");
    // Without the speed state, whether erin was erased is unknown: her row (cached by the call
    // above) is not served alone — unknown counts as erased.
    store.speed_down.store(true, Ordering::SeqCst);
    let (status, b) = f.get("/v1/users/erin/profile").await;
    assert_eq!(status, StatusCode::OK, "{b}");
    assert_eq!(b["degraded"], "popular_only");
    assert_eq!(b["profile"]["counts"]["view"], 0, "{b}");
    let (status, b) = f.get("/v1/users/erin/recommendations?n=5").await;
    assert_eq!(
        (status, b["degraded"].clone()),
        (StatusCode::OK, json!("popular_only")),
        "{b}"
    );
    store.all_down.store(true, Ordering::SeqCst);
    // erin's row is cached from the call above; a user never read gets popular items.
    let (status, b) = f.get("/v1/users/frank/recommendations?n=5").await;
    assert_eq!(status, StatusCode::OK, "{b}");
    assert_eq!(b["degraded"], "popular_only");
    assert_eq!(b["items"][0]["item"], "h1");
    // /readyz answers from the background pointer reads (a probe costs the store nothing):
    // the next one notices, and the store's own words stay off the public listener.
    let mut ready = (StatusCode::OK, Value::Null);
    for _ in 0..250 {
        ready = f.call("GET", "/readyz", None, None).await;
        if ready.1["store"] == json!(false) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, b) = ready;
    assert_eq!(
        (status, b["store"].clone()),
        (StatusCode::SERVICE_UNAVAILABLE, json!(false)),
        "{b}"
    );
    assert!(
        b["problems"][0]
            .as_str()
            .unwrap()
            .contains("admin listener"),
        "{b}"
    );
    let (status, b) = f.get("/v1/items/i9/similar").await;
    assert_eq!(
        (status, b["code"].clone()),
        (StatusCode::SERVICE_UNAVAILABLE, json!("store_unavailable"))
    );
}

/// A bus that refuses every record.
#[derive(Debug)]
struct DownBus;

#[async_trait]
impl Bus for DownBus {
    fn partitions(&self) -> u32 {
        1
    }
    async fn produce(&self, _: Vec<(Bytes, Bytes)>) -> tandem_stream::Result<Vec<Position>> {
        Err(tandem_stream::Error::Io(std::io::Error::other(
            "bus unreachable",
        )))
    }
    async fn fetch(
        &self,
        _: u32,
        _: u64,
        _: usize,
        _: Duration,
    ) -> tandem_stream::Result<Vec<Record>> {
        Ok(Vec::new())
    }
    async fn end_offset(&self, _: u32) -> tandem_stream::Result<u64> {
        Ok(0)
    }
    async fn log_id(&self, _: u32) -> tandem_stream::Result<Option<String>> {
        Ok(None)
    }
    async fn committed(&self, _: &str, _: u32) -> tandem_stream::Result<Option<u64>> {
        Ok(None)
    }
    async fn commit(&self, _: &str, _: u32, _: u64) -> tandem_stream::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn an_unavailable_bus_is_a_503_with_retry_after() {
    let f = fixture_with(Arc::new(MemoryStore::default()), Some(Arc::new(DownBus))).await;
    let (status, b) = f
        .post(&wire(&event(
            "e1",
            "gina",
            Kind::View,
            "i1",
            "shoes",
            now(),
        )))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{b}");
    assert_eq!(b["code"], "bus_unavailable");
    assert_eq!(b["retry_after"], "1");
}
