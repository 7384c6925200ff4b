//! vdrive in a Kubernetes cluster: the ledger on Node objects, the node's drive
//! inventory and extended resource, Events, and the orphan check. The core
//! modules know nothing of Kubernetes; this module translates.

pub mod annotations;
pub mod auth;
pub mod auto_release;
pub mod events;
pub mod inventory;
pub mod leader;
pub mod orphans;
pub mod pool_watch;
pub mod quarantine;
pub mod reclaim;
pub mod sign_label;
pub mod store;

use std::path::Path;

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

pub use store::{KubeStore, Scope};

/// A client from `--kubeconfig`, else the usual places (`KUBECONFIG`,
/// `~/.kube/config`, the in-cluster service account).
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, String> {
    client_in_context(kubeconfig, None).await
}

/// [`client`], in the kubeconfig context `context` rather than its current one.
pub async fn client_in_context(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<Client, String> {
    let options = KubeConfigOptions {
        context: context.map(str::to_string),
        ..KubeConfigOptions::default()
    };
    let config = match (kubeconfig, context) {
        (Some(path), _) => {
            let file = Kubeconfig::read_from(path)
                .map_err(|e| format!("cannot read the kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| format!("the kubeconfig {} is not usable: {e}", path.display()))?
        }
        // A context is a kubeconfig's: no in-cluster fallback.
        (None, Some(name)) => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| format!("cannot use the kubeconfig context {name}: {e}"))?,
        (None, None) => kube::Config::infer().await.map_err(|e| {
            format!("no Kubernetes configuration found ({e}): run in a pod, set KUBECONFIG, or pass --kubeconfig")
        })?,
    };
    Client::try_from(config).map_err(|e| format!("cannot build a Kubernetes client: {e}"))
}
