//! `vdrive all-in-one`: controller, node and the embedded ledger in one process
//! on one socket — vdrive on a single machine.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::settings::SettingsArgs;
use crate::api::{self, ApiState};
use crate::cluster::inventory;
use crate::csi::controller::ControllerService;
use crate::csi::identity::{IdentityService, Readiness};
use crate::csi::input;
use crate::csi::node::NodeService;
use crate::csi::server::{self, Services};
use crate::drive::Backend;
use crate::ledger::{DriveSync, EmbeddedStore, Ledger};
use crate::metrics;
use crate::node::drives::{self, SignedDrive};
use crate::node::inflight::InFlight;
use crate::node::{DriveRegistry, ExtentEraser, NodeVolumes, backend, ownership};
use crate::pools::Pool;
use crate::vms::Catalog;
use crate::vms::local::{Interrupted, LocalVms};

/// The drives `--simulate-drives` suggests when a machine has none signed.
pub const SUGGESTED_SIMULATION: &str = "tlc:3840x4,qlc:7680x2";

#[derive(Debug, Clone, Args)]
pub struct AllInOneArgs {
    /// Where to serve CSI.
    #[arg(long, default_value = "unix:///run/vdrive/csi.sock")]
    pub endpoint: String,
    /// The ledger file, staging records and simulated drives live here.
    #[arg(long, default_value = "/var/lib/vdrive")]
    pub state_dir: PathBuf,
    /// Sparse files attached as loop devices and signed, e.g. tlc:3840x4,qlc:7680x2
    /// (GiB × count), for trying vdrive on a machine without spare NVMe drives.
    #[arg(long, value_name = "SPEC")]
    pub simulate_drives: Option<String>,
    /// This node's name (default: the hostname).
    #[arg(long)]
    pub node_id: Option<String>,
    /// The pool this server contributes to: k8s, vm, or none.
    #[arg(long, default_value = "k8s")]
    pub pool: String,
    /// Most volumes this node takes (NodeGetInfo).
    #[arg(long, default_value_t = 256)]
    pub max_volumes: i64,
    /// How volumes' devices are built: dm (device-mapper; any layout), loop (one
    /// virtual drive per volume), or auto (dm where /dev/mapper/control works).
    #[arg(long, default_value = "auto", value_name = "auto|dm|loop")]
    pub device_backend: String,
    /// UNSAFE, for test beds without device-mapper only: serve raw block volumes
    /// as loop devices, which their tenant can remap onto other tenants' data.
    #[arg(long)]
    pub unsafe_loop_block_volumes: bool,
    /// Keep every staging and target path inside this directory (kubelet's
    /// root directory, when kubelet is the caller); unset: any absolute path.
    #[arg(long, value_name = "DIR")]
    pub kubelet_dir: Option<PathBuf>,
    /// Seconds between looks for drives signed, attached or gone (and for loop
    /// devices no staged volume accounts for).
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub rescan_interval: u64,
    /// Serve the pool API (`/api/v1/pools/*`, `/api/v1/vms`) on this address,
    /// IP:PORT (port 0: any free port, printed at start); loopback unless told
    /// otherwise; `off` serves none.
    #[arg(long, default_value = crate::api::DEFAULT_LOCAL_ADDRESS, value_name = "IP:PORT|off")]
    pub api_address: String,
    /// The VM image catalog, a JSON file (`{"images": {NAME: {"source": PATH|URL,
    /// "format": "raw"|"qcow2"}}, "server_types": {...}}`); default: built-in
    /// cloud images and server types.
    #[arg(long, value_name = "FILE")]
    pub vm_images: Option<PathBuf>,
    /// Serve Prometheus metrics on this address, IP:PORT (port 0: any free
    /// port, printed at start); off by default.
    #[arg(long, value_name = "IP:PORT", value_parser = crate::metrics::parse_address)]
    pub metrics_address: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub settings: SettingsArgs,
}

/// The device backend a `--device-backend` value asks for.
pub fn choose_backend(value: &str) -> Result<Arc<dyn backend::DeviceBackend>, String> {
    match value {
        "auto" => Ok(backend::detect()),
        other => {
            let kind = other
                .parse()
                .map_err(|e| format!("--device-backend: {e} (or auto)"))?;
            backend::of_kind(kind).map_err(|e| e.to_string())
        }
    }
}

