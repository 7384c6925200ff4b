//! On a node plugin: erases the extents of deleted volumes and then releases
//! their claims. The controller cannot reach the drives, so DeleteVolume only
//! marks the claims releasing; the space is handed out again only after this
//! node has zeroed it, so the next tenant never reads the previous one's data.

use std::sync::Arc;
use std::time::Duration;

use super::store::KubeStore;
use crate::ledger::Ledger;
use crate::metrics::Gauges;
use crate::node::{Erasure, ExtentEraser};

/// Looks again at least this often, even without a change to the Node (a volume
/// still staged when it was deleted is erased once it is unstaged).
const RETRY_EVERY: Duration = Duration::from_secs(15);

/// Runs until the process stops.
pub async fn erase_released(
    ledger: Arc<Ledger<Arc<KubeStore>>>,
    eraser: Arc<dyn ExtentEraser>,
    gauges: Arc<Gauges>,
    node: String,
) {
    let mut changes = ledger.store().subscribe();
    loop {
        if let Err(err) = erase_once(&ledger, &eraser, &node).await {
            tracing::warn!(%err, "could not erase released volumes; retrying");
        }
        if let Ok(now) = ledger.node(&node).await {
            gauges.set(
                "vdrive_node_volumes_awaiting_erase",
                "Deleted volumes whose extents this node has not erased and released yet (still staged, or failing).",
                &[],
                now.releasing_volumes().len() as f64,
            );
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(RETRY_EVERY) => {}
        }
    }
}

/// Erases and releases every releasing volume of `node` that can be; returns
/// how many were released.
pub async fn erase_once(
    ledger: &Ledger<Arc<KubeStore>>,
    eraser: &Arc<dyn ExtentEraser>,
    node: &str,
) -> Result<usize, String> {
    let releasing = ledger
        .node(node)
        .await
        .map_err(|e| e.to_string())?
        .releasing_volumes();
    let mut released = 0;
    for volume in releasing {
        let doomed = volume.clone();
        let eraser = eraser.clone();
        let erased = tokio::task::spawn_blocking(move || eraser.erase(&doomed))
            .await
            .map_err(|e| format!("erasing volume {} failed: {e}", volume.id))?;
        match erased {
            Erasure::Erased => {
                ledger
                    .release_on(node, &volume.id)
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
