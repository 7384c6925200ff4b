//! Nodes whose ledger cannot be read (a malformed vdrive annotation) are kept
//! aside by the ledger: they take no volumes and count in no capacity, and the
//! rest of the cluster keeps working. The controller makes them seen: a Warning
//! Event on the Node, once per fault, and a gauge of how many there are.

use std::collections::HashMap;
use std::sync::Arc;

use super::events::{Notifier, node_reference};
use super::leader::Leadership;
use super::store::KubeStore;
use crate::ledger::{Ledger, Quarantined};
use crate::metrics::Gauges;
use crate::metrics::names::QUARANTINED_NODES;

/// The Event reason on such a Node.
pub const REASON: &str = "LedgerUnreadable";

/// Runs until the process stops: looks again whenever a watched Node changes.
/// Every replica keeps the gauge; only the leading one raises the Events.
pub async fn watch(
    ledger: Arc<Ledger<Arc<KubeStore>>>,
    notifier: Notifier,
    gauges: Arc<Gauges>,
    leadership: Leadership,
) {
    let mut changes = ledger.store().subscribe();
    let mut announced = HashMap::new();
    loop {
        match ledger.survey().await {
            Ok(survey) => {
                let count = survey.quarantined.len() as f64;
                gauges.set(&QUARANTINED_NODES, &[], count);
                let news = newly_quarantined(&mut announced, &survey.quarantined);
                if !news.is_empty() && leadership.leading().await {
                    for bad in news {
                        tracing::error!(node = %bad.node, reason = %bad.reason, "node quarantined: its ledger cannot be read");
                        notifier
                            .warn(
                                &node_reference(&bad.node, None),
                                REASON,
                                "Quarantine",
                                note(&bad),
                            )
                            .await;
                    }
                }
            }
            Err(err) => tracing::warn!(%err, "could not read the nodes' ledgers"),
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

fn note(bad: &Quarantined) -> String {
    format!(
        "vdrive cannot read this node's ledger: {}. The node takes no new volumes and its capacity is not offered; its volumes cannot be deleted until it is repaired. Fix its vdrive.io annotations (kubectl edit node {}).",
        bad.reason, bad.node
    )
}

/// The quarantined nodes not announced yet, or quarantined for another reason
/// since; nodes repaired since are forgotten, so a new fault is announced again.
fn newly_quarantined(
    announced: &mut HashMap<String, String>,
    now: &[Quarantined],
) -> Vec<Quarantined> {
    announced.retain(|node, _| now.iter().any(|q| q.node == *node));
    now.iter()
        .filter(|q| announced.insert(q.node.clone(), q.reason.clone()).as_ref() != Some(&q.reason))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(node: &str, reason: &str) -> Quarantined {
        Quarantined {
            node: node.into(),
            reason: reason.into(),
        }
    }

    #[test]
    fn each_fault_is_announced_once_and_again_after_a_repair() {
        let mut announced = HashMap::new();
        let a = bad("a", "not JSON");
        assert_eq!(
            newly_quarantined(&mut announced, std::slice::from_ref(&a)),
            vec![a.clone()]
        );
        assert!(newly_quarantined(&mut announced, std::slice::from_ref(&a)).is_empty());
        let b = bad("b", "overlapping claims");
        assert_eq!(
            newly_quarantined(&mut announced, &[a.clone(), b.clone()]),
            vec![b.clone()]
        );
        let a_again = bad("a", "field 2 is not a number");
        assert_eq!(
            newly_quarantined(&mut announced, &[a_again.clone(), b.clone()]),
            vec![a_again.clone()],
            "another fault on the same node"
        );
        // a is repaired, then breaks the same way again.
        assert!(newly_quarantined(&mut announced, std::slice::from_ref(&b)).is_empty());
        assert_eq!(
            newly_quarantined(&mut announced, &[a_again.clone(), b]),
            vec![a_again]
        );
    }
}
