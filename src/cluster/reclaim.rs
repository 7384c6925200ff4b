//! On a node plugin: erases the extents of deleted volumes and then releases
//! their claims. The controller cannot reach the drives, so DeleteVolume only
//! marks the claims releasing; the space is handed out again only after this
//! node has zeroed it, so the next tenant never reads the previous one's data.
//!
//! A volume is erased only under its in-flight key, the one the node's CSI
//! calls take: a volume being staged is not erased under the stage, and a
//! stage of a volume being erased is refused with Aborted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::store::KubeStore;
use crate::ledger::{Ledger, LedgerStore};
use crate::metrics::Gauges;
use crate::metrics::names::{NODE_ERASE_BACKLOG_AGE, NODE_VOLUMES_AWAITING_ERASE};
use crate::node::inflight::InFlight;
use crate::node::{Erasure, ExtentEraser};

/// Looks again at least this often, even without a change to the Node (a volume
/// still staged when it was deleted is erased once it is unstaged).
const RETRY_EVERY: Duration = Duration::from_secs(15);

/// Runs until the process stops.
pub async fn erase_released(
    ledger: Arc<Ledger<Arc<KubeStore>>>,
    eraser: Arc<dyn ExtentEraser>,
    in_flight: InFlight,
    gauges: Arc<Gauges>,
    node: String,
) {
    let mut changes = ledger.store().subscribe();
    let mut backlog = Backlog::default();
    loop {
        if let Err(err) = erase_once(&ledger, &eraser, &in_flight, &node).await {
            tracing::warn!(%err, "could not erase released volumes; retrying");
        }
        if let Ok(now) = ledger.node(&node).await {
            let waiting = now.releasing_volumes();
            gauges.set(&NODE_VOLUMES_AWAITING_ERASE, &[], waiting.len() as f64);
            let age = backlog.age(waiting.into_iter().map(|v| v.id), Instant::now());
            gauges.set(&NODE_ERASE_BACKLOG_AGE, &[], age.as_secs_f64().floor());
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(RETRY_EVERY) => {}
        }
    }
}

/// When this process first saw each deleted volume waiting to be erased. The
/// ledger keeps no time, so after a restart the wait counts from then: an
/// alert on the age fires late, never falsely.
#[derive(Debug, Default)]
struct Backlog {
    since: HashMap<String, Instant>,
}

impl Backlog {
    /// Notes the volumes `waiting` now, forgets the others, and returns how long
    /// the one waiting longest has waited (zero when none waits).
    fn age(&mut self, waiting: impl IntoIterator<Item = String>, now: Instant) -> Duration {
        let mut still = HashMap::new();
        for id in waiting {
            let since = self.since.get(&id).copied().unwrap_or(now);
            still.insert(id, since);
        }
        self.since = still;
        self.since
            .values()
            .map(|since| now.saturating_duration_since(*since))
            .max()
            .unwrap_or_default()
    }
}

