//! The online store conformance suite, run on `memory://` and on a real `redis-server`.

use bytes::Bytes;

use super::*;
use crate::testkit::RedisServer;

fn rows(id: &str, users: usize) -> Vec<(String, Bytes)> {
    let mut out: Vec<(String, Bytes)> = (0..users)
        .map(|u| {
            (
                user_key(&format!("user-{u}"), id),
                Bytes::from(format!("{id}/{u}")),
            )
        })
        .collect();
    out.push((item_key("item:{odd}", id), Bytes::from_static(b"item")));
    out.push((snapshot_key(id, "popular"), Bytes::from_static(b"[]")));
    out
}

async fn conformance(store: &dyn OnlineStore) {
    // Rows, read back in order, missing ones as None; pipelines beyond one chunk.
    let a = rows("a", 2_500);
    store.put(&a).await.unwrap();
    let keys = vec![
        a[0].0.clone(),
        "tandem:nothing".to_string(),
        a[2_499].0.clone(),
    ];
    let got = store.get(&keys).await.unwrap();
    assert_eq!(
        got,
        vec![Some(a[0].1.clone()), None, Some(a[2_499].1.clone())]
    );
    assert_eq!(store.get(&[]).await.unwrap(), vec![]);

    // The pointer: compare-and-set.
    assert_eq!(store.pointer().await.unwrap(), None);
    let pa = Pointer {
        snapshot: "a".into(),
        cutoff_ms: 3_600_000,
    };
    let pb = Pointer {
        snapshot: "b".into(),
        cutoff_ms: 7_200_000,
    };
    assert!(!store.flip(Some(&pa), &pb).await.unwrap(), "no pointer yet");
    assert!(store.flip(None, &pa).await.unwrap());
    assert!(!store.flip(None, &pb).await.unwrap(), "a pointer exists");
    assert_eq!(store.pointer().await.unwrap(), Some(pa.clone()));
    store.put(&rows("b", 10)).await.unwrap();
    assert!(store.flip(Some(&pa), &pb).await.unwrap());
    assert_eq!(store.pointer().await.unwrap(), Some(pb.clone()));

    // Speed epochs and dropping: only what is asked, nothing of the kept snapshot.
    let epochs: Vec<(String, Bytes)> = [0, 3_600_000, 7_200_000, 10_800_000]
        .iter()
        .map(|e| (epoch_key("user-1", *e), Bytes::from_static(b"d")))
        .collect();
    store.put(&epochs).await.unwrap();
    assert_eq!(store.drop_snapshots_except("b").await.unwrap(), 2_502);
    assert_eq!(store.drop_epochs_before(7_200_000).await.unwrap(), 2);
    let left = store
        .get(&[
            user_key("user-0", "a"),
            user_key("user-0", "b"),
            item_key("item:{odd}", "b"),
            snapshot_key("b", "popular"),
            epoch_key("user-1", 3_600_000),
            epoch_key("user-1", 7_200_000),
            epoch_key("user-1", 10_800_000),
        ])
        .await
        .unwrap();
    let present: Vec<bool> = left.iter().map(Option::is_some).collect();
    assert_eq!(present, [false, true, true, true, false, true, true]);
    assert_eq!(store.pointer().await.unwrap(), Some(pb));
}

#[tokio::test]
async fn memory_store_conforms() {
    conformance(&MemoryStore::default()).await;
}

#[tokio::test]
async fn redis_store_conforms() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    conformance(&store).await;
}

#[test]
fn keys_parse_back() {
    assert_eq!(snapshot_of_key(&user_key("u:{x}", "s1")), Some("s1"));
    assert_eq!(snapshot_of_key(&item_key("i", "s2")), Some("s2"));
    assert_eq!(snapshot_of_key(&snapshot_key("s3", "models")), Some("s3"));
    assert_eq!(snapshot_of_key(&epoch_key("u", 5)), None);
    assert_eq!(epoch_of_key(&epoch_key("u}", 5)), Some(5));
    assert_eq!(epoch_of_key(&user_key("u", "s")), None);
    assert_eq!(epoch_of_key(POINTER_KEY), None);
}

#[tokio::test]
async fn bad_urls_are_named() {
    let err = open("postgres://x").await.unwrap_err().to_string();
    assert!(
        err.contains("online_store.url") && err.contains("memory://"),
        "{err}"
    );
    let port = crate::testkit::free_port();
    let err = open(&format!("redis://127.0.0.1:{port}"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), crate::ErrorKind::External, "{err}");
}
