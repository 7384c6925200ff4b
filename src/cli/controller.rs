//! `vdrive controller`: the CSI controller of a cluster (a Deployment beside
//! csi-provisioner and csi-resizer, which elect the active replica). The ledger
//! is the Nodes' annotations; pools are the Nodes' `pool` labels, watched.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::all_in_one::shutdown_signal;
use super::settings::SettingsArgs;
use crate::api::{self, ApiState};
use crate::cluster::auth::KubeAuth;
use crate::cluster::auto_release::{self, OrphanAges};
use crate::cluster::events::Notifier;
use crate::cluster::leader::Leadership;
use crate::cluster::{self, KubeStore, Scope, orphans, pool_watch, quarantine};
use crate::csi::controller::ControllerService;
use crate::csi::identity::{IdentityService, Readiness};
use crate::csi::server::{self, Services};
use crate::ledger::Ledger;
use crate::metrics::names::{ORPHANED_CLAIMS, VOLUMES_MISSING_CLAIMS};
use crate::metrics::{self, Gauges};
use crate::node::inflight::InFlight;
use crate::vms::Catalog;
use crate::vms::cluster::ClusterVms;

const API_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Args)]
pub struct ControllerArgs {
    /// Where to serve CSI (the socket shared with the sidecars).
    #[arg(long, default_value = "unix:///csi/csi.sock")]
    pub endpoint: String,
    /// A kubeconfig (default: in-cluster, or KUBECONFIG).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Seconds between orphan checks, which report (Events, logs) but never
    /// release; 0 turns them off.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub orphan_check_interval: u64,
    /// Release orphaned claims automatically once they were orphaned at two
    /// checks at least this many seconds apart (through the erase path, with an
    /// Event on the Node); 0, the default, only reports them.
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    pub orphan_auto_release_after: u64,
    /// Serve Prometheus metrics on this address only, IP:PORT (e.g. the pod's
    /// IP, 10.1.2.3:9810; an IPv6 address with or without brackets; port 0:
    /// any free port, printed at start); off by default.
    #[arg(long, value_name = "IP:PORT", value_parser = crate::metrics::parse_address)]
    pub metrics_address: Option<std::net::SocketAddr>,
    /// Serve the pool API (`/api/v1/pools/*`, `/api/v1/vms`) on this address,
    /// IP:PORT; off by default. Every request needs a Kubernetes bearer token
    /// (TokenReview) and the caller's own right (SubjectAccessReview) to what
    /// it does; the chart passes 0.0.0.0:8080 behind the `vm-pool-api` Service.
    #[arg(long, value_name = "IP:PORT", value_parser = crate::metrics::parse_address)]
    pub api_address: Option<std::net::SocketAddr>,
    /// The VM image and server-type catalog (JSON, see the README); default:
    /// the built-in images and sizes. The chart renders it from vm.images and
    /// vm.serverTypes.
    #[arg(long, value_name = "FILE")]
    pub vm_images: Option<PathBuf>,
    /// In a pod, the release namespace (POD_NAMESPACE): the cluster-wide chores
    /// (orphan checks and releases, pool change Events) then run only in the
    /// replica whose csi-provisioner holds the driver's Lease there. Unset,
    /// this process is taken to be the only controller.
    #[arg(long, env = "POD_NAMESPACE", value_name = "NAMESPACE")]
    pub leader_lease_namespace: Option<String>,
    /// This replica's name in Events (in a pod: POD_NAME from metadata.name).
    #[arg(long, env = "POD_NAME", default_value = "vdrive-controller")]
    pub instance: String,
    #[command(flatten)]
    pub settings: SettingsArgs,
}

