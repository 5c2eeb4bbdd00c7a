//! `redis://` / `rediss://`: the online store in a real Redis (7.0 or later: the speed layer is
//! a Redis function library, `speed.lua`, loaded at connect).

use async_trait::async_trait;
use bytes::Bytes;
use redis::AsyncCommands;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::speed::{
    self, ApplyCounts, SpeedEvent, SpeedState, by_user, epoch_prefix, epochs_key, seen_key,
    speed_key,
};
use super::{OnlineStore, POINTER_KEY, Pointer, snapshot_of_key};
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
        let store = RedisStore { conn, url: shown };
        store.load_functions().await?;
        Ok(store)
    }

    /// Loads (or replaces) the `tandem` function library. Idempotent; run at connect and again
    /// when a restarted server has lost it.
    async fn load_functions(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("FUNCTION")
            .arg("LOAD")
            .arg("REPLACE")
            .arg(speed::LUA)
            .query_async(&mut conn)
            .await
            .map_err(|e| {
                Error::External(format!(
                    "redis at {}: loading the speed layer's functions (Redis 7 or later is required): {e}",
                    self.url
                ))
            })?;
        Ok(())
    }

    /// Runs `pipe`, loading the function library once more and retrying if the server lost it
    /// (a restart without persistence).
    async fn query_functions<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
        what: &str,
    ) -> Result<T> {
        let mut conn = self.conn.clone();
        match pipe.query_async(&mut conn).await {
            Err(e) if e.to_string().contains("Function not found") => {
                self.load_functions().await?;
                pipe.query_async(&mut conn)
                    .await
                    .map_err(|e| external(what, e))
            }
            r => r.map_err(|e| external(what, e)),
        }
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
        // Each user's epoch index names its epochs; one function call per user drops the old
        // ones (keys and index entries) together.
        let mut conn = self.conn.clone();
        let mut cursor: u64 = 0;
        let mut dropped = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg("tandem:u:*:epochs")
                .arg("COUNT")
                .arg(PIPELINE)
                .query_async(&mut conn)
                .await
                .map_err(|e| external("SCAN", e))?;
            let mut pipe = redis::pipe();
            for key in &keys {
                let Some(prefix) = key.strip_suffix("epochs") else {
                    continue;
                };
                pipe.cmd("FCALL")
                    .arg("tandem_drop_before_v1")
                    .arg(1)
                    .arg(key)
                    .arg(cutoff_ms)
                    .arg(format!("{prefix}epoch:"));
            }
            if !keys.is_empty() {
                let n: Vec<u64> = self.query_functions(&pipe, "drop epochs").await?;
                dropped += n.iter().sum::<u64>();
            }
            if next == 0 {
                return Ok(dropped);
            }
            cursor = next;
        }
    }

    async fn apply_events(&self, events: &[SpeedEvent<'_>]) -> Result<ApplyCounts> {
        let mut pipe = redis::pipe();
        let mut calls = 0;
        for group in by_user(events) {
            let user = group[0].event.user_id.as_ref();
            let mut keys = vec![speed_key(user), seen_key(user), epochs_key(user)];
            let prefix = epoch_prefix(user);
            let mut slots: Vec<i64> = Vec::new();
            let mut args = Vec::with_capacity(group.len() * speed::STRIDE);
            for e in group {
                let slot = match slots.iter().position(|s| *s == e.epoch_ms) {
                    Some(i) => i + 1,
                    None => {
                        slots.push(e.epoch_ms);
                        keys.push(format!("{prefix}{}", e.epoch_ms));
                        keys.push(format!("{prefix}{}:recent", e.epoch_ms));
                        slots.len()
                    }
                };
                speed::push_args(&mut args, e, slot);
            }
            pipe.cmd("FCALL")
                .arg("tandem_apply_v1")
                .arg(keys.len())
                .arg(&keys)
                .arg(&args);
            calls += 1;
        }
        if calls == 0 {
            return Ok(ApplyCounts::default());
        }
        let got: Vec<(u64, u64, u64)> = self.query_functions(&pipe, "apply events").await?;
        let mut counts = ApplyCounts::default();
        for (applied, replayed, duplicates) in got {
            counts += ApplyCounts {
                applied,
                replayed,
                duplicates,
                calls: 1,
            };
        }
        Ok(counts)
    }

    async fn speed(&self, user: &str, from_epoch_ms: i64) -> Result<SpeedState> {
        let mut pipe = redis::pipe();
        pipe.cmd("FCALL_RO")
            .arg("tandem_read_v1")
            .arg(2)
            .arg(speed_key(user))
            .arg(epochs_key(user))
            .arg(from_epoch_ms)
            .arg(epoch_prefix(user));
        let (got,): (Vec<redis::Value>,) = self.query_functions(&pipe, "read speed").await?;
        decode_speed(user, got)
    }
}

/// The answer of `tandem_read_v1`: the offset, then (epoch, fields, recent items) per epoch.
fn decode_speed(user: &str, got: Vec<redis::Value>) -> Result<SpeedState> {
    use redis::FromRedisValue;
    let bad = |what: String| Error::Internal(format!("speed state of user `{user}`: {what}"));
    let mut it = got.into_iter();
    let offset: Option<u64> = match it.next() {
        None => return Err(bad("empty answer".into())),
        Some(v) => Option::<u64>::from_redis_value(v).map_err(|e| bad(e.to_string()))?,
    };
    let mut state = SpeedState {
        offset,
        ..SpeedState::default()
    };
    while let Some(epoch) = it.next() {
        let (Some(fields), Some(recent)) = (it.next(), it.next()) else {
            return Err(bad("an epoch without its fields".into()));
        };
        let epoch = i64::from_redis_value(epoch).map_err(|e| bad(e.to_string()))?;
        let pairs = |v: redis::Value| -> Result<Vec<(String, String)>> {
            let flat = Vec::<String>::from_redis_value(v).map_err(|e| bad(e.to_string()))?;
            Ok(flat
                .chunks_exact(2)
                .map(|c| (c[0].clone(), c[1].clone()))
                .collect())
        };
        let profile = speed::profile_from_redis(&pairs(fields)?, &pairs(recent)?)
            .map_err(|e| bad(format!("epoch {epoch}: {e}")))?;
        state.epochs.insert(epoch, profile);
    }
    Ok(state)
}
