//! Operations under way in this process, by volume name or id: CSI asks that a
//! second call on a volume that is busy is refused with Aborted, not queued.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tonic::Status;

#[derive(Default, Clone)]
pub struct InFlight(Arc<Mutex<HashSet<String>>>);

/// Held while the operation runs; dropping it ends the operation.
pub struct Flight {
    key: String,
    set: Arc<Mutex<HashSet<String>>>,
}

impl InFlight {
    pub fn begin(&self, key: &str) -> Result<Flight, Status> {
        let mut set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !set.insert(key.to_string()) {
            return Err(Status::aborted(format!(
                "an operation on {key} is already in progress; retry when it completes"
            )));
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
    fn a_second_operation_on_the_same_key_is_aborted_until_the_first_ends() {
        let flights = InFlight::default();
        let first = flights.begin("v").unwrap();
        assert_eq!(
            flights.begin("v").err().map(|s| s.code()),
            Some(tonic::Code::Aborted)
        );
        assert!(flights.begin("w").is_ok());
        drop(first);
        assert!(flights.begin("v").is_ok());
    }
}
