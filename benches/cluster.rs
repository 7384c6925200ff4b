//! vdrive in a real control plane (the end-to-end fixture's etcd and
//! kube-apiserver), at the scale one controller is meant for. Run on demand,
//! one part or all:
//!
//! ```sh
//! VDRIVE_K8S_BIN=~/.cache/vdrive/tools/k8s-v1.36.3/bin cargo bench --bench cluster [-- scale|annotation|creates|pvcs]
//! ```
//!
//! - `scale`: 1,000 fake Nodes in the `k8s` pool (no kubelets), each with 8
//!   drives and 50 volumes in its annotations as CreateVolume writes them, made
//!   with concurrent POSTs. `vdrive controller` is started on 250, 500 and 1,000
//!   of them (`VDRIVE_SCALE_NODES`, a comma-separated list): how long until it
//!   serves (it lists every Node first) and its memory (VmRSS and VmHWM). On the
//!   last, GetCapacity for `k8s-pool-storage` with and without a node's
//!   topology, one call at a time and 32 at once, and ListVolumes of every
//!   volume: p50, p99 and max, and the memory after the calls.
//! - `annotation`: how many volumes of one, two and four virtual drives one
//!   Node's annotations hold before the API server's 256 KiB limit refuses the
//!   write, measured on the API server itself with every claim marked
//!   releasing (the most room the same claims can take), 8 drives and 1 KiB of
//!   other annotations. vdrive's own check (`src/cluster/store.rs`) must agree.
//! - `creates`: `vdrive controller` and three `vdrive node`s on simulated
//!   drives; 500 CreateVolume calls (`VDRIVE_CREATES`) of 1 GiB straight to the
//!   controller's socket, each pinned to one node as the provisioner pins
//!   them, spread over the three nodes and then all on one, 32 and 256 at
//!   once: volumes/s, p50 and p99; then the DeleteVolume calls, the same way.
//! - `pvcs`: the same servers with csi-provisioner at the chart's pace
//!   (`controller.provisioner` in values.yaml) and the chart's CSIDriver and
//!   StorageClasses: 200 PVCs (`VDRIVE_PVCS`) and a pod for each, created 32 at
//!   a time, until every PVC is Bound.
//!
//! Needs the Kubernetes binaries `e2e/build-tools` builds, named by
//! `VDRIVE_K8S_BIN`; everything runs on loopback in one temp dir that the
//! fixture removes.

#[path = "common/load.rs"]
mod load;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::CSIStorageCapacity;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use load::{CreateLoad, Latencies, delete_volumes, timed_calls, walk_volumes};
use serde_json::json;
use support::cluster::{
    BIN_ENV, Cluster, Daemon, SIDECAR_NAMESPACE, chart_provisioner_pace, eventually,
};
use support::e2e::{ReleaseUnder, node_ledger, runtime};
use tonic::transport::Channel;
use uuid::Uuid;
use vdrive::cluster::annotations::{
    CLAIMS_ANNOTATION, DRIVES_ANNOTATION, POOL_LABEL, encode_claims, encode_drives,
};
use vdrive::cluster::store::ANNOTATIONS_LIMIT_BYTES;
use vdrive::csi::capability;
use vdrive::csi::params::{ClassParams, Defaults, FSTYPE_KEY};
use vdrive::csi::proto::controller_client::ControllerClient;
use vdrive::csi::proto::volume_capability::access_mode::Mode;
use vdrive::csi::proto::{GetCapacityRequest, ListVolumesRequest, Topology, TopologyRequirement};
use vdrive::drive::{Backend, DriveType};
use vdrive::ledger::{Claim, NodeLedger, PhysicalDrive, Pool, VolumeSpec};

const CLASS: &str = "k8s-pool-storage";
const TOPOLOGY_KEY: &str = "topology.vdrive.io/node";
/// Drives per fake node, as on a typical storage server.
const DRIVES_PER_NODE: usize = 8;
const DRIVE_GIB: u64 = 3576;
/// Sizes of the fake nodes' volumes, in turn: 50 of them take 812 GiB, within
/// a server's default pool share.
const VOLUME_SIZES_GIB: [u64; 4] = [5, 10, 20, 30];
/// Concurrent POSTs while making the fake nodes.
const CREATE_CONCURRENCY: usize = 32;
/// Other annotations of a typical Node (kubeadm's, the CSI node's, a CNI's),
/// as `src/cluster/store.rs` assumes them.
const OTHER_ANNOTATION_BYTES: usize = 1024;

