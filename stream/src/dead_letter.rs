//! The dead-letter: what a consumer set aside so that its partition moves on, each record with
//! its reason, in the lake:
//!
//! ```text
//! <lake>/dead_letter/<layer>/p<partition>-<first offset>.jsonl   one Letter per line
//! ```
//!
//! The speed layer sets aside bus records that are not valid events, and events the online
//! store refused ([`tandem_common::Error::Rejected`]: a key of the wrong type, keys in several
//! cluster slots, a runtime error inside a function) — data that no retry can apply. Before,
//! every store error was retried, so one user's bad data stalled a partition for good.
//! An event set aside by the speed layer is still archived into the lake (the archiver reads
//! the bus on its own), so the next batch run counts it; until then the dead-letter shows it.
//!
//! `tandem dead-letter list` prints what is set aside; `tandem dead-letter replay` produces
//! the records that are valid events back onto the bus (once the cause is fixed) and removes
//! them from the dead-letter. A replayed event is a new bus record: the speed layer applies it
//! unless the user's recent ids hold its `event_id`, and the batch counts one copy per user and
//! `event_id` whatever the copies.

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tandem_common::event::{format_rfc3339_ms, from_bus_value, now_ms};
use tandem_common::lake::Lake;

use crate::bus::{Bus, Record};
use crate::error::{Error, Result};

/// The dead-letter's folder in the lake.
pub const DEAD_LETTER_DIR: &str = "dead_letter";

/// One record set aside.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Letter {
    /// The consumer that set it aside (`speed`).
    pub layer: String,
    /// Its partition on the bus.
    pub partition: u32,
    /// Its offset in the partition.
    pub offset: u64,
    /// When it was set aside, RFC 3339.
    pub set_aside_at: String,
    /// Why, in words.
    pub reason: String,
    /// The record's key (the `user_id` Tandem's producers use), lossily as text.
    pub key: String,
    /// The record's value as text when it is UTF-8 (Tandem's records always are).
    pub value: Option<String>,
    /// Otherwise its bytes in hexadecimal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_hex: Option<String>,
}

impl Letter {
    /// The letter of `record`, set aside by `layer` now for `reason`.
    pub fn of(layer: &str, record: &Record, reason: impl Into<String>) -> Letter {
        let (value, value_hex) = match std::str::from_utf8(&record.value) {
            Ok(v) => (Some(v.to_string()), None),
            Err(_) => (
                None,
                Some(record.value.iter().map(|b| format!("{b:02x}")).collect()),
            ),
        };
        Letter {
            layer: layer.to_string(),
            partition: record.partition,
            offset: record.offset,
            set_aside_at: format_rfc3339_ms(now_ms()),
            reason: reason.into(),
            key: String::from_utf8_lossy(&record.key).into_owned(),
            value,
            value_hex,
        }
    }
}

/// Where a consumer sets records aside.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    lake: Lake,
    layer: &'static str,
}

impl DeadLetters {
    /// The dead-letter of consumer `layer` in `lake`.
    pub fn new(lake: Lake, layer: &'static str) -> DeadLetters {
        DeadLetters { lake, layer }
    }

    /// The consumer's name.
    pub fn layer(&self) -> &'static str {
        self.layer
    }

    /// Writes `letters` (of one partition, in offset order) as one file, in one put: whole or
    /// absent. Writing the same letters again (a replay after a crash) overwrites that file.
    pub async fn set_aside(&self, letters: &[Letter]) -> Result<()> {
        let Some(first) = letters.first() else {
            return Ok(());
        };
        let mut body = Vec::new();
        for l in letters {
            serde_json::to_writer(&mut body, l).map_err(tandem_common::Error::from)?;
            body.push(b'\n');
        }
        let path = self.lake.path(&format!(
            "{DEAD_LETTER_DIR}/{}/p{}-{:020}.jsonl",
            self.layer, first.partition, first.offset
        ));
        self.lake
            .store()
            .put(&path, PutPayload::from(body))
            .await
            .map_err(tandem_common::Error::from)?;
        Ok(())
    }
}

/// Every letter in the lake's dead-letter, with the file it is in, by file name.
pub async fn list(lake: &Lake) -> Result<Vec<(object_store::path::Path, Vec<Letter>)>> {
    let prefix = lake.path(DEAD_LETTER_DIR);
    let mut files: Vec<_> = lake
        .store()
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(tandem_common::Error::from)?;
    files.sort_by(|a, b| a.location.cmp(&b.location));
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        let bytes = lake
            .store()
            .get(&f.location)
            .await
            .map_err(tandem_common::Error::from)?
            .bytes()
            .await
            .map_err(tandem_common::Error::from)?;
        let mut letters = Vec::new();
        for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            letters.push(serde_json::from_slice(line).map_err(|e| {
                Error::Common(tandem_common::Error::Input(format!(
                    "{} line {}: not a dead letter: {e}",
                    f.location,
                    i + 1
                )))
            })?);
        }
        out.push((f.location, letters));
    }
    Ok(out)
}

