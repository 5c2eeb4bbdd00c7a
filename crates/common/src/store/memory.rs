//! `memory://`: the online store in this process's memory (the demo, tests).

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;

use super::{OnlineStore, POINTER_KEY, Pointer, epoch_of_key, snapshot_of_key};
use crate::error::{Error, Result};

/// An online store in memory. The lock is never held across an `.await`.
#[derive(Debug, Default)]
pub struct MemoryStore {
    map: Mutex<BTreeMap<String, Bytes>>,
}

impl MemoryStore {
    fn map(&self) -> Result<std::sync::MutexGuard<'_, BTreeMap<String, Bytes>>> {
        self.map
            .lock()
            .map_err(|_| Error::Internal("memory store lock poisoned".into()))
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

    async fn drop_snapshots_except(&self, keep: &str) -> Result<u64> {
        let mut map = self.map()?;
        let before = map.len();
        map.retain(|k, _| snapshot_of_key(k).is_none_or(|id| id == keep));
        Ok((before - map.len()) as u64)
    }

    async fn drop_epochs_before(&self, cutoff_ms: i64) -> Result<u64> {
        let mut map = self.map()?;
        let before = map.len();
        map.retain(|k, _| epoch_of_key(k).is_none_or(|e| e >= cutoff_ms));
        Ok((before - map.len()) as u64)
    }
}
