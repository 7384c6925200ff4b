//! Operations under way in this process, by volume name or id. CSI asks that a
//! second call on a volume that is busy is refused with Aborted, not queued; the
//! node's reclaimer takes the same keys, so a volume is never staged while its
//! extents are being erased, nor erased while it is being staged.
//!
//! A [`Flight`] must live as long as the work it guards: whoever runs blocking
//! work for an operation keeps its flight until that work has really ended.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use super::NodeError;

#[derive(Default, Clone)]
pub struct InFlight(Arc<Mutex<HashSet<String>>>);

/// Held while the operation runs; dropping it ends the operation.
#[must_use = "the operation ends when its flight is dropped"]
pub struct Flight {
    key: String,
    set: Arc<Mutex<HashSet<String>>>,
}

impl InFlight {
    /// Begins an operation on `key`, or says that one is still in progress.
    pub fn begin(&self, key: &str) -> Result<Flight, NodeError> {
        let mut set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !set.insert(key.to_string()) {
            return Err(NodeError::InProgress {
                key: key.to_string(),
            });
        }
        Ok(Flight {
            key: key.to_string(),
            set: self.0.clone(),
        })
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_operation_on_the_same_key_is_refused_until_the_first_ends() {
        let flights = InFlight::default();
        let first = flights.begin("v").unwrap();
        let refused = flights.begin("v").err().map(|e| e.to_string());
        assert_eq!(
            refused.as_deref(),
            Some("an operation on volume v is still in progress; retry later")
        );
        let other = flights.begin("w");
        assert!(other.is_ok());
        drop(first);
        assert!(flights.begin("v").is_ok());
    }
}