pub fn node_name(explicit: Option<String>) -> Result<String, String> {
    match explicit {
        Some(name) if !name.is_empty() => Ok(name),
        _ => nix::unistd::gethostname()
            .map_err(|e| format!("cannot read the hostname ({e}): pass --node-id"))?
            .into_string()
            .map_err(|_| "the hostname is not UTF-8: pass --node-id".to_string()),
    }
}

pub fn parse_pool(value: &str) -> Result<Option<Pool>, String> {
    match value {
        "none" | "" => Ok(None),
        other => other
            .parse()
            .map(Some)
            .map_err(|e| format!("--pool: {e} (or none)")),
    }
}

pub async fn run(args: AllInOneArgs) -> Result<(), String> {
    let node_id = node_name(args.node_id.clone())?;
    let pool = parse_pool(&args.pool)?;
    let kubelet_dir = args
        .kubelet_dir
        .as_deref()
        .map(input::kubelet_dir)
        .transpose()?;
    let socket = server::socket_path(&args.endpoint).map_err(|e| e.to_string())?;
    let device_backend = choose_backend(&args.device_backend)?;
    if args.unsafe_loop_block_volumes && device_backend.kind() == Backend::Loop {
        eprintln!(
            "vdrive: --unsafe-loop-block-volumes: raw block volumes are loop devices their tenants can remap onto other tenants' data; for test beds only"
        );
    }
    let api_address = match args.api_address.as_str() {
        "off" => None,
        text => {
            Some(crate::metrics::parse_address(text).map_err(|e| format!("--api-address: {e}"))?)
        }
    };
    let catalog = match &args.vm_images {
        Some(path) => Catalog::load(path)?,
        None => Catalog::default(),
    };
    let store =
        EmbeddedStore::open(args.state_dir.join("ledger.redb")).map_err(|e| e.to_string())?;
    let ledger = Arc::new(Ledger::new(store.clone(), args.settings.pools()?));

    let simulated_dir = args.state_dir.join("simulated-drives");
    let found = initial_drives(args.simulate_drives.clone(), simulated_dir.clone()).await?;
    if found.is_empty() {
        eprintln!(
            "vdrive: no signed drives on this machine, so no volume can be created yet.\n\
             vdrive: sign spare drives with `vdrive sign --device /dev/nvmeXn1 --type tlc`, or try vdrive on\n\
             vdrive: simulated drives: vdrive all-in-one --simulate-drives {SUGGESTED_SIMULATION}"
        );
    }
    let registry = Arc::new(DriveRegistry::at_start(
        found.clone(),
        args.simulate_drives.is_some(),
    ));
    // Every drive carries the node's backend: the ledger derives from it how many
    // virtual drives one volume may have here (loop: one; dm: any number).
    let backend = device_backend.kind();
    let sync = ownership::report_drives(&ledger, &registry, &node_id, found.clone(), backend)
        .await
        .map_err(|e| e.to_string())?;
    log_drive_sync(&sync);
    ledger
        .set_pool(&node_id, pool)
        .await
        .map_err(|e| e.to_string())?;

    let in_flight = InFlight::default();
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
    // Newly signed drives become usable; vanished ones holding volumes are kept
    // and reported; loop devices no staged volume accounts for are detached.
    let rescans = tokio::spawn({
        let (ledger, node_id, volumes) = (ledger.clone(), node_id.clone(), volumes.clone());
        let registry = registry.clone();
        let every = Duration::from_secs(args.rescan_interval.max(1));
        rescan_drives(every, registry.clone(), move |found| {
            let (ledger, node_id, registry, volumes) = (
                ledger.clone(),
                node_id.clone(),
                registry.clone(),
                volumes.clone(),
            );
            async move {
                match ownership::report_drives(&ledger, &registry, &node_id, found, backend).await {
                    Ok(sync) => log_drive_sync(&sync),
                    Err(err) => {
                        tracing::warn!(%err, "could not record this node's drives in the ledger")
                    }
                }
                match volumes.sweep_stray_devices().await {
                    Ok(strays) => {
                        for stray in strays {
                            tracing::warn!("{}", inventory::stray_message(&stray));
                        }
                    }
                    Err(err) => tracing::warn!(%err, "could not look for stray loop devices"),
                }
            }
        })
    });
    let node = NodeService::new(volumes.clone(), args.max_volumes, in_flight.clone())
        .with_kubelet_dir(kubelet_dir);
    let eraser: Arc<dyn ExtentEraser> = volumes.clone();
    let controller = ControllerService::new(
        ledger.clone(),
        args.settings.defaults(),
        Some(eraser),
        in_flight,
    );
    let readiness = Readiness::default();
    readiness.set_ready();
    let capacity: u64 = found.iter().map(|d| d.signature.capacity_gib()).sum();
    println!(
        "vdrive all-in-one: serving csi.vdrive.io on unix://{} (node {node_id}, pool {}, {} signed drives, {capacity} GiB, {} backend)",
        socket.display(),
        pool.map_or("none".to_string(), |p| p.to_string()),
        found.len(),
        device_backend.kind()
    );

    let refresh =
        metrics::ledger_gauges::refresh(ledger.clone(), metrics::global().gauges().clone());
    let metrics = metrics::start("all-in-one", args.metrics_address, Some(refresh)).await;
    let api = match api_address {
        Some(address) => {
            let vms = LocalVms::new(
                store,
                catalog,
                format!("unix://{}", socket.display()),
                args.state_dir.join("vms"),
                volumes.clone(),
                pool,
            );
            let interrupted = vms
                .interrupted()
                .await
                .map_err(|e| format!("cannot read the VMs: {e}"))?;
            let state = ApiState {
                pools: ledger.clone(),
                vms: vms.clone(),
                auth: None,
            };
            let (served, bound) = api::spawn(address, state, std::future::pending()).await?;
            println!("vdrive all-in-one: pool API on http://{bound}/api/v1/");
            tokio::spawn(resume_vms(vms, socket.clone(), interrupted));
            Some(served)
        }
        None => None,
    };

    let services = Services {
        identity: IdentityService::new(readiness, true),
        controller: Some(controller),
        node: Some(Arc::new(node)),
    };
    let served = server::serve(&socket, services, shutdown_signal()).await;
    rescans.abort();
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    if let Some(api) = api {
        api.abort();
    }
    served.map_err(|e| e.to_string())?;

    if args.simulate_drives.is_some() {
        if volumes.has_staged_volumes() {
            println!(
                "vdrive all-in-one: simulated drives stay attached: volumes are still staged on them"
            );
        } else if let Err(e) = drives::detach_simulated(&simulated_dir) {
            eprintln!("vdrive: could not detach the simulated drives: {e}");
        }
    }
    println!("vdrive all-in-one: stopped");
    Ok(())
}

