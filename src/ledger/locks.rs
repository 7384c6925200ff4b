//! Async locks by key (a volume name) that exist only while used, so a
//! long-lived process does not keep one per volume it ever saw. A guard owns
//! its place, so it can travel with a queued change and be released only
//! when that change has been written or refused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

#[derive(Default)]
pub struct KeyedLocks {
    locks: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

pub struct KeyedGuard {
    owner: Arc<KeyedLocks>,
    key: String,
    held: OwnedMutexGuard<()>,
}

impl KeyedLocks {
    pub async fn lock(self: &Arc<Self>, key: &str) -> KeyedGuard {
        let mutex = self.map().entry(key.to_string()).or_default().clone();
        let held = mutex.lock_owned().await;
        KeyedGuard {
            owner: self.clone(),
            key: key.to_string(),
            held,
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<AsyncMutex<()>>>> {
        // Entries are inserted and removed whole; a poisoned map is still valid.
        self.locks.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map().len()
    }
}

impl Drop for KeyedGuard {
    fn drop(&mut self) {
        let mut map = self.owner.map();
        // Clones are only made under the map lock: two references (the map's and
        // our guard's) mean nobody else holds or waits for this key.
        if Arc::strong_count(OwnedMutexGuard::mutex(&self.held)) == 2 {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn locks_serialise_one_key_and_vanish_when_unused() {
        let locks = Arc::new(KeyedLocks::default());
        let first = locks.lock("a").await;
        let waiting = {
            let locks = locks.clone();
            tokio::spawn(async move {
                let _second = locks.lock("a").await;
            })
        };
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "the second lock waits for the first"
        );
        let _other = locks.lock("b").await;
        drop(first);
        waiting.await.unwrap();
        drop(_other);
        assert_eq!(locks.len(), 0);
    }
}
