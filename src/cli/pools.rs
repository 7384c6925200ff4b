//! `vdrive pools status|health`: the pool API's answers, computed from the
//! cluster's Node labels and ledgers (what `/api/v1/pools/...` serves).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::settings::SettingsArgs;
use crate::cluster::{self, KubeStore, Scope};
use crate::ledger::{Ledger, NodeLedger};
use crate::pools::{Health, cluster_health, pools_status};

#[derive(Debug, Clone, Args)]
pub struct PoolsArgs {
    #[command(subcommand)]
    pub command: PoolsCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum PoolsCommand {
    /// Capacity, usage and servers of the k8s and vm pools and the system reserve.
    Status(PoolsOptions),
    /// healthy / warning / critical per pool, with what to do about it. Exits 1
    /// when the cluster is not healthy.
    Health(PoolsOptions),
}

#[derive(Debug, Clone, Args)]
pub struct PoolsOptions {
    /// A kubeconfig (default: KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The pool settings the controller runs with (the chart's values).
    #[command(flatten)]
    pub settings: SettingsArgs,
}

pub async fn run(args: PoolsArgs) -> Result<String, String> {
    let (options, health) = match args.command {
        PoolsCommand::Status(options) => (options, false),
        PoolsCommand::Health(options) => (options, true),
    };
    let settings = options.settings.pools()?;
    let client = cluster::client(options.kubeconfig.as_deref()).await?;
    let store = KubeStore::start(client, Scope::AllNodes);
    store
        .wait_ready(Duration::from_secs(30))
        .await
        .map_err(|e| e.to_string())?;
    let ledger = Ledger::new(store, settings);
    let survey = ledger.survey().await.map_err(|e| e.to_string())?;
    let nodes: Vec<NodeLedger> = survey.nodes.iter().map(|n| (**n).clone()).collect();
    let pretty = |value: serde_json::Result<String>| value.map_err(|e| e.to_string());
    if !health {
        return pretty(serde_json::to_string_pretty(&pools_status(
            &nodes, &settings,
        )));
    }
    let report = cluster_health(&nodes, &survey.quarantined, &settings);
    let out = pretty(serde_json::to_string_pretty(&report))?;
    if report.status == Health::Healthy {
        Ok(out)
    } else {
        Err(out)
    }
}