/// Erases and releases every releasing volume of `node` that can be; returns
/// how many were released. A volume another operation holds waits for a later
/// round.
pub async fn erase_once<S: LedgerStore>(
    ledger: &Ledger<S>,
    eraser: &Arc<dyn ExtentEraser>,
    in_flight: &InFlight,
    node: &str,
) -> Result<usize, String> {
    let releasing = ledger
        .node(node)
        .await
        .map_err(|e| e.to_string())?
        .releasing_volumes();
    let mut released = 0;
    for volume in releasing {
        // Held until the volume is erased and released (or left for later).
        let _flight = match in_flight.begin(&volume.id) {
            Ok(flight) => flight,
            Err(busy) => {
                tracing::info!(volume = %volume.id, %busy, "deleted volume not erased yet");
                continue;
            }
        };
        let doomed = volume.clone();
        let eraser = eraser.clone();
        let erased = tokio::task::spawn_blocking(move || eraser.erase(&doomed))
            .await
            .map_err(|e| format!("erasing volume {} failed: {e}", volume.id))?;
        match erased {
            Erasure::Erased => {
                ledger
                    .release_on(node, &volume)
                    .await
                    .map_err(|e| e.to_string())?;
                tracing::info!(volume = %volume.id, gib = volume.capacity_gib, "deleted volume erased and released");
                released += 1;
            }
            // Still staged or published (kubelet unstages first), or its drive is
            // missing or disagrees: the claims stay; try again later.
            Erasure::NotYet(reason) => {
                tracing::info!(volume = %volume.id, %reason, "deleted volume not erased yet")
            }
            // The ledger handed this node another node's volume: leave it.
            Erasure::NotOurs => {
                tracing::warn!(volume = %volume.id, node = %volume.node, "a releasing volume of another node; not erased here")
            }
        }
    }
    Ok(released)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::allocator::{Ratio, Request};
    use crate::ledger::{
        ClaimRequest, DriveHeader, EmbeddedStore, PhysicalDrive, PoolSettings, ReportedDrive,
        SizeRange, Volume,
    };

    const NODE: &str = "n1";

    /// Counts the volumes it is asked to erase, and erases nothing.
    #[derive(Default)]
    struct Counting(AtomicUsize);

    impl ExtentEraser for Counting {
        fn erase(&self, _: &Volume) -> Erasure {
            self.0.fetch_add(1, Ordering::SeqCst);
            Erasure::Erased
        }
    }

    #[test]
    fn the_backlog_age_is_the_longest_wait_of_a_volume_still_waiting() {
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        let ids = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut backlog = Backlog::default();
        assert_eq!(backlog.age(ids(&[]), at(0)), Duration::ZERO);
        assert_eq!(backlog.age(ids(&["a"]), at(10)), Duration::ZERO);
        assert_eq!(
            backlog.age(ids(&["a", "b"]), at(70)),
            Duration::from_secs(60)
        );
        // a was erased: b has waited since 70.
        assert_eq!(backlog.age(ids(&["b"]), at(100)), Duration::from_secs(30));
        assert_eq!(backlog.age(ids(&[]), at(200)), Duration::ZERO);
        // A volume that comes back waits afresh.
        assert_eq!(backlog.age(ids(&["a"]), at(300)), Duration::ZERO);
    }

    #[tokio::test]
    async fn a_volume_another_operation_holds_is_not_erased_until_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path().join("ledger.redb")).unwrap();
        let ledger = Ledger::new(store, PoolSettings::default());
        let drive: PhysicalDrive = serde_json::from_value(serde_json::json!({
            "uuid": "00000000-0000-0000-0000-000000000001",
            "serial": "SN1",
            "type": "tlc",
            "capacity_gib": 64,
        }))
        .unwrap();
        let reported = ReportedDrive {
            drive,
            header: DriveHeader::Blank,
        };
        ledger.sync_drives(NODE, vec![reported]).await.unwrap();
        let mut layout = Request::with_ratio(1, Ratio { tlc: 1, qlc: 0 }, 1);
        layout.min_drive_gib = 1;
        let request = ClaimRequest {
            volume_name: "pvc-1".into(),
            owner: String::new(),
            pool: None,
            layout,
            accepts: SizeRange::exactly(1),
            access: None,
            image: None,
            image_format: None,
        };
        let volume = ledger.claim(NODE, &request).await.unwrap();
        ledger.retire_on(NODE, &volume.id).await.unwrap();

        let counting = Arc::new(Counting::default());
        let eraser: Arc<dyn ExtentEraser> = counting.clone();
        let in_flight = InFlight::default();
        // A stage of the volume is under way.
        let stage = in_flight.begin(&volume.id).unwrap();
        let released = erase_once(&ledger, &eraser, &in_flight, NODE).await;
        assert_eq!(released, Ok(0));
        assert_eq!(
            counting.0.load(Ordering::SeqCst),
            0,
            "not erased under a stage"
        );
        assert!(
            ledger
                .volume(&volume.id)
                .await
                .unwrap()
                .is_some_and(|v| v.releasing)
        );

        drop(stage);
        let released = erase_once(&ledger, &eraser, &in_flight, NODE).await;
        assert_eq!(released, Ok(1));
        assert_eq!(counting.0.load(Ordering::SeqCst), 1);
        assert!(ledger.volume(&volume.id).await.unwrap().is_none());
        assert!(in_flight.begin(&volume.id).is_ok(), "the key is free again");
    }
}
