//! Analyst SQL (issue #31): `tandem sql serve` reached by real Postgres clients — `psql` and
//! the `tokio-postgres` driver — and the shell's scripts, over a lake with two snapshots.

use std::process::{Command, Output};
use std::time::Duration;

use tandem_testkit::{RedisServer, free_port};

use crate::harness::{Listening, Scratch, next_epoch, summary};

const ANALYST: &str = "analyst";
const ANALYST_KEY: &str = "analyst-key-0123456789";
const READER_KEY: &str = "reader-key-0123456789";

/// A lake of events from 1998 with two published snapshots; returns their ids, oldest first.
fn two_snapshots(s: &Scratch, redis: &RedisServer) -> (String, String) {
    let batch = [
        "batch",
        "run",
        "--store",
        &redis.url(),
        "--set",
        "events.epoch=1s",
        "--set",
        "batch.window=5d",
    ];
    let mut ids = Vec::new();
    // The second run's generator has more users: the newest snapshot has more profiles.
    for (users, seed, end) in [
        ("300", "5", "1998-03-01T00:00:00Z"),
        ("450", "6", "1998-03-08T00:00:00Z"),
    ] {
        s.ok(
            &[
                "generate", "--users", users, "--days", "16", "--end", end, "--seed", seed,
                "--lake", "config",
            ],
            b"",
        );
        next_epoch();
        let run = summary(&s.ok(&batch, b""));
        assert_eq!(run["outcome"], "published", "{run}");
        ids.push(run["snapshot"].as_str().unwrap().to_string());
    }
    (ids[0].clone(), ids[1].clone())
}

fn psql(port: u16, user: &str, password: &str, sql: &str) -> Output {
    psql_session(port, user, password, &[sql])
}

/// `statements` in one session (one `-c` each), stopping at the first error; errors carry
/// their SQLSTATE.
fn psql_session(port: u16, user: &str, password: &str, statements: &[&str]) -> Output {
    let mut c = Command::new("psql");
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        user,
        "-d",
        "tandem",
    ])
    .args([
        "-X",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-v",
        "VERBOSITY=verbose",
    ]);
    for sql in statements {
        c.args(["-c", sql]);
    }
    c.env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql runs (make deps installs postgresql-client)")
}

