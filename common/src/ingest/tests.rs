use std::io::Cursor;

use super::*;
use crate::config::Config;
use crate::schema::events_from_batch;

struct Collect(Vec<Reject>);
impl IngestObserver for Collect {
    fn rejected(&mut self, r: &Reject) {
        self.0.push(r.clone());
    }
}

fn options(format: InputFormat) -> IngestOptions {
    let mut o = IngestOptions::from_config(&Config::defaults(), format);
    o.chunk_bytes = 300; // many chunks even for small inputs
    o
}

async fn run(input: &str, format: InputFormat) -> (Lake, IngestSummary, Vec<Reject>) {
    let lake = Lake::open("memory://").unwrap();
    let mut c = Collect(Vec::new());
    let s = ingest(
        &lake,
        Box::new(Cursor::new(input.to_string().into_bytes())),
        options(format),
        &mut c,
    )
    .await
    .unwrap();
    (lake, s, c.0)
}

#[tokio::test]
async fn good_lines_are_kept_beside_bad_ones() {
    let input = [
        r#"{"event_id":"e1","user_id":"u1","kind":"view","item_id":"i1","ts":1000}"#,
        r#"{"event_id":"e2","user_id":"u1","kind":"purchase","item_id":"i1","ts":2000}"#,
        "",
        r#"{"event_id":"e3","user_id":"u2","kind":"search","query":"red","ts":"2025-01-01T00:00:00Z"}"#,
        r#"{"event_id":"e4","user_id":"u2"#,
        r#"{"event_id":"e5","user_id":"u3","kind":"add_to_cart","item_id":"i9","price":3.5,"quantity":2,"ts":3000}"#,
    ]
    .join("\n");
    let (lake, s, rejects) = run(&input, InputFormat::Jsonl).await;
    assert_eq!((s.accepted, s.rejected, s.files), (3, 2, 1));
    assert_eq!(rejects[0].line, 2);
    assert_eq!(rejects[0].message, "field `price`: required for purchase");
    assert_eq!(rejects[1].line, 5);
    assert_eq!(
        rejects[1].raw,
        br#"{"event_id":"e4","user_id":"u2"#.to_vec()
    );
    let mut ids = Vec::new();
    for b in lake.read_events().await.unwrap() {
        for (e, stamp) in events_from_batch(&b).unwrap() {
            assert!(stamp.ingest_ts > 1_700_000_000_000 && stamp.partition.is_none());
            ids.push(e.event_id.to_string());
        }
    }
    assert_eq!(ids, ["e1", "e3", "e5"], "kept in input order");
    let runs = crate::lake::IngestRun::list(&lake).await.unwrap();
    assert!(runs[0].finished && runs[0].events == 3 && runs[0].run_id == s.run_id);
}

#[tokio::test]
async fn csv_shares_the_json_rules() {
    let input = "event_id,user_id,kind,item_id,price,quantity,ts,props\n\
                 e1,u1,purchase,i1,9.99,2,2025-01-01T00:00:00Z,\"{\"\"device\"\":\"\"mobile\"\"}\"\n\
                 e2,u1,purchase,i1,,1,1000,\n\
                 e3,u2,view,i2,,,1000\n\
                 e4,u2,view,i2,abc,,1000,\n\
                 \"e5\nwith newline\",u3,view,i3,,,1000,\n";
    let (lake, s, rejects) = run(input, InputFormat::Csv).await;
    assert_eq!((s.accepted, s.rejected), (2, 3), "{rejects:?}");
    let msgs: Vec<(u64, &str)> = rejects
        .iter()
        .map(|r| (r.line, r.message.as_str()))
        .collect();
    assert_eq!(msgs[0], (3, "field `price`: required for purchase"));
    assert_eq!(msgs[1], (4, "expected 8 columns, got 7"));
    assert!(
        msgs[2].0 == 5
            && msgs[2]
                .1
                .starts_with("field `price`: invalid type: string \"abc\""),
        "{msgs:?}"
    );
    assert_eq!(rejects[0].raw, b"e2,u1,purchase,i1,,1,1000,".to_vec());
    let events: Vec<_> = lake
        .read_events()
        .await
        .unwrap()
        .iter()
        .flat_map(|b| events_from_batch(b).unwrap())
        .collect();
    assert_eq!(events[0].0.quantity, 2);
    assert_eq!(events[0].0.props.as_ref().unwrap()["device"], "mobile");
    assert_eq!(
        events[1].0.event_id, "e5\nwith newline",
        "quoted newlines stay in the field"
    );
}

#[tokio::test]
async fn an_unknown_csv_column_stops_before_anything_is_written() {
    let lake = Lake::open("memory://").unwrap();
    let err = ingest(
        &lake,
        Box::new(Cursor::new(b"event_id,colour\ne1,red\n".to_vec())),
        options(InputFormat::Csv),
        &mut Quiet,
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("column 2: unknown column `colour`"),
        "{err}"
    );
    assert!(lake.event_files().await.unwrap().is_empty());
}
