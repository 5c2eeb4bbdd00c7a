//! `redis://` / `rediss://`: the online store in a real Redis (7.0 or later: the speed layer is
//! a Redis function library, `speed.lua`, loaded at connect); `redis+cluster://` /
//! `rediss+cluster://`: the same on a Redis Cluster.
//!
//! On a cluster every key of a user shares the user's hash slot (`{user}`), so each function
//! call stays on one node. What differs is only how commands travel: a pipeline cannot span
//! slots, so a batch's function calls go out concurrently, each routed to its user's node and
//! multiplexed on that node's connection; `FUNCTION LOAD` goes to every primary; `MGET`, `MSET`
//! and `UNLINK` are split per slot by the client; `SCAN` walks each primary in turn.
//!
//! One file (~760 lines besides tests), on purpose: every call of this backend has its single-node
//! and its cluster path, side by side; split, each call's two paths would live in two files.

use async_trait::async_trait;
use bytes::Bytes;
use redis::{AsyncCommands, FromRedisValue};
use std::fmt::Write;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};

use super::speed::{
    self, ApplyCounts, SpeedEvent, SpeedState, by_user, epoch_prefix, epochs_key, seen_key,
    speed_key,
};
use super::{
    LeaseOp, LeaseState, OnlineStore, POINTER_KEY, Pointer, lease_key, snapshot_of_key,
    snapshot_older,
};
use crate::error::{Error, Result};

/// Rows per pipeline: large enough to amortise round trips, small enough to bound memory.
const PIPELINE: usize = 1_000;

/// Most events in one call of the apply function on a single Redis (whole users: a user with
/// more goes alone): ~1 ms of Redis time, so reads wait at most that long behind it.
const CALL_EVENTS: usize = 128;

/// Compare-and-set of the pointer in one step.
const FLIP: &str = r"
local cur = redis.call('GET', KEYS[1])
if (cur == false and ARGV[1] == '') or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
return 0";

/// A connection to one Redis or to a Redis Cluster; both multiplexed and reconnecting.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipe: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipe, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipe, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A Redis online store; cheap to clone (one multiplexed, reconnecting connection, or one per
/// cluster node).
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    url: String,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.url)
            .finish()
    }
}

fn external(what: &str, e: impl std::fmt::Display) -> Error {
    Error::External(format!("redis {what}: {e}"))
}

/// A failed call, classified: [`Error::Rejected`] when Redis refused the data itself — a
/// key of the wrong type, keys of several cluster slots, a runtime error inside a function
/// (Lua's "too many results to unpack" was one) — which no retry can fix; otherwise
/// [`Error::External`] (connections, timeouts, failovers, `OOM`, `BUSY`, `LOADING`: they pass).
/// Every error used to be retried, so one user's bad data stalled a partition for good.
fn classify(what: &str, e: impl std::fmt::Display) -> Error {
    let text = e.to_string();
    const PASSING: [&str; 9] = [
        "OOM",
        "BUSY",
        "LOADING",
        "READONLY",
        "MASTERDOWN",
        "CLUSTERDOWN",
        "TRYAGAIN",
        "NOSCRIPT",
        "Function not found",
    ];
    const DATA: [&str; 4] = ["WRONGTYPE", "CROSSSLOT", "user_function:", "user_script:"];
    if !PASSING.iter().any(|t| text.contains(t)) && DATA.iter().any(|t| text.contains(t)) {
        Error::Rejected(format!("redis {what}: {text}"))
    } else {
        external(what, text)
    }
}

