//! `redis://` / `rediss://`: the online store in a real Redis (single node; Redis Cluster comes
//! with issue #4 — the keys are slot-safe already).

use async_trait::async_trait;
use bytes::Bytes;
use redis::AsyncCommands;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{OnlineStore, POINTER_KEY, Pointer, epoch_of_key, snapshot_of_key};
use crate::error::{Error, Result};

/// Rows per pipeline: large enough to amortise round trips, small enough to bound memory.
const PIPELINE: usize = 1_000;

/// Compare-and-set of the pointer in one step.
const FLIP: &str = r"
local cur = redis.call('GET', KEYS[1])
if (cur == false and ARGV[1] == '') or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
return 0";

/// A Redis online store; cheap to clone (one multiplexed, reconnecting connection).
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    url: String,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.url)
            .finish()
    }
}

fn external(what: &str, e: redis::RedisError) -> Error {
    Error::External(format!("redis {what}: {e}"))
}

impl RedisStore {
    /// Connects to `url` and checks the server answers.
    pub async fn connect(url: &str) -> Result<RedisStore> {
        let shown = crate::config::Secret::new(url).redacted();
        let client = redis::Client::open(url)
            .map_err(|e| Error::Config(format!("online_store.url `{shown}`: {e}")))?;
        // Fail fast at start-up (a wrong URL should not hang a CronJob); reconnects later retry.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(2)
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(30)));
        let mut conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| Error::External(format!("redis at {shown}: {e}")))?;
        let _: () = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| external("PING", e))?;
        Ok(RedisStore { conn, url: shown })
    }

    /// Deletes every key matching `pattern` for which `pick` holds, by SCAN and UNLINK.
    async fn delete_scanned(&self, pattern: &str, pick: impl Fn(&str) -> bool) -> Result<u64> {
        let mut conn = self.conn.clone();
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(PIPELINE)
                .query_async(&mut conn)
                .await
                .map_err(|e| external("SCAN", e))?;
            let doomed: Vec<&String> = keys.iter().filter(|k| pick(k)).collect();
            if !doomed.is_empty() {
                let n: u64 = conn
                    .unlink(&doomed)
                    .await
                    .map_err(|e| external("UNLINK", e))?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}

#[async_trait]
impl OnlineStore for RedisStore {
    async fn put(&self, rows: &[(String, Bytes)]) -> Result<()> {
        let mut conn = self.conn.clone();
        for chunk in rows.chunks(PIPELINE) {
            let mut pipe = redis::pipe();
            for (k, v) in chunk {
                pipe.set(k, v.as_ref()).ignore();
            }
            let _: () = pipe
                .query_async(&mut conn)
                .await
                .map_err(|e| external("SET", e))?;
        }
        Ok(())
    }

    async fn get(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
            .arg(keys)
            .query_async(&mut conn)
            .await
            .map_err(|e| external("MGET", e))?;
        Ok(values.into_iter().map(|v| v.map(Bytes::from)).collect())
    }

    async fn pointer(&self) -> Result<Option<Pointer>> {
        let mut conn = self.conn.clone();
        let v: Option<Vec<u8>> = conn
            .get(POINTER_KEY)
            .await
            .map_err(|e| external("GET", e))?;
        v.map(|v| serde_json::from_slice(&v).map_err(Error::from))
            .transpose()
    }

    async fn flip(&self, expected: Option<&Pointer>, new: &Pointer) -> Result<bool> {
        let mut conn = self.conn.clone();
        let expected = match expected {
            Some(p) => serde_json::to_string(p)?,
            None => String::new(),
        };
        let done: i64 = redis::Script::new(FLIP)
            .key(POINTER_KEY)
            .arg(expected)
            .arg(serde_json::to_string(new)?)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| external("flip script", e))?;
        Ok(done == 1)
    }

    async fn drop_snapshots_except(&self, keep: &str) -> Result<u64> {
        let pick = |k: &str| snapshot_of_key(k).is_some_and(|id| id != keep);
        let mut n = self.delete_scanned("tandem:*:snap:*", pick).await?;
        n += self.delete_scanned("tandem:snap:*", pick).await?;
        Ok(n)
    }

    async fn drop_epochs_before(&self, cutoff_ms: i64) -> Result<u64> {
        self.delete_scanned("tandem:u:*:epoch:*", |k| {
            epoch_of_key(k).is_some_and(|e| e < cutoff_ms)
        })
        .await
    }
}
