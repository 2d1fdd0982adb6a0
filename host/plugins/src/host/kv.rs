//! `deepwasm:plugin/kv`, and a bounded in-memory store behind it.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::bindings::{kv, types};
use crate::host::{HostState, KvAccess, not_granted};

impl kv::Host for HostState {
    fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, types::Error>> {
        Ok(match &self.caps.kv {
            Some(kv) => kv.get(&key),
            None => Err(not_granted("deepwasm:plugin/kv")),
        })
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<Result<(), types::Error>> {
        Ok(match &self.caps.kv {
            Some(kv) => kv.set(&key, value),
            None => Err(not_granted("deepwasm:plugin/kv")),
        })
    }

    fn delete(&mut self, key: String) -> wasmtime::Result<Result<bool, types::Error>> {
        Ok(match &self.caps.kv {
            Some(kv) => kv.delete(&key),
            None => Err(not_granted("deepwasm:plugin/kv")),
        })
    }

    fn keys(&mut self, prefix: String) -> wasmtime::Result<Result<Vec<String>, types::Error>> {
        Ok(match &self.caps.kv {
            Some(kv) => kv.keys(&prefix),
            None => Err(not_granted("deepwasm:plugin/kv")),
        })
    }
}

/// Longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 256;

/// A key-value store in memory, bounded by the bytes of its keys and values.
#[derive(Debug)]
pub struct MemoryKv {
    max_bytes: usize,
    inner: Mutex<(BTreeMap<String, Vec<u8>>, usize)>,
}

impl MemoryKv {
    pub fn new(max_bytes: usize) -> Self {
        MemoryKv {
            max_bytes,
            inner: Mutex::new((BTreeMap::new(), 0)),
        }
    }

    /// Bytes of keys and values stored.
    pub fn used_bytes(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).1
    }
}

fn check_key(key: &str) -> Result<(), types::Error> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(types::Error::InvalidInput(format!(
            "a key must be 1 to {MAX_KEY_BYTES} bytes long, this one is {}",
            key.len()
        )));
    }
    Ok(())
}

impl KvAccess for MemoryKv {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, types::Error> {
        check_key(key)?;
        Ok(self
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .get(key)
            .cloned())
    }

    fn set(&self, key: &str, value: Vec<u8>) -> Result<(), types::Error> {
        check_key(key)?;
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (map, used) = &mut *guard;
        let old = map.get(key).map_or(0, |v| key.len() + v.len());
        let new_used = *used - old + key.len() + value.len();
        if new_used > self.max_bytes {
            return Err(types::Error::LimitExceeded(format!(
                "storing {} bytes under `{key}` would use {new_used} bytes of this store's {}",
                value.len(),
                self.max_bytes
            )));
        }
        map.insert(key.to_owned(), value);
        *used = new_used;
        Ok(())
    }

    fn delete(&self, key: &str) -> Result<bool, types::Error> {
        check_key(key)?;
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (map, used) = &mut *guard;
        Ok(match map.remove(key) {
            Some(v) => {
                *used -= key.len() + v.len();
                true
            }
            None => false,
        })
    }

    fn keys(&self, prefix: &str) -> Result<Vec<String>, types::Error> {
        let guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        Ok(guard
            .0
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect())
    }
}
