//! `memory://`: the online store in this process's memory (the demo, tests).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;

use super::speed::{ApplyCounts, LogMatch, SEEN_MAX, SpeedEvent, SpeedState, compare_logs};
use super::{
    LeaseOp, LeaseState, OnlineStore, POINTER_KEY, Pointer, snapshot_of_key, snapshot_older,
};
use crate::error::{Error, Result};
use crate::features::Profile;

/// One user's speed state: what `speed.lua` keeps in the user's Redis keys.
#[derive(Debug, Default)]
struct UserSpeed {
    offset: Option<u64>,
    /// The bus log `offset` is of.
    log: Option<String>,
    /// Recent event ids by offset, the newest [`SEEN_MAX`].
    seen: BTreeMap<u64, String>,
    seen_ids: HashSet<String>,
    epochs: BTreeMap<i64, Profile>,
    /// When the user was erased (ingest ms): their events ingested until then are skipped.
    erased: Option<i64>,
}

impl UserSpeed {
    /// Forgets an offset of another log than `log` (and the state written under another store
    /// token of the same log, [`super::speed::LogMatch::Stale`]) and keeps `log` as the
    /// offset's.
    fn enter_log(&mut self, log: &str) {
        if log.is_empty() {
            return;
        }
        match compare_logs(self.log.as_deref(), log) {
            LogMatch::Same => {}
            LogMatch::Other => self.offset = None,
            LogMatch::Stale => {
                self.offset = None;
                self.epochs.clear();
                self.seen.clear();
                self.seen_ids.clear();
            }
        }
        if self.log.as_deref() != Some(log) {
            self.log = Some(log.to_string());
        }
    }

    fn apply(&mut self, e: &SpeedEvent<'_>, counts: &mut ApplyCounts) {
        if self.offset.is_some_and(|o| o >= e.offset) {
            counts.replayed += 1;
            return;
        }
        self.offset = Some(e.offset);
        if self.erased.is_some_and(|at| e.ingest_ts <= at) {
            counts.erased += 1;
            return;
        }
        if !self.seen_ids.insert(e.event.event_id.to_string()) {
            counts.duplicates += 1;
            return;
        }
        self.seen.insert(e.offset, e.event.event_id.to_string());
        while self.seen.len() > SEEN_MAX {
            if let Some((_, id)) = self.seen.pop_first() {
                self.seen_ids.remove(&id);
            }
        }
        self.epochs.entry(e.epoch_ms).or_default().apply(&e.event);
        counts.applied += 1;
    }
}

/// An online store in memory. The locks are never held across an `.await`.
#[derive(Debug, Default)]
pub struct MemoryStore {
    map: Mutex<BTreeMap<String, Bytes>>,
    /// Leases: name → (holder, when it lapses).
    leases: Mutex<HashMap<String, (String, std::time::Instant)>>,
    speed: Mutex<HashMap<String, UserSpeed>>,
}

fn poisoned<T>(_: T) -> Error {
    Error::Internal("memory store lock poisoned".into())
}

impl MemoryStore {
    fn map(&self) -> Result<std::sync::MutexGuard<'_, BTreeMap<String, Bytes>>> {
        self.map.lock().map_err(poisoned)
    }

    fn speed_map(&self) -> Result<std::sync::MutexGuard<'_, HashMap<String, UserSpeed>>> {
        self.speed.lock().map_err(poisoned)
    }

    /// Every key, sorted (for tests and inspection).
    pub fn keys(&self) -> Result<Vec<String>> {
        Ok(self.map()?.keys().cloned().collect())
    }
}

#[async_trait]
impl OnlineStore for MemoryStore {
    async fn put(&self, rows: &[(String, Bytes)]) -> Result<()> {
        let mut map = self.map()?;
        for (k, v) in rows {
            map.insert(k.clone(), v.clone());
        }
        Ok(())
    }