/// Runs `sql` as the analyst, which must fail; its standard error.
fn psql_err(port: u16, sql: &str) -> String {
    let out = psql(port, ANALYST, ANALYST_KEY, sql);
    assert!(!out.status.success(), "{sql} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn psql_ok(port: u16, sql: &str) -> String {
    let out = psql(port, ANALYST, ANALYST_KEY, sql);
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn postgres_clients_query_the_catalog_read_only() {
    let s = Scratch::new();
    let redis = RedisServer::start();
    let (older, newest) = two_snapshots(&s, &redis);
    let conf = s.path("tandem.toml");
    std::fs::write(
        &conf,
        format!(
            "[server]\napi_keys = [\n  {{ name = \"{ANALYST}\", key = \"{ANALYST_KEY}\", scopes = [\"sql\"] }},\n  \
             {{ name = \"reader\", key = \"{READER_KEY}\", scopes = [\"read\"] }},\n]\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let metrics = format!("127.0.0.1:{}", free_port());
    let conf = conf.to_str().unwrap();
    let server = Listening::start(
        s.tandem(&[
            "sql",
            "serve",
            "--config",
            conf,
            "--listen",
            &listen,
            "--store",
            &redis.url(),
            "--set",
            "sql.live_scan_limit=100",
            "--set",
            "sql.memory_limit_mib=64",
            "--metrics-listen",
            &metrics,
        ]),
        port,
        Duration::from_secs(60),
    );

    // The tables, as a BI tool lists them.
    let tables = psql_ok(
        port,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    );
    for t in [
        "erasures",
        "events",
        "events_all",
        "items",
        "profiles",
        "segments",
        "similar_items",
        "snapshots",
    ] {
        assert!(tables.lines().any(|l| l == t), "{t} missing: {tables}");
    }
    let columns = psql_ok(
        port,
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'profiles'",
    );
    assert!(columns.lines().any(|l| l == "user_id"), "{columns}");

    // The README's analyst queries, checked against the CLI on the same lake.
    let cli = |sql: &str| {
        s.ok(&["sql", "--format", "csv", "-e", sql], b"")
            .lines()
            .skip(1)
            .collect::<Vec<_>>()
            .join("\n")
    };
    for q in [
        // Top items per category.
        "SELECT category, item_id, purchases FROM (SELECT category, item_id, purchases, \
         row_number() OVER (PARTITION BY category ORDER BY purchases DESC, item_id) AS r \
         FROM items WHERE category IS NOT NULL) WHERE r <= 3 ORDER BY category, r",
        // Users by segment.
        "SELECT segment, count(*) AS users FROM segments GROUP BY segment ORDER BY segment",
        // Profiles joined with their events.
        "SELECT p.user_id, count(e.event_id) AS n FROM profiles p JOIN events e \
         ON e.user_id = p.user_id GROUP BY p.user_id ORDER BY n DESC, p.user_id LIMIT 5",
    ] {
        let wire = psql_ok(port, q);
        let wire = wire.trim_end().replace('|', ",");
        assert_eq!(wire, cli(q), "{q}");
        assert!(!wire.is_empty(), "{q} returned nothing");
    }
    // As of the older snapshot: fewer users than the newest (the second run added events).
    let n_old: u64 = psql_ok(
        port,
        &format!("SELECT count(*) FROM profiles_at('{older}')"),
    )
    .trim()
    .parse()
    .unwrap();
    let n_new: u64 = psql_ok(port, "SELECT count(*) FROM profiles")
        .trim()
        .parse()
        .unwrap();
    assert!(0 < n_old && n_old < n_new, "{n_old} vs {n_new}");
    let listed = psql_ok(port, "SELECT snapshot FROM snapshots ORDER BY snapshot");
    assert_eq!(listed.trim(), format!("{older}\n{newest}"));
    let err = psql_err(port, "SELECT count(*) FROM profiles_at('19990101T0000Z')");
    assert!(
        err.contains(&older) && err.contains(&newest),
        "an unknown snapshot lists the known ones: {err}"
    );

    // The live view: what the API answers now, from Redis; the same as the snapshot's row
    // while no speed epoch has come since (no stream runs here).
    let users = psql_ok(
        port,
        "SELECT user_id FROM profiles ORDER BY user_id LIMIT 3",
    );
    let users: Vec<&str> = users.lines().collect();
    assert_eq!(users.len(), 3);
    let list = users
        .iter()
        .map(|u| format!("'{u}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let live = psql_ok(
        port,
        &format!(
            "SELECT user_id, views, searches, purchases, spend, first_ts, snapshot FROM live_profiles \
             WHERE user_id IN ({list}) ORDER BY user_id"
        ),
    );
    let lake = psql_ok(
        port,
        &format!(
            "SELECT user_id, views, searches, purchases, spend, first_ts, '{newest}' FROM profiles \
             WHERE user_id IN ({list}) ORDER BY user_id"
        ),
    );
    assert_eq!(live, lake);
    // A scan without a user filter is bounded (450 users, a limit of 100) and says so.
    let err = psql_err(port, "SELECT count(*) FROM live_profiles");
    assert!(err.contains("at most 100 users"), "{err}");
    // An id that breaks the key rules never reaches Redis.
    let err = psql_err(port, "SELECT * FROM live_profiles WHERE user_id = 'a{b}'");
    assert!(err.contains("user_id"), "{err}");

    // Read-only: writes, COPY and files outside the lake are refused, and nothing changed.
    let files_before = crate::harness::lake_rows(&s.lake_url());
    for (sql, says) in [
        (
            "INSERT INTO events_all (event_id) VALUES ('x')",
            "read-only: INSERT",
        ),
        ("COPY (SELECT 1) TO '/tmp/tandem-copy.csv'", "read-only"),
        (
            "CREATE EXTERNAL TABLE h STORED AS CSV LOCATION '/etc/hostname'",
            // Not Postgres syntax: the wire's parser refuses it before the read-only check.
            "sql parser error",
        ),
        ("DROP TABLE profiles", "read-only: DROP TABLE"),
        ("CREATE TABLE t AS SELECT 1", "read-only: CREATE TABLE"),
        ("SELECT * FROM '/etc/hostname'", "hostname"),
    ] {
        let err = psql_err(port, sql);
        assert!(err.contains(says), "{sql}: {err}");
    }
    assert!(!std::path::Path::new("/tmp/tandem-copy.csv").exists());
    assert_eq!(crate::harness::lake_rows(&s.lake_url()), files_before);
    // The same refusals in the CLI.
    for sql in [
        "INSERT INTO events_all (event_id) VALUES ('x')",
        "COPY (SELECT 1) TO '/tmp/tandem-copy.csv'",
        "CREATE EXTERNAL TABLE h STORED AS CSV LOCATION '/etc/hostname'",
    ] {
        let out = s.run(&["sql", "-e", sql], b"");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("read-only"),
            "{sql}: {err}"
        );
    }

    // One session's query over its memory fails alone; the server answers the next one.
    let err = psql_err(
        port,
        "SELECT cardinality(a) FROM (SELECT array_agg(v) AS a FROM generate_series(1, 30000000) AS t(v))",
    );
    assert!(err.contains("Resources exhausted"), "{err}");
    // A session's own statement timeout cancels a long query with 57014.
    let out = psql_session(
        port,
        ANALYST,
        ANALYST_KEY,
        &[
            "SET statement_timeout = '1s'",
            "SELECT sum(v % 7) FROM generate_series(1, 100000000000) AS t(v)",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("57014") && err.contains("statement timeout"),
        "{err}"
    );
    assert_eq!(psql_ok(port, "SELECT 1").trim(), "1");

    // A key without the `sql` scope, an unknown user and a wrong key are refused alike.
    for (user, key) in [
        ("reader", READER_KEY),
        ("nobody", ANALYST_KEY),
        (ANALYST, READER_KEY),
    ] {
        let out = psql(port, user, key, "SELECT 1");
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(
            !out.status.success() && err.contains("password authentication failed"),
            "{user}: {err}"
        );
    }

    // A driver, with the extended protocol and a parameter.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (n_param, n_all) = rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={port} user={ANALYST} password={ANALYST_KEY} dbname=tandem"
            ),
            tokio_postgres::NoTls,
        )
        .await
        .expect("tokio-postgres connects");
        tokio::spawn(conn);
        let row = client
            .query_one(
                "SELECT count(*) FROM profiles WHERE user_id <> $1",
                &[&"no-such-user"],
            )
            .await
            .expect("a parameterised query");
        let n: i64 = row.get(0);
        let all = client
            .simple_query("SELECT count(*) FROM profiles")
            .await
            .unwrap();
        let all = all
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .unwrap();
        let refused = client
            .execute("DELETE FROM profiles", &[])
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION),
            "{refused}"
        );
        (n, all)
    });
    assert_eq!(n_param.to_string(), n_all);
    assert_eq!(n_param as u64, n_new);

    // What the server did, as Prometheus reads it.
    let out = Command::new("curl")
        .args(["-sf", &format!("http://{metrics}/metrics")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        "tandem_sql_queries_total{outcome=\"ok\"}",
        "tandem_sql_queries_total{outcome=\"error\"}",
        "tandem_sql_queries_total{outcome=\"timeout\"}",
        "tandem_sql_connections_total{outcome=\"accepted\"}",
    ] {
        assert!(text.contains(line), "{line} missing: {text}");
    }

    let (clean, err) = server.stop();
    assert!(clean, "{err}");
}

