//! What a node plugin tells the cluster about its drives: the
//! `vdrive.io/shared-drives` annotation (written through the ledger), the
//! `vdrive.io/shared-drives-capacity` extended resource, and an Event for every
//! drive that vanished while holding volumes.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::annotations::CAPACITY_RESOURCE;
use super::events::{Notifier, node_reference};
use super::store::{FIELD_MANAGER, KubeStore};
use crate::ledger::{DriveSync, Ledger};
use crate::metrics::Gauges;
use crate::metrics::names::{
    NODE_CAPACITY, NODE_MISSING_DRIVES_WITH_CLAIMS, NODE_QUARANTINED_DRIVES,
    NODE_STRAY_LOOP_DEVICES,
};
use crate::node::StrayDevice;

/// Publishes what follows from the drives the node just reported (`sync`): the
/// extended resource, gauges, and an Event for every drive missing with claims
/// or quarantined.
pub async fn publish(
    ledger: &Ledger<Arc<KubeStore>>,
    notifier: &Notifier,
    gauges: &Gauges,
    node: &str,
    sync: &DriveSync,
) -> Result<(), String> {
    let api = ledger.store().client_api();
    // Missing and quarantined drives take no new volumes: they do not count.
    let usable_gib: u64 = sync
        .ledger
        .drives
        .iter()
        .filter(|d| d.takes_claims())
        .map(|d| d.capacity_gib)
        .sum();
    set_capacity(api, node, usable_gib).await?;
    gauges.set(&NODE_CAPACITY, &[], usable_gib as f64);
    let missing = sync.missing_with_claims.len() as f64;
    gauges.set(&NODE_MISSING_DRIVES_WITH_CLAIMS, &[], missing);
    let quarantined = sync.quarantined.len() as f64;
    gauges.set(&NODE_QUARANTINED_DRIVES, &[], quarantined);
    if sync.missing_with_claims.is_empty() && sync.quarantined.is_empty() {
        return Ok(());
    }
    let uid = api.get_opt(node).await.ok().flatten().and_then(|n| n.uid());
    let node_ref = node_reference(node, uid);
    for uuid in &sync.missing_with_claims {
        let volumes: Vec<String> = sync
            .ledger
            .claims
            .iter()
            .filter(|c| c.physical_uuid == *uuid)
            .map(|c| format!("{} ({})", c.volume_id, c.owner))
            .collect();
        tracing::warn!(drive = %uuid, volumes = ?volumes, "a drive that holds volumes is missing; its claims are kept");
        notifier
            .warn(
                &node_ref,
                "SharedDriveMissing",
                "ScanDrives",
                format!(
                    "signed drive {uuid} is no longer seen on this node but holds {} virtual drive(s) of {}. Its claims are kept: reattach the drive, or delete those volumes",
                    volumes.len(),
                    volumes.join(", ")
                ),
            )
            .await;
    }
    for (uuid, reason) in &sync.quarantined {
        notifier
            .warn(
                &node_ref,
                "SharedDriveQuarantined",
                "ScanDrives",
                format!("signed drive {uuid} takes no new virtual drives: {reason}"),
            )
            .await;
    }
    Ok(())
}

/// Reports loop devices over this node's drives that no staged volume accounts
/// for (see [`NodeVolumes::sweep_stray_devices`](crate::node::NodeVolumes::sweep_stray_devices)):
/// a gauge, and a Warning Event on the Node for each.
pub async fn report_strays(
    ledger: &Ledger<Arc<KubeStore>>,
    notifier: &Notifier,
    gauges: &Gauges,
    node: &str,
    strays: &[StrayDevice],
) {
    gauges.set(&NODE_STRAY_LOOP_DEVICES, &[], strays.len() as f64);
    if strays.is_empty() {
        return;
    }
    let uid = ledger
        .store()
        .client_api()
        .get_opt(node)
        .await
        .ok()
        .flatten()
        .and_then(|n| n.uid());
    let node_ref = node_reference(node, uid);
    for stray in strays {
        tracing::warn!(device = %stray.device.display(), drive = %stray.drive.display(), offset = stray.offset_bytes, sizelimit = stray.sizelimit_bytes, volume = ?stray.volume, detached = stray.detached, "a loop device over a shared drive matches no staged volume");
        notifier
            .warn(
                &node_ref,
                "VolumeDeviceRemapped",
                "ScanDrives",
                stray_message(stray),
            )
            .await;
    }
}

/// What an Event says about a stray loop device.
pub fn stray_message(stray: &StrayDevice) -> String {
    let range = match stray.sizelimit_bytes {
        0 => format!("from byte {} to the end", stray.offset_bytes),
        n => format!(
            "bytes {}..{}",
            stray.offset_bytes,
            stray.offset_bytes.saturating_add(n)
        ),
    };
    let whose = stray.volume.as_ref().map_or(String::new(), |v| {
        format!(" (most likely volume {v}'s device, moved by whoever holds it open)")
    });
    let done = if stray.detached {
        "it was detached; the kernel lets go once its last user closes it".to_string()
    } else if !stray.in_use_at.is_empty() {
        format!(
            "it is in use at {}, so it was left in place (detached, its number could reach another volume): unpublish that volume, and it is detached at the next scan",
            stray
                .in_use_at
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    } else {
        "it could not be detached; detach it by hand (losetup --detach)".to_string()
    };
    format!(
        "loop device {} over shared drive {} maps {range}, which no staged volume owns{whose}; {done}",
        stray.device.display(),
        stray.drive.display()
    )
}

/// Sets the node's extended resource to `gib`, the documented way: a patch of
/// the Node's status capacity (the kubelet mirrors it into allocatable).
async fn set_capacity(api: &Api<Node>, node: &str, gib: u64) -> Result<(), String> {
    let patch = json!({ "status": { "capacity": { CAPACITY_RESOURCE: gib.to_string() } } });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    api.patch_status(node, &params, &Patch::Merge(&patch))
        .await
        .map(|_| ())
        .map_err(|e| format!("could not set {CAPACITY_RESOURCE} on Node {node:?}: {e}"))
}
