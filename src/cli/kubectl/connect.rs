//! kubectl's connection flags (`--kubeconfig`, `--context`, `-n`), and what the
//! plugin reads from the cluster with them: the ledger on the Nodes and the
//! PersistentVolumes that name its volumes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use k8s_openapi::api::core::v1::PersistentVolume;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::cli::outcome::Failure;
use crate::cluster::{KubeStore, Scope};
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
    /// Only the claims of PersistentVolumeClaims in this namespace (drives and
    /// pools belong to no namespace).
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
        let client = Client::try_from(self.config().await?)
            .map_err(|e| format!("cannot build a Kubernetes client: {e}"))?;
        Ok(Cluster {
            client,
            namespace: self.namespace.clone(),
        })
    }

    async fn config(&self) -> Result<Config, Failure> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..KubeConfigOptions::default()
        };
        let unusable = |what: String| {
            move |e: kube::config::KubeconfigError| format!("{what} is not usable: {e}")
        };
        Ok(match (&self.kubeconfig, &self.context) {
            (Some(path), _) => {
                let file = Kubeconfig::read_from(path)
                    .map_err(|e| format!("cannot read the kubeconfig {}: {e}", path.display()))?;
                Config::from_custom_kubeconfig(file, &options)
                    .await
                    .map_err(unusable(format!("the kubeconfig {}", path.display())))?
            }
            // A context names a kubeconfig entry: no in-cluster fallback.
            (None, Some(context)) => Config::from_kubeconfig(&options)
                .await
                .map_err(unusable(format!("the context {context:?}")))?,
            (None, None) => Config::infer().await.map_err(|e| {
                format!(
                    "no Kubernetes configuration found ({e}): set KUBECONFIG or pass --kubeconfig"
                )
            })?,
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
