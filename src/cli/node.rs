//! `vdrive node`: the node plugin of a cluster (a privileged DaemonSet pod).
//! It serves CSI Node on the kubelet's plugin socket, publishes its signed
//! drives on its Node (annotation and extended resource), and erases the
//! extents of deleted volumes before their claims are released.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::all_in_one::{
    SUGGESTED_SIMULATION, choose_backend, initial_drives, node_name, rescan_drives, shutdown_signal,
};
use crate::cluster::events::Notifier;
use crate::cluster::{self, KubeStore, Scope, inventory, reclaim, sign_label};
use crate::csi::identity::{IdentityService, Readiness};
use crate::csi::input;
use crate::csi::node::NodeService;
use crate::csi::server::{self, Services};
use crate::drive::Backend;
use crate::ledger::Ledger;
use crate::metrics::{self, Gauges};
use crate::node::drives::SignedDrive;
use crate::node::inflight::InFlight;
use crate::node::sweep_report::sign_unused;
use crate::node::{DriveRegistry, ExtentEraser, NodeVolumes, drives, ownership};
use crate::pools::PoolSettings;

/// How long to wait for the API server at start.
const API_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// Where to serve CSI (the kubelet's plugin directory).
    #[arg(long, default_value = "unix:///csi/csi.sock")]
    pub endpoint: String,
    /// This node's name as Kubernetes knows it (in a pod: the NODE_NAME env from spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    pub node_id: Option<String>,
    /// Staging records (and simulated drives) live here; keep it on the host.
    #[arg(long, default_value = "/var/lib/vdrive")]
    pub state_dir: PathBuf,
    /// Most volumes this node takes (NodeGetInfo).
    #[arg(long, default_value_t = 256)]
    pub max_volumes: i64,
    /// Sparse files attached as loop devices and signed, e.g. tlc:3840x4,qlc:7680x2,
    /// for test clusters without spare NVMe drives.
    #[arg(long, value_name = "SPEC")]
    pub simulate_drives: Option<String>,
    /// A kubeconfig (default: in-cluster, or KUBECONFIG).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Seconds between looks for drives signed, attached or gone.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub rescan_interval: u64,
    /// How volumes' devices are built: dm (device-mapper; any layout), loop (one
    /// virtual drive per volume), or auto (dm where /dev/mapper/control works).
    #[arg(long, default_value = "auto", value_name = "auto|dm|loop")]
    pub device_backend: String,
    /// UNSAFE, for test beds without device-mapper only: serve raw block volumes
    /// as loop devices, which their tenant can remap onto other tenants' data.
    #[arg(long)]
    pub unsafe_loop_block_volumes: bool,
    /// kubelet's root directory (its --root-dir): every staging and target path
    /// must lie inside it; `/` allows any absolute path.
    #[arg(long, default_value = "/var/lib/kubelet", value_name = "DIR")]
    pub kubelet_dir: PathBuf,
    /// Serve Prometheus metrics on this address only, IP:PORT (e.g. the pod's
    /// IP, 10.1.2.3:9810; an IPv6 address with or without brackets; port 0:
    /// any free port, printed at start); off by default.
    #[arg(long, value_name = "IP:PORT", value_parser = crate::metrics::parse_address)]
    pub metrics_address: Option<std::net::SocketAddr>,
}