impl RedisStore {
    /// Connects to `url` (`redis://`, `rediss://`, `redis+cluster://` or `rediss+cluster://`)
    /// and checks the server answers.
    pub async fn connect(url: &str) -> Result<RedisStore> {
        crate::tls::init();
        let shown = crate::config::Secret::new(url).redacted();
        let bad_url =
            |e: &dyn std::fmt::Display| Error::Config(format!("online_store.url `{shown}`: {e}"));
        let down = |e: redis::RedisError| Error::External(format!("redis at {shown}: {e}"));
        // Fail fast at start-up (a wrong URL should not hang a CronJob); reconnects later retry.
        let (connect_timeout, response_timeout) = (Duration::from_secs(5), Duration::from_secs(30));
        let mut conn = match cluster_nodes(url).map_err(|e| bad_url(&e))? {
            None => {
                let client = redis::Client::open(url).map_err(|e| bad_url(&e))?;
                let config = ConnectionManagerConfig::new()
                    .set_number_of_retries(2)
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(response_timeout));
                Conn::Single(
                    ConnectionManager::new_with_config(client, config)
                        .await
                        .map_err(down)?,
                )
            }
            Some(nodes) => {
                let client = redis::cluster::ClusterClient::builder(nodes)
                    .retries(2)
                    .connection_timeout(connect_timeout)
                    .response_timeout(response_timeout)
                    .build()
                    .map_err(|e| bad_url(&e))?;
                Conn::Cluster(client.get_async_connection().await.map_err(down)?)
            }
        };
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

    /// Runs the function calls of `calls`, loading the function library once more and retrying
    /// if the server lost it (a restart without persistence). One pipeline on a single Redis;
    /// on a cluster the calls go out concurrently, each to its keys' node, since a pipeline
    /// cannot span slots (the node connections are multiplexed, so they still travel together).
    async fn call_functions(
        &self,
        calls: &redis::Pipeline,
        what: &str,
    ) -> Result<Vec<redis::Value>> {
        match self.run_calls(calls).await {
            Err(e) if e.to_string().contains("Function not found") => {
                self.load_functions().await?;
                self.run_calls(calls).await.map_err(|e| classify(what, e))
            }
            r => r.map_err(|e| classify(what, e)),
        }
    }

    async fn run_calls(&self, calls: &redis::Pipeline) -> redis::RedisResult<Vec<redis::Value>> {
        if calls.cmd_iter().next().is_none() {
            return Ok(Vec::new());
        }
        match &self.conn {
            Conn::Single(c) => calls.query_async(&mut c.clone()).await,
            Conn::Cluster(c) => {
                futures::future::try_join_all(calls.cmd_iter().map(|cmd| {
                    let mut c = c.clone();
                    async move { cmd.query_async::<redis::Value>(&mut c).await }
                }))
                .await
            }
        }
    }

