//! `kubectl vdrive claims [NODE]`: every virtual drive (claim) of the ledger,
//! with the PersistentVolumeClaim its volume is bound to.

use std::borrow::Borrow;
use std::collections::HashMap;

use clap::Args;
use serde::Serialize;

use super::connect::Cluster;
use crate::cli::outcome::{Answer, Failure};
use crate::cli::table::{self, Row};
use crate::ledger::{Claim, NodeLedger};

#[derive(Debug, Clone, Args)]
pub struct ClaimsTable {
    /// Only this node's claims.
    pub node: Option<String>,
}

/// One claim: one extent of a physical drive owned by a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClaimRow {
    pub node: String,
    pub volume: String,
    /// `namespace/name` of the bound PersistentVolumeClaim, if a
    /// PersistentVolume names the volume.
    pub pvc: Option<String>,
    pub pool: Option<&'static str>,
    pub drive: String,
    pub part: u32,
    pub offset_gib: u64,
    pub size_gib: u64,
    /// bound (a PersistentVolume names it), unbound (none does: made outside
    /// Kubernetes, or orphaned, see `kubectl vdrive orphans`), releasing
    /// (deleted, its node has not erased it yet).
    pub state: &'static str,
}

impl Row for ClaimRow {
    const HEADERS: &'static [&'static str] =
        &["VOLUME", "PVC", "POOL", "DRIVE", "OFFSET", "SIZE", "STATE"];

    fn cells(&self) -> Vec<String> {
        vec![
            self.volume.clone(),
            self.pvc.clone().unwrap_or_else(|| table::NONE.into()),
            self.pool.unwrap_or(table::NONE).to_string(),
            self.drive.clone(),
            table::gib(self.offset_gib),
            table::gib(self.size_gib),
            self.state.to_string(),
        ]
    }
}

/// Which claims to list.
#[derive(Debug, Clone, Default)]
pub struct ClaimFilter<'a> {
    pub node: Option<&'a str>,
    /// Only claims whose PVC is in this namespace.
    pub namespace: Option<&'a str>,
}

/// The rows, by node, volume and position in the volume; `pvcs` maps volume
/// ids to their `namespace/name`.
pub fn claim_rows<N: Borrow<NodeLedger>>(
    nodes: &[N],
    pvcs: &HashMap<String, String>,
    filter: &ClaimFilter,
) -> Vec<ClaimRow> {
    let mut rows: Vec<ClaimRow> = nodes
        .iter()
        .map(Borrow::borrow)
        .filter(|ledger| filter.node.is_none_or(|n| n == ledger.node))
        .flat_map(|ledger| ledger.claims.iter().map(|c| row(&ledger.node, c, pvcs)))
        .filter(|row| {
            filter.namespace.is_none_or(|ns| {
                row.pvc
                    .as_deref()
                    .and_then(|pvc| pvc.split_once('/'))
                    .is_some_and(|(in_ns, _)| in_ns == ns)
            })
        })
        .collect();
    rows.sort_by(|a, b| (&a.node, &a.volume, a.part).cmp(&(&b.node, &b.volume, b.part)));
    rows
}

fn row(node: &str, claim: &Claim, pvcs: &HashMap<String, String>) -> ClaimRow {
    let pvc = pvcs.get(&claim.volume_id).cloned();
    let state = match (claim.releasing, &pvc) {
        (true, _) => "releasing",
        (false, Some(_)) => "bound",
        (false, None) => "unbound",
    };
    ClaimRow {
        node: node.to_string(),
        volume: claim.volume_id.clone(),
        pvc,
        pool: claim.pool.map(|p| p.as_str()),
        drive: claim.physical_uuid.to_string(),
        part: claim.part,
        offset_gib: claim.offset_gib,
        size_gib: claim.size_gib,
        state,
    }
}

impl super::PluginAnswer for ClaimsTable {
    async fn answer(self, cluster: &Cluster) -> Result<Answer, Failure> {
        let survey = cluster.survey().await?;
        if let Some(node) = &self.node {
            let known = survey.nodes.iter().any(|n| &n.node == node)
                || survey.quarantined.iter().any(|q| &q.node == node);
            if !known {
                return Err(Failure::usage(format!(
                    "node {node:?} has no vdrive ledger (see `kubectl vdrive drives` for the nodes that do)"
                )));
            }
        }
        let pvcs = cluster.claims_by_volume().await?;
        let filter = ClaimFilter {
            node: self.node.as_deref(),
            namespace: cluster.namespace.as_deref(),
        };
        let rows = claim_rows(&survey.nodes, &pvcs, &filter);
        super::ledger_table(&rows, &survey.quarantined, "claims")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::kubectl::drives::tests::{claim, ledgers};

    fn pvcs() -> HashMap<String, String> {
        HashMap::from([("v2".to_string(), "apps/data".to_string())])
    }

    #[test]
    fn rows_name_the_pvc_or_say_unbound() {
        let mut nodes = ledgers();
        let mut gone = claim("v0", 1, 900, 50, 0);
        gone.releasing = true;
        nodes[0].claims.push(gone);
        let rows = claim_rows(&nodes, &pvcs(), &ClaimFilter::default());
        let summary: Vec<_> = rows
            .iter()
            .map(|r| (r.volume.as_str(), r.pvc.as_deref(), r.offset_gib, r.state))
            .collect();
        assert_eq!(
            summary,
            [
                ("v0", None, 900, "releasing"),
                ("v1", None, 0, "unbound"),
                ("v2", Some("apps/data"), 400, "bound"),
            ]
        );
        let text = table::render(&rows);
        assert!(
            text.starts_with("VOLUME   PVC         POOL   DRIVE"),
            "{text}"
        );
        assert!(text.contains("v1       -           k8s"), "{text}");
    }

    #[test]
    fn node_and_namespace_narrow_the_rows() {
        let nodes = ledgers();
        let only = |node, namespace| {
            let filter = ClaimFilter { node, namespace };
            claim_rows(&nodes, &pvcs(), &filter)
                .into_iter()
                .map(|r| r.volume)
                .collect::<Vec<_>>()
        };
        assert_eq!(only(Some("a"), None), Vec::<String>::new());
        assert_eq!(only(Some("b"), None), ["v1", "v2"]);
        assert_eq!(only(None, Some("apps")), ["v2"]);
        assert_eq!(only(None, Some("default")), Vec::<String>::new());
    }
}
