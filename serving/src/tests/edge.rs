//! Keys and scopes, the edge against hostile clients, CORS, the document, operations routes.

use super::*;

#[tokio::test]
async fn auth_scopes_and_errors_are_json() {
    let f = fixture(Arc::new(MemoryStore::default())).await;
    let body = serde_json::to_vec(&json!({})).unwrap();
    let (status, b) = f.call("POST", "/v1/events", None, Some(body.clone())).await;
    assert_eq!(
        (status, b["code"].clone()),
        (StatusCode::UNAUTHORIZED, json!("unauthorized"))
    );
    let (status, b) = f
        .call("POST", "/v1/events", Some(READ_ONLY), Some(body))
        .await;
    assert_eq!(
        (status, b["code"].clone()),
        (StatusCode::FORBIDDEN, json!("forbidden"))
    );
    let (status, _) = f
        .call(
            "GET",
            "/v1/items/popular",
            Some("wrong-key-0123456789"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = f
        .call("GET", "/v1/items/popular", Some(READ_ONLY), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    // Malformed input gets a {code, message} naming what is wrong.
    let (status, b) = f
        .call("POST", "/v1/events", Some(KEY), Some(b"{not json".to_vec()))
        .await;
    assert_eq!(
        (status, b["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("invalid_json"))
    );
    assert!(b["message"].as_str().unwrap().contains("not JSON"), "{b}");
    let (status, b) = f.post(&json!(42)).await;
    assert_eq!(
        (status, b["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("invalid_body"))
    );
    let (status, b) = f.post(&json!([{"event_id": "x"}])).await;
    assert_eq!(
        (status, b["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("invalid_events"))
    );
    assert_eq!(b["errors"][0]["index"], 0);
    let many: Vec<Value> = (0..1001).map(|i| json!({"event_id": i})).collect();
    let (status, b) = f.post(&json!(many)).await;
    assert_eq!(
        (status, b["code"].clone()),
        (StatusCode::PAYLOAD_TOO_LARGE, json!("too_many_events"))
    );
    // A field given twice is refused, alone or in an array (the second `user_id` used to win),
    // and so is a property key given twice; the good event beside them is kept. Numbers out
    // of bounds are refused by name (a price of 1e300 stopped every later batch run).
    let t = now() - 60_000;
    let event_text = |id: &str, extra: &str| {
        format!(
            r#"{{"event_id":"{id}","user_id":"alice","kind":"purchase","item_id":"i1","price":2.5,"ts":{t}{extra}}}"#
        )
    };
    let twice = event_text("d1", r#","user_id":"mallory""#);
    let (status, b) = f
        .call(
            "POST",
            "/v1/events",
            Some(KEY),
            Some(twice.clone().into_bytes()),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{b}");
    assert_eq!(b["errors"][0]["field"], "user_id", "{b}");
    assert!(
        b["message"].as_str().unwrap().contains("appears twice"),
        "{b}"
    );
    let batch = format!(
        "[{twice}, {}, {}, {}, {}, {}]",
        event_text("d2", r#","props":{"a":"1","a":"2"}"#),
        event_text("d3", r#","price":1e300"#).replace(r#""price":2.5,"#, ""),
        event_text("d4", r#","quantity":1000001"#),
        event_text("d5", ""),
        event_text("d6", r#","quantity":1000000"#).replace("2.5", "1000000000"),
    );
    let (status, b) = f
        .call("POST", "/v1/events", Some(KEY), Some(batch.into_bytes()))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{b}");
    assert_eq!(
        (b["accepted"].clone(), b["rejected"].clone()),
        (json!(2), json!(4)),
        "{b}"
    );
    let fields: Vec<&str> = b["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["user_id", "props", "price", "quantity"], "{b}");
    // Ids in paths are checked as ids in events: a 60,000-character id, or one with a brace
    // (a Redis hash tag's), is a bad request, not an unknown user.
    let long = "u".repeat(60_000);
    for path in [
        format!("/v1/users/{long}/profile"),
        "/v1/users/%7Dx/profile".to_string(),
        "/v1/users/a%7Bb/recommendations".to_string(),
        "/v1/items/%7D/similar".to_string(),
    ] {
        let (status, b) = f.get(&path).await;
        assert_eq!(
            (status, b["code"].clone()),
            (StatusCode::BAD_REQUEST, json!("invalid_path")),
            "{path}: {b}"
        );
    }
    let big = vec![b' '; crate::api::MAX_BODY + 1];
    let (status, b) = f.call("POST", "/v1/events", Some(KEY), Some(big)).await;
    assert_eq!(
        (status, b["code"].clone()),
        (StatusCode::PAYLOAD_TOO_LARGE, json!("invalid_body")),
        "{b}"
    );
    let (status, b) = f.get("/v1/items/popular?n=0").await;
    assert_eq!(
        (status, b["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("invalid_query"))
    );
    let (status, b) = f.get("/v1/items/popular?n=abc").await;
    assert_eq!(
        (status, b["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("invalid_query"))
    );
    let (status, b) = f.get("/v2/nothing").await;
    assert_eq!(
        (status, b["code"].clone()),
        (StatusCode::NOT_FOUND, json!("not_found"))
    );
}

#[tokio::test]
async fn operations_routes() {
    let f = fixture(Arc::new(MemoryStore::default())).await;
    let (status, _) = f.call("GET", "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, b) = f.call("GET", "/readyz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{b}");
    assert_eq!(b["store"], true);
    f.publish("s1", 0, &[], &[], PopularRow::default()).await;
    let (status, b) = f.call("GET", "/readyz", None, None).await;
    assert_eq!(
        (status, b["snapshot"].clone()),
        (StatusCode::OK, json!("s1"))
    );
    let (status, doc) = f.call("GET", "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/v1/events",
        "/v1/users/{id}/profile",
        "/v1/users/{id}/recommendations",
        "/v1/items/{id}/similar",
        "/v1/items/popular",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    let (status, text) = f.call("GET", "/metrics", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let text = text.as_str().unwrap();
    assert!(
        text.contains(r#"tandem_http_request_duration_seconds_bucket{route="/readyz",method="GET",status="200""#),
        "{text}"
    );
    // What the last batch runs recorded is exported for the alerts (infra/observability).
    let outcome = |at_ms| {
        let o = BatchOutcome {
            at_ms,
            snapshot: None,
            error: Some("lake unreachable".into()),
        };
        Bytes::from(serde_json::to_vec(&o).unwrap())
    };
    f.store
        .put(&[(BATCH_FAILURE_KEY.to_string(), outcome(1_700_000_123_000))])
        .await
        .unwrap();
    let want = "tandem_batch_last_failure_timestamp_seconds 1700000123";
    let mut seen = String::new();
    for _ in 0..500 {
        let (_, text) = f.call("GET", "/metrics", None, None).await;
        seen = text.as_str().unwrap().to_string();
        if seen.contains(want) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(seen.contains(want), "{seen}");
}

/// The HTTP edge on a real socket, as slow and hostile clients meet it: half-sent headers are
/// cut off after `header_timeout`; an unauthenticated POST announcing 900 KB is answered 401
/// before its body is sent (the body was read first, and held); a body that stalls gets 408
/// after `body_timeout`, and while it is in flight the in-flight limit answers others 503
/// `overloaded` (the health probe excepted); request ids are echoed or made; and at shutdown
/// idle keep-alive connections do not hold the server (they held it for their keep-alive).
/// The guards on each read only stop a broken server from hanging the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_bounds_slow_and_hostile_clients() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    let opts = ServeOptions {
        body_timeout: Duration::from_secs(3),
        max_in_flight: 1,
        edge: crate::edge::EdgeOptions {
            header_timeout: Duration::from_millis(300),
            max_connections: 64,
            shutdown_grace: Duration::from_secs(60),
        },
        ..Default::default()
    };
    let f = fixture_opts(Arc::new(MemoryStore::default()), None, opts).await;
    let (app, cancel) = (f.app.clone(), f.cancel.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(crate::serve(listener, app, cancel.clone()));
    let guard = Duration::from_secs(20);
    // Reads until the server closes the connection (or the guard): what it sent.
    async fn answer(s: &mut TcpStream, guard: Duration) -> String {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(guard, s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => {
                    out.extend_from_slice(&buf[..n]);
                    if out.windows(4).any(|w| w == b"\r\n\r\n") && !out.starts_with(b"HTTP/1.1 1") {
                        // Headers are in; the bodies here are small, read what came with them.
                        break;
                    }
                }
                Err(_) => panic!("the server neither answered nor closed within {guard:?}"),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    // Half-sent headers: the connection is closed.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let got = answer(&mut slow, guard).await;
    assert!(!got.contains("200 OK"), "{got}");

    // An unauthenticated POST of 900 KB, headers only: 401 at once.
    let mut anon = TcpStream::connect(addr).await.unwrap();
    anon.write_all(
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 900000\r\n\r\n",
    )
    .await
    .unwrap();
    let got = answer(&mut anon, guard).await;
    assert!(got.starts_with("HTTP/1.1 401"), "{got}");

    // An authenticated POST whose body stalls holds the one in-flight slot, then gets 408.
    let stalled_post = || async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!(
                "POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n[{{\"event_id\""
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        s
    };
    let mut stalled = stalled_post().await;
    let get = |path: &str, id: Option<&str>| {
        let id = id.map_or(String::new(), |i| format!("x-request-id: {i}\r\n"));
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n{id}\r\n")
    };
    // Once the stalled POST is in its handler, another request finds no slot. A request sent
    // after it can still reach its handler first (each connection is its own task): then the
    // stalled POST is the one refused, and it is sent again.
    let mut shed = None;
    for _ in 0..40 {
        let mut other = TcpStream::connect(addr).await.unwrap();
        other
            .write_all(get("/v1/items/popular", None).as_bytes())
            .await
            .unwrap();
        let got = answer(&mut other, guard).await;
        if got.starts_with("HTTP/1.1 503") {
            shed = Some(got);
            break;
        }
        let mut buf = [0u8; 1024];
        match stalled.try_read(&mut buf) {
            Ok(n) if buf[..n].starts_with(b"HTTP/1.1 503") => stalled = stalled_post().await,
            Ok(n) => panic!(
                "the stalled POST got {:?} before its body came",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("the stalled POST's connection: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let Some(shed) = shed else {
        // What became of the request that should hold the slot, to say why.
        let got = answer(&mut stalled, Duration::from_millis(500)).await;
        panic!(
            "no request was refused while the only slot was held; the stalled POST got: {got:?}"
        );
    };
    assert!(shed.contains("retry-after"), "{shed}");
    let mut probe = TcpStream::connect(addr).await.unwrap();
    probe
        .write_all(get("/healthz", None).as_bytes())
        .await
        .unwrap();
    let got = answer(&mut probe, guard).await;
    assert!(got.starts_with("HTTP/1.1 200"), "the health probe: {got}");
    let got = answer(&mut stalled, guard).await;
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");

    // Request ids: a sane one is echoed, an insane one replaced.
    let mut ids = TcpStream::connect(addr).await.unwrap();
    ids.write_all(get("/healthz", Some("abc-123")).as_bytes())
        .await
        .unwrap();
    let got = answer(&mut ids, guard).await;
    assert!(got.contains("x-request-id: abc-123"), "{got}");
    ids.write_all(get("/healthz", Some("bad id with spaces")).as_bytes())
        .await
        .unwrap();
    let got = answer(&mut ids, guard).await;
    assert!(
        got.contains("x-request-id: ") && !got.contains("bad id"),
        "{got}"
    );

    // Idle keep-alive connections (each served a request) do not hold the shutdown.
    let mut idle = Vec::new();
    for _ in 0..5 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(get("/healthz", None).as_bytes()).await.unwrap();
        assert!(answer(&mut c, guard).await.starts_with("HTTP/1.1 200"));
        idle.push(c);
    }
    cancel.cancel();
    tokio::time::timeout(guard, server)
        .await
        .expect("idle connections held the shutdown")
        .unwrap()
        .unwrap();
}

/// CORS for the configured origins only; a wrong method (`OPTIONS` outside a preflight, `PUT`)
/// is a 405 in the `{code, message}` form (it was an empty 405); and `/openapi.json` declares
/// query parameters in the query, optional (it declared `n`, `context_item`, `exclude` and
/// `category` as required path parameters), and the events body and its 400 with `errors`.
#[tokio::test]
async fn cors_method_errors_and_the_openapi_document_are_right() {
    let opts = ServeOptions {
        cors_origins: vec!["https://shop.example".into()],
        ..Default::default()
    };
    let f = fixture_opts(Arc::new(MemoryStore::default()), None, opts).await;
    let (app, cancel) = (f.app.clone(), f.cancel.clone());
    let call = |method: &str, uri: &str, headers: &[(&str, &str)]| {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Body::empty()).unwrap();
        let app = app.clone();
        async move {
            let resp = router(app).oneshot(req).await.unwrap();
            let status = resp.status();
            let headers = resp.headers().clone();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            (status, headers, bytes)
        }
    };
    let shop = ("origin", "https://shop.example");
    let (status, h, _) = call(
        "OPTIONS",
        "/v1/events",
        &[shop, ("access-control-request-method", "POST")],
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(h["access-control-allow-origin"], "https://shop.example");
    assert!(
        h["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("authorization")
    );
    let auth = format!("Bearer {KEY}");
    let (status, h, _) = call(
        "GET",
        "/v1/items/popular",
        &[shop, ("authorization", auth.as_str())],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h["access-control-allow-origin"], "https://shop.example");
    let (_, h, _) = call(
        "GET",
        "/v1/items/popular",
        &[
            ("origin", "https://evil.example"),
            ("authorization", auth.as_str()),
        ],
    )
    .await;
    assert!(!h.contains_key("access-control-allow-origin"));
    for method in ["OPTIONS", "PUT"] {
        let (status, _, body) = call(method, "/v1/events", &[]).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["code"], "method_not_allowed", "{method}: {v}");
    }

    let (_, h, body) = call("GET", "/openapi.json", &[]).await;
    assert!(!h.contains_key("content-encoding"), "not asked for");
    let (status, h, zipped) = call("GET", "/openapi.json", &[("accept-encoding", "gzip")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h["content-encoding"], "gzip");
    assert_eq!(zipped[..2], [0x1f, 0x8b], "a gzip stream");
    assert!(
        zipped.len() * 3 < body.len(),
        "{} of {}",
        zipped.len(),
        body.len()
    );
    // Small answers go as they are.
    let (_, h, _) = call("GET", "/healthz", &[("accept-encoding", "gzip")]).await;
    assert!(!h.contains_key("content-encoding"));
    let doc: Value = serde_json::from_slice(&body).unwrap();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for p in op["parameters"].as_array().into_iter().flatten() {
                let name = p["name"].as_str().unwrap();
                let (place, required) = (p["in"].as_str().unwrap(), p["required"] == true);
                if path.contains(&format!("{{{name}}}")) {
                    assert_eq!((place, required), ("path", true), "{method} {path} {name}");
                } else {
                    assert_eq!(
                        (place, required),
                        ("query", false),
                        "{method} {path} {name}"
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 8, "{checked} parameters");
    let post = &doc["paths"]["/v1/events"]["post"];
    let body_schema = &post["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(
        body_schema["$ref"], "#/components/schemas/EventsBody",
        "{post}"
    );
    let events_body = &doc["components"]["schemas"]["EventsBody"];
    assert_eq!(
        events_body["oneOf"].as_array().map(Vec::len),
        Some(2),
        "{events_body}"
    );
    let event = &doc["components"]["schemas"]["EventDoc"];
    assert_eq!(
        event["properties"]["price"]["maximum"], 1_000_000_000.0,
        "{event}"
    );
    let bad = &post["responses"]["400"]["content"]["application/json"]["schema"]["$ref"];
    assert_eq!(bad, "#/components/schemas/InvalidEventsBody");
    assert!(doc["components"]["schemas"]["InvalidEventsBody"]["properties"]["errors"].is_object());
    cancel.cancel();
}

/// With an admin listener, `/metrics` leaves the public router (it was on the public port) and
/// the admin router serves it, with `/readyz` naming the store's own error.
#[tokio::test]
async fn operations_move_to_the_admin_listener() {
    let opts = ServeOptions {
        admin_listener: true,
        ..Default::default()
    };
    let f = fixture_opts(Arc::new(MemoryStore::default()), None, opts).await;
    let (app, cancel) = (f.app.clone(), f.cancel.clone());
    let get = |r: axum::Router, uri: &'static str| async move {
        let req = Request::builder().uri(uri).body(Body::empty()).unwrap();
        let resp = r.oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    };
    let (status, _) = get(router(app.clone()), "/metrics").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = get(crate::admin_router(app.clone()), "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = get(crate::admin_router(app.clone()), "/readyz").await;
    // No snapshot yet: not ready, and the store answered.
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains(r#""store":true"#), "{body}");
    cancel.cancel();
}
