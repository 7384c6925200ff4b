//! kubectl's connection flags (`--kubeconfig`, `--context`, `-n`), and what the
//! plugin reads from the cluster with them: the ledger on the Nodes and the
//! PersistentVolumes that name its volumes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use k8s_openapi::api::core::v1::PersistentVolume;
use kube::Client;
use kube::api::{Api, ListParams};

use crate::cli::outcome::Failure;
use crate::cluster::{self, KubeStore, Scope};
use crate::csi::identity::DRIVER_NAME;
use crate::ledger::{Ledger, Survey};
use crate::pools::PoolSettings;

/// The flags kubectl passes on to a plugin, with kubectl's names.
#[derive(Debug, Clone, Default, Args)]
pub struct KubeArgs {
    /// Path to the kubeconfig file (default: KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// A namespace: `claims` lists only the PersistentVolumeClaims in it (drives
    /// and pools belong to none); `doctor` checks the vdrive installed in it
    /// (default: vdrive).
    #[arg(short = 'n', long, global = true, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
}

/// A connected cluster and the namespace asked for.
pub struct Cluster {
    pub client: Client,
    pub namespace: Option<String>,
}

impl KubeArgs {
    pub async fn connect(&self) -> Result<Cluster, Failure> {
        let client =
            cluster::client_in_context(self.kubeconfig.as_deref(), self.context.as_deref()).await?;
        Ok(Cluster {
            client,
            namespace: self.namespace.clone(),
        })
    }
}

impl Cluster {
    /// Every node's ledger as the Nodes' annotations hold it now.
    pub async fn survey(&self) -> Result<Survey, Failure> {
        Ok(self
            .ledger(PoolSettings::default())
            .await?
            .survey()
            .await
            .map_err(|e| e.to_string())?)
    }

    /// The ledger over a store that has read every Node once.
    pub async fn ledger(&self, settings: PoolSettings) -> Result<Ledger<Arc<KubeStore>>, Failure> {
        let store = KubeStore::start(self.client.clone(), Scope::AllNodes);
        store
            .wait_ready(Duration::from_secs(30))
            .await
            .map_err(|e| format!("cannot read the Nodes: {e}"))?;
        Ok(Ledger::new(store, settings))
    }

    /// `namespace/name` of the PersistentVolumeClaim each vdrive volume is
    /// bound to, by volume id (the PersistentVolume's volumeHandle).
    pub async fn claims_by_volume(&self) -> Result<HashMap<String, String>, Failure> {
        let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
        let list = pvs
            .list(&ListParams::default())
            .await
            .map_err(|e| format!("could not list PersistentVolumes: {e}"))?;
        Ok(list
            .items
            .iter()
            .filter_map(|pv| {
                let spec = pv.spec.as_ref()?;
                let csi = spec.csi.as_ref().filter(|c| c.driver == DRIVER_NAME)?;
                let claim = spec.claim_ref.as_ref()?;
                let bound = format!(
                    "{}/{}",
                    claim.namespace.as_deref().unwrap_or_default(),
                    claim.name.as_deref().unwrap_or_default()
                );
                Some((csi.volume_handle.clone(), bound))
            })
            .collect())
    }
}
