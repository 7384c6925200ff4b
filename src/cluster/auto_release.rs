//! Scheduled cleanup of orphaned claims, opt-in (`--orphan-auto-release-after`,
//! the chart's `orphans.autoRelease`). A claim is released only when it was
//! orphaned at two orphan checks at least the configured age apart, and still
//! is at the second: a volume being provisioned, or a PersistentVolume restored
//! a moment late, is never taken for garbage on one look. Release goes through
//! the erase path: the claim is marked releasing, its node erases the extents,
//! then the claim leaves the ledger.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::events::{Notifier, node_reference};
use super::orphans::{self, OrphanedVolume};
use super::store::KubeStore;
use crate::ledger::Ledger;

/// The Event reason on the Node whose orphaned claim was released.
pub const RELEASED: &str = "OrphanedClaimReleased";

/// When each orphaned claim (node, volume) was first seen orphaned, across checks.
#[derive(Debug, Default)]
pub struct OrphanAges {
    first_seen: HashMap<(String, String), Instant>,
}

impl OrphanAges {
    /// Takes the orphans of the check made at `now` and returns those that
    /// were orphaned at an earlier check at least `min_age` before. A claim no
    /// longer orphaned is forgotten, so orphaned again later it starts over.
    pub fn due(
        &mut self,
        orphans: &[OrphanedVolume],
        now: Instant,
        min_age: Duration,
    ) -> Vec<OrphanedVolume> {
        let key = |o: &OrphanedVolume| (o.node.clone(), o.volume_id.clone());
        self.first_seen
            .retain(|seen, _| orphans.iter().any(|o| key(o) == *seen));
        orphans
            .iter()
            .filter(|o| {
                let first = *self.first_seen.entry(key(o)).or_insert(now);
                now > first && now.duration_since(first) >= min_age
            })
            .cloned()
            .collect()
    }

    /// Forgets a released claim.
    pub fn forget(&mut self, node: &str, volume_id: &str) {
        self.first_seen
            .remove(&(node.to_string(), volume_id.to_string()));
    }
}

/// Releases the orphans that are due, each with a log line and an Event on
/// its Node. A failure is logged and tried again at the next check.
pub async fn release_due(
    ages: &mut OrphanAges,
    orphaned: &[OrphanedVolume],
    min_age: Duration,
    ledger: &Ledger<Arc<KubeStore>>,
    notifier: &Notifier,
) {
    let due = ages.due(orphaned, Instant::now(), min_age);
    for orphan in due {
        match orphans::release(ledger, std::slice::from_ref(&orphan)).await {
            Ok(released) if !released.is_empty() => {
                ages.forget(&orphan.node, &orphan.volume_id);
                let note = format!(
                    "released orphaned volume {} ({} GiB, owner {}) after it stayed orphaned for at least {}s: {}. Its extents are erased before the capacity is offered again",
                    orphan.volume_id,
                    orphan.capacity_gib,
                    orphan.owner,
                    min_age.as_secs(),
                    orphan.reason
                );
                tracing::warn!(volume = %orphan.volume_id, node = %orphan.node, "auto-release: {note}");
                notifier
                    .normal(
                        &node_reference(&orphan.node, None),
                        RELEASED,
                        "ReleaseOrphans",
                        note,
                    )
                    .await;
            }
            // Gone or already releasing since the check: nothing to do.
            Ok(_) => ages.forget(&orphan.node, &orphan.volume_id),
            Err(err) => {
                tracing::warn!(volume = %orphan.volume_id, node = %orphan.node, %err, "auto-release failed; trying again at the next check")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orphan(node: &str, id: &str) -> OrphanedVolume {
        OrphanedVolume {
            volume_id: id.into(),
            name: id.into(),
            node: node.into(),
            owner: "ns:pvc".into(),
            capacity_gib: 10,
            reason: "no PersistentVolume".into(),
        }
    }

    const AGE: Duration = Duration::from_secs(600);

    #[test]
    fn one_check_never_releases_even_with_no_age() {
        let mut ages = OrphanAges::default();
        let now = Instant::now();
        assert!(ages.due(&[orphan("n1", "v1")], now, AGE).is_empty());
        assert!(
            ages.due(&[orphan("n1", "v1")], now, Duration::ZERO)
                .is_empty(),
            "the same check seen twice is still one check"
        );
    }

    #[test]
    fn two_checks_closer_than_the_age_do_not_release() {
        let mut ages = OrphanAges::default();
        let t0 = Instant::now();
        assert!(ages.due(&[orphan("n1", "v1")], t0, AGE).is_empty());
        let t1 = t0 + Duration::from_secs(300);
        assert!(ages.due(&[orphan("n1", "v1")], t1, AGE).is_empty());
        let t2 = t0 + AGE;
        let due = ages.due(&[orphan("n1", "v1")], t2, AGE);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].volume_id, "v1");
    }

    #[test]
    fn a_claim_that_stops_being_orphaned_starts_over() {
        let mut ages = OrphanAges::default();
        let t0 = Instant::now();
        ages.due(&[orphan("n1", "v1")], t0, AGE);
        // Its PersistentVolume appeared: not orphaned at this check.
        ages.due(&[], t0 + Duration::from_secs(300), AGE);
        let t2 = t0 + AGE + Duration::from_secs(1);
        assert!(
            ages.due(&[orphan("n1", "v1")], t2, AGE).is_empty(),
            "orphaned again: the age counts from now"
        );
        assert_eq!(ages.due(&[orphan("n1", "v1")], t2 + AGE, AGE).len(), 1);
    }

    #[test]
    fn the_same_volume_id_on_another_node_is_another_claim() {
        let mut ages = OrphanAges::default();
        let t0 = Instant::now();
        ages.due(&[orphan("n1", "v1")], t0, AGE);
        let due = ages.due(&[orphan("n1", "v1"), orphan("n2", "v1")], t0 + AGE, AGE);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].node, "n1");
    }
}
