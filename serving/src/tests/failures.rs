//! Failing dependencies: a store that fails, a bus that is down.

use super::*;
use tandem_testkit::FaultyStore;

#[tokio::test]
async fn a_failing_store_degrades_answers_instead_of_failing() {
    let store = Arc::new(FaultyStore::default());
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
    store.reads_down.store(true, Ordering::SeqCst);
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
    async fn produce(&self, _: Vec<(Bytes, Bytes)>) -> tandem_common::bus::Result<Vec<Position>> {
        Err(tandem_common::bus::Error::Io(std::io::Error::other(
            "bus unreachable",
        )))
    }
    async fn fetch(
        &self,
        _: u32,
        _: u64,
        _: usize,
        _: Duration,
    ) -> tandem_common::bus::Result<Vec<Record>> {
        Ok(Vec::new())
    }
    async fn end_offset(&self, _: u32) -> tandem_common::bus::Result<u64> {
        Ok(0)
    }
    async fn log_id(&self, _: u32) -> tandem_common::bus::Result<Option<String>> {
        Ok(None)
    }
    async fn committed(&self, _: &str, _: u32) -> tandem_common::bus::Result<Option<u64>> {
        Ok(None)
    }
    async fn commit(&self, _: &str, _: u32, _: u64) -> tandem_common::bus::Result<()> {
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