fn main() {
    // cargo passes `--bench`; anything else not starting with '-' picks parts.
    let parts: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wants = |part: &str| parts.is_empty() || parts.iter().any(|p| part.contains(p.as_str()));
    let bin_dir = k8s_bin_dir();
    let runtime = runtime();
    if wants("scale") {
        runtime.block_on(scale(&bin_dir));
    }
    if wants("annotation") {
        runtime.block_on(annotation_limit(&bin_dir));
    }
    if wants("creates") {
        runtime.block_on(creates(&bin_dir));
    }
    if wants("pvcs") {
        runtime.block_on(pvcs(&bin_dir));
    }
}

/// The Kubernetes bin dir, or a message saying how to build one.
fn k8s_bin_dir() -> PathBuf {
    match std::env::var_os(BIN_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => {
            eprintln!(
                "{BIN_ENV} is not set. These benchmarks run a real kube-apiserver and etcd: \
                 build them once with e2e/build-tools (about 23 minutes on 2 cores, then cached) \
                 and set {BIN_ENV} to the bin dir it prints, e.g.\n  \
                 {BIN_ENV}=~/.cache/vdrive/tools/k8s-v1.36.3/bin cargo bench --bench cluster"
            );
            std::process::exit(2);
        }
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a valid value")),
        Err(_) => default,
    }
}

// ---- scale: a controller watching 1,000 nodes ----------------------------------

async fn scale(bin_dir: &Path) {
    let steps: Vec<usize> = std::env::var("VDRIVE_SCALE_NODES")
        .unwrap_or_else(|_| "250,500,1000".into())
        .split(',')
        .map(|n| n.trim().parse().expect("VDRIVE_SCALE_NODES: numbers"))
        .collect();
    let volumes_per_node: usize = env_or("VDRIVE_SCALE_VOLUMES", 50);
    let calls: usize = env_or("VDRIVE_SCALE_CALLS", 2000);
    let cluster = Cluster::start(bin_dir);
    let client = cluster.client().await;
    let mut made = 0;
    let mut memory = Vec::new();
    for (index, &nodes) in steps.iter().enumerate() {
        let started = Instant::now();
        let bytes = create_fake_nodes(&client, made..nodes, volumes_per_node).await;
        if nodes > made {
            println!(
                "scale: made Nodes {made}..{nodes} ({volumes_per_node} volumes, {} KiB of annotations each) in {:.1}s",
                bytes / (nodes - made) / 1024,
                started.elapsed().as_secs_f64()
            );
        }
        made = nodes;
        let socket = format!("scale-{nodes}");
        let started = Instant::now();
        let mut controller = cluster
            .start_vdrive_controller(&socket, &["--orphan-check-interval=0"])
            .await;
        let serving = started.elapsed();
        let listed = memory_of(&controller);
        println!(
            "scale: {nodes} nodes: the controller serves after {:.2}s; VmRSS {} MiB, VmHWM {} MiB",
            serving.as_secs_f64(),
            listed.rss_kib / 1024,
            listed.hwm_kib / 1024
        );
        memory.push((nodes, listed));
        if index + 1 < steps.len() {
            controller.stop();
            continue;
        }
        let channel = vdrive::csi::server::connect(&cluster.endpoint(&socket))
            .await
            .expect("connect to the controller's socket");
        measure_calls(channel, &controller, nodes, volumes_per_node, calls).await;
        controller.stop();
    }
    if let [(first_nodes, first), .., (last_nodes, last)] = memory.as_slice() {
        let per_node =
            (last.rss_kib as f64 - first.rss_kib as f64) / (last_nodes - first_nodes) as f64;
        println!(
            "scale: VmRSS grows by {per_node:.1} KiB per node ({first_nodes} → {last_nodes} nodes)"
        );
    }
}