    /// Where to run `SCAN`: the one server, or each primary of the cluster (named by one of
    /// its slots, so that routing follows the client's slot map).
    async fn scan_targets(&self) -> Result<Vec<Option<Route>>> {
        let Conn::Cluster(c) = &self.conn else {
            return Ok(vec![None]);
        };
        let slots = c
            .clone()
            .route_command(
                redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await
            .map_err(|e| external("CLUSTER SLOTS", e))?;
        // Each entry: start slot, end slot, [host, port, id, …] of the primary, then replicas.
        let entry = |r: redis::Value| -> redis::RedisResult<(u16, (String, u16))> {
            let r = Vec::<redis::Value>::from_redis_value(r)?;
            let primary = match r.get(2) {
                Some(p) => Vec::<redis::Value>::from_redis_value(p.clone())?,
                None => Vec::new(),
            };
            let (Some(start), Some(host), Some(port)) =
                (r.first(), primary.first(), primary.get(1))
            else {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Parse,
                    "a CLUSTER SLOTS entry without its primary",
                )));
            };
            Ok((
                u16::from_redis_value(start.clone())?,
                (
                    String::from_redis_value(host.clone())?,
                    u16::from_redis_value(port.clone())?,
                ),
            ))
        };
        let ranges = Vec::<redis::Value>::from_redis_value(slots)
            .map_err(redis::RedisError::from)
            .and_then(|ranges| {
                ranges
                    .into_iter()
                    .map(entry)
                    .collect::<redis::RedisResult<Vec<_>>>()
            })
            .map_err(|e| external("CLUSTER SLOTS", e))?;
        let mut seen = std::collections::HashSet::new();
        Ok(ranges
            .into_iter()
            .filter(|(_, node)| seen.insert(node.clone()))
            .map(|(start, _)| Some(Route::new(start, SlotAddr::Master)))
            .collect())
    }

    /// One page of `SCAN` on `target`: the next cursor and the keys matching `pattern`.
    async fn scan_page(
        &self,
        target: &Option<Route>,
        cursor: u64,
        pattern: &str,
    ) -> Result<(u64, Vec<String>)> {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(PIPELINE);
        let got = match (&self.conn, target) {
            (Conn::Cluster(c), Some(route)) => {
                let v = c
                    .clone()
                    .route_command(
                        cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(*route)),
                    )
                    .await;
                v.and_then(|v| Ok(FromRedisValue::from_redis_value(v)?))
            }
            _ => cmd.query_async(&mut self.conn.clone()).await,
        };
        got.map_err(|e| external("SCAN", e))
    }

    /// Deletes every key matching `pattern` for which `pick` holds, by SCAN and UNLINK.
    async fn delete_scanned(&self, pattern: &str, pick: impl Fn(&str) -> bool) -> Result<u64> {
        let mut conn = self.conn.clone();
        let mut deleted = 0;
        for target in self.scan_targets().await? {
            let mut cursor: u64 = 0;
            loop {
                let (next, keys) = self.scan_page(&target, cursor, pattern).await?;
                let doomed: Vec<&String> = keys.iter().filter(|k| pick(k)).collect();
                if !doomed.is_empty() {
                    let n: u64 = conn
                        .unlink(&doomed)
                        .await
                        .map_err(|e| external("UNLINK", e))?;
                    deleted += n;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(deleted)
    }
}

#[async_trait]
impl OnlineStore for RedisStore {
    async fn put(&self, rows: &[(String, Bytes)]) -> Result<()> {
        // MSET: one command per chunk on a single Redis; split per slot by the cluster client.
        let mut conn = self.conn.clone();
        for chunk in rows.chunks(PIPELINE) {
            let mut cmd = redis::cmd("MSET");
            for (k, v) in chunk {
                cmd.arg(k).arg(v.as_ref());
            }
            let _: () = cmd
                .query_async(&mut conn)
                .await
                .map_err(|e| external("MSET", e))?;
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

    async fn copy(&self, pairs: &[(String, String)]) -> Result<Vec<bool>> {
        let mut out = Vec::with_capacity(pairs.len());
        for chunk in pairs.chunks(PIPELINE) {
            let mut pipe = redis::pipe();
            for (from, to) in chunk {
                pipe.cmd("COPY").arg(from).arg(to).arg("REPLACE");
            }
            let got = self
                .run_calls(&pipe)
                .await
                .map_err(|e| external("COPY", e))?;
            for v in got {
                out.push(i64::from_redis_value(v).map_err(|e| external("COPY", e))? == 1);
            }
        }
        Ok(out)
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

    async fn drop_snapshots_older(&self, keep: &str) -> Result<u64> {
        let pick = |k: &str| snapshot_of_key(k).is_some_and(|id| snapshot_older(id, keep));
        let mut n = self.delete_scanned("tandem:*:snap:*", pick).await?;
        n += self.delete_scanned("tandem:snap:*", pick).await?;
        Ok(n)
    }

    async fn lease(&self, name: &str, op: LeaseOp, owner: &str, ttl_ms: u64) -> Result<LeaseState> {
        let op_name = match op {
            LeaseOp::Take => "take",
            LeaseOp::Renew => "renew",
            LeaseOp::Release => "release",
        };
        let mut pipe = redis::pipe();
        pipe.cmd("FCALL")
            .arg("tandem_lease_v1")
            .arg(1)
            .arg(lease_key(name))
            .arg(op_name)
            .arg(owner)
            .arg(ttl_ms.max(1));
        let got = self.call_functions(&pipe, "lease").await?;
        let (held, holder, left_ms): (i64, Option<String>, i64) = got
            .into_iter()
            .next()
            .map(FromRedisValue::from_redis_value)
            .transpose()
            .map_err(|e| external("lease", e))?
            .ok_or_else(|| external("lease", "no answer"))?;
        Ok(LeaseState {
            held: held == 1,
            holder,
            left_ms: left_ms.max(0),
        })
    }

    async fn drop_epochs_before(&self, cutoff_ms: i64) -> Result<u64> {
        // Each user's epoch index names its epochs; one function call per user drops the old
        // ones (keys and index entries) together.
        let mut dropped = 0;
        for target in self.scan_targets().await? {
            let mut cursor: u64 = 0;
            loop {
                let (next, keys) = self.scan_page(&target, cursor, "tandem:u:*:epochs").await?;
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
                for n in self.call_functions(&pipe, "drop epochs").await? {
                    dropped += u64::from_redis_value(n).map_err(|e| external("drop epochs", e))?;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(dropped)
    }

    async fn apply(&self, log: &str, events: &[SpeedEvent<'_>]) -> Result<ApplyCounts> {
        let groups = by_user(events);
        if groups.is_empty() {
            return Ok(ApplyCounts::default());
        }
        // The fast path for every user (Rust folds each user's events per epoch); the users
        // it leaves (a replay, a repeated id, an erasure) go again, one event at a time.
        let calls = self.calls_of(&groups);
        let mut pipe = redis::pipe();
        let mut buf = String::new();
        for call in &calls {
            push_call(
                &mut pipe,
                "tandem_apply_fast_v2",
                log,
                call,
                &mut buf,
                push_fast,
            );
        }
        let mut counts = ApplyCounts {
            users: groups.len() as u64,
            ..ApplyCounts::default()
        };
        let mut slow: Vec<Vec<&SpeedEvent<'_>>> = Vec::new();
        for (call, got) in calls
            .iter()
            .zip(self.call_functions(&pipe, "apply events").await?)
        {
            let got: Vec<u64> =
                FromRedisValue::from_redis_value(got).map_err(|e| external("apply events", e))?;
            counts.applied += got.first().copied().unwrap_or(0);
            counts.calls += 1;
            for u in got.iter().skip(1) {
                let group = call.get((*u as usize).wrapping_sub(1)).ok_or_else(|| {
                    Error::Internal(format!(
                        "the apply function named user {u} of a call of {}",
                        call.len()
                    ))
                })?;
                slow.push(group.clone());
            }
        }
        if slow.is_empty() {
            return Ok(counts);
        }
        let mut pipe = redis::pipe();
        for call in self.calls_of(&slow) {
            push_call(&mut pipe, "tandem_apply_v5", log, call, &mut buf, push_slow);
        }
        for got in self.call_functions(&pipe, "apply events").await? {
            let (applied, replayed, duplicates, erased) =
                FromRedisValue::from_redis_value(got).map_err(|e| external("apply events", e))?;
            counts += ApplyCounts {
                applied,
                replayed,
                duplicates,
                erased,
                calls: 1,
                users: 0,
            };
        }
        Ok(counts)
    }

    async fn speed(&self, user: &str, from_epoch_ms: i64) -> Result<SpeedState> {
        let mut pipe = redis::pipe();
        pipe.cmd("FCALL_RO")
            .arg("tandem_read_v3")
            .arg(2)
            .arg(speed_key(user))
            .arg(epochs_key(user))
            .arg(from_epoch_ms)
            .arg(epoch_prefix(user));
        let got = self.call_functions(&pipe, "read speed").await?;
        let got = got
            .into_iter()
            .next()
            .map(Vec::<redis::Value>::from_redis_value)
            .transpose()
            .map_err(|e| external("read speed", e))?
            .unwrap_or_default();
        decode_speed(user, got)
    }

    async fn erase_user(&self, user: &str, at_ms: i64, snapshots: &[String]) -> Result<u64> {
        let mut keys = vec![speed_key(user), seen_key(user), epochs_key(user)];
        keys.extend(snapshots.iter().map(|id| super::user_key(user, id)));
        let mut pipe = redis::pipe();
        pipe.cmd("FCALL")
            .arg("tandem_erase_v1")
            .arg(keys.len())
            .arg(&keys)
            .arg(at_ms)
            .arg(epoch_prefix(user));
        let got = self.call_functions(&pipe, "erase user").await?;
        got.into_iter()
            .next()
            .map(u64::from_redis_value)
            .transpose()
            .map_err(|e| external("erase user", e))
            .map(Option::unwrap_or_default)
    }

    async fn note_erasure(&self, user: &str, at_ms: i64) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.cmd("FCALL")
            .arg("tandem_note_erasure_v1")
            .arg(1)
            .arg(speed_key(user))
            .arg(at_ms);
        self.call_functions(&pipe, "note an erasure").await?;
        Ok(())
    }
}

/// The answer of `tandem_read_v3`: the offset and the erasure time, then (epoch, fields, recent
/// items, items bought) per epoch.
fn decode_speed(user: &str, got: Vec<redis::Value>) -> Result<SpeedState> {
    let bad = |what: String| Error::Internal(format!("speed state of user `{user}`: {what}"));
    let mut it = got.into_iter();
    let (Some(offset), Some(erased)) = (it.next(), it.next()) else {
        return Err(bad("a short answer".into()));
    };
    let mut state = SpeedState {
        offset: Option::<u64>::from_redis_value(offset).map_err(|e| bad(e.to_string()))?,
        erased_ms: Option::<i64>::from_redis_value(erased).map_err(|e| bad(e.to_string()))?,
        ..SpeedState::default()
    };
    while let Some(epoch) = it.next() {
        let (Some(fields), Some(recent), Some(bought)) = (it.next(), it.next(), it.next()) else {
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
        let profile = speed::profile_from_redis(&pairs(fields)?, &pairs(recent)?, &pairs(bought)?)
            .map_err(|e| bad(format!("epoch {epoch}: {e}")))?;
        state.epochs.insert(epoch, profile);
    }
    Ok(state)
}

/// The node URLs of a `redis+cluster://[user:password@]host:port[,host:port…][#insecure]` (or
/// `rediss+cluster://`) URL, each `redis://[user:password@]host:port` (or `rediss://`, with the
/// fragment); `None` for a single-server URL.
fn cluster_nodes(url: &str) -> std::result::Result<Option<Vec<String>>, String> {
    let (scheme, rest) = match url.split_once("://") {
        Some(("redis+cluster", rest)) => ("redis", rest),
        Some(("rediss+cluster", rest)) => ("rediss", rest),
        _ => return Ok(None),
    };
    // `#insecure` (skip the TLS certificate check) applies to every node.
    let (rest, fragment) = match rest.split_once('#') {
        Some((rest, fragment)) => (rest, format!("/#{fragment}")),
        None => (rest, String::new()),
    };
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((auth, hosts)) => (format!("{auth}@"), hosts),
        None => (String::new(), rest),
    };
    let hosts = hosts.trim_end_matches('/');
    if hosts.contains('/') || hosts.contains('?') {
        return Err("a cluster URL is `redis+cluster://[user:password@]host:port[,host:port…]`, without a path or query".into());
    }
    let nodes: Vec<String> = hosts
        .split(',')
        .map(|h| {
            let (host, port) = h
                .rsplit_once(':')
                .ok_or_else(|| format!("cluster node `{h}` has no port"))?;
            port.parse::<u16>()
                .map_err(|_| format!("cluster node `{h}`: `{port}` is not a port"))?;
            if host.is_empty() {
                return Err(format!("cluster node `{h}` has no host"));
            }
            Ok(format!("{scheme}://{auth}{host}:{port}{fragment}"))
        })
        .collect::<std::result::Result<_, String>>()?;
    Ok(Some(nodes))
}

impl RedisStore {
    /// `groups` cut into calls of whole users, up to [`CALL_EVENTS`] events each (one user per
    /// call on a cluster, where a call's keys must share a slot): the per-call cost of Redis is
    /// paid once for many events, and no call runs long enough to hold up the reads of serving.
    fn calls_of<'g, 'a, 'e>(
        &self,
        groups: &'g [Vec<&'a SpeedEvent<'e>>],
    ) -> Vec<&'g [Vec<&'a SpeedEvent<'e>>]> {
        let per_call = match self.conn {
            Conn::Single(_) => CALL_EVENTS,
            Conn::Cluster(_) => 1,
        };
        let mut calls = Vec::new();
        let (mut first, mut in_call) = (0, 0);
        for (i, group) in groups.iter().enumerate() {
            if in_call > 0 && in_call + group.len() > per_call {
                calls.push(&groups[first..i]);
                (first, in_call) = (i, 0);
            }
            in_call += group.len();
        }
        calls.push(&groups[first..]);
        calls
    }
}

/// Appends one call of `function` over the users of `call` to `pipe`, written straight into its
/// buffer: the keys (per user: speed, seen, epochs, then three per epoch slot), the log, then
/// per user what `user` writes (its epoch slots in order of first appearance).
fn push_call(
    pipe: &mut redis::Pipeline,
    function: &str,
    log: &str,
    call: &[Vec<&SpeedEvent<'_>>],
    buf: &mut String,
    user: fn(&mut redis::Pipeline, &[&SpeedEvent<'_>], &[i64], &mut String),
) {
    let slots: Vec<Vec<i64>> = call
        .iter()
        .map(|group| {
            let mut slots: Vec<i64> = Vec::new();
            for e in group {
                if !slots.contains(&e.epoch_ms) {
                    slots.push(e.epoch_ms);
                }
            }
            slots
        })
        .collect();
    let keys: usize = slots.iter().map(|s| 3 + 3 * s.len()).sum();
    pipe.cmd("FCALL").arg(function).arg(keys);
    for (group, slots) in call.iter().zip(&slots) {
        let u = group[0].event.user_id.as_ref();
        pipe.arg(speed_key(u)).arg(seen_key(u)).arg(epochs_key(u));
        let prefix = epoch_prefix(u);
        for ms in slots {
            for set in ["", ":latest", ":latest-bought"] {
                buf.clear();
                let _ = write!(buf, "{prefix}{ms}{set}");
                pipe.arg(buf.as_str());
            }
        }
    }
    pipe.arg(log);
    for (group, slots) in call.iter().zip(&slots) {
        user(pipe, group, slots, buf);
    }
}

/// One user for `tandem_apply_v5`: the header (slots, events, each slot's ms), then each
/// event's entries.
fn push_slow(
    pipe: &mut redis::Pipeline,
    group: &[&SpeedEvent<'_>],
    slots: &[i64],
    buf: &mut String,
) {
    pipe.arg(slots.len()).arg(group.len());
    for ms in slots {
        pipe.arg(*ms);
    }
    for e in group {
        let slot = 1 + slots.iter().position(|s| *s == e.epoch_ms).unwrap_or(0);
        speed::push_args(pipe, e, slot, buf);
    }
}

/// One user for `tandem_apply_fast_v2`: the header (events, slots, each slot's ms), each
/// event's offset, id and ingest time, then per slot the fold of its events.
fn push_fast(
    pipe: &mut redis::Pipeline,
    group: &[&SpeedEvent<'_>],
    slots: &[i64],
    buf: &mut String,
) {
    pipe.arg(group.len()).arg(slots.len());
    for ms in slots {
        pipe.arg(*ms);
    }
    for e in group {
        pipe.arg(e.offset)
            .arg(e.event.event_id.as_ref())
            .arg(e.ingest_ts);
    }
    for ms in slots {
        let mut p = crate::features::Profile::new();
        for e in group.iter().filter(|e| e.epoch_ms == *ms) {
            p.apply(&e.event);
        }
        speed::push_delta(pipe, &p, buf);
    }
}

#[cfg(test)]
mod url_tests {
    use super::cluster_nodes;

    #[test]
    fn cluster_urls_name_every_node() {
        assert_eq!(cluster_nodes("redis://h:1").unwrap(), None);
        assert_eq!(
            cluster_nodes("redis+cluster://u:p@a:7000,b:7001/").unwrap(),
            Some(vec![
                "redis://u:p@a:7000".into(),
                "redis://u:p@b:7001".into()
            ])
        );
        assert_eq!(
            cluster_nodes("rediss+cluster://a:7000").unwrap(),
            Some(vec!["rediss://a:7000".into()])
        );
        assert_eq!(
            cluster_nodes("rediss+cluster://a:7000,b:7001/#insecure").unwrap(),
            Some(vec![
                "rediss://a:7000/#insecure".into(),
                "rediss://b:7001/#insecure".into()
            ])
        );
        let err = cluster_nodes("redis+cluster://a:7000,b").unwrap_err();
        assert!(err.contains("`b` has no port"), "{err}");
        let err = cluster_nodes("redis+cluster://a:x").unwrap_err();
        assert!(err.contains("`x` is not a port"), "{err}");
        let err = cluster_nodes("redis+cluster://a:1/0").unwrap_err();
        assert!(err.contains("without a path"), "{err}");
    }
}
