//! The orphan check: ledger claims that no PersistentVolume accounts for, and
//! vdrive PersistentVolumes whose claims are gone. Both are reported; orphaned
//! claims are released only when an operator asks (`vdrive orphans --release`),
//! and then through the normal path: marked releasing, erased by their node.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use serde::Serialize;

use super::events::{Notifier, node_reference, pv_reference};
use super::store::KubeStore;
use crate::csi::identity::DRIVER_NAME;
use crate::ledger::{Ledger, Volume};

/// A volume in the ledger that no PersistentVolume points at.
#[derive(Debug, Clone, Serialize)]
pub struct OrphanedVolume {
    pub volume_id: String,
    pub name: String,
    pub node: String,
    pub owner: String,
    pub capacity_gib: u64,
    pub reason: String,
}

/// A vdrive PersistentVolume whose volume has no claims in the ledger.
#[derive(Debug, Clone, Serialize)]
pub struct LostVolume {
    pub persistent_volume: String,
    pub volume_id: String,
    /// `namespace/name` of the PVC bound to it, if any.
    pub bound_to: Option<String>,
    /// For the Event about it.
    #[serde(skip)]
    pub uid: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct OrphanReport {
    pub orphaned_claims: Vec<OrphanedVolume>,
    pub lost_volumes: Vec<LostVolume>,
}

struct PvInfo {
    name: String,
    uid: Option<String>,
    bound_to: Option<String>,
    /// Released with a Delete policy: the provisioner is deleting it.
    being_deleted: bool,
}

/// Compares the ledger with the PersistentVolumes and their claims.
///
/// The reads are ordered so that a volume being provisioned right now is never
/// called orphaned: ledger first, then PVCs, then PVs. A volume in the ledger
/// whose PVC is still Pending is being provisioned; one whose PVC was Bound when
/// listed had its PV before the PV list.
pub async fn check(
    ledger: &Ledger<Arc<KubeStore>>,
    client: &Client,
) -> Result<OrphanReport, String> {
    let survey = ledger.survey().await.map_err(|e| e.to_string())?;
    let ledgers = survey.nodes;
    let pvcs: Api<PersistentVolumeClaim> = Api::all(client.clone());
    let pending: HashSet<String> = pvcs
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("could not list PersistentVolumeClaims: {e}"))?
        .items
        .iter()
        .filter(|c| c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending"))
        .map(|c| format!("{}:{}", c.namespace().unwrap_or_default(), c.name_any()))
        .collect();
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let mut by_handle: HashMap<String, PvInfo> = HashMap::new();
    for pv in pvs
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("could not list PersistentVolumes: {e}"))?
        .items
    {
        let Some(csi) = pv.spec.as_ref().and_then(|s| s.csi.as_ref()) else {
            continue;
        };
        if csi.driver != DRIVER_NAME {
            continue;
        }
        let spec = pv.spec.as_ref();
        let bound_to = spec.and_then(|s| s.claim_ref.as_ref()).map(|r| {
            format!(
                "{}/{}",
                r.namespace.clone().unwrap_or_default(),
                r.name.clone().unwrap_or_default()
            )
        });
        let released = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
        let deletes =
            spec.and_then(|s| s.persistent_volume_reclaim_policy.as_deref()) == Some("Delete");
        by_handle.insert(
            csi.volume_handle.clone(),
            PvInfo {
                name: pv.name_any(),
                uid: pv.uid(),
                bound_to,
                being_deleted: (released && deletes) || pv.metadata.deletion_timestamp.is_some(),
            },
        );
    }

    let mut report = OrphanReport::default();
    let mut claimed: HashSet<&str> = HashSet::new();
    for node in &ledgers {
        for claim in &node.claims {
            claimed.insert(&claim.volume_id);
        }
        for volume in node.volumes() {
            if by_handle.contains_key(&volume.id) || pending.contains(&volume.owner) {
                continue;
            }
            let reason = if volume.owner.contains(':') {
                format!(
                    "no PersistentVolume has volumeHandle {} and its claim {} is not waiting for one",
                    volume.id,
                    volume.owner.replacen(':', "/", 1)
                )
            } else {
                format!(
                    "no PersistentVolume has volumeHandle {} and it names no PersistentVolumeClaim (created outside Kubernetes?)",
                    volume.id
                )
            };
            report.orphaned_claims.push(orphan(&volume, reason));
        }
    }
    // A node whose ledger cannot be read may hold any claim: no PersistentVolume
    // is called lost until it is repaired (it is reported on its own).
    let certain = survey.quarantined.is_empty();
    for (handle, pv) in &by_handle {
        if certain && !claimed.contains(handle.as_str()) && !pv.being_deleted {
            report.lost_volumes.push(LostVolume {
                persistent_volume: pv.name.clone(),
                volume_id: handle.clone(),
                bound_to: pv.bound_to.clone(),
                uid: pv.uid.clone(),
            });
        }
    }
    report
        .lost_volumes
        .sort_by(|a, b| a.persistent_volume.cmp(&b.persistent_volume));
    Ok(report)
}

fn orphan(volume: &Volume, reason: String) -> OrphanedVolume {
    OrphanedVolume {
        volume_id: volume.id.clone(),
        name: volume.name.clone(),
        node: volume.node.clone(),
        owner: volume.owner.clone(),
        capacity_gib: volume.capacity_gib,
        reason,
    }
}

/// Marks the orphaned claims releasing; their nodes erase and release them.
/// Returns the ids this call released (not those someone else retired since
/// the check).
pub async fn release(
    ledger: &Ledger<Arc<KubeStore>>,
    orphans: &[OrphanedVolume],
) -> Result<Vec<String>, String> {
    let mut released = Vec::new();
    for orphan in orphans {
        if ledger
            .retire(&orphan.node, &orphan.volume_id)
            .await
            .map_err(|e| format!("could not release volume {}: {e}", orphan.volume_id))?
            .is_some_and(|(_, newly)| newly)
        {
            released.push(orphan.volume_id.clone());
        }
    }
    Ok(released)
}

/// Publishes one Warning per finding: on the Node holding an orphaned claim, on
/// the PersistentVolume whose claims are missing.
pub async fn announce(report: &OrphanReport, notifier: &Notifier) {
    for orphan in &report.orphaned_claims {
        tracing::warn!(volume = %orphan.volume_id, node = %orphan.node, reason = %orphan.reason, "orphaned claim");
        notifier
            .warn(
                &node_reference(&orphan.node, None),
                "OrphanedClaim",
                "CheckOrphans",
                format!(
                    "volume {} ({} GiB, owner {}) holds capacity on this node but {}. Release it with `vdrive orphans --release` if it is not needed",
                    orphan.volume_id, orphan.capacity_gib, orphan.owner, orphan.reason
                ),
            )
            .await;
    }
    for lost in &report.lost_volumes {
        tracing::warn!(pv = %lost.persistent_volume, volume = %lost.volume_id, "PersistentVolume without claims");
        notifier
            .warn(
                &pv_reference(&lost.persistent_volume, lost.uid.clone()),
                "VolumeClaimsMissing",
                "CheckOrphans",
                format!(
                    "volume {} has no claims in the vdrive ledger: its capacity is not accounted and may be handed to another volume. Restore the node's vdrive.io/virtual-drive-claims annotation from a backup, or move the data off and delete this PersistentVolume",
                    lost.volume_id
                ),
            )
            .await;
    }
}
