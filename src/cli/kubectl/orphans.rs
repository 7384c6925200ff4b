//! `kubectl vdrive orphans`: claims no PersistentVolume accounts for, and
//! PersistentVolumes whose claims are gone. Read-only: `vdrive orphans
//! --release` frees them.

use clap::Args;
use serde::Serialize;
use serde_json::json;

use super::connect::Cluster;
use crate::cli::outcome::{Answer, Failure};
use crate::cli::table::{self, Row};
use crate::cluster::orphans::{self, OrphanReport};
use crate::pools::PoolSettings;

#[derive(Debug, Clone, Args)]
pub struct OrphansTable {}

/// One finding of the orphan check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrphanRow {
    pub volume: String,
    /// orphaned-claim (in the ledger, no PV) or lost-volume (a PV, no claims).
    pub kind: &'static str,
    pub node: Option<String>,
    pub persistent_volume: Option<String>,
    /// The PVC: the claim's owner, or what the PersistentVolume is bound to.
    pub pvc: Option<String>,
    pub size_gib: Option<u64>,
    pub reason: String,
}

impl Row for OrphanRow {
    const HEADERS: &'static [&'static str] =
        &["VOLUME", "KIND", "NODE", "PV", "PVC", "SIZE", "REASON"];

    fn cells(&self) -> Vec<String> {
        let or_none = |v: &Option<String>| v.clone().unwrap_or_else(|| table::NONE.into());
        vec![
            self.volume.clone(),
            self.kind.to_string(),
            or_none(&self.node),
            or_none(&self.persistent_volume),
            or_none(&self.pvc),
            self.size_gib.map_or_else(|| table::NONE.into(), table::gib),
            self.reason.clone(),
        ]
    }
}

pub fn orphan_rows(report: &OrphanReport) -> Vec<OrphanRow> {
    let claims = report.orphaned_claims.iter().map(|o| OrphanRow {
        volume: o.volume_id.clone(),
        kind: "orphaned-claim",
        node: Some(o.node.clone()),
        persistent_volume: None,
        // The ledger spells a PVC owner namespace:name (kubectl: namespace/name);
        // a volume made outside Kubernetes is its own owner, and has no PVC.
        pvc: o
            .owner
            .split_once(':')
            .map(|(namespace, name)| format!("{namespace}/{name}")),
        size_gib: Some(o.capacity_gib),
        reason: o.reason.clone(),
    });
    let lost = report.lost_volumes.iter().map(|l| OrphanRow {
        volume: l.volume_id.clone(),
        kind: "lost-volume",
        node: None,
        persistent_volume: Some(l.persistent_volume.clone()),
        pvc: l.bound_to.clone(),
        size_gib: None,
        reason: "no claims in the ledger".into(),
    });
    claims.chain(lost).collect()
}

impl super::PluginAnswer for OrphansTable {
    /// A yes when nothing is orphaned or lost.
    async fn answer(self, cluster: &Cluster) -> Result<Answer, Failure> {
        let ledger = cluster.ledger(PoolSettings::default()).await?;
        let report = orphans::check(&ledger, &cluster.client).await?;
        let rows = orphan_rows(&report);
        let data = json!({
            "orphaned_claims": report.orphaned_claims,
            "lost_volumes": report.lost_volumes,
        });
        let answer = Answer::verdict(rows.is_empty(), table::render(&rows)).with_data(data);
        Ok(if rows.is_empty() {
            answer
        } else {
            answer.with_note("release orphaned claims with: vdrive orphans --release")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::orphans::{LostVolume, OrphanedVolume};

    #[test]
    fn rows_say_which_kind_and_spell_pvcs_like_kubectl() {
        let orphaned = |id: &str, owner: &str| OrphanedVolume {
            volume_id: id.into(),
            name: id.into(),
            node: "n1".into(),
            owner: owner.into(),
            capacity_gib: 10,
            reason: "no PersistentVolume".into(),
        };
        let report = OrphanReport {
            orphaned_claims: vec![orphaned("v1", "apps:data"), orphaned("v2", "v2")],
            lost_volumes: vec![LostVolume {
                persistent_volume: "pv-3".into(),
                volume_id: "v3".into(),
                bound_to: Some("apps/db".into()),
                uid: None,
            }],
        };
        let text = table::render(&orphan_rows(&report));
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            lines[1][..6],
            ["v1", "orphaned-claim", "n1", "-", "apps/data", "10Gi"]
        );
        assert_eq!(
            lines[2][..6],
            ["v2", "orphaned-claim", "n1", "-", "-", "10Gi"]
        );
        assert_eq!(
            lines[3][..6],
            ["v3", "lost-volume", "-", "pv-3", "apps/db", "-"]
        );
    }
}