pub async fn run(args: NodeArgs) -> Result<(), String> {
    let node_id = node_name(args.node_id.clone())?;
    let kubelet_dir = input::kubelet_dir(&args.kubelet_dir)?;
    let socket = server::socket_path(&args.endpoint).map_err(|e| e.to_string())?;
    let device_backend = choose_backend(&args.device_backend)?;
    if args.unsafe_loop_block_volumes && device_backend.kind() == Backend::Loop {
        eprintln!(
            "vdrive: --unsafe-loop-block-volumes: raw block volumes are loop devices their tenants can remap onto other tenants' data; for test beds only"
        );
    }
    let client = cluster::client(args.kubeconfig.as_deref()).await?;
    let store = KubeStore::start(client.clone(), Scope::OneNode(node_id.clone()));
    store
        .wait_ready(API_WAIT)
        .await
        .map_err(|e| e.to_string())?;
    // The node only checks claims against its drives; pool shares are the controller's.
    let ledger = Arc::new(Ledger::new(store.clone(), PoolSettings::default()));
    let notifier = Notifier::new(client.clone(), &node_id);
    let gauges = metrics::global().gauges().clone();
    let metrics = metrics::start("node", args.metrics_address, None).await;

    let simulated_dir = args.state_dir.join("simulated-drives");
    let found = initial_drives(args.simulate_drives.clone(), simulated_dir.clone()).await?;
    if found.is_empty() {
        eprintln!(
            "vdrive node: no signed drives on {node_id}; volumes cannot be placed here until drives are signed \
             (label the Node: `kubectl label node {node_id} vdrive.io/sign-drives=tlc`, or `vdrive sign --device PATH --type tlc`; for a test cluster: --simulate-drives {SUGGESTED_SIMULATION})"
        );
    }
    let registry = DriveRegistry::at_start(found.clone(), args.simulate_drives.is_some());
    let registry = Arc::new(match &args.simulate_drives {
        Some(_) => registry.simulating_in(&simulated_dir),
        None => registry,
    });
    let backend = device_backend.kind();
    let sync = ownership::report_drives(&ledger, &registry, &node_id, found.clone(), backend)
        .await
        .map_err(|e| format!("could not record this node's drives: {e}"))?;
    inventory::publish(&ledger, &notifier, &gauges, &node_id, &sync).await?;

    let volumes = Arc::new(
        NodeVolumes::new(
            node_id.clone(),
            ledger.clone(),
            registry.clone(),
            &args.state_dir.join("node"),
            device_backend.clone(),
        )
        .allow_unsafe_loop_block_volumes(args.unsafe_loop_block_volumes),
    );
    // The reclaimer takes the CSI calls' in-flight keys: a volume is never
    // staged and erased at once.
    let in_flight = InFlight::default();
    let node = NodeService::new(volumes.clone(), args.max_volumes, in_flight.clone())
        .with_kubelet_dir(Some(kubelet_dir));
    let eraser: Arc<dyn ExtentEraser> = volumes.clone();
    let reclaimer = tokio::spawn(reclaim::erase_released(
        ledger.clone(),
        eraser,
        in_flight,
        gauges.clone(),
        node_id.clone(),
    ));
    let reporter = Arc::new(DriveReporter {
        ledger: ledger.clone(),
        notifier: notifier.clone(),
        gauges: gauges.clone(),
        node_id: node_id.clone(),
        registry: registry.clone(),
        volumes: volumes.clone(),
        backend,
    });
    let rescans = tokio::spawn({
        let every = Duration::from_secs(args.rescan_interval.max(1));
        let reporter = reporter.clone();
        rescan_drives(every, registry.clone(), move |found| {
            let reporter = reporter.clone();
            async move { reporter.record(found).await }
        })
    });
    // Drives signed because the Node is labelled vdrive.io/sign-drives are
    // recorded at once, not at the next rescan.
    let signing = tokio::spawn(sign_label::watch(
        client.clone(),
        node_id.clone(),
        notifier.clone(),
        {
            let only_images_in = args
                .simulate_drives
                .is_some()
                .then(|| simulated_dir.clone());
            move |drive_type| {
                let (reporter, only_images_in) = (reporter.clone(), only_images_in.clone());
                async move {
                    let report = tokio::task::spawn_blocking(move || {
                        sign_unused(drive_type, only_images_in.as_deref())
                    })
                    .await
                    .map_err(|e| format!("the sweep failed: {e}"))?
                    .map_err(|e| format!("cannot tell which drives are in use: {e}"))?;
                    let registry = reporter.registry.clone();
                    if let Ok(found) = tokio::task::spawn_blocking(move || registry.rescan()).await
                    {
                        reporter.record(found).await;
                    }
                    Ok(report)
                }
            }
        },
    ));
    let readiness = Readiness::default();
    readiness.set_ready();
    let capacity: u64 = found.iter().map(|d| d.signature.capacity_gib()).sum();
    println!(
        "vdrive node: serving csi.vdrive.io on unix://{} (node {node_id}, {} signed drives, {capacity} GiB)",
        socket.display(),
        found.len()
    );
    let services = Services {
        identity: IdentityService::new(readiness, false),
        controller: None,
        node: Some(Arc::new(node)),
    };
    let served = server::serve(&socket, services, shutdown_signal()).await;
    reclaimer.abort();
    rescans.abort();
    signing.abort();
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    served.map_err(|e| e.to_string())?;
    if args.simulate_drives.is_some() && !volumes.has_staged_volumes() {
        if let Err(e) = drives::detach_simulated(&simulated_dir) {
            eprintln!("vdrive node: could not detach the simulated drives: {e}");
        }
    }
    println!("vdrive node: stopped");
    Ok(())
}

/// Records what a drive scan found: the drives in the ledger and on the Node,
/// then stray loop devices looked for. Each rescan, and each signing by label,
/// goes through here.
struct DriveReporter {
    ledger: Arc<Ledger<Arc<KubeStore>>>,
    notifier: Notifier,
    gauges: Arc<Gauges>,
    node_id: String,
    registry: Arc<DriveRegistry>,
    volumes: Arc<NodeVolumes<Arc<KubeStore>>>,
    backend: Backend,
}

impl DriveReporter {
    async fn record(&self, found: Vec<SignedDrive>) {
        let reported = ownership::report_drives(
            &self.ledger,
            &self.registry,
            &self.node_id,
            found,
            self.backend,
        )
        .await
        .map_err(|e| format!("could not record this node's drives: {e}"));
        let published = match reported {
            Ok(sync) => {
                inventory::publish(
                    &self.ledger,
                    &self.notifier,
                    &self.gauges,
                    &self.node_id,
                    &sync,
                )
                .await
            }
            Err(err) => Err(err),
        };
        if let Err(err) = published {
            tracing::warn!(%err, "could not publish this node's drives");
        }
        match self.volumes.sweep_stray_devices().await {
            Ok(strays) => {
                inventory::report_strays(
                    &self.ledger,
                    &self.notifier,
                    &self.gauges,
                    &self.node_id,
                    &strays,
                )
                .await
            }
            Err(err) => tracing::warn!(%err, "could not look for stray loop devices"),
        }
    }
}