/// The k8s-pool-storage class's parameters, as the provisioner passes them.
fn class_parameters() -> HashMap<String, String> {
    let mut parameters: HashMap<String, String> = vdrive::csi::params::preset(CLASS)
        .expect("the k8s-pool-storage preset")
        .parameters
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    parameters.insert(FSTYPE_KEY.into(), "ext4".into());
    parameters
}

/// GetCapacity (without and with one node's topology) and ListVolumes, one
/// call at a time and 32 at once, with their latencies printed.
async fn measure_calls(
    channel: Channel,
    daemon: &Daemon,
    nodes: usize,
    volumes_per_node: usize,
    calls: usize,
) {
    let controller = ControllerClient::new(channel).max_decoding_message_size(usize::MAX);
    let parameters = class_parameters();
    let capability = capability::mount("ext4", Mode::SingleNodeWriter);
    let request = |node: Option<String>| GetCapacityRequest {
        volume_capabilities: vec![capability.clone()],
        parameters: parameters.clone(),
        accessible_topology: node.map(|node| Topology {
            segments: HashMap::from([(TOPOLOGY_KEY.to_string(), node)]),
        }),
    };
    let whole_pool = controller
        .clone()
        .get_capacity(request(None))
        .await
        .expect("GetCapacity")
        .into_inner();
    println!(
        "scale: GetCapacity for the pool: available {} GiB, largest volume {} GiB",
        whole_pool.available_capacity >> 30,
        whole_pool.maximum_volume_size.unwrap_or_default() >> 30
    );
    for concurrency in [1, 32] {
        for with_topology in [false, true] {
            let controller = &controller;
            let request = &request;
            let latencies = timed_calls(calls, concurrency, |i| async move {
                let node = with_topology.then(|| fake_node_name(i % nodes));
                controller
                    .clone()
                    .get_capacity(request(node))
                    .await
                    .expect("GetCapacity");
            })
            .await
            .latencies;
            let what = if with_topology {
                "one node"
            } else {
                "the whole pool"
            };
            println!("scale: GetCapacity, {what}, concurrency {concurrency}: {latencies}");
        }
    }
    print_memory(
        daemon,
        &format!("{nodes} nodes after the GetCapacity calls"),
    );
    let controller = &controller;
    // Paged first, as a CO walks a long list: pages of PAGE volumes until no
    // next_token, every page timed, then the memory after them.
    const PAGE: i32 = 500;
    let walk = Instant::now();
    let (listed, pages) = walk_volumes(controller, PAGE).await;
    assert_eq!(listed, nodes * volumes_per_node, "every volume listed once");
    println!(
        "scale: ListVolumes of all {listed} volumes in pages of {PAGE}: {} pages in {:.2}s, {}",
        pages.len(),
        walk.elapsed().as_secs_f64(),
        Latencies::new(pages, walk.elapsed())
    );
    print_memory(
        daemon,
        &format!("{nodes} nodes after the paged ListVolumes"),
    );
    let lists = (calls / 100).max(5);
    let latencies = timed_calls(lists, 1, |_| async move {
        let listed = controller
            .clone()
            .list_volumes(ListVolumesRequest::default())
            .await
            .expect("ListVolumes")
            .into_inner();
        assert_eq!(
            listed.entries.len(),
            nodes * volumes_per_node,
            "every volume listed"
        );
    })
    .await
    .latencies;
    println!(
        "scale: ListVolumes of all {} volumes, one call at a time: {latencies}",
        nodes * volumes_per_node
    );
    print_memory(
        daemon,
        &format!("{nodes} nodes after the ListVolumes calls"),
    );
}

fn print_memory(daemon: &Daemon, when: &str) {
    let memory = memory_of(daemon);
    println!(
        "scale: {when}: VmRSS {} MiB, VmHWM {} MiB",
        memory.rss_kib / 1024,
        memory.hwm_kib / 1024
    );
}