/// What [`replay`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReplaySummary {
    /// Records produced back onto the bus (and removed from the dead-letter).
    pub replayed: u64,
    /// Records left in the dead-letter: still not valid events.
    pub kept: u64,
    /// Files removed (all their records replayed).
    pub files_removed: u64,
}

/// Produces the dead-letter's valid events back onto `bus` and removes them from it; records
/// that are still not valid events stay, each file rewritten with what is left. A file's
/// records are produced before the file changes, so a crash between the two replays them
/// again (deduplicated downstream by `event_id` per user).
pub async fn replay(lake: &Lake, bus: &dyn Bus) -> Result<ReplaySummary> {
    let mut summary = ReplaySummary::default();
    for (path, letters) in list(lake).await? {
        let (good, bad): (Vec<Letter>, Vec<Letter>) = letters.into_iter().partition(|l| {
            l.value
                .as_deref()
                .is_some_and(|v| from_bus_value(v.as_bytes()).is_ok())
        });
        if good.is_empty() {
            summary.kept += bad.len() as u64;
            continue;
        }
        let records: Vec<(Bytes, Bytes)> = good
            .iter()
            .filter_map(|l| {
                let value = l.value.as_deref()?;
                let (_, event) = from_bus_value(value.as_bytes()).ok()?;
                Some((
                    Bytes::copy_from_slice(event.user_id.as_bytes()),
                    Bytes::copy_from_slice(value.as_bytes()),
                ))
            })
            .collect();
        bus.produce(records).await?;
        summary.replayed += good.len() as u64;
        summary.kept += bad.len() as u64;
        let store = lake.store();
        if bad.is_empty() {
            store
                .delete(&path)
                .await
                .map_err(tandem_common::Error::from)?;
            summary.files_removed += 1;
        } else {
            let mut body = Vec::new();
            for l in &bad {
                serde_json::to_writer(&mut body, l).map_err(tandem_common::Error::from)?;
                body.push(b'\n');
            }
            store
                .put(&path, PutPayload::from(body))
                .await
                .map_err(tandem_common::Error::from)?;
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: u64, value: &[u8]) -> Record {
        Record {
            partition: 2,
            offset,
            timestamp_ms: 0,
            key: Bytes::from_static(b"u1"),
            value: Bytes::copy_from_slice(value),
        }
    }

    #[tokio::test]
    async fn letters_are_listed_and_valid_ones_replayed() {
        let lake = Lake::open("memory://").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let bus = crate::bus::open(&format!("local://{}", dir.path().display()), 1)
            .await
            .unwrap();
        let event = r#"{"event_id":"e1","user_id":"u1","kind":"view","item_id":"i1","ts":1000}"#;
        let good = format!(r#"{{"ingest_ts":2000,"event":{event}}}"#);
        let letters = vec![
            Letter::of(
                "speed",
                &record(7, good.as_bytes()),
                "redis apply: WRONGTYPE",
            ),
            Letter::of("speed", &record(8, b"\xff\xfe"), "not a valid event"),
            Letter::of("speed", &record(9, b"{}"), "not a valid event"),
        ];
        assert_eq!(letters[1].value_hex.as_deref(), Some("fffe"));
        let dead = DeadLetters::new(lake.clone(), "speed");
        dead.set_aside(&letters).await.unwrap();
        let listed = list(&lake).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert!(
            listed[0]
                .0
                .as_ref()
                .ends_with("dead_letter/speed/p2-00000000000000000007.jsonl"),
            "{}",
            listed[0].0
        );
        assert_eq!(listed[0].1, letters);

        let s = replay(&lake, bus.as_ref()).await.unwrap();
        assert_eq!(
            s,
            ReplaySummary {
                replayed: 1,
                kept: 2,
                files_removed: 0
            }
        );
        let got = bus
            .fetch(0, 0, 10, std::time::Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(&got[0].value[..], good.as_bytes());
        assert_eq!(&got[0].key[..], b"u1");
        // What is left is what cannot be replayed; a second replay changes nothing.
        let left = list(&lake).await.unwrap();
        assert_eq!(left[0].1, letters[1..]);
        let again = replay(&lake, bus.as_ref()).await.unwrap();
        assert_eq!((again.replayed, again.kept), (0, 2));
    }
}