    async fn get(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>> {
        let map = self.map()?;
        Ok(keys.iter().map(|k| map.get(k).cloned()).collect())
    }

    async fn copy(&self, pairs: &[(String, String)]) -> Result<Vec<bool>> {
        let mut map = self.map()?;
        Ok(pairs
            .iter()
            .map(|(from, to)| match map.get(from).cloned() {
                Some(v) => {
                    map.insert(to.clone(), v);
                    true
                }
                None => false,
            })
            .collect())
    }

    async fn pointer(&self) -> Result<Option<Pointer>> {
        let map = self.map()?;
        map.get(POINTER_KEY)
            .map(|v| serde_json::from_slice(v).map_err(Error::from))
            .transpose()
    }

    async fn flip(&self, expected: Option<&Pointer>, new: &Pointer) -> Result<bool> {
        let mut map = self.map()?;
        let current: Option<Pointer> = map
            .get(POINTER_KEY)
            .map(|v| serde_json::from_slice(v))
            .transpose()?;
        if current.as_ref() != expected {
            return Ok(false);
        }
        map.insert(POINTER_KEY.into(), Bytes::from(serde_json::to_vec(new)?));
        Ok(true)
    }

    async fn drop_snapshots_older(&self, keep: &str) -> Result<u64> {
        let mut map = self.map()?;
        let before = map.len();
        map.retain(|k, _| snapshot_of_key(k).is_none_or(|id| !snapshot_older(id, keep)));
        Ok((before - map.len()) as u64)
    }

    async fn lease(&self, name: &str, op: LeaseOp, owner: &str, ttl_ms: u64) -> Result<LeaseState> {
        use std::time::{Duration, Instant};
        let mut leases = self.leases.lock().map_err(poisoned)?;
        let now = Instant::now();
        leases.retain(|_, (_, until)| *until > now);
        let held = leases.get(name).map(|(h, until)| (h.clone(), *until));
        let left = |until: Instant| until.saturating_duration_since(now).as_millis() as i64;
        Ok(match held {
            None if op == LeaseOp::Take => {
                leases.insert(
                    name.to_string(),
                    (owner.to_string(), now + Duration::from_millis(ttl_ms)),
                );
                LeaseState {
                    held: true,
                    holder: Some(owner.to_string()),
                    left_ms: ttl_ms as i64,
                }
            }
            Some((h, _)) if h == owner && op == LeaseOp::Release => {
                leases.remove(name);
                LeaseState {
                    held: false,
                    holder: None,
                    left_ms: 0,
                }
            }
            Some((h, _)) if h == owner => {
                leases.insert(name.to_string(), (h, now + Duration::from_millis(ttl_ms)));
                LeaseState {
                    held: true,
                    holder: Some(owner.to_string()),
                    left_ms: ttl_ms as i64,
                }
            }
            Some((h, until)) => LeaseState {
                held: false,
                holder: Some(h),
                left_ms: left(until),
            },
            None => LeaseState {
                held: false,
                holder: None,
                left_ms: 0,
            },
        })
    }

    async fn drop_epochs_before(&self, cutoff_ms: i64) -> Result<u64> {
        let mut speed = self.speed_map()?;
        let mut dropped = 0;
        for user in speed.values_mut() {
            let kept = user.epochs.split_off(&cutoff_ms);
            dropped += std::mem::replace(&mut user.epochs, kept).len() as u64;
        }
        Ok(dropped)
    }

    async fn apply(&self, log: &str, events: &[SpeedEvent<'_>]) -> Result<ApplyCounts> {
        let mut speed = self.speed_map()?;
        let users = super::speed::by_user(events).len() as u64;
        let mut counts = ApplyCounts {
            calls: users,
            users,
            ..ApplyCounts::default()
        };
        for e in events {
            let user = match speed.get_mut(e.event.user_id.as_ref()) {
                Some(u) => u,
                None => speed.entry(e.event.user_id.to_string()).or_default(),
            };
            user.enter_log(log);
            user.apply(e, &mut counts);
        }
        Ok(counts)
    }

    async fn speed(&self, user: &str, from_epoch_ms: i64) -> Result<SpeedState> {
        let speed = self.speed_map()?;
        Ok(match speed.get(user) {
            None => SpeedState::default(),
            Some(u) => SpeedState {
                offset: u.offset,
                erased_ms: u.erased,
                epochs: u
                    .epochs
                    .range(from_epoch_ms..)
                    .map(|(e, p)| (*e, p.clone()))
                    .collect(),
            },
        })
    }

    async fn erase_user(&self, user: &str, at_ms: i64, snapshots: &[String]) -> Result<u64> {
        let mut n = 0;
        {
            let mut map = self.map()?;
            for id in snapshots {
                n += u64::from(map.remove(&super::user_key(user, id)).is_some());
            }
        }
        let mut speed = self.speed_map()?;
        let u = speed.entry(user.to_string()).or_default();
        n += u.epochs.len() as u64 + u64::from(!u.seen.is_empty());
        u.epochs.clear();
        u.seen.clear();
        u.seen_ids.clear();
        u.erased = Some(u.erased.map_or(at_ms, |t| t.max(at_ms)));
        Ok(n)
    }

    async fn note_erasure(&self, user: &str, at_ms: i64) -> Result<()> {
        let mut speed = self.speed_map()?;
        let u = speed.entry(user.to_string()).or_default();
        u.erased = Some(u.erased.map_or(at_ms, |t| t.max(at_ms)));
        Ok(())
    }
}