/// The node's signed drives at start: the simulated ones `simulate` asks for
/// (made under `dir`, or found there again), else the machine's. Scanning reads
/// every disk: it runs off the async executor's threads.
pub(super) async fn initial_drives(
    simulate: Option<String>,
    dir: PathBuf,
) -> Result<Vec<SignedDrive>, String> {
    tokio::task::spawn_blocking(move || match &simulate {
        Some(spec) => drives::simulate(&dir, spec).map_err(|e| e.to_string()),
        None => Ok(drives::discover(&drives::candidates())),
    })
    .await
    .map_err(|e| format!("the drive scan failed: {e}"))?
}

/// Rescans the node's drives every `every` and hands what it finds to `record`,
/// which reports it (see [`ownership::report_drives`]).
pub(super) async fn rescan_drives<F, Fut>(
    every: Duration,
    registry: Arc<DriveRegistry>,
    mut record: F,
) where
    F: FnMut(Vec<SignedDrive>) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut ticks = tokio::time::interval(every);
    ticks.tick().await; // the first tick is immediate; startup already scanned
    loop {
        ticks.tick().await;
        let scan = registry.clone();
        let Ok(found) = tokio::task::spawn_blocking(move || scan.rescan()).await else {
            continue;
        };
        record(found).await;
    }
}

/// Provisions again the VMs a restart left Provisioning, once the CSI socket
/// they are provisioned through answers.
async fn resume_vms(vms: Arc<LocalVms>, socket: PathBuf, interrupted: Interrupted) {
    for _ in 0..100 {
        if tokio::net::UnixStream::connect(&socket).await.is_ok() {
            vms.resume(interrupted);
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tracing::warn!(socket = %socket.display(), "the CSI socket never answered: VMs left Provisioning stay so until the next start");
}

/// Logs the drives missing with claims a drive report found (quarantined
/// drives are logged by the report itself).
fn log_drive_sync(sync: &DriveSync) {
    for uuid in &sync.missing_with_claims {
        tracing::warn!(drive = %uuid, "a drive that holds volumes is missing; its claims are kept");
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutting down");
}
