//! `tandem batch run` (issue #3): the real binary over a generated lake, into a real Redis.

use tandem_testkit::RedisServer;

use crate::harness::{Scratch, next_epoch, summary};

#[test]
fn batch_run_publishes_a_snapshot_once_and_says_what_is_wrong() {
    let s = Scratch::new();
    let redis = RedisServer::start();
    let lake = s.lake_url();
    let gen_ = summary(&s.ok(
        &[
            "generate",
            "--users",
            "400",
            "--days",
            "16",
            "--end",
            "2026-11-01T00:00:00Z",
            "--seed",
            "3",
            "--lake",
            &lake,
        ],
        b"",
    ));
    next_epoch();
    let args = [
        "batch",
        "run",
        "--store",
        &redis.url(),
        "--set",
        "events.epoch=1s",
        "--set",
        "batch.window=5d",
    ];
    let run = summary(&s.ok(&args, b""));
    assert_eq!(run["outcome"], "published", "{run}");
    assert_eq!(run["events"], gen_["accepted"], "{run}");
    let models = &run["models"]["trained"];
    assert!(
        models["ranker"]["hit_rate"].as_f64() > models["popularity"]["hit_rate"].as_f64(),
        "{run}"
    );
    for step in [
        "views",
        "train",
        "write_lake",
        "materialise",
        "cleanup",
        "total",
    ] {
        assert!(run["durations_s"][step].as_f64().is_some(), "{step}: {run}");
    }
    let manifest = s
        .path("lake")
        .join("snapshots")
        .join(run["snapshot"].as_str().unwrap())
        .join("manifest.json");
    assert!(manifest.exists(), "{}", manifest.display());

    // The same cutoff again is a no-op.
    let cutoff = run["cutoff"].as_str().unwrap();
    let mut again = args.to_vec();
    again.extend(["--cutoff", cutoff]);
    let second = summary(&s.ok(&again, b""));
    assert_eq!(second["outcome"], "already_published", "{second}");
    assert_eq!(second["snapshot"], run["snapshot"]);

    // Analyst SQL over the same snapshot.
    let profiles = run["rows"]["profiles"].as_u64().unwrap();
    let csv = s.ok(
        &[
            "sql",
            "-e",
            "SELECT count(*) AS n FROM profiles",
            "--format",
            "csv",
        ],
        b"",
    );
    assert_eq!(csv, format!("n\n{profiles}\n"));
    let json = s.ok(
        &[
            "sql",
            "-e",
            "SELECT snapshot, events FROM snapshots",
            "--format",
            "json",
        ],
        b"",
    );
    let row: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(
        (&row["snapshot"], &row["events"]),
        (&run["snapshot"], &run["events"])
    );
    let table = s.ok(
        &[
            "sql",
            "-e",
            "SELECT kind, count(*) AS n FROM events GROUP BY kind ORDER BY kind",
        ],
        b"",
    );
    assert!(
        table.contains("| kind") && table.contains("add_to_cart") && table.ends_with("(7 rows)\n"),
        "{table}"
    );
    let parquet = s.path("segments.parquet");
    s.ok(
        &[
            "sql",
            "-e",
            "SELECT * FROM segments",
            "--format",
            "parquet",
            "-o",
            parquet.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(crate::harness::parquet_rows(&parquet), profiles);
    // A script on standard input: every statement runs; a failing one fails the command.
    let script = b"SELECT 1 AS a;\nSELECT count(*) AS n\n  FROM items;\n";
    let out = s.ok(&["sql", "--format", "csv"], script);
    assert!(out.starts_with("a\n1\nn\n"), "{out}");
    for (sql, says) in [("SELECT nope FROM profiles", "nope"), ("SELEC 1", "SELEC")] {
        let out = s.run(&["sql", "-e", sql], b"");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.starts_with("error: ") && err.contains(says),
            "{err}"
        );
        assert!(!err.contains("backtrace"), "{err}");
    }
    let out = s.run(
        &["sql", "--snapshot", "19990101T0000Z", "-e", "SELECT 1"],
        b"",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(run["snapshot"].as_str().unwrap()),
        "the known snapshots are listed: {err}"
    );

    // Wrong input is named, and nothing is published.
    let url = redis.url();
    for (extra, says) in [
        (vec!["--cutoff", "yesterday"], "--cutoff `yesterday`"),
        (
            vec!["--cutoff", "2030-01-01T00:00:00Z"],
            "is past what the lake has fully written",
        ),
        (vec!["--store", "memory://"], "memory://"),
        (vec!["--set", "batch.window=0s"], "batch.window"),
    ] {
        let mut a = vec!["batch", "run", "--set", "events.epoch=1s"];
        if !extra.contains(&"--store") {
            a.extend(["--store", url.as_str()]);
        }
        a.extend(extra.iter());
        let out = s.run(&a, b"");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{a:?}: {err}");
    }
}

/// The nightly runs over a history that streamed in (`generate --streamed`): the first is a
/// full one, the next merges the day since (`merged_from`), and a `--full` run at the same
/// cutoff over a copy of the lake publishes the same rows.
#[test]
fn the_next_run_merges_the_day_since_and_equals_a_full_one() {
    let s = Scratch::new();
    let redis = RedisServer::start();
    let lake = s.lake_url();
    let gen_ = summary(&s.ok(
        &[
            "generate",
            "--users",
            "300",
            "--days",
            "10",
            "--end",
            "2026-11-01T00:00:00Z",
            "--seed",
            "5",
            "--dup-rate",
            "0.02",
            "--lake",
            &lake,
            "--streamed",
        ],
        b"",
    ));
    assert!(gen_["events"].as_u64() > Some(1000), "{gen_}");
    // The copy publishes into a store of its own.
    let other = RedisServer::start();
    let run = |lake: &str, store: &str, cutoff: &str, full: bool| {
        let mut args = vec![
            "batch",
            "run",
            "--lake",
            lake,
            "--store",
            store,
            "--cutoff",
            cutoff,
            "--set",
            "batch.cleanup_grace=0s",
            "--set",
            "batch.window=2d",
        ];
        if full {
            args.push("--full");
        }
        summary(&s.ok(&args, b""))
    };
    let first = run(&lake, &redis.url(), "2026-10-31T00:00:00Z", false);
    assert_eq!(
        first["full_reason"], "no earlier snapshot in the lake",
        "{first}"
    );
    let copy = s.path("lake-copy");
    let status = std::process::Command::new("cp")
        .args([
            "-r",
            s.path("lake").to_str().unwrap(),
            copy.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let next = run(&lake, &redis.url(), "2026-11-01T00:00:00Z", false);
    assert_eq!(next["merged_from"], first["snapshot"], "{next}");
    assert!(next["events"].as_u64() > first["events"].as_u64(), "{next}");
    let full = run(
        &format!("file://{}", copy.display()),
        &other.url(),
        "2026-11-01T00:00:00Z",
        true,
    );
    assert_eq!(full["full_reason"], "--full", "{full}");
    assert_eq!(
        (
            &next["events"],
            &next["rows"]["profiles"],
            &next["rows"]["items"],
            &next["rows"]["similar_items"]
        ),
        (
            &full["events"],
            &full["rows"]["profiles"],
            &full["rows"]["items"],
            &full["rows"]["similar_items"]
        ),
        "{next}\n{full}"
    );
}
