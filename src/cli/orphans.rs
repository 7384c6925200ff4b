//! `vdrive orphans`: compares the ledger with the PersistentVolumes, reports
//! orphaned claims and volumes whose claims are missing, and releases the
//! orphaned claims with `--release`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::outcome::{Answer, Failure};
use super::output::OutputArgs;
use crate::cluster::{self, KubeStore, Scope, orphans};
use crate::ledger::Ledger;
use crate::pools::PoolSettings;

#[derive(Debug, Clone, Args)]
pub struct OrphansArgs {
    /// Release the orphaned claims (their nodes erase the extents first).
    #[arg(long)]
    pub release: bool,
    #[command(flatten)]
    pub output: OutputArgs,
    /// A kubeconfig (default: KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
}

/// The report: yes when all is well (nothing orphaned or lost, or every orphan
/// released), a no otherwise, so scripts can alert on the exit code.
pub async fn run(args: OrphansArgs) -> Result<Answer, Failure> {
    let client = cluster::client(args.kubeconfig.as_deref()).await?;
    let store = KubeStore::start(client.clone(), Scope::AllNodes);
    store
        .wait_ready(Duration::from_secs(30))
        .await
        .map_err(|e| e.to_string())?;
    let ledger = Ledger::new(store, PoolSettings::default());
    let report = orphans::check(&ledger, &client).await?;
    let released = if args.release {
        orphans::release(&ledger, &report.orphaned_claims).await?
    } else {
        Vec::new()
    };
    let data = serde_json::json!({
        "orphaned_claims": report.orphaned_claims,
        "lost_volumes": report.lost_volumes,
        "released": released,
    });
    let clean = report.lost_volumes.is_empty()
        && (report.orphaned_claims.is_empty() || released.len() == report.orphaned_claims.len());
    Ok(Answer::verdict(clean, render(&report, &released, args.release)).with_data(data))
}

fn render(report: &orphans::OrphanReport, released: &[String], releasing: bool) -> String {
    let mut out = Vec::new();
    if report.orphaned_claims.is_empty() {
        out.push("orphaned claims: none".to_string());
    } else {
        out.push(format!("orphaned claims: {}", report.orphaned_claims.len()));
        for o in &report.orphaned_claims {
            let state = if released.contains(&o.volume_id) {
                "  [released]"
            } else {
                ""
            };
            out.push(format!(
                "  {} on {}: {} GiB, owner {}: {}{state}",
                o.volume_id, o.node, o.capacity_gib, o.owner, o.reason
            ));
        }
        if !releasing {
            out.push("  release them with: vdrive orphans --release".to_string());
        }
    }
    if report.lost_volumes.is_empty() {
        out.push("volumes with missing claims: none".to_string());
    } else {
        out.push(format!(
            "volumes with missing claims: {}",
            report.lost_volumes.len()
        ));
        for l in &report.lost_volumes {
            out.push(format!(
                "  PersistentVolume {} (volume {}, bound to {}): no claims in the ledger",
                l.persistent_volume,
                l.volume_id,
                l.bound_to.as_deref().unwrap_or("nothing")
            ));
        }
    }
    out.join("\n")
}