/// Makes the fake nodes `range` (concurrent POSTs); the bytes of their
/// annotations.
async fn create_fake_nodes(
    client: &kube::Client,
    range: std::ops::Range<usize>,
    volumes_per_node: usize,
) -> usize {
    let nodes: Api<Node> = Api::all(client.clone());
    let nodes = &nodes;
    let sizes: Vec<usize> = futures_util::stream::iter(range)
        .map(|index| async move {
            let (node, bytes) = fake_node(index, volumes_per_node);
            nodes
                .create(&PostParams::default(), &node)
                .await
                .unwrap_or_else(|e| panic!("cannot create Node {}: {e}", fake_node_name(index)));
            bytes
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .collect()
        .await;
    sizes.iter().sum()
}

fn fake_node_name(index: usize) -> String {
    format!("scale-{index:04}")
}

/// A server of the k8s pool as its node plugin and the controller leave it:
/// labelled, with its drives and `volumes` one-drive volumes in its
/// annotations (no kubelet, no status). Also the bytes of the annotations.
fn fake_node(index: usize, volumes: usize) -> (Node, usize) {
    let name = fake_node_name(index);
    let ledger = typical_ledger(&name, volumes, 1, &format!("team-{}", index % 40));
    ledger
        .check_invariants()
        .unwrap_or_else(|e| panic!("the fake ledger of {name}: {e}"));
    let annotations = BTreeMap::from([
        (DRIVES_ANNOTATION.to_string(), encode_drives(&ledger.drives)),
        (CLAIMS_ANNOTATION.to_string(), encode_claims(&ledger.claims)),
    ]);
    let bytes = annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    let node = serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                POOL_LABEL: "k8s",
                TOPOLOGY_KEY: name,
            },
            "annotations": annotations,
        }
    }))
    .expect("a Node object");
    (node, bytes)
}

/// A node's ledger: 8 TLC drives, and `volumes` volumes of `parts` virtual
/// drives each as CreateVolume records them for `k8s-pool-storage` (the
/// provisioner's `pvc-<uuid>` names, owners `<namespace>:<pvc>`, what the
/// volume asked for on its first part), laid out one after another over the
/// drives.
fn typical_ledger(node: &str, volumes: usize, parts: usize, namespace: &str) -> NodeLedger {
    let mut ledger = NodeLedger::new(node);
    ledger.drives = (0..DRIVES_PER_NODE)
        .map(|n| PhysicalDrive {
            uuid: Uuid::new_v4(),
            serial: format!("S6EWNX0T{:06}", n),
            drive_type: DriveType::Tlc,
            capacity_gib: DRIVE_GIB,
            backend: Backend::Dm,
            missing: false,
            quarantined: None,
        })
        .collect();
    let mut class = class_parameters();
    class.insert("driveCores".into(), parts.to_string());
    let params = ClassParams::parse(&class, &Defaults::default()).expect("the class's parameters");
    let mut next_offset = [0u64; DRIVES_PER_NODE];
    let mut drive = 0;
    for n in 0..volumes {
        let size_gib = VOLUME_SIZES_GIB[n % VOLUME_SIZES_GIB.len()];
        let spec = VolumeSpec::new(
            &params.request(size_gib * parts as u64),
            Some("ext4".into()),
        );
        let volume_id = Uuid::new_v4().to_string();
        let volume_name = format!("pvc-{}", Uuid::new_v4());
        for part in 0..parts {
            let offset_gib = next_offset[drive];
            next_offset[drive] += size_gib;
            ledger.claims.push(Claim {
                virtual_uuid: Uuid::new_v4(),
                volume_id: volume_id.clone(),
                volume_name: volume_name.clone(),
                owner: format!("{namespace}:data-postgres-{n}"),
                pool: Some(Pool::K8s),
                physical_uuid: ledger.drives[drive].uuid,
                offset_gib,
                size_gib,
                part: part as u32,
                fixed: false,
                releasing: false,
                spec: (part == 0).then(|| spec.clone()),
            });
            drive = (drive + 1) % DRIVES_PER_NODE;
        }
    }
    ledger.normalize();
    ledger
}

// ---- annotation: how many volumes fit in one Node --------------------------------

