//! The CLI of issue #2: config, generate, ingest, lake status.

use crate::harness::{Scratch, lake_rows, summary};

const END: &str = "2026-11-01T00:00:00Z";

fn generate(s: &Scratch, extra: &[&str]) -> Vec<u8> {
    let mut args = vec!["generate", "--users", "300", "--days", "3", "--end", END];
    args.extend_from_slice(extra);
    if !extra.contains(&"--seed") {
        args.extend_from_slice(&["--seed", "7"]);
    }
    s.ok(&args, b"").into_bytes()
}

#[test]
fn generate_then_ingest_keeps_every_good_line_and_reports_the_bad() {
    let s = Scratch::new();
    let events = generate(&s, &["--bad-rate", "0.02"]);
    let lines = events.iter().filter(|b| **b == b'\n').count() as u64;
    assert!(lines > 1000, "{lines} lines");
    let rejects = s.path("rejects.jsonl");
    let out = s.run(
        &[
            "ingest",
            "-",
            "--reject-file",
            rejects.to_str().unwrap(),
            "--show-rejects",
            "5",
        ],
        &events,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sum = summary(&String::from_utf8(out.stdout).unwrap());
    let (accepted, rejected) = (
        sum["accepted"].as_u64().unwrap(),
        sum["rejected"].as_u64().unwrap(),
    );
    assert_eq!(
        accepted + rejected,
        lines,
        "every line is accepted or rejected: {sum}"
    );
    assert!(
        rejected > 0 && sum["files"].as_u64().unwrap() >= 1 && sum["bytes"].as_u64().unwrap() > 0,
        "{sum}"
    );
    // An independent read of the Parquet files finds exactly what ingest reported.
    assert_eq!(lake_rows(&s.lake_url()), accepted);
    // Five reasons are described, by line number and field; all bad lines are in the reject file.
    let stderr = String::from_utf8(out.stderr).unwrap();
    let described: Vec<&str> = stderr.lines().filter(|l| l.starts_with("line ")).collect();
    assert_eq!(described.len(), 5, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "and {} more rejected lines not described (all are in the reject file)",
            rejected - 5
        )),
        "{stderr}"
    );
    let kept = std::fs::read_to_string(&rejects).unwrap();
    assert_eq!(kept.lines().count() as u64, rejected);
    // The status of the lake agrees.
    let status: serde_json::Value = serde_json::from_str(&s.ok(&["lake", "status"], b"")).unwrap();
    assert_eq!(
        status["events_in_finished_runs"].as_u64(),
        Some(accepted),
        "{status}"
    );
    assert_eq!(
        status["ingest_runs_unfinished"].as_u64(),
        Some(0),
        "{status}"
    );
}

#[test]
fn generate_is_deterministic_by_seed() {
    let s = Scratch::new();
    assert_eq!(generate(&s, &[]), generate(&s, &[]));
    assert_ne!(generate(&s, &[]), generate(&s, &["--seed", "8"]));
}

#[test]
fn generate_straight_into_the_lake() {
    let s = Scratch::new();
    let expected = generate(&s, &[]).iter().filter(|b| **b == b'\n').count() as u64;
    let sum = summary(&s.ok(
        &[
            "generate", "--users", "300", "--days", "3", "--seed", "7", "--end", END, "--lake",
            "config",
        ],
        b"",
    ));
    assert_eq!(sum["accepted"].as_u64(), Some(expected), "{sum}");
    assert_eq!(lake_rows(&s.lake_url()), expected);
}

#[test]
fn csv_ingest_with_a_reject_file_that_loads_again() {
    let s = Scratch::new();
    let csv = s.path("events.csv");
    std::fs::write(
        &csv,
        "event_id,user_id,kind,item_id,price,ts\n\
         e1,u1,view,i1,,2026-01-01T00:00:00Z\n\
         e2,u1,purchase,i1,,2026-01-01T00:01:00Z\n\
         e3,u1,purchase,i1,5.5,2026-01-01T00:02:00Z\n",
    )
    .unwrap();
    let rejects = s.path("rejects.csv");
    let out = s.run(
        &[
            "ingest",
            csv.to_str().unwrap(),
            "--reject-file",
            rejects.to_str().unwrap(),
        ],
        b"",
    );
    assert!(out.status.success());
    let sum = summary(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(
        (sum["accepted"].as_u64(), sum["rejected"].as_u64()),
        (Some(2), Some(1)),
        "{sum}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("line 3: field `price`: required for purchase")
    );
    assert_eq!(
        std::fs::read_to_string(&rejects).unwrap(),
        "event_id,user_id,kind,item_id,price,ts\ne2,u1,purchase,i1,,2026-01-01T00:01:00Z\n"
    );
}

#[test]
fn config_check_lists_every_problem_and_show_hides_secrets() {
    let s = Scratch::new();
    let out = s
        .tandem(&["config", "check", "--set", "bus.partitions=0"])
        .env("TANDEM__SERVER__LISTEN", "nowhere")
        .env("TANDEM__EVENTS__EPOCH", "7m")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.starts_with("3 configuration problem(s):"), "{err}");
    assert!(
        err.contains("bus.partitions: must be 1–4096, got 0 (from --set)"),
        "{err}"
    );
    assert!(err.contains("server.listen: `nowhere` is not host:port (e.g. 127.0.0.1:8080) (from TANDEM__SERVER__LISTEN)"), "{err}");
    assert!(err.contains("events.epoch"), "{err}");

    let file = s.path("tandem.toml");
    std::fs::write(
        &file,
        "[online_store]\nurl = \"redis://:s3cr3t-pass@cache:6379\"\n",
    )
    .unwrap();
    let shown = s.ok(&["--config", file.to_str().unwrap(), "config", "show"], b"");
    assert!(shown.contains("redis://:***@cache:6379"), "{shown}");
    assert!(!shown.contains("s3cr3t"), "{shown}");
    assert!(
        shown.contains("[lake]") && shown.contains("epoch = \"1h\""),
        "{shown}"
    );
    assert_eq!(
        s.ok(&["config", "check"], b"").trim(),
        "configuration is valid"
    );
}

#[test]
fn bad_flags_and_inputs_say_what_is_wrong() {
    let s = Scratch::new();
    let out = s.run(&["generate", "--users", "many"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid value 'many' for '--users <USERS>'")
    );
    let out = s.run(&["ingest", "missing.jsonl"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .starts_with("error: input file missing.jsonl: No such file")
    );
    let out = s.run(&["generate", "--end", "tomorrow"], b"");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--end `tomorrow`: expected RFC 3339"));
    let out = s.run(&["generate", "--lake", "config", "--bad-rate", "0.1"], b"");
    assert!(String::from_utf8_lossy(&out.stderr).contains("only JSON lines can carry"));
    let out = s
        .tandem(&["lake", "status"])
        .env("TANDEM__LAKE__URL", "ftp://nowhere")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("lake.url: unsupported scheme `ftp`"));
}