#[test]
fn the_shell_splits_statements_lists_tables_and_keeps_headers() {
    let s = Scratch::new();
    // Two statements on one line, a `;` inside a string, a comment, a backslash command.
    let script = b"SELECT 1 AS a; SELECT 'x;y' AS b; -- done\n\\d\nSELECT count(*) AS n FROM events WHERE false;\n";
    let out = s.ok(&["sql"], script);
    assert!(out.contains("| a |") && out.contains("| x;y |"), "{out}");
    assert!(
        out.contains("| events ") && out.contains("| snapshots"),
        "{out}"
    );
    assert!(
        out.contains("| n |") && out.contains("| 0 |"),
        "an aggregate over no rows: {out}"
    );
    let empty = s.ok(
        &[
            "sql",
            "-e",
            "SELECT event_id, user_id FROM events_all WHERE false",
        ],
        b"",
    );
    assert!(
        empty.contains("| event_id | user_id |") && empty.ends_with("(0 rows)\n"),
        "an empty result keeps its header: {empty}"
    );
    let cols = s.ok(&["sql", "-e", "SELECT 1", "-f", "/dev/null"], b"");
    assert!(cols.contains("(1 row)"), "{cols}");
    // A script stops at its first error, named by file and line, with a failing exit code.
    let f = s.path("q.sql");
    std::fs::write(&f, "SELECT 1;\n\nSELECT nope\n  FROM events;\nSELECT 2;\n").unwrap();
    let out = s.run(&["sql", "-f", f.to_str().unwrap()], b"");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("q.sql:3:") && err.contains("nope"), "{err}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("(1 row)") && !stdout.contains("| 2 "),
        "{stdout}"
    );
    // JSON keeps nulls.
    let json = s.ok(
        &[
            "sql",
            "--format",
            "json",
            "-e",
            "SELECT 1 AS a, CAST(NULL AS INT) AS b",
        ],
        b"",
    );
    assert_eq!(json.trim(), r#"{"a":1,"b":null}"#);
}

#[test]
fn with_tls_configured_only_tls_connections_are_taken() {
    let s = Scratch::new();
    let (cert, key) = (s.path("server.crt"), s.path("server.key"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs (make deps installs it)");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let conf = s.path("tandem.toml");
    std::fs::write(
        &conf,
        format!(
            "[server]\napi_keys = [{{ name = \"{ANALYST}\", key = \"{ANALYST_KEY}\", scopes = [\"sql\"] }}]\n\
             [sql]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _server = Listening::start(
        s.tandem(&[
            "sql",
            "serve",
            "--config",
            conf.to_str().unwrap(),
            "--listen",
            &listen,
        ]),
        port,
        Duration::from_secs(60),
    );
    let connect = |mode: &str| {
        Command::new("psql")
            .arg(format!(
                "host=127.0.0.1 port={port} user={ANALYST} dbname=tandem sslmode={mode}"
            ))
            .args(["-X", "-A", "-t", "-c", "SELECT 1"])
            .env("PGPASSWORD", ANALYST_KEY)
            .output()
            .unwrap()
    };
    let tls = connect("require");
    assert!(
        tls.status.success() && String::from_utf8_lossy(&tls.stdout).trim() == "1",
        "{}",
        String::from_utf8_lossy(&tls.stderr)
    );
    let plain = connect("disable");
    let err = String::from_utf8_lossy(&plain.stderr);
    assert!(
        !plain.status.success() && err.contains("TLS connections only"),
        "{err}"
    );
}
