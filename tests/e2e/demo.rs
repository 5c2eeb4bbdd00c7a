//! `tandem demo` (issue #5) and its page, in a real headless Chromium: the page shows the
//! selected user's profile and recommendations from the API, and shows an event posted for
//! that user on its next load. SIGTERM stops the demo cleanly; a second run continues from its
//! data. Skipped, with the reason printed, where no Chromium is installed (`make deps`
//! installs one).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tandem_testkit::free_port;

use crate::harness::{Listening, Scratch};
use crate::serve::http;

/// The browser: `TANDEM_CHROMIUM`, or the first of the usual names on the PATH.
fn chromium() -> Option<String> {
    if let Ok(c) = std::env::var("TANDEM_CHROMIUM") {
        return Some(c);
    }
    [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ]
    .into_iter()
    .find(|c| {
        Command::new(c)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
    .map(str::to_string)
}

/// The page at `url` after its scripts ran for a few seconds of virtual time, as HTML.
fn rendered(browser: &str, url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--virtual-time-budget=4000",
            &format!("--user-data-dir={}", profile.path().display()),
            "--dump-dom",
            url,
        ])
        .stderr(Stdio::null())
        .output()
        .expect("chromium runs");
    assert!(out.status.success(), "chromium failed: {:?}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of the first `<td data-k="name">` of `html`.
fn cell(html: &str, name: &str) -> Option<String> {
    let start = html.find(&format!("data-k=\"{name}\""))?;
    let rest = &html[start..];
    let open = rest.find('>')? + 1;
    let close = rest[open..].find('<')?;
    Some(rest[open..open + close].to_string())
}

/// `tandem demo` on a free port, 40 users and 3 days of history, no simulated traffic.
fn start_demo(s: &Scratch) -> Listening {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let data = s.path("demo");
    let cmd = s.tandem(&[
        "demo",
        "--data",
        data.to_str().unwrap(),
        "--listen",
        &listen,
        "--users",
        "40",
        "--days",
        "3",
        "--rate",
        "0",
    ]);
    Listening::start(cmd, port, Duration::from_secs(300))
}

#[test]
fn the_demo_page_shows_profiles_and_recommendations_in_chromium() {
    let s = Scratch::new();
    let demo = start_demo(&s);
    let key = std::fs::read_to_string(s.path("demo/demo-api-key")).unwrap();
    let key = key.trim();
    // The key file is its owner's alone (it was world-readable).
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(s.path("demo/demo-api-key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the demo key file's mode: {mode:o}");
    let (status, ready) = http(demo.port, "GET", "/readyz", None, None);
    assert_eq!(
        status, 200,
        "a snapshot is loaded before the demo listens: {ready}"
    );
    let Some(browser) = chromium() else {
        eprintln!(
            "SKIPPED the Chromium check of the demo page: no chromium, chromium-browser or google-chrome on the PATH \
             (`make deps` installs Debian's chromium; TANDEM_CHROMIUM=/path/to/chrome names another)"
        );
        let (clean, _) = demo.stop();
        assert!(clean);
        return;
    };
    // The page picks the first user of /demo/users.
    let (_, users) = http(demo.port, "GET", "/demo/users", Some(key), None);
    let user = users["users"][0]
        .as_str()
        .expect("the demo lists users")
        .to_string();
    let url = format!("http://127.0.0.1:{}/#key={key}", demo.port);
    let (status, profile) = http(
        demo.port,
        "GET",
        &format!("/v1/users/{user}/profile"),
        Some(key),
        None,
    );
    let views = profile["profile"]["counts"]["view"].as_u64().unwrap_or(0);
    let page = rendered(&browser, &url);
    assert!(
        page.contains("live ·"),
        "the page reached the API without errors:\n{page}"
    );
    assert!(!page.contains("class=\"err\""), "{page}");
    assert!(page.contains(&format!("<option>{user}</option>")), "{page}");
    if status == 200 {
        assert!(
            cell(&page, "spend").is_some(),
            "the profile of {user} is shown:\n{page}"
        );
        if views > 0 {
            assert_eq!(cell(&page, "view"), Some(views.to_string()), "{page}");
        }
    } else {
        assert!(page.contains("it is a new user"), "{page}");
    }
    let recs = page.split("id=\"recs\"").nth(1).unwrap();
    assert!(
        recs.contains("data-kind=\"purchase\""),
        "recommendations with buy buttons:\n{page}"
    );
    assert!(
        recs.contains("cf:item_knn") || recs.contains("category:") || recs.contains(">popular<"),
        "each recommendation says where it came from:\n{page}"
    );

    // An event for the user: the next load of the page shows it.
    let e = json!({"event_id": "chromium-1", "user_id": user, "kind": "view", "item_id": "item-1",
                   "ts": tandem_common::event::now_ms()});
    let (status, body) = http(demo.port, "POST", "/v1/events", Some(key), Some(&e));
    assert_eq!(status, 202, "{body}");
    let start = Instant::now();
    loop {
        let page = rendered(&browser, &url);
        if cell(&page, "view").and_then(|v| v.parse::<u64>().ok()) == Some(views + 1) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the page shows the new view of {user} ({views} + 1):\n{page}"
        );
    }

    let (clean, err) = demo.stop();
    assert!(clean, "SIGTERM stops the demo cleanly:\n{err}");
    assert!(err.contains("Stopped."), "{err}");
    // A second run continues from the data on disk.
    let demo = start_demo(&s);
    let (clean, err) = demo.stop();
    assert!(clean, "{err}");
    assert!(err.contains("Continuing from the data"), "{err}");
}