async fn annotation_limit(bin_dir: &Path) {
    let cluster = Cluster::start(bin_dir);
    let nodes: Api<Node> = Api::all(cluster.client().await);
    for parts in [1, 2, 4] {
        let name = format!("annotation-limit-{parts}");
        let node: Node =
            serde_json::from_value(json!({ "metadata": { "name": name } })).expect("a Node object");
        nodes
            .create(&PostParams::default(), &node)
            .await
            .unwrap_or_else(|e| panic!("cannot create Node {name}: {e}"));
        // The largest count the API server accepts, between 1 and 1,200 (far
        // more than fit; the request stays below the server's 3 MiB limit).
        let (mut fits, mut too_many) = (1, 1200);
        assert!(
            !write_releasing_volumes(&nodes, &name, too_many, parts).await,
            "the API server refuses {too_many} volumes on one Node"
        );
        while fits + 1 < too_many {
            let volumes = (fits + too_many) / 2;
            if write_releasing_volumes(&nodes, &name, volumes, parts).await {
                fits = volumes;
            } else {
                too_many = volumes;
            }
        }
        assert!(
            write_releasing_volumes(&nodes, &name, fits, parts).await,
            "the API server accepts what it accepted before"
        );
        let stored = nodes.get(&name).await.expect("the Node");
        let claims_bytes = stored
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(CLAIMS_ANNOTATION))
            .map_or(0, String::len);
        println!(
            "annotation: volumes of {parts} virtual drive(s): the API server takes {fits} on one Node \
             ({} bytes per volume, marked releasing; {} KiB limit)",
            claims_bytes / fits,
            ANNOTATIONS_LIMIT_BYTES / 1024
        );
    }
}

/// Writes `volumes` volumes of `parts` virtual drives, every claim marked
/// releasing, beside 1 KiB of other annotations; whether the API server took it.
async fn write_releasing_volumes(
    nodes: &Api<Node>,
    name: &str,
    volumes: usize,
    parts: usize,
) -> bool {
    let mut ledger = typical_ledger(name, volumes, parts, "payments");
    ledger.claims.iter_mut().for_each(|c| c.releasing = true);
    let other_key = "example.com/other";
    let patch = json!({
        "metadata": {
            "annotations": {
                other_key: "x".repeat(OTHER_ANNOTATION_BYTES - other_key.len()),
                DRIVES_ANNOTATION: encode_drives(&ledger.drives),
                CLAIMS_ANNOTATION: encode_claims(&ledger.claims),
            }
        }
    });
    match nodes
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => true,
        Err(kube::Error::Api(status)) if status.code == 422 => {
            assert!(
                status.message.contains("Too long"),
                "refused for the size, not something else: {}",
                status.message
            );
            false
        }
        Err(e) => panic!("cannot patch Node {name}: {e}"),
    }
}

// ---- creates: CreateVolume straight to the controller --------------------------

/// The three servers of the `creates` and `pvcs` parts.
const SERVERS: [&str; 3] = ["n1", "n2", "n3"];
/// Their simulated drives: sparse files, so room costs nothing.
const SERVER_DRIVES: &str = "tlc:1000x2";
const GIB: i64 = 1 << 30;

/// A control plane, `vdrive node` on each of [`SERVERS`] (all in the k8s
/// pool) and `vdrive controller`, torn down in the right order when dropped.
struct Servers {
    controller: Daemon,
    _nodes: Vec<Daemon>,
    _release: ReleaseUnder,
    cluster: Cluster,
    client: kube::Client,
}

impl Servers {
    async fn start(bin_dir: &Path) -> Servers {
        Servers::start_with(bin_dir, &[]).await
    }

    async fn start_with(bin_dir: &Path, controller_manager_args: &[&str]) -> Servers {
        let cluster = Cluster::start_with(bin_dir, controller_manager_args);
        let release = ReleaseUnder::cluster(&cluster);
        let mut nodes = Vec::new();
        for name in SERVERS {
            nodes.push(
                cluster
                    .add_vdrive_node(name, Some("k8s"), SERVER_DRIVES, &[])
                    .await,
            );
        }
        let controller = cluster
            .start_vdrive_controller("controller", &["--orphan-check-interval=0"])
            .await;
        let client = cluster.client().await;
        let servers = Servers {
            controller,
            _nodes: nodes,
            _release: release,
            cluster,
            client,
        };
        for name in SERVERS {
            servers.wait_for_room(name).await;
        }
        servers
    }