pub async fn run(args: ControllerArgs) -> Result<(), String> {
    if args.orphan_auto_release_after > 0 && args.orphan_check_interval == 0 {
        return Err(
            "--orphan-auto-release-after needs the orphan checks: set --orphan-check-interval above 0"
                .into(),
        );
    }
    let auto_release = (args.orphan_auto_release_after > 0)
        .then(|| Duration::from_secs(args.orphan_auto_release_after));
    let socket = server::socket_path(&args.endpoint).map_err(|e| e.to_string())?;
    let pools = args.settings.pools()?;
    let catalog = match &args.vm_images {
        Some(path) => Catalog::load(path)?,
        None => Catalog::default(),
    };
    let client = cluster::client(args.kubeconfig.as_deref()).await?;
    let store = KubeStore::start(client.clone(), Scope::AllNodes);
    store
        .wait_ready(API_WAIT)
        .await
        .map_err(|e| e.to_string())?;
    let ledger = Arc::new(Ledger::new(store, pools));
    // No eraser: the drives are on the nodes, which erase released extents.
    // Each node's drives say which backend it builds volumes with, and so how
    // many virtual drives a volume may have there.
    // The pool API's VMs are PVCs; the image a VM's PVC names reaches the
    // node through CreateVolume's parameters.
    let vms = ClusterVms::new(client.clone(), catalog, Some(ledger.clone()));
    let controller = ControllerService::new(
        ledger.clone(),
        args.settings.defaults(),
        None,
        InFlight::default(),
    )
    .with_images(vms.clone());
    let leadership = match &args.leader_lease_namespace {
        Some(namespace) => Leadership::follow_lease(client.clone(), namespace, &args.instance),
        None => Leadership::Alone,
    };
    let gauges = metrics::global().gauges().clone();
    let checks = (args.orphan_check_interval > 0).then(|| {
        let notifier = Notifier::new(client.clone(), &args.instance);
        tokio::spawn(check_orphans(
            ledger.clone(),
            client.clone(),
            notifier,
            gauges.clone(),
            Duration::from_secs(args.orphan_check_interval),
            auto_release,
            leadership.clone(),
        ))
    });
    // A node whose ledger cannot be read is kept aside; make it seen.
    let quarantine = tokio::spawn(quarantine::watch(
        ledger.clone(),
        Notifier::new(client.clone(), &args.instance),
        gauges.clone(),
        leadership.clone(),
    ));
    // Servers joining and leaving pools, and pools changing health: logged and
    // raised as Events.
    let pool_changes = tokio::spawn(pool_watch::watch(
        ledger.clone(),
        client.clone(),
        Notifier::new(client.clone(), &args.instance),
        leadership,
    ));
    let refresh = metrics::ledger_gauges::refresh(ledger.clone(), gauges.clone());
    let metrics = metrics::start("controller", args.metrics_address, Some(refresh)).await;
    let api = match args.api_address {
        Some(address) => {
            let state = ApiState {
                pools: ledger.clone(),
                vms,
                auth: Some(Arc::new(KubeAuth::new(client.clone()))),
            };
            let (served, bound) = api::spawn(address, state, std::future::pending()).await?;
            println!("vdrive controller: pool API on http://{bound}/api/v1/");
            Some(served)
        }
        None => None,
    };
    let readiness = Readiness::default();
    readiness.set_ready();
    let nodes = ledger.nodes().await.map_err(|e| e.to_string())?;
    println!(
        "vdrive controller: serving csi.vdrive.io on unix://{} ({} nodes with drives or a pool)",
        socket.display(),
        nodes.len()
    );
    let services = Services {
        identity: IdentityService::new(readiness, true),
        controller: Some(controller),
        node: None,
    };
    let served = server::serve(&socket, services, shutdown_signal()).await;
    for task in checks
        .into_iter()
        .chain(metrics)
        .chain(api)
        .chain([quarantine, pool_changes])
    {
        task.abort();
    }
    served.map_err(|e| e.to_string())?;
    println!("vdrive controller: stopped");
    Ok(())
}

async fn check_orphans(
    ledger: Arc<Ledger<Arc<KubeStore>>>,
    client: kube::Client,
    notifier: Notifier,
    gauges: Arc<Gauges>,
    every: Duration,
    auto_release: Option<Duration>,
    leadership: Leadership,
) {
    let mut ages = OrphanAges::default();
    let mut ticks = tokio::time::interval(every);
    ticks.tick().await; // not at start: let in-flight provisioning settle
    loop {
        ticks.tick().await;
        if !leadership.leading().await {
            // Another replica checks (and reports the counts); ages and counts
            // seen here would be stale by the time this one leads again.
            ages = OrphanAges::default();
            gauges.set(&ORPHANED_CLAIMS, &[], 0.0);
            gauges.set(&VOLUMES_MISSING_CLAIMS, &[], 0.0);
            continue;
        }
        match orphans::check(&ledger, &client).await {
            Ok(report) => {
                let orphans = report.orphaned_claims.len() as f64;
                gauges.set(&ORPHANED_CLAIMS, &[], orphans);
                let lost = report.lost_volumes.len() as f64;
                gauges.set(&VOLUMES_MISSING_CLAIMS, &[], lost);
                orphans::announce(&report, &notifier).await;
                if let Some(min_age) = auto_release {
                    auto_release::release_due(
                        &mut ages,
                        &report.orphaned_claims,
                        min_age,
                        &ledger,
                        &notifier,
                    )
                    .await;
                }
            }
            Err(err) => tracing::warn!(%err, "orphan check failed"),
        }
    }
}
