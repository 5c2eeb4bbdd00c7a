use super::*;

fn env(vars: &[(&str, &str)]) -> Sources {
    Sources {
        env: Some(
            vars.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Sources::default()
    }
}

#[test]
fn the_defaults_are_valid() {
    let c = Config::defaults();
    assert_eq!(c.bus.partitions, 8);
    assert_eq!(c.events.epoch, Duration::from_secs(3600));
    assert_eq!(c.events.max_future, Duration::from_secs(300));
    assert_eq!(c.online_store.url.expose(), "memory://");
}

#[test]
fn file_then_env_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tandem.toml");
    std::fs::write(
        &file,
        "[bus]\npartitions = 4\nurl = \"local:///tmp/bus\"\n[lake]\nurl = \"memory://\"\n",
    )
    .unwrap();
    let mut s = env(&[
        ("TANDEM__BUS__PARTITIONS", "16"),
        ("TANDEM__EVENTS__EPOCH", "30m"),
    ]);
    s.file = Some(file);
    let c = load(&s).unwrap();
    assert_eq!(c.bus.partitions, 16, "the environment wins over the file");
    assert_eq!(
        c.bus.url, "local:///tmp/bus",
        "the file wins over the defaults"
    );
    assert_eq!(c.lake.url, "memory://");
    assert_eq!(c.events.epoch, Duration::from_secs(1800));
    s.overrides = vec![
        "bus.partitions=2".into(),
        "server.listen=0.0.0.0:9000".into(),
    ];
    let c = load(&s).unwrap();
    assert_eq!(c.bus.partitions, 2, "flags win over everything");
    assert_eq!(c.server.listen, "0.0.0.0:9000");
}

#[test]
fn every_problem_is_reported_at_once() {
    let mut s = env(&[
        ("TANDEM__BUS__PARTITIONS", "0"),
        ("TANDEM__BUS__FETCH_MIB", "4"),
        ("TANDEM__LAKE__URL", "ftp://x/y"),
        ("TANDEM__EVENTS__EPOCH", "7m"),
        ("TANDEM__SERVER__LISTEN", "nowhere"),
        ("TANDEM__LOG__FORMAT", "xml"),
        ("TANDEM__LAKE__COLOUR", "red"),
    ]);
    s.overrides = vec!["online_store.url=mysql://db".into(), "nonsense".into()];
    let errs = load(&s).unwrap_err();
    let text = errs.to_string();
    for want in [
        "--set nonsense: expected section.key=value",
        "online_store.url: unsupported store `mysql://db`; expected redis://, rediss://, redis+cluster:// or memory:// (from --set)",
        "lake.colour: unknown field: found `colour`",
        "log.format: unknown variant: found `xml`",
    ] {
        assert!(text.contains(want), "missing `{want}` in:\n{text}");
    }
    for want in [
        "bus.partitions: must be 1–4096, got 0 (from TANDEM__BUS__PARTITIONS)",
        "bus.fetch_mib: must be 8–1024, got 4 (from TANDEM__BUS__FETCH_MIB)",
        "server.listen: `nowhere` is not host:port",
        "events.epoch: must be between 1s and 24h and divide a day evenly, got 7m",
    ] {
        assert!(text.contains(want), "missing `{want}` in:\n{text}");
    }
    assert_eq!(
        errs.0.len(),
        8,
        "lake.url is not checked while [lake] does not parse:\n{text}"
    );
    assert!(!text.contains("config.rs"), "{text}");
}

#[test]
fn a_missing_config_file_is_a_problem() {
    let mut s = env(&[]);
    s.file = Some("/nonexistent/tandem.toml".into());
    let errs = load(&s).unwrap_err();
    assert!(
        errs.0[0].contains("config file /nonexistent/tandem.toml: not found"),
        "{errs}"
    );
}

#[test]
fn secrets_never_print() {
    let mut s = env(&[(
        "TANDEM__ONLINE_STORE__URL",
        "redis://:hunter2hunter2@redis.internal:6379/0",
    )]);
    s.overrides = vec![r#"server.api_keys=[{name="shop",key="sk_live_0123456789abcdef",scopes=["ingest","read"]}]"#.into()];
    let c = load(&s).unwrap();
    assert_eq!(
        c.server.api_keys[0].key.expose(),
        "sk_live_0123456789abcdef"
    );
    let shown = format!("{}\n{:?}", c.to_redacted_toml(), c);
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(!shown.contains("sk_live"), "{shown}");
    assert!(
        shown.contains("redis://:***@redis.internal:6379/0"),
        "{shown}"
    );
}

#[test]
fn cluster_url_passwords_never_print() {
    let shown = Secret::new("redis+cluster://app:p@ss:w0rd@a:7000,b:7001").redacted();
    assert_eq!(shown, "redis+cluster://app:***@a:7000,b:7001");
    assert_eq!(
        Secret::new("redis+cluster://a:7000,b:7001").redacted(),
        "redis+cluster://a:7000,b:7001"
    );
    assert_eq!(Secret::new("not a url").redacted(), "***");
}

#[test]
fn api_keys_are_checked() {
    let s = Sources {
        env: Some(vec![]),
        overrides: vec![r#"server.api_keys=[{name="a",key="short",scopes=[]},{name="a",key="0123456789abcdef0",scopes=["admin"]}]"#.into()],
        ..Sources::default()
    };
    let text = load(&s).unwrap_err().to_string();
    assert!(
        text.contains("key `a` is shorter than 16 characters"),
        "{text}"
    );
    assert!(text.contains("key `a` has no scopes"), "{text}");
    assert!(text.contains("name `a` is used twice"), "{text}");
}

#[test]
fn the_batch_engine_is_local_or_a_ballista_scheduler() {
    use super::BatchEngine;
    assert_eq!(Config::defaults().batch.engine, "local");
    assert_eq!(BatchEngine::parse("local"), Ok(BatchEngine::Local));
    assert_eq!(
        BatchEngine::parse("ballista://sched.ns.svc:50050"),
        Ok(BatchEngine::Ballista("sched.ns.svc:50050".into()))
    );
    assert_eq!(
        BatchEngine::parse("ballista://10.0.0.7/"),
        Ok(BatchEngine::Ballista("10.0.0.7:50050".into()))
    );
    for bad in [
        "",
        "remote",
        "ballista://",
        "ballista://h:0",
        "ballista://h:x",
        "ballista://a b:1",
        "http://h:1",
    ] {
        let e = BatchEngine::parse(bad).unwrap_err();
        assert!(e.contains(&format!("`{bad}`")), "{bad}: {e}");
    }
}