    /// Waits until the controller sees `node`'s drives (its node plugin
    /// publishes them once it has scanned them).
    async fn wait_for_room(&self, node: &str) {
        let endpoint = self.cluster.endpoint("controller");
        let endpoint = &endpoint;
        eventually(
            &format!("room on {node}"),
            Duration::from_secs(60),
            || async move {
                let channel = vdrive::csi::server::connect(endpoint)
                    .await
                    .map_err(|e| e.to_string())?;
                let answer = ControllerClient::new(channel)
                    .get_capacity(GetCapacityRequest {
                        parameters: class_parameters(),
                        accessible_topology: Some(Topology {
                            segments: HashMap::from([(TOPOLOGY_KEY.to_string(), node.to_string())]),
                        }),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner();
                if answer.available_capacity > 0 {
                    Ok(())
                } else {
                    Err("no capacity yet".to_string())
                }
            },
        )
        .await;
    }

    /// Waits until no claim is left on the servers: deleted volumes' claims
    /// are released once their node has erased them.
    async fn wait_until_empty(&self) {
        let client = &self.client;
        eventually(
            "the servers' claims to be erased and released",
            Duration::from_secs(300),
            || async move {
                let mut left = 0;
                for node in SERVERS {
                    left += node_ledger(client, node).await?.claims.len();
                }
                if left == 0 {
                    Ok(())
                } else {
                    Err(format!("{left} claims left"))
                }
            },
        )
        .await;
    }
}

/// What the provisioner asks for with `--strict-topology` once the scheduler
/// picked `node` for the pod.
fn on_node(node: &str) -> TopologyRequirement {
    let topology = Topology {
        segments: HashMap::from([(TOPOLOGY_KEY.to_string(), node.to_string())]),
    };
    TopologyRequirement {
        requisite: vec![topology.clone()],
        preferred: vec![topology],
    }
}

async fn creates(bin_dir: &Path) {
    let count: usize = env_or("VDRIVE_CREATES", 500);
    let servers = Servers::start(bin_dir).await;
    let endpoint = servers.cluster.endpoint("controller");
    for concurrency in [32, 256] {
        for spread in [&SERVERS[..], &SERVERS[..1]] {
            let load = CreateLoad {
                endpoint: endpoint.clone(),
                parameters: class_parameters(),
                capability: capability::mount("ext4", Mode::SingleNodeWriter),
                required_bytes: GIB,
                topologies: spread.iter().map(|node| on_node(node)).collect(),
                concurrency,
                count,
                name_prefix: format!("c{concurrency}-on-{}", spread.len()),
            };
            let where_ = match spread.len() {
                1 => "one node".to_string(),
                n => format!("{n} nodes"),
            };
            let created = load.run().await;
            println!(
                "creates: CreateVolume, {where_}, concurrency {concurrency}: {}",
                created.latencies
            );
            assert!(
                created.failures.is_empty(),
                "{} CreateVolume calls failed, the first: {:?}",
                created.failures.len(),
                created.failures.first()
            );
            let deleted = delete_volumes(&endpoint, &created.volume_ids, concurrency).await;
            println!(
                "creates: DeleteVolume, {where_}, concurrency {concurrency}: {}",
                deleted.latencies
            );
            assert!(
                deleted.failures.is_empty(),
                "{} DeleteVolume calls failed, the first: {:?}",
                deleted.failures.len(),
                deleted.failures.first()
            );
            servers.wait_until_empty().await;
        }
    }
    let mut controller = servers.controller;
    let memory = memory_of(&controller);
    println!(
        "creates: the controller afterwards: VmRSS {} MiB, VmHWM {} MiB",
        memory.rss_kib / 1024,
        memory.hwm_kib / 1024
    );
    controller.stop();
}

// ---- pvcs: PVC to Bound through csi-provisioner ----------------------------------

/// kube-controller-manager's API rate in the two PVC runs: Kubernetes' default
/// (20/s, burst 30), which binds PVCs in waves, and what a cluster that
/// creates hundreds at once is run with.
const CONTROLLER_MANAGER_RATES: [&[&str]; 2] =
    [&[], &["--kube-api-qps=100", "--kube-api-burst=200"]];

async fn pvcs(bin_dir: &Path) {
    for rate in CONTROLLER_MANAGER_RATES {
        pvcs_bound(bin_dir, rate).await;
    }
}

async fn pvcs_bound(bin_dir: &Path, controller_manager_args: &[&str]) {
    let count: usize = env_or("VDRIVE_PVCS", 200);
    let servers = Servers::start_with(bin_dir, controller_manager_args).await;
    let cluster = &servers.cluster;
    let client = &servers.client;
    // As the chart runs it (its pace comes from the chart's values).
    let _provisioner = cluster.start_provisioner(
        &cluster.socket("controller"),
        &["--strict-topology", "--immediate-topology=false"],
    );
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    for file in ["csidriver.yaml", "storageclasses.yaml"] {
        let path = deploy.join(file);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        cluster.apply(&text);
    }
    // The scheduler sends a pod only where CSIStorageCapacity says it fits.
    let capacities: Api<CSIStorageCapacity> = Api::namespaced(client.clone(), SIDECAR_NAMESPACE);
    let capacities = &capacities;
    eventually(
        "CSIStorageCapacity of the class on every server",
        Duration::from_secs(60),
        || async move {
            let listed = capacities
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            let with_room = listed
                .items
                .iter()
                .filter(|c| c.storage_class_name == CLASS && c.capacity.is_some())
                .count();
            if with_room >= SERVERS.len() {
                Ok(())
            } else {
                Err(format!("{with_room} so far"))
            }
        },
    )
    .await;
    let namespace = "burst";
    cluster.create_namespace(namespace).await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let (claims, pods) = (&claims, &pods);
    let started = Instant::now();
    futures_util::stream::iter(0..count)
        .map(|i| async move {
            let name = format!("data-{i:03}");
            claims
                .create(&PostParams::default(), &claim(&name))
                .await
                .unwrap_or_else(|e| panic!("cannot create PVC {name}: {e}"));
            pods.create(
                &PostParams::default(),
                &pod_using(&format!("app-{i:03}"), &name),
            )
            .await
            .unwrap_or_else(|e| panic!("cannot create the pod of {name}: {e}"));
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
    let created = started.elapsed();
    let mut half_bound = None;
    let all_bound = loop {
        let listed = claims
            .list(&ListParams::default())
            .await
            .expect("list the PVCs");
        let bound = listed
            .items
            .iter()
            .filter(|c| c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
            .count();
        if half_bound.is_none() && bound * 2 >= count {
            half_bound = Some(started.elapsed());
        }
        if bound == count {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "only {bound} of {count} PVCs bound after 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "pvcs: {count} PVCs and their pods created in {:.1}s; half bound after {:.1}s, all after {:.1}s ({:.1} PVCs/s); provisioner {}; kube-controller-manager {}",
        created.as_secs_f64(),
        half_bound.unwrap_or_default().as_secs_f64(),
        all_bound.as_secs_f64(),
        count as f64 / all_bound.as_secs_f64(),
        chart_provisioner_pace().join(" "),
        if controller_manager_args.is_empty() {
            "at Kubernetes' default API rate".to_string()
        } else {
            controller_manager_args.join(" ")
        }
    );
    let mut placed = BTreeMap::new();
    for node in SERVERS {
        placed.insert(
            node,
            node_ledger(client, node)
                .await
                .expect("the ledger")
                .claims
                .len(),
        );
    }
    println!("pvcs: volumes per server: {placed:?}");
}

/// A 1 GiB PVC of the class, as an application would ask.
fn claim(name: &str) -> PersistentVolumeClaim {
    serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": CLASS,
            "resources": { "requests": { "storage": "1Gi" } },
        },
    }))
    .expect("a PVC")
}

/// A pod mounting `pvc`; the class binds on first consumer.
fn pod_using(name: &str, pvc: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "containers": [{
                "name": "app",
                "image": "busybox",
                "volumeMounts": [{ "name": "data", "mountPath": "/data" }],
            }],
            "volumes": [{ "name": "data", "persistentVolumeClaim": { "claimName": pvc } }],
        },
    }))
    .expect("a Pod")
}

// ---- measuring -------------------------------------------------------------------

/// A process's resident memory now and at its peak, from /proc.
#[derive(Debug, Clone, Copy)]
struct Memory {
    rss_kib: u64,
    hwm_kib: u64,
}

fn memory_of(daemon: &Daemon) -> Memory {
    let pid = daemon.pid().expect("the process runs");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    Memory {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
    }
}
