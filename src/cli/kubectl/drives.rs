//! `kubectl vdrive drives`: every signed drive of every node, with what is
//! claimed and free on it.

use std::borrow::Borrow;

use clap::Args;
use serde::Serialize;

use super::connect::Cluster;
use crate::cli::outcome::{Answer, Failure};
use crate::cli::table::{self, Row};
use crate::ledger::{NodeLedger, PhysicalDrive};

#[derive(Debug, Clone, Args)]
pub struct DrivesTable {}

/// One drive of one node's ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DriveRow {
    pub node: String,
    pub drive: String,
    pub serial: String,
    #[serde(rename = "type")]
    pub drive_type: String,
    pub size_gib: u64,
    pub claimed_gib: u64,
    pub free_gib: u64,
    pub largest_free_gib: u64,
    /// ok, missing (the node no longer sees it) or quarantined (its header
    /// disagrees with the ledger).
    pub state: &'static str,
}

impl Row for DriveRow {
    const HEADERS: &'static [&'static str] = &[
        "NODE",
        "DRIVE",
        "TYPE",
        "SIZE",
        "CLAIMED",
        "FREE",
        "LARGEST-FREE",
        "STATE",
    ];

    fn cells(&self) -> Vec<String> {
        vec![
            self.node.clone(),
            self.drive.clone(),
            self.drive_type.clone(),
            table::gib(self.size_gib),
            table::gib(self.claimed_gib),
            table::gib(self.free_gib),
            table::gib(self.largest_free_gib),
            self.state.to_string(),
        ]
    }
}

fn state(drive: &PhysicalDrive) -> &'static str {
    if drive.missing {
        "missing"
    } else if drive.quarantined.is_some() {
        "quarantined"
    } else {
        "ok"
    }
}

/// The rows of every node's drives, nodes by name, drives in ledger order.
pub fn drive_rows<N: Borrow<NodeLedger>>(nodes: &[N]) -> Vec<DriveRow> {
    let mut nodes: Vec<&NodeLedger> = nodes.iter().map(Borrow::borrow).collect();
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    nodes
        .into_iter()
        .flat_map(|ledger| {
            ledger.drives.iter().map(move |drive| {
                let claimed: u64 = ledger
                    .claims
                    .iter()
                    .filter(|c| c.physical_uuid == drive.uuid)
                    .map(|c| c.size_gib)
                    .sum();
                let largest_free = ledger
                    .free_extents(drive)
                    .iter()
                    .map(|e| e.size_gib)
                    .max()
                    .unwrap_or(0);
                DriveRow {
                    node: ledger.node.clone(),
                    drive: drive.uuid.to_string(),
                    serial: drive.serial.clone(),
                    drive_type: drive.drive_type.as_str().to_string(),
                    size_gib: drive.capacity_gib,
                    claimed_gib: claimed,
                    free_gib: drive.capacity_gib.saturating_sub(claimed),
                    largest_free_gib: largest_free,
                    state: state(drive),
                }
            })
        })
        .collect()
}

impl super::PluginAnswer for DrivesTable {
    async fn answer(self, cluster: &Cluster) -> Result<Answer, Failure> {
        let survey = cluster.survey().await?;
        super::ledger_table(&drive_rows(&survey.nodes), &survey.quarantined, "drives")
    }
}

#[cfg(test)]
pub(super) mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::drive::DriveType;
    use crate::ledger::{Claim, Pool};

    pub fn drive(n: u128, drive_type: DriveType, gib: u64) -> PhysicalDrive {
        PhysicalDrive {
            uuid: Uuid::from_u128(n),
            serial: format!("sn-{n}"),
            drive_type,
            capacity_gib: gib,
            backend: Default::default(),
            missing: false,
            quarantined: None,
        }
    }

    pub fn claim(volume: &str, drive: u128, offset: u64, size: u64, part: u32) -> Claim {
        Claim {
            virtual_uuid: Uuid::from_u128(1000 + u128::from(offset) + u128::from(part)),
            volume_id: volume.to_string(),
            volume_name: format!("pvc-{volume}"),
            owner: format!("default:{volume}"),
            pool: Some(Pool::K8s),
            physical_uuid: Uuid::from_u128(drive),
            offset_gib: offset,
            size_gib: size,
            part,
            fixed: false,
            releasing: false,
            spec: None,
        }
    }

    /// Node b: a 1500 GiB TLC drive with claims at 0..100 and 400..700, a
    /// missing QLC drive; node a: one quarantined drive.
    pub fn ledgers() -> Vec<NodeLedger> {
        let mut missing = drive(2, DriveType::Qlc, 3000);
        missing.missing = true;
        let mut quarantined = drive(3, DriveType::Tlc, 800);
        quarantined.quarantined = Some("another owner".into());
        vec![
            NodeLedger {
                node: "b".into(),
                pool: Some(Pool::K8s),
                drives: vec![drive(1, DriveType::Tlc, 1500), missing],
                claims: vec![claim("v1", 1, 0, 100, 0), claim("v2", 1, 400, 300, 0)],
            },
            NodeLedger {
                node: "a".into(),
                pool: None,
                drives: vec![quarantined],
                claims: vec![],
            },
        ]
    }

    #[test]
    fn rows_count_claimed_free_and_the_largest_gap() {
        let rows = drive_rows(&ledgers());
        let summary: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    r.node.as_str(),
                    r.drive_type.as_str(),
                    r.size_gib,
                    r.claimed_gib,
                    r.free_gib,
                    r.largest_free_gib,
                    r.state,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("a", "tlc", 800, 0, 800, 800, "quarantined"),
                ("b", "tlc", 1500, 400, 1100, 800, "ok"),
                ("b", "qlc", 3000, 0, 3000, 3000, "missing"),
            ]
        );
    }

    #[test]
    fn the_table_shows_sizes_in_gi() {
        let text = table::render(&drive_rows(&ledgers()));
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NODE   DRIVE"), "{text}");
        assert!(
            lines[2].ends_with("tlc    1500Gi   400Gi     1100Gi   800Gi          ok"),
            "{text}"
        );
    }
}
