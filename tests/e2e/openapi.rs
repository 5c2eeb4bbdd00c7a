//! The OpenAPI document builds a working client: `openapi-python-client` (installed by
//! `make deps`) generates a Python client from `/openapi.json` of a running `tandem serve`, and
//! `openapi_client.py` calls every route of the document through it, each answer checked
//! against the status and model the document gives. (The document once declared query
//! parameters as required path parameters and `POST /v1/events` without a body schema: a
//! generated client could not call them.)

use std::process::Command;

use tandem_testkit::RedisServer;

use crate::harness::Running;
use crate::serve::{KEY, Server, http, keyed_scratch};

#[test]
fn a_client_generated_from_the_openapi_document_calls_every_route() {
    let s = keyed_scratch(&[]);
    let redis = RedisServer::start();
    let server = Server::start(&s, &["--store", &redis.url()]);
    // The speed layer runs beside, so that posted events reach the profile.
    let mut speed = Running::start(s.tandem(&["stream", "run", "--store", &redis.url()]));

    let (status, doc) = http(server.port(), "GET", "/openapi.json", None, None);
    assert_eq!(status, 200);
    let spec = s.path("openapi.json");
    std::fs::write(&spec, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let out_dir = s.path("tandem_api");
    let generated = Command::new("openapi-python-client")
        .args(["generate", "--meta", "none", "--path"])
        .arg(&spec)
        .arg("--output-path")
        .arg(&out_dir)
        .output()
        .expect("openapi-python-client runs (make deps installs it)");
    assert!(
        generated.status.success(),
        "the client generator refused the document:\n{}\n{}",
        String::from_utf8_lossy(&generated.stdout),
        String::from_utf8_lossy(&generated.stderr)
    );
    let warnings = String::from_utf8_lossy(&generated.stdout);
    assert!(
        !warnings.contains("Warning"),
        "the generator skipped parts of the document:\n{warnings}"
    );

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/openapi_client.py");
    let base = format!("http://127.0.0.1:{}", server.port());
    let ran = Command::new("python3")
        .arg(script)
        .arg(&out_dir)
        .arg(&base)
        .arg(KEY)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&ran.stdout);
    assert!(
        ran.status.success(),
        "{printed}\n{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    // Every operation of the document was called.
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            operations += 1;
            let called = format!("{} {path}", method.to_uppercase());
            assert!(
                printed.contains(&called),
                "{called} was not called:\n{printed}"
            );
        }
    }
    assert!(operations >= 8, "{operations} operations");
    speed.assert_running();
    speed.stop();
    assert!(server.stop());
}
