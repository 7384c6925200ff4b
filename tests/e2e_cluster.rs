//! vdrive in a real Kubernetes control plane: etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler, csi-provisioner and csi-resizer as
//! local processes (see `support::cluster`), `vdrive controller`, and one
//! `vdrive node` per simulated server, each with its own loop-backed drives.
//! No kubelet runs: the test creates the Nodes and CSINodes, and does the
//! kubelet's CSI calls (NodeStage/NodePublish/NodeExpand) itself.
//!
//! The scenarios run in order on one cluster (starting one takes a while), each
//! asserting on the API objects and on the ledger in the Nodes' annotations.
//! Run with `e2e/run`.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{
    Node, PersistentVolume, PersistentVolumeClaim, Pod, ServiceAccount,
};
use k8s_openapi::api::storage::v1::{CSIDriver, CSIStorageCapacity, StorageClass};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use support::cluster::{Cluster, Daemon, SIDECAR_NAMESPACE, bin_dir_from_env, eventually};
use support::e2e::{ReleaseUnder, events_about, notes, runtime, wait_for_event, wait_for_socket};
use vdrive::cluster::annotations::{
    CAPACITY_RESOURCE, CLAIMS_ANNOTATION, DRIVES_ANNOTATION, decode_claims, decode_drives,
};
use vdrive::cluster::events::Notifier;
use vdrive::cluster::{KubeStore, Scope, inventory};
use vdrive::drive::{Backend, DriveType};
use vdrive::ledger::{Claim, DriveHeader, Ledger, PhysicalDrive, PoolSettings, ReportedDrive};
use vdrive::metrics::Gauges;

const DRIVER: &str = "csi.vdrive.io";
const TOPOLOGY_KEY: &str = "topology.vdrive.io/node";
const K8S_CLASS: &str = "k8s-pool-storage";
const VM_CLASS: &str = "vm-pool-storage";
/// What each server gives its pool in this test: small, so that filling a node
/// takes one volume (sparse drives make the size free anyway).
const SHARE_GIB: u64 = 100;
const RESERVE_GIB: u64 = 20;
/// Every simulated server: one TLC drive for the k8s class, one QLC for the vm class.
const DRIVES: &str = "tlc:160x1,qlc:160x1";
/// The size of each of those drives, in GiB.
const DRIVE_GIB: u64 = 160;
const GIB: u64 = 1 << 30;
const WAIT: Duration = Duration::from_secs(90);

/// The processes and paths of one test run. Field order is drop order: the
/// vdrive processes and sidecars stop before the control plane.
struct Setup {
    controller: Daemon,
    _nodes: BTreeMap<String, Daemon>,
    provisioner: Daemon,
    resizer: Daemon,
    /// After the vdrive processes, before the cluster: whatever a failed
    /// scenario left staged, and the nodes' simulated drives.
    _release: ReleaseUnder,
    cluster: Cluster,
    vdrive: PathBuf,
    client: Client,
}

impl Setup {
    /// Runs `vdrive` with `args`; Ok(stdout) or Err(stderr and stdout).
    fn vdrive(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.vdrive)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run vdrive: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else if out.stderr.is_empty() {
            // A report that says something is wrong (vdrive orphans, pools health).
            Err(stdout)
        } else {
            Err(format!("{}{stdout}", String::from_utf8_lossy(&out.stderr)))
        }
    }

    fn kubeconfig(&self) -> String {
        self.cluster.kubeconfig_path().display().to_string()
    }
}

#[test]
#[ignore = "needs Kubernetes binaries: run e2e/run"]
fn vdrive_in_a_kubernetes_cluster() {
    let bin = bin_dir_from_env();
    runtime().block_on(async move {
        let mut setup = set_up(&bin).await;
        install_from_deploy(&setup).await;
        node_token_writes_only_its_own_node(&setup).await;
        let first = pvc_lands_on_a_k8s_node_and_mounts(&setup).await;
        loop_nodes_build_one_drive_volumes(&setup, &first).await;
        capacity_steers_pods_and_labels_move_servers(&setup, &first).await;
        delete_releases_and_retain_keeps(&setup, &first).await;
        expansion_grows_pv_and_filesystem(&setup).await;
        fifty_pvcs_at_once(&setup).await;
        controller_killed_mid_burst(&mut setup).await;
    });
}

async fn set_up(bin: &Path) -> Setup {
    let cluster = Cluster::start(bin);
    let client = cluster.client().await;
    let vdrive = PathBuf::from(env!("CARGO_BIN_EXE_vdrive"));
    // Three servers: two in the k8s pool, one in the vm pool.
    let mut nodes = BTreeMap::new();
    for (name, pool) in [("n1", "k8s"), ("n2", "k8s"), ("n3", "vm")] {
        let daemon = cluster.add_vdrive_node(name, Some(pool), DRIVES, &[]).await;
        nodes.insert(name.to_string(), daemon);
    }
    // The test's small pool shares, so that one volume fills a node.
    let controller = cluster
        .start_vdrive_controller_with_shares(SHARE_GIB, RESERVE_GIB)
        .await;
    let socket = cluster.socket("controller");
    let provisioner = cluster.start_provisioner(
        &socket,
        &[
            // A local volume must be where the scheduler put the pod, or nowhere.
            "--strict-topology",
            "--timeout=30s",
            // Retry soon after a failure (a full node, a restarted controller).
            "--retry-interval-max=5s",
        ],
    );
    let resizer = cluster.start_resizer(&socket, &[]);
    Setup {
        _release: ReleaseUnder::cluster(&cluster),
        controller,
        _nodes: nodes,
        provisioner,
        resizer,
        cluster,
        vdrive,
        client,
    }
}

// ---- scenario 1 ----------------------------------------------------------------

async fn install_from_deploy(setup: &Setup) {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let out = setup
        .cluster
        .kubectl(["apply", "-k", &deploy.display().to_string()]);
    eprintln!("kubectl apply -k deploy/:\n{out}");
    let driver = Api::<CSIDriver>::all(setup.client.clone())
        .get(DRIVER)
        .await
        .expect("the CSIDriver from deploy/");
    let spec = driver.spec;
    assert_eq!(spec.attach_required, Some(false));
    assert_eq!(spec.pod_info_on_mount, Some(true));
    assert_eq!(spec.storage_capacity, Some(true));
    assert_eq!(spec.fs_group_policy.as_deref(), Some("File"));
    let classes = Api::<StorageClass>::all(setup.client.clone());
    let k8s = classes.get(K8S_CLASS).await.expect("k8s-pool-storage");
    assert_eq!(k8s.provisioner, DRIVER);
    assert_eq!(k8s.reclaim_policy.as_deref(), Some("Delete"));
    assert_eq!(
        k8s.volume_binding_mode.as_deref(),
        Some("WaitForFirstConsumer")
    );
    assert_eq!(k8s.allow_volume_expansion, Some(true));
    let vm = classes.get(VM_CLASS).await.expect("vm-pool-storage");
    assert_eq!(vm.reclaim_policy.as_deref(), Some("Retain"));
    for (kind, name) in [
        ("deployment", "vdrive-controller"),
        ("daemonset", "vdrive-node"),
        ("serviceaccount", "vdrive-controller"),
        ("serviceaccount", "vdrive-node"),
    ] {
        setup
            .cluster
            .kubectl(["get", kind, name, "--namespace", "vdrive"]);
    }
}

// ---- scenario 1b: what the node plugin's token may write -----------------------

/// The node plugin's namespace, ServiceAccount and Node policy in deploy/.
const NODE_NAMESPACE: &str = "vdrive";
const NODE_ACCOUNT: &str = "vdrive-node";
const CONTROLLER_ACCOUNT: &str = "vdrive-controller";
const NODE_POLICY: &str = "vdrive-node-writes";

/// With a token of the node plugin's ServiceAccount bound to a pod on one Node,
/// as kubelet projects it into a DaemonSet pod, vdrive's own publishing code
/// writes that Node, and deploy/'s ValidatingAdmissionPolicy refuses its writes
/// to another Node, to anything but vdrive.io/ keys, and from a token bound to
/// no pod; the controller's account is not held to it. Two Nodes of the step's
/// own (no pool, no CSINode, so no volume goes there), deleted at its end. The
/// `vdrive node` processes of this suite run as the cluster admin and are not
/// affected.
async fn node_token_writes_only_its_own_node(setup: &Setup) {
    let (own, other) = ("policy-a", "policy-b");
    for name in [own, other] {
        setup.cluster.add_node(name, &[], "1", "1Gi").await;
    }
    let pod = node_plugin_pod(setup, "vdrive-node-policy-a", own).await;
    let as_plugin = setup
        .cluster
        .client_with_token(&service_account_token(setup, NODE_ACCOUNT, Some(&pod)).await)
        .await;
    let nodes: Api<Node> = Api::all(as_plugin.clone());
    let params = PatchParams::default();

    // A new policy takes a moment to be in force: until the first refusal.
    let probe =
        |value: &str| json!({ "metadata": { "annotations": { "vdrive.io/e2e-probe": value } } });
    let refused = eventually(
        "the node policy to refuse Node policy-b to policy-a's node plugin",
        WAIT,
        || {
            let (nodes, params, patch) = (&nodes, &params, probe("other"));
            async move { refusal(nodes.patch(other, params, &Patch::Merge(&patch)).await) }
        },
    )
    .await;
    assert!(
        refused.contains("may write only its own Node, not Node policy-b"),
        "{refused}"
    );

    // The node plugin's own code, with that token: its drive list and extended
    // resource on its own Node (merge patches with a resourceVersion), not on
    // the other.
    let drive = PhysicalDrive {
        uuid: uuid::Uuid::new_v4(),
        serial: "policy-e2e".into(),
        drive_type: DriveType::Tlc,
        capacity_gib: 10,
        backend: Backend::Loop,
        missing: false,
        quarantined: None,
    };
    for (node, allowed) in [(own, true), (other, false)] {
        let store = KubeStore::start(as_plugin.clone(), Scope::OneNode(node.into()));
        store
            .wait_ready(WAIT)
            .await
            .unwrap_or_else(|e| panic!("the node plugin's token cannot watch Node {node}: {e}"));
        let ledger = Ledger::new(store, PoolSettings::default());
        let notifier = Notifier::new(as_plugin.clone(), node);
        let reported = vec![ReportedDrive {
            drive: drive.clone(),
            header: DriveHeader::Blank,
        }];
        let published = match ledger.sync_drives(node, reported).await {
            Ok(sync) => {
                inventory::publish(&ledger, &notifier, &Gauges::default(), node, &sync).await
            }
            Err(e) => Err(e.to_string()),
        };
        match (published, allowed) {
            (Ok(_), true) => {}
            (Err(e), false) => assert!(
                e.contains(NODE_POLICY) && e.contains("not Node policy-b"),
                "publishing on {node}: {e}"
            ),
            (result, _) => panic!("publishing {own}'s drives on {node}: {result:?}"),
        }
    }
    let written = Api::<Node>::all(setup.client.clone())
        .get(own)
        .await
        .expect("read Node policy-a");
    let drives = written
        .annotations()
        .get(DRIVES_ANNOTATION)
        .map(|text| decode_drives(text).expect("the drives the plugin wrote"));
    assert_eq!(drives, Some(vec![drive.clone()]));
    let capacity = written
        .status
        .and_then(|s| s.capacity)
        .and_then(|c| c.get(CAPACITY_RESOURCE).cloned());
    assert_eq!(capacity.map(|q| q.0), Some("10".to_string()));

    // On its own Node, nothing but vdrive.io/ keys.
    let refused_on_own = [
        (
            json!({ "metadata": { "labels": { "pool": "vm" } } }),
            "may not change Node labels: it changed pool",
        ),
        (
            json!({ "spec": { "taints": [{ "key": "e2e", "effect": "NoSchedule" }] } }),
            "not spec.taints",
        ),
        (
            json!({ "metadata": { "annotations": { "example.com/e2e": "x" } } }),
            "may change only vdrive.io/ annotations: it changed example.com/e2e",
        ),
    ];
    for (patch, says) in refused_on_own {
        let message = refusal(nodes.patch(own, &params, &Patch::Merge(&patch)).await)
            .unwrap_or_else(|e| panic!("patch {patch} of {own}: {e}"));
        assert!(message.contains(says), "patch {patch} of {own}: {message}");
    }
    let status = json!({ "status": { "capacity": { "cpu": "64" } } });
    let message = refusal(
        nodes
            .patch_status(own, &params, &Patch::Merge(&status))
            .await,
    )
    .unwrap_or_else(|e| panic!("status patch {status} of {own}: {e}"));
    assert!(
        message.contains("it changed status.capacity.cpu"),
        "{message}"
    );
    nodes
        .patch(own, &params, &Patch::Merge(&probe("own")))
        .await
        .unwrap_or_else(|e| panic!("the node plugin could not annotate its own Node: {e}"));

    // A token of the same account bound to no pod carries no node: refused.
    let unbound = Api::<Node>::all(
        setup
            .cluster
            .client_with_token(&service_account_token(setup, NODE_ACCOUNT, None).await)
            .await,
    );
    let message = refusal(
        unbound
            .patch(own, &params, &Patch::Merge(&probe("unbound")))
            .await,
    )
    .unwrap_or_else(|e| panic!("a token bound to no pod: {e}"));
    assert!(
        message.contains("not bound to a pod on a node"),
        "{message}"
    );

    // The controller's account writes any Node's annotations, as it must.
    let controller = Api::<Node>::all(
        setup
            .cluster
            .client_with_token(&service_account_token(setup, CONTROLLER_ACCOUNT, None).await)
            .await,
    );
    controller
        .patch(other, &params, &Patch::Merge(&probe("controller")))
        .await
        .unwrap_or_else(|e| panic!("the controller's account could not annotate {other}: {e}"));

    setup
        .cluster
        .force_delete_pod(NODE_NAMESPACE, &pod.name_any())
        .await;
    for name in [own, other] {
        Api::<Node>::all(setup.client.clone())
            .delete(name, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("cannot delete Node {name}: {e}"));
    }
}

/// A pod of the node plugin's ServiceAccount bound to `node`, as the DaemonSet
/// controller would make it; no kubelet ever runs it.
async fn node_plugin_pod(setup: &Setup, name: &str, node: &str) -> Pod {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": name, "namespace": NODE_NAMESPACE },
        "spec": {
            "serviceAccountName": NODE_ACCOUNT,
            "nodeName": node,
            "containers": [{ "name": "vdrive", "image": "vdrive/vdrive" }],
        },
    }))
    .expect("a Pod");
    Api::<Pod>::namespaced(setup.client.clone(), NODE_NAMESPACE)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("cannot create pod {NODE_NAMESPACE}/{name}: {e}"))
}

/// A token of `account` (TokenRequest), bound to `pod` when given.
async fn service_account_token(setup: &Setup, account: &str, pod: Option<&Pod>) -> String {
    let bound = pod.map(|pod| {
        json!({ "apiVersion": "v1", "kind": "Pod", "name": pod.name_any(), "uid": pod.uid() })
    });
    let request: TokenRequest = serde_json::from_value(json!({
        "spec": { "audiences": [], "expirationSeconds": 3600, "boundObjectRef": bound },
    }))
    .expect("a TokenRequest");
    Api::<ServiceAccount>::namespaced(setup.client.clone(), NODE_NAMESPACE)
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("cannot get a token of {NODE_NAMESPACE}/{account}: {e}"))
        .status
        .and_then(|s| s.token)
        .unwrap_or_else(|| panic!("the token request of {account} came back without a token"))
}

/// Ok(message) when a write was refused by the node policy (403 naming it);
/// Err saying what happened instead.
fn refusal<T>(result: Result<T, kube::Error>) -> Result<String, String> {
    match result {
        Err(kube::Error::Api(status))
            if status.code == 403 && status.message.contains(NODE_POLICY) =>
        {
            Ok(status.message)
        }
        Err(e) => Err(format!("refused otherwise: {e}")),
        Ok(_) => Err("the write went through".into()),
    }
}

// ---- scenario 2 ----------------------------------------------------------------

/// The first volume of scenario 2: where it went and what it is.
struct Placed {
    pvc: String,
    node: String,
    pv: PersistentVolume,
    staging: PathBuf,
    target: PathBuf,
}

async fn pvc_lands_on_a_k8s_node_and_mounts(setup: &Setup) -> Placed {
    // The scheduler reads CSIStorageCapacity; wait until the provisioner has
    // published them for every node.
    for node in ["n1", "n2"] {
        wait_for_capacity(setup, K8S_CLASS, node, |gib| gib == SHARE_GIB).await;
    }
    wait_for_capacity(setup, K8S_CLASS, "n3", |gib| gib == 0).await;
    wait_for_capacity(setup, VM_CLASS, "n3", |gib| gib == SHARE_GIB).await;

    create_pvc(setup, "default", "data", K8S_CLASS, 10).await;
    create_pod(setup, "default", "app", "data").await;
    let node = setup
        .cluster
        .wait_for_pod_node("default", "app", WAIT)
        .await;
    assert!(
        node == "n1" || node == "n2",
        "k8s volume on {node}, outside the k8s pool"
    );
    let pv = bound_pv(setup, "default", "data").await;
    let affinity = serde_json::to_value(&pv.spec.as_ref().unwrap().node_affinity).unwrap();
    assert_eq!(
        affinity["required"]["nodeSelectorTerms"][0]["matchExpressions"][0],
        json!({ "key": TOPOLOGY_KEY, "operator": "In", "values": [node] }),
        "the PV is pinned to the pod's node"
    );
    let handle = volume_handle(&pv);
    let claims = live_claims(setup, &node).await;
    let mine: Vec<&Claim> = claims.iter().filter(|c| c.volume_id == handle).collect();
    assert_eq!(
        mine.len(),
        1,
        "one virtual drive for the volume: {claims:?}"
    );
    assert_eq!(mine[0].owner, "default:data", "the PVC owns the claim");
    assert_eq!(mine[0].size_gib, 10);

    // The kubelet's part: stage and publish on that node's plugin, then use it.
    let staging = setup.cluster.dir().join("mnt/data/staging");
    let target = setup.cluster.dir().join("mnt/data/target");
    stage_and_publish(setup, &node, &pv, &staging, &target);
    std::fs::write(target.join("hello"), "vdrive").expect("write on the volume");
    assert_eq!(
        std::fs::read_to_string(staging.join("hello")).expect("read it back"),
        "vdrive"
    );
    Placed {
        pvc: "data".into(),
        node,
        pv,
        staging,
        target,
    }
}

// ---- loop nodes: one virtual drive per volume ------------------------------------

/// A TLC/QLC mix over three drive cores: every volume is several virtual drives,
/// which only a node with the device-mapper (dm) backend joins into one device.
const MIXED: [(&str, &str); 4] = [
    ("tlc", "4"),
    ("qlc", "1"),
    ("driveCores", "3"),
    ("minDriveGiB", "1"),
];
/// One TLC virtual drive per volume and no pool: a node's largest volume is its
/// largest free TLC extent.
const ONE_TLC: [(&str, &str); 4] = [
    ("tlc", "1"),
    ("qlc", "0"),
    ("driveCores", "1"),
    ("minDriveGiB", "1"),
];
const MIXED_CLASS: &str = "mixed-tlc-qlc";
const MIXED_NOW_CLASS: &str = "mixed-tlc-qlc-immediate";
const ONE_TLC_CLASS: &str = "one-tlc-drive";

/// This host has no device-mapper, so every node builds volumes with the loop
/// backend: one virtual drive per volume. The scheduler is told so through
/// CSIStorageCapacity (maximumVolumeSize is what a node can really build), and a
/// volume that needs several drives is refused with the reason and the fixes.
async fn loop_nodes_build_one_drive_volumes(setup: &Setup, first: &Placed) {
    let nodes = ["n1", "n2", "n3"];
    for node in nodes {
        assert_eq!(
            node_ledger(&setup.client, node).await.backend(),
            Backend::Loop,
            "node {node} reports the loop backend for its drives"
        );
    }
    create_class(setup, MIXED_CLASS, &MIXED, "WaitForFirstConsumer").await;
    create_class(setup, ONE_TLC_CLASS, &ONE_TLC, "WaitForFirstConsumer").await;
    // The external-provisioner publishes no capacity for Immediate classes, so
    // their volumes are always attempted: that is where the refusal shows.
    create_class(setup, MIXED_NOW_CLASS, &MIXED, "Immediate").await;

    for node in nodes {
        // One TLC drive: the largest free TLC extent, from the Node's annotations
        // as vdrive's own decoder reads them, and as GetCapacity answers.
        let ledger = node_ledger(&setup.client, node).await;
        let largest = ledger
            .largest_free_extent(|t| t == DriveType::Tlc)
            .map_or(0, |(_, gib)| gib);
        let expected = if node == first.node {
            DRIVE_GIB - 10
        } else {
            DRIVE_GIB
        };
        assert_eq!(largest, expected, "the free TLC extent of {node}");
        assert_eq!(controller_largest_gib(setup, &ONE_TLC, node), largest);
        wait_for_max_volume(setup, ONE_TLC_CLASS, node, |gib| gib == largest).await;
        // The mix: all the free space of both drives, but no volume the node can
        // build.
        assert_eq!(controller_largest_gib(setup, &MIXED, node), 0);
        let mixed = wait_for_max_volume(setup, MIXED_CLASS, node, |gib| gib == 0).await;
        let free: u64 = ledger.free_drives().iter().map(|d| d.free_gib()).sum();
        assert_eq!(
            mixed.capacity.as_ref().and_then(|q| quantity_bytes(&q.0)),
            Some(free * GIB),
            "the capacity of the mix on {node}"
        );
        assert!(
            capacity_object(setup, MIXED_NOW_CLASS, node)
                .await
                .is_none(),
            "no capacity is published for an Immediate class"
        );
    }

    // WaitForFirstConsumer: maximumVolumeSize 0 everywhere, so the scheduler finds
    // no node for the pod and provisioning is never attempted.
    create_pvc(setup, "default", "mixed", MIXED_CLASS, 20).await;
    create_pod(setup, "default", "mixed-app", "mixed").await;
    let unschedulable = wait_unschedulable(setup, "default", "mixed-app").await;
    eprintln!("pod default/mixed-app: {unschedulable}");
    assert!(
        unschedulable.contains("3 node(s) did not have enough free storage"),
        "{unschedulable}"
    );

    // Immediate: the provisioner asks at once, every node refuses, and the PVC's
    // ProvisioningFailed Event says why and what to change.
    create_pvc(setup, "default", "mixed-now", MIXED_NOW_CLASS, 20).await;
    let refusal = wait_for_event(
        &setup.client,
        Some("default"),
        "mixed-now",
        "ProvisioningFailed",
        "",
    )
    .await;
    eprintln!("PVC default/mixed-now, ProvisioningFailed: {refusal}");
    for words in [
        "FailedPrecondition",
        "that node builds volumes with the loop backend, which makes a volume from at most 1 virtual drive(s)",
        "Place the volume on a node whose drives use the device-mapper (dm) backend",
        r#"use a StorageClass with driveCores: "1" and a single type"#,
        "on node n1",
        "on node n2",
        "on node n3",
    ] {
        assert!(refusal.contains(words), "{words:?} in {refusal}");
    }

    // Neither binds, and nothing was claimed for them; the first was never even
    // tried.
    assert_eq!(
        event_notes(setup, "default", "mixed", "ProvisioningFailed").await,
        Vec::<String>::new()
    );
    for pvc in ["mixed", "mixed-now"] {
        let claim = Api::<PersistentVolumeClaim>::namespaced(setup.client.clone(), "default")
            .get(pvc)
            .await
            .expect("the PVC");
        assert_eq!(
            claim.status.and_then(|s| s.phase).as_deref(),
            Some("Pending")
        );
        assert_eq!(claim.spec.and_then(|s| s.volume_name), None);
    }
    for node in nodes {
        let owners: Vec<String> = node_ledger(&setup.client, node)
            .await
            .claims
            .into_iter()
            .map(|c| c.owner)
            .filter(|owner| owner.starts_with("default:mixed"))
            .collect();
        assert!(owners.is_empty(), "claims on {node}: {owners:?}");
    }

    setup.cluster.force_delete_pod("default", "mixed-app").await;
    for pvc in ["mixed", "mixed-now"] {
        delete_pvc(setup, "default", pvc).await;
        wait_for_pvc_gone(setup, "default", pvc).await;
    }
    setup.cluster.kubectl([
        "delete",
        "storageclass",
        MIXED_CLASS,
        MIXED_NOW_CLASS,
        ONE_TLC_CLASS,
    ]);
    for class in [MIXED_CLASS, ONE_TLC_CLASS] {
        for node in nodes {
            eventually(
                &format!("the CSIStorageCapacity of {class} on {node} to go"),
                WAIT,
                || async move {
                    match capacity_object(setup, class, node).await {
                        None => Ok(()),
                        Some(c) => Err(format!("{} is still there", c.name_any())),
                    }
                },
            )
            .await;
        }
    }
}

async fn create_class(setup: &Setup, name: &str, parameters: &[(&str, &str)], binding: &str) {
    let parameters: BTreeMap<&str, &str> = parameters.iter().copied().collect();
    let class: StorageClass = serde_json::from_value(json!({
        "metadata": { "name": name },
        "provisioner": DRIVER,
        "parameters": parameters,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": binding,
    }))
    .expect("a StorageClass");
    Api::<StorageClass>::all(setup.client.clone())
        .create(&PostParams::default(), &class)
        .await
        .unwrap_or_else(|e| panic!("cannot create StorageClass {name}: {e}"));
}

/// The controller's GetCapacity answer for these class parameters on `node`:
/// the largest volume, in GiB.
fn controller_largest_gib(setup: &Setup, parameters: &[(&str, &str)], node: &str) -> u64 {
    let endpoint = setup.cluster.endpoint("controller");
    let mut args = vec!["csi", "--endpoint", &endpoint, "capacity", "--node", node];
    let pairs: Vec<String> = parameters.iter().map(|(k, v)| format!("{k}={v}")).collect();
    for pair in &pairs {
        args.extend(["--param", pair.as_str()]);
    }
    let out = setup.vdrive(&args).expect("vdrive csi capacity");
    // "available 150 GiB, largest volume 150 GiB"
    out.trim()
        .split_once("largest volume ")
        .and_then(|(_, rest)| rest.strip_suffix(" GiB"))
        .and_then(|gib| gib.parse().ok())
        .unwrap_or_else(|| panic!("unexpected answer: {out}"))
}

/// Waits until the pod is reported unschedulable; the PodScheduled condition's
/// message, which `kubectl describe pod` shows with the FailedScheduling Event.
async fn wait_unschedulable(setup: &Setup, namespace: &str, pod: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(setup.client.clone(), namespace);
    let pods = &pods;
    eventually(
        &format!("pod {namespace}/{pod} to be unschedulable"),
        WAIT,
        || async move {
            let found = pods.get(pod).await.map_err(|e| e.to_string())?;
            if let Some(node) = found.spec.as_ref().and_then(|s| s.node_name.clone()) {
                panic!("pod {namespace}/{pod} was scheduled to {node}");
            }
            let scheduled = found
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .into_iter()
                .find(|c| c.type_ == "PodScheduled");
            match scheduled {
                Some(c) if c.status == "False" && c.reason.as_deref() == Some("Unschedulable") => {
                    Ok(c.message.unwrap_or_default())
                }
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

/// The notes of the Events with `reason` about the object `name` in `namespace`.
async fn event_notes(setup: &Setup, namespace: &str, name: &str, reason: &str) -> Vec<String> {
    notes(&events_about(&setup.client, Some(namespace), name, reason).await)
}

async fn wait_for_pvc_gone(setup: &Setup, namespace: &str, name: &str) {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(setup.client.clone(), namespace);
    let pvcs = &pvcs;
    eventually(
        &format!("PVC {namespace}/{name} to be deleted"),
        WAIT,
        || async move {
            match pvcs.get_opt(name).await.map_err(|e| e.to_string())? {
                None => Ok(()),
                Some(_) => Err("still there".to_string()),
            }
        },
    )
    .await;
}

// ---- scenario 3 ----------------------------------------------------------------

async fn capacity_steers_pods_and_labels_move_servers(setup: &Setup, first: &Placed) {
    let other = if first.node == "n1" { "n2" } else { "n1" };
    // The first node has 90 GiB of its share left; a 95 GiB volume fits only on
    // the other. Wait for the scheduler's view to say so, then ask.
    wait_for_capacity(setup, K8S_CLASS, &first.node, |gib| gib == SHARE_GIB - 10).await;
    create_pvc(setup, "default", "big", K8S_CLASS, 95).await;
    create_pod(setup, "default", "big-app", "big").await;
    let node = setup
        .cluster
        .wait_for_pod_node("default", "big-app", WAIT)
        .await;
    assert_eq!(node, other, "the full node was skipped");
    bound_pv(setup, "default", "big").await;
    wait_for_capacity(setup, K8S_CLASS, other, |gib| gib == SHARE_GIB - 95).await;

    // Relabel the vm server into the k8s pool: its k8s capacity appears at once
    // (one provisioner poll), and the pool grows by one share.
    let before = pools_status(setup);
    label_pool(setup, "n3", Some("k8s"));
    wait_for_capacity(setup, K8S_CLASS, "n3", |gib| gib == SHARE_GIB).await;
    wait_for_capacity(setup, VM_CLASS, "n3", |gib| gib == 0).await;
    let after = pools_status(setup);
    assert_eq!(
        servers(&after, "k8s_pool"),
        servers(&before, "k8s_pool") + 1
    );
    assert_eq!(
        after["k8s_pool"]["total_capacity_gb"],
        json!(3 * SHARE_GIB),
        "{after}"
    );
    assert_eq!(servers(&after, "vm_pool"), 0);
    label_pool(setup, "n3", Some("vm"));
    wait_for_capacity(setup, K8S_CLASS, "n3", |gib| gib == 0).await;
    wait_for_capacity(setup, VM_CLASS, "n3", |gib| gib == SHARE_GIB).await;

    // The pools seed's scaling examples on a server with no vdrive yet.
    setup
        .cluster
        .add_node("n4", &[(TOPOLOGY_KEY, "n4")], "8", "32Gi")
        .await;
    let base = pools_status(setup);
    // Example 1: add a server to the k8s pool.
    label_pool(setup, "n4", Some("k8s"));
    let added = pools_status(setup);
    assert_eq!(servers(&added, "k8s_pool"), servers(&base, "k8s_pool") + 1);
    assert_eq!(
        gb(&added, "k8s_pool", "total_capacity_gb"),
        gb(&base, "k8s_pool", "total_capacity_gb") + SHARE_GIB
    );
    // Example 3: move it to the vm pool.
    label_pool(setup, "n4", Some("vm"));
    let moved = pools_status(setup);
    assert_eq!(servers(&moved, "k8s_pool"), servers(&base, "k8s_pool"));
    assert_eq!(servers(&moved, "vm_pool"), servers(&base, "vm_pool") + 1);
    // Example 2: remove it from the pools.
    label_pool(setup, "n4", None);
    let removed = pools_status(setup);
    assert_eq!(servers(&removed, "vm_pool"), servers(&base, "vm_pool"));
    assert_eq!(
        removed["system_reserve"]["total_servers"],
        base["system_reserve"]["total_servers"]
    );
    setup.cluster.kubectl(["delete", "node", "n4"]);

    // Clean up the big volume: pod, PVC; the PV and claim go (Delete).
    setup.cluster.force_delete_pod("default", "big-app").await;
    let big = bound_pv(setup, "default", "big").await;
    delete_pvc(setup, "default", "big").await;
    wait_for_pv_gone(setup, &big.name_any()).await;
    wait_for_claims_gone(setup, other, &volume_handle(&big)).await;
}

// ---- scenario 4 ----------------------------------------------------------------

async fn delete_releases_and_retain_keeps(setup: &Setup, first: &Placed) {
    // The kubelet's part of deleting a pod: unpublish and unstage.
    let handle = volume_handle(&first.pv);
    let endpoint = setup.cluster.endpoint(&first.node);
    setup
        .vdrive(&[
            "csi",
            "--endpoint",
            &endpoint,
            "unpublish",
            &handle,
            "--target-path",
            &first.target.display().to_string(),
        ])
        .expect("unpublish");
    setup
        .vdrive(&[
            "csi",
            "--endpoint",
            &endpoint,
            "unstage",
            &handle,
            "--staging-path",
            &first.staging.display().to_string(),
        ])
        .expect("unstage");
    setup.cluster.force_delete_pod("default", "app").await;
    delete_pvc(setup, "default", &first.pvc).await;
    wait_for_pv_gone(setup, &first.pv.name_any()).await;
    // The controller marks the claim releasing; the node erases it and releases it.
    wait_for_claims_gone(setup, &first.node, &handle).await;
    wait_for_capacity(setup, K8S_CLASS, &first.node, |gib| gib == SHARE_GIB).await;

    // vm-pool-storage keeps its volume (Retain).
    create_pvc(setup, "default", "disk", VM_CLASS, 20).await;
    create_pod(setup, "default", "vm", "disk").await;
    let node = setup.cluster.wait_for_pod_node("default", "vm", WAIT).await;
    assert_eq!(node, "n3", "the only vm server");
    let pv = bound_pv(setup, "default", "disk").await;
    let handle = volume_handle(&pv);
    setup.cluster.force_delete_pod("default", "vm").await;
    delete_pvc(setup, "default", "disk").await;
    let pvs: Api<PersistentVolume> = Api::all(setup.client.clone());
    let pv_name = pv.name_any();
    let released = eventually("the vm PV to be Released", WAIT, || {
        let pvs = pvs.clone();
        let pv_name = pv_name.clone();
        async move {
            let pv = pvs.get(&pv_name).await.map_err(|e| e.to_string())?;
            match pv.status.as_ref().and_then(|s| s.phase.clone()) {
                Some(phase) if phase == "Released" => Ok(pv),
                other => Err(format!("phase {other:?}")),
            }
        }
    })
    .await;
    assert_eq!(
        released
            .spec
            .as_ref()
            .unwrap()
            .persistent_volume_reclaim_policy
            .as_deref(),
        Some("Retain")
    );
    assert!(
        live_claims(setup, "n3")
            .await
            .iter()
            .any(|c| c.volume_id == handle),
        "a retained volume keeps its claim"
    );

    // The orphan check: nothing is orphaned while the PV is kept; once an admin
    // deletes the PV, the claim is reported, and released only when asked.
    let kubeconfig = setup.kubeconfig();
    let clean = setup
        .vdrive(&["orphans", "--json", "--kubeconfig", &kubeconfig])
        .expect("no orphans while the PV exists");
    let report: Value = serde_json::from_str(&clean).unwrap();
    assert_eq!(report["orphaned_claims"], json!([]), "{report}");
    assert_eq!(report["lost_volumes"], json!([]), "{report}");
    setup.cluster.kubectl(["delete", "pv", &pv_name]);
    wait_for_pv_gone(setup, &pv_name).await;
    let found = setup
        .vdrive(&["orphans", "--json", "--kubeconfig", &kubeconfig])
        .expect_err("an orphan makes the check fail");
    let report: Value = serde_json::from_str(&found).unwrap_or_else(|e| panic!("{e}: {found}"));
    assert_eq!(
        report["orphaned_claims"][0]["volume_id"],
        json!(handle),
        "{report}"
    );
    assert_eq!(report["orphaned_claims"][0]["owner"], json!("default:disk"));
    assert!(
        live_claims(setup, "n3")
            .await
            .iter()
            .any(|c| c.volume_id == handle),
        "reporting releases nothing"
    );
    let released = setup
        .vdrive(&[
            "orphans",
            "--release",
            "--json",
            "--kubeconfig",
            &kubeconfig,
        ])
        .expect("releasing every orphan succeeds");
    let report: Value = serde_json::from_str(&released).unwrap();
    assert_eq!(report["released"], json!([handle]));
    wait_for_claims_gone(setup, "n3", &handle).await;
}

// ---- scenario 5 ----------------------------------------------------------------

async fn expansion_grows_pv_and_filesystem(setup: &Setup) {
    create_pvc(setup, "default", "grow", K8S_CLASS, 4).await;
    create_pod(setup, "default", "grower", "grow").await;
    let node = setup
        .cluster
        .wait_for_pod_node("default", "grower", WAIT)
        .await;
    let pv = bound_pv(setup, "default", "grow").await;
    let handle = volume_handle(&pv);
    let staging = setup.cluster.dir().join("mnt/grow/staging");
    let target = setup.cluster.dir().join("mnt/grow/target");
    stage_and_publish(setup, &node, &pv, &staging, &target);
    let before = filesystem_bytes(&target);

    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(setup.client.clone(), "default");
    pvcs.patch(
        "grow",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "resources": { "requests": { "storage": "8Gi" } } } })),
    )
    .await
    .expect("ask for 8Gi");
    // csi-resizer calls ControllerExpandVolume and grows the PV.
    let pvs: Api<PersistentVolume> = Api::all(setup.client.clone());
    let pv_name = pv.name_any();
    eventually("the PV to grow to 8Gi", WAIT, || {
        let pvs = pvs.clone();
        let pv_name = pv_name.clone();
        async move {
            let pv = pvs.get(&pv_name).await.map_err(|e| e.to_string())?;
            let capacity = pv
                .spec
                .and_then(|s| s.capacity)
                .and_then(|c| c.get("storage").map(|q| q.0.clone()))
                .unwrap_or_default();
            if quantity_bytes(&capacity) == Some(8 * GIB) {
                Ok(())
            } else {
                Err(format!("capacity {capacity}"))
            }
        }
    })
    .await;
    let claims = live_claims(setup, &node).await;
    let grown: u64 = claims
        .iter()
        .filter(|c| c.volume_id == handle)
        .map(|c| c.size_gib)
        .sum();
    assert_eq!(grown, 8, "the ledger holds the new size");

    // The kubelet's part: NodeExpandVolume on the staged volume. ext4 grows
    // online where the plugin may (CAP_SYS_RESOURCE); otherwise on restage.
    let endpoint = setup.cluster.endpoint(&node);
    let path = target.display().to_string();
    let staging_arg = staging.display().to_string();
    let expanded = setup.vdrive(&[
        "csi",
        "--endpoint",
        &endpoint,
        "node-expand",
        &handle,
        "--volume-path",
        &path,
        "--staging-path",
        &staging_arg,
        "--size",
        "8Gi",
    ]);
    if expanded.is_err() {
        unstage(setup, &node, &handle, &staging, &target);
        stage_and_publish(setup, &node, &pv, &staging, &target);
    }
    let after = filesystem_bytes(&target);
    assert!(
        after > before + 3 * GIB,
        "the filesystem grew from {before} to {after} bytes ({expanded:?})"
    );
    unstage(setup, &node, &handle, &staging, &target);
    setup.cluster.force_delete_pod("default", "grower").await;
    delete_pvc(setup, "default", "grow").await;
    wait_for_pv_gone(setup, &pv_name).await;
    wait_for_claims_gone(setup, &node, &handle).await;
}

// ---- scenario 6 ----------------------------------------------------------------

async fn fifty_pvcs_at_once(setup: &Setup) {
    // All three servers in the k8s pool; 50 × 5 GiB needs all three shares.
    label_pool(setup, "n3", Some("k8s"));
    wait_for_capacity(setup, K8S_CLASS, "n3", |gib| gib == SHARE_GIB).await;
    setup.cluster.create_namespace("burst").await;
    let names: Vec<String> = (0..50).map(|i| format!("vol-{i:02}")).collect();
    let creates = names.iter().map(|name| async move {
        create_pvc(setup, "burst", name, K8S_CLASS, 5).await;
        create_pod(setup, "burst", &format!("pod-{name}"), name).await;
    });
    let started = std::time::Instant::now();
    futures_util::future::join_all(creates).await;
    let ledger = wait_all_bound(setup, "burst", &names).await;
    // A figure for the record, not a limit: speed is measured in benchmarks.
    eprintln!(
        "50 PVCs and pods created, bound and scheduled in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let used: HashSet<&str> = ledger.values().map(|c| c.1.as_str()).collect();
    assert_eq!(
        used.len(),
        3,
        "the burst spreads over all three servers: {used:?}"
    );
    delete_all(setup, "burst", &names).await;
    label_pool(setup, "n3", Some("vm"));
    wait_for_capacity(setup, K8S_CLASS, "n3", |gib| gib == 0).await;
}

/// Waits until every PVC is bound and every pod scheduled, then checks the
/// ledger against the PVs: one live volume per PV, owned by its PVC, on the PV's
/// node, and no extent booked twice. Returns volume id → (owner, node).
async fn wait_all_bound(
    setup: &Setup,
    namespace: &str,
    names: &[String],
) -> HashMap<String, (String, String)> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(setup.client.clone(), namespace);
    let pvcs = &pvcs;
    let bound = eventually(
        &format!("{} PVCs in {namespace} to be bound", names.len()),
        Duration::from_secs(300),
        || async move {
            let list = pvcs
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            let pending: Vec<String> = list
                .items
                .iter()
                .filter(|c| c.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound"))
                .map(|c| c.name_any())
                .collect();
            if pending.is_empty() && list.items.len() == names.len() {
                Ok(list.items)
            } else {
                Err(format!("{} not bound: {pending:?}", pending.len()))
            }
        },
    )
    .await;
    for name in names {
        setup
            .cluster
            .wait_for_pod_node(namespace, &format!("pod-{name}"), WAIT)
            .await;
    }
    let pvs: Api<PersistentVolume> = Api::all(setup.client.clone());
    let mut expected: HashMap<String, (String, String)> = HashMap::new();
    for pvc in &bound {
        let pv_name = pvc
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .expect("bound to a PV");
        let pv = pvs.get(&pv_name).await.expect("the bound PV");
        let node = pv_node(&pv);
        expected.insert(
            volume_handle(&pv),
            (format!("{namespace}:{}", pvc.name_any()), node),
        );
    }
    // The ledger equals the PVs: no leaked claim, no lost volume.
    let mut recorded: HashMap<String, (String, String)> = HashMap::new();
    for node in ["n1", "n2", "n3"] {
        let ledger = node_ledger(&setup.client, node).await;
        ledger
            .check_invariants()
            .unwrap_or_else(|e| panic!("node {node}'s ledger: {e}"));
        for claim in ledger.claims.iter().filter(|c| !c.releasing) {
            if claim.owner.starts_with(&format!("{namespace}:")) {
                recorded.insert(
                    claim.volume_id.clone(),
                    (claim.owner.clone(), node.to_string()),
                );
            }
        }
    }
    assert_eq!(recorded, expected, "the ledger equals the PVs");
    expected
}

async fn delete_all(setup: &Setup, namespace: &str, names: &[String]) {
    let pvs: Api<PersistentVolume> = Api::all(setup.client.clone());
    let mut handles = Vec::new();
    for name in names {
        setup
            .cluster
            .force_delete_pod(namespace, &format!("pod-{name}"))
            .await;
        let pv = bound_pv(setup, namespace, name).await;
        handles.push((pv.name_any(), volume_handle(&pv), pv_node(&pv)));
        delete_pvc(setup, namespace, name).await;
    }
    for (pv, handle, node) in handles {
        wait_for_pv_gone(setup, &pv).await;
        wait_for_claims_gone(setup, &node, &handle).await;
    }
    assert!(
        pvs.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

// ---- scenario 7 ----------------------------------------------------------------

async fn controller_killed_mid_burst(setup: &mut Setup) {
    setup.cluster.create_namespace("storm").await;
    let names: Vec<String> = (0..24).map(|i| format!("vol-{i:02}")).collect();
    {
        let setup = &*setup;
        let creates = names.iter().map(|name| async move {
            create_pvc(setup, "storm", name, K8S_CLASS, 2).await;
            create_pod(setup, "storm", &format!("pod-{name}"), name).await;
        });
        futures_util::future::join_all(creates).await;
    }
    // Kill it hard once provisioning is under way: some volumes made, some not.
    let pvs: Api<PersistentVolume> = Api::all(setup.client.clone());
    let pvs = &pvs;
    eventually("the first volumes of the burst", WAIT, || async move {
        let made = pvs
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .len();
        if made >= 3 {
            Ok(())
        } else {
            Err(format!("{made} PVs"))
        }
    })
    .await;
    let pid = setup.controller.pid().expect("the controller runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the controller");
    tokio::time::sleep(Duration::from_secs(2)).await;
    setup.controller.restart();
    let socket = setup.cluster.socket("controller");
    wait_for_socket(&socket, &mut setup.controller).await;
    // The sidecars exit when they lose the driver; in a pod the kubelet restarts
    // them, here the test does.
    for sidecar in [&mut setup.provisioner, &mut setup.resizer] {
        if !sidecar.is_running() {
            sidecar.restart();
        }
    }
    wait_all_bound(setup, "storm", &names).await;
    delete_all(setup, "storm", &names).await;
}

// ---- helpers -------------------------------------------------------------------

async fn create_pvc(setup: &Setup, namespace: &str, name: &str, class: &str, gib: u64) {
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": { "name": name, "namespace": namespace },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": class,
            "resources": { "requests": { "storage": format!("{gib}Gi") } },
        },
    }))
    .expect("a PVC");
    Api::<PersistentVolumeClaim>::namespaced(setup.client.clone(), namespace)
        .create(&PostParams::default(), &pvc)
        .await
        .unwrap_or_else(|e| panic!("cannot create PVC {namespace}/{name}: {e}"));
}

async fn create_pod(setup: &Setup, namespace: &str, name: &str, pvc: &str) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": name, "namespace": namespace },
        "spec": {
            "containers": [{
                "name": "app",
                "image": "busybox",
                "volumeMounts": [{ "name": "data", "mountPath": "/data" }],
            }],
            "volumes": [{ "name": "data", "persistentVolumeClaim": { "claimName": pvc } }],
        },
    }))
    .expect("a Pod");
    Api::<Pod>::namespaced(setup.client.clone(), namespace)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("cannot create pod {namespace}/{name}: {e}"));
}

async fn delete_pvc(setup: &Setup, namespace: &str, name: &str) {
    Api::<PersistentVolumeClaim>::namespaced(setup.client.clone(), namespace)
        .delete(name, &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("cannot delete PVC {namespace}/{name}: {e}"));
}

async fn bound_pv(setup: &Setup, namespace: &str, pvc: &str) -> PersistentVolume {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(setup.client.clone(), namespace);
    let pvs: Api<PersistentVolume> = Api::all(setup.client.clone());
    let (pvcs, pvs) = (&pvcs, &pvs);
    eventually(
        &format!("PVC {namespace}/{pvc} to be bound"),
        WAIT,
        || async move {
            let claim = pvcs.get(pvc).await.map_err(|e| e.to_string())?;
            let phase = claim.status.as_ref().and_then(|s| s.phase.clone());
            let volume = claim.spec.as_ref().and_then(|s| s.volume_name.clone());
            match (phase.as_deref(), volume) {
                (Some("Bound"), Some(volume)) => pvs.get(&volume).await.map_err(|e| e.to_string()),
                (phase, _) => Err(format!("phase {phase:?}")),
            }
        },
    )
    .await
}

async fn wait_for_pv_gone(setup: &Setup, name: &str) {
    let pvs: Api<PersistentVolume> = Api::all(setup.client.clone());
    let pvs = &pvs;
    eventually(&format!("PV {name} to be deleted"), WAIT, || async move {
        match pvs.get_opt(name).await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(pv) => Err(format!("phase {:?}", pv.status.and_then(|s| s.phase))),
        }
    })
    .await;
}

async fn wait_for_claims_gone(setup: &Setup, node: &str, volume_id: &str) {
    eventually(
        &format!("the claims of {volume_id} to leave {node}'s ledger"),
        WAIT,
        || async move {
            let claims = node_ledger(&setup.client, node).await.claims;
            match claims.iter().find(|c| c.volume_id == volume_id) {
                None => Ok(()),
                Some(c) => Err(format!("still there (releasing: {})", c.releasing)),
            }
        },
    )
    .await;
}

fn volume_handle(pv: &PersistentVolume) -> String {
    pv.spec
        .as_ref()
        .and_then(|s| s.csi.as_ref())
        .map(|csi| csi.volume_handle.clone())
        .expect("a CSI PV")
}

fn pv_node(pv: &PersistentVolume) -> String {
    let affinity = serde_json::to_value(&pv.spec.as_ref().unwrap().node_affinity).unwrap();
    affinity["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"][0]
        .as_str()
        .expect("a PV pinned to a node")
        .to_string()
}

/// The node's ledger as the annotations say, decoded by vdrive's own code.
async fn node_ledger(client: &Client, node: &str) -> vdrive::ledger::NodeLedger {
    support::e2e::node_ledger(client, node)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn live_claims(setup: &Setup, node: &str) -> Vec<Claim> {
    node_ledger(&setup.client, node)
        .await
        .claims
        .into_iter()
        .filter(|c| !c.releasing)
        .collect()
}

fn stage_and_publish(
    setup: &Setup,
    node: &str,
    pv: &PersistentVolume,
    staging: &Path,
    target: &Path,
) {
    std::fs::create_dir_all(staging).unwrap();
    std::fs::create_dir_all(target).unwrap();
    let csi = pv
        .spec
        .as_ref()
        .and_then(|s| s.csi.as_ref())
        .expect("a CSI PV");
    let endpoint = setup.cluster.endpoint(node);
    let mut args: Vec<String> = vec![
        "csi".into(),
        "--endpoint".into(),
        endpoint.clone(),
        "stage".into(),
        csi.volume_handle.clone(),
        "--staging-path".into(),
        staging.display().to_string(),
    ];
    for (key, value) in csi.volume_attributes.iter().flatten() {
        args.push("--context".into());
        args.push(format!("{key}={value}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    setup.vdrive(&args).expect("NodeStageVolume");
    setup
        .vdrive(&[
            "csi",
            "--endpoint",
            &endpoint,
            "publish",
            &csi.volume_handle,
            "--staging-path",
            &staging.display().to_string(),
            "--target-path",
            &target.display().to_string(),
        ])
        .expect("NodePublishVolume");
}

fn unstage(setup: &Setup, node: &str, handle: &str, staging: &Path, target: &Path) {
    let endpoint = setup.cluster.endpoint(node);
    setup
        .vdrive(&[
            "csi",
            "--endpoint",
            &endpoint,
            "unpublish",
            handle,
            "--target-path",
            &target.display().to_string(),
        ])
        .expect("NodeUnpublishVolume");
    setup
        .vdrive(&[
            "csi",
            "--endpoint",
            &endpoint,
            "unstage",
            handle,
            "--staging-path",
            &staging.display().to_string(),
        ])
        .expect("NodeUnstageVolume");
}

fn filesystem_bytes(path: &Path) -> u64 {
    let stat = nix::sys::statvfs::statvfs(path).expect("statvfs");
    stat.blocks() * stat.fragment_size()
}

/// The CSIStorageCapacity the provisioner published for `class` on `node`.
async fn capacity_object(setup: &Setup, class: &str, node: &str) -> Option<CSIStorageCapacity> {
    let all: Api<CSIStorageCapacity> = Api::namespaced(setup.client.clone(), SIDECAR_NAMESPACE);
    let list = all.list(&ListParams::default()).await.ok()?;
    list.items.into_iter().find(|c| {
        c.storage_class_name == class
            && c.node_topology
                .as_ref()
                .and_then(|t| t.match_labels.as_ref())
                .and_then(|labels| labels.get(TOPOLOGY_KEY))
                .map(String::as_str)
                == Some(node)
    })
}

/// The capacity the provisioner published for `class` on `node`, in GiB.
async fn capacity_gib(setup: &Setup, class: &str, node: &str) -> Option<u64> {
    capacity_object(setup, class, node).await.map(|c| {
        c.capacity
            .as_ref()
            .and_then(|q| quantity_bytes(&q.0))
            .unwrap_or(0)
            / GIB
    })
}

/// Waits until the maximumVolumeSize published for `class` on `node` is `ok`
/// (an absent one never is); the object.
async fn wait_for_max_volume(
    setup: &Setup,
    class: &str,
    node: &str,
    ok: impl Fn(u64) -> bool,
) -> CSIStorageCapacity {
    let ok = &ok;
    eventually(
        &format!("the maximumVolumeSize of {class} on {node}"),
        WAIT,
        || async move {
            let found = capacity_object(setup, class, node)
                .await
                .ok_or("no CSIStorageCapacity")?;
            let max = found
                .maximum_volume_size
                .as_ref()
                .map(|q| quantity_bytes(&q.0));
            match max {
                Some(Some(bytes)) if bytes % GIB == 0 && ok(bytes / GIB) => Ok(found),
                other => Err(format!("maximumVolumeSize {other:?} bytes")),
            }
        },
    )
    .await
}

async fn wait_for_capacity(setup: &Setup, class: &str, node: &str, ok: impl Fn(u64) -> bool) {
    let ok = &ok;
    eventually(
        &format!("CSIStorageCapacity of {class} on {node}"),
        WAIT,
        || async move {
            match capacity_gib(setup, class, node).await {
                Some(gib) if ok(gib) => Ok(()),
                other => Err(format!("{other:?} GiB")),
            }
        },
    )
    .await;
}

/// Bytes of a Kubernetes quantity as the sidecars write them ("100Gi", "0", "5368709120").
fn quantity_bytes(text: &str) -> Option<u64> {
    let units = [
        ("Ki", 1u64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ];
    for (suffix, factor) in units {
        if let Some(number) = text.strip_suffix(suffix) {
            return number.parse::<u64>().ok().map(|n| n * factor);
        }
    }
    text.parse().ok()
}

fn label_pool(setup: &Setup, node: &str, pool: Option<&str>) {
    let label = match pool {
        Some(pool) => format!("pool={pool}"),
        None => "pool-".to_string(),
    };
    setup
        .cluster
        .kubectl(["label", "node", node, &label, "--overwrite"]);
}

/// `vdrive pools status` against the cluster, with the test's pool settings.
fn pools_status(setup: &Setup) -> Value {
    let out = setup
        .vdrive(&[
            "pools",
            "status",
            "--kubeconfig",
            &setup.kubeconfig(),
            &format!("--capacity-per-server-gib={SHARE_GIB}"),
            &format!("--system-reserve-per-server-gib={RESERVE_GIB}"),
        ])
        .expect("vdrive pools status");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn servers(status: &Value, pool: &str) -> u64 {
    status[pool]["servers"]
        .as_u64()
        .unwrap_or_else(|| panic!("{status}"))
}

fn gb(status: &Value, pool: &str, key: &str) -> u64 {
    status[pool][key]
        .as_u64()
        .unwrap_or_else(|| panic!("{status}"))
}

// ---- two controllers, one node; a drive vanishes --------------------------------

#[test]
#[ignore = "needs Kubernetes binaries: run e2e/run"]
fn two_controllers_never_double_book_and_a_vanished_drive_is_reported() {
    let bin = bin_dir_from_env();
    runtime().block_on(async move {
        let cluster = Cluster::start(&bin);
        let _release = ReleaseUnder::cluster(&cluster);
        let client = cluster.client().await;
        let vdrive = PathBuf::from(env!("CARGO_BIN_EXE_vdrive"));
        cluster
            .add_node(
                "solo",
                &[("pool", "k8s"), (TOPOLOGY_KEY, "solo")],
                "8",
                "32Gi",
            )
            .await;
        let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut node = cluster.start_vdrive_node(
            "solo",
            DRIVES,
            &[
                "--rescan-interval=1",
                &format!("--metrics-address=127.0.0.1:{metrics_port}"),
            ],
        );
        wait_for_socket(&cluster.socket("solo"), &mut node).await;
        // Two replicas, as the Deployment runs them, both taking requests.
        let mut controllers = Vec::new();
        for name in ["c1", "c2"] {
            let daemon = cluster
                .start_vdrive_controller(name, &["--orphan-check-interval=0"])
                .await;
            controllers.push(daemon);
        }

        // 40 × 10 GiB at once through both, onto one 160 GiB TLC drive: exactly
        // 16 fit, and no extent is booked twice.
        let requests = (0..40).map(|i| {
            let endpoint = format!("unix://{}/c{}.sock", cluster.dir().display(), 1 + i % 2);
            let vdrive = vdrive.clone();
            tokio::task::spawn_blocking(move || {
                Command::new(&vdrive)
                    .args(["csi", "--endpoint", &endpoint, "create-volume"])
                    .arg(format!("race-{i:02}"))
                    .args(["--size", "10Gi", "--class", K8S_CLASS])
                    .output()
                    .expect("run vdrive csi create-volume")
            })
        });
        let outcomes = futures_util::future::join_all(requests).await;
        let mut created = 0;
        for outcome in outcomes {
            let out = outcome.expect("a create-volume run");
            let text = String::from_utf8_lossy(&out.stderr);
            if out.status.success() {
                created += 1;
            } else {
                assert!(
                    text.contains("Insufficient") || text.contains("insufficient"),
                    "a refusal says the drive is full: {text}"
                );
            }
        }
        assert_eq!(created, 16, "exactly what the drive holds");
        let nodes: Api<Node> = Api::all(client.clone());
        let solo = nodes.get("solo").await.expect("Node solo");
        let ledger = node_ledger(&client, "solo").await;
        assert_eq!(ledger.claims.len(), 16);
        ledger.check_invariants().expect("no extent booked twice");
        assert_eq!(
            solo.status
                .as_ref()
                .and_then(|s| s.capacity.as_ref())
                .and_then(|c| c.get("vdrive.io/shared-drives-capacity"))
                .map(|q| q.0.clone()),
            Some("320".to_string()),
            "the extended resource counts the signed GiB"
        );

        // The TLC drive vanishes (its loop device goes away) while it holds all
        // 16 volumes: the claims stay, the drive is marked missing, and the node
        // says so in an Event and a metric.
        let image = cluster.dir().join("solo/simulated-drives/sim-tlc-0.img");
        let found = Command::new("losetup")
            .arg("-j")
            .arg(&image)
            .output()
            .expect("losetup -j");
        let listing = String::from_utf8_lossy(&found.stdout);
        let device = listing
            .split(':')
            .next()
            .filter(|d| !d.is_empty())
            .expect("the TLC drive's loop device")
            .to_string();
        let detached = Command::new("losetup")
            .args(["-d", &device])
            .status()
            .expect("losetup -d");
        assert!(detached.success());
        let nodes = &nodes;
        eventually("the TLC drive to be marked missing", WAIT, || async move {
            let solo = nodes.get("solo").await.map_err(|e| e.to_string())?;
            let drives = solo.annotations()[DRIVES_ANNOTATION].clone();
            let claims =
                decode_claims(&solo.annotations()[CLAIMS_ANNOTATION]).map_err(|e| e.to_string())?;
            let capacity = solo.status.and_then(|s| s.capacity).and_then(|c| {
                c.get("vdrive.io/shared-drives-capacity")
                    .map(|q| q.0.clone())
            });
            if drives.contains(r#""missing":true"#)
                && claims.len() == 16
                && capacity.as_deref() == Some("160")
            {
                Ok(())
            } else {
                Err(format!(
                    "drives {drives}, {} claims, capacity {capacity:?}",
                    claims.len()
                ))
            }
        })
        .await;
        let note = wait_for_event(&client, None, "solo", "SharedDriveMissing", "").await;
        assert!(note.contains("16 virtual drive(s)"), "{note}");
        let scrape = http_get(metrics_port, "/metrics");
        assert!(
            scrape.contains("vdrive_node_missing_drives_with_claims 1"),
            "{scrape}"
        );
        drop(controllers);
        drop(node);
    });
}

/// A plain HTTP/1.0 GET on loopback; the body.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or(response)
}

#[test]
#[ignore = "needs Kubernetes binaries: run e2e/run"]
fn a_malformed_annotation_quarantines_only_its_node() {
    let bin = bin_dir_from_env();
    runtime().block_on(async move {
        let cluster = Cluster::start(&bin);
        let _release = ReleaseUnder::cluster(&cluster);
        let client = cluster.client().await;
        let vdrive = PathBuf::from(env!("CARGO_BIN_EXE_vdrive"));
        for name in ["good", "bad"] {
            cluster
                .add_node(name, &[("pool", "k8s"), (TOPOLOGY_KEY, name)], "8", "32Gi")
                .await;
        }
        let mut node = cluster.start_vdrive_node("good", DRIVES, &[]);
        wait_for_socket(&cluster.socket("good"), &mut node).await;
        let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let controller = cluster
            .start_vdrive_controller(
                "c",
                &[
                    "--orphan-check-interval=0",
                    &format!("--metrics-address=127.0.0.1:{metrics_port}"),
                ],
            )
            .await;
        let endpoint = format!("unix://{}/c.sock", cluster.dir().display());
        let csi = |args: &[&str]| {
            let out = Command::new(&vdrive)
                .args(["csi", "--endpoint", &endpoint])
                .args(args)
                .output()
                .expect("run vdrive csi");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if out.status.success() {
                Ok(text)
            } else {
                Err(text)
            }
        };
        let kubeconfig = cluster.kubeconfig_path().display().to_string();
        let health = || {
            let out = Command::new(&vdrive)
                .args(["pools", "health", "--kubeconfig", &kubeconfig])
                .output()
                .expect("run vdrive pools health");
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        };

        // Garbage in one Node's claims annotation.
        let nodes: Api<Node> = Api::all(client.clone());
        let annotate = |value: Value| {
            let nodes = nodes.clone();
            async move {
                let patch = json!({"metadata": {"annotations": {CLAIMS_ANNOTATION: value}}});
                nodes
                    .patch("bad", &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .expect("annotate Node bad");
            }
        };
        annotate(json!("{not json")).await;
        eventually("the bad node to be counted", WAIT, || async {
            let scrape = http_get(metrics_port, "/metrics");
            if scrape.contains("vdrive_quarantined_nodes 1") {
                Ok(())
            } else {
                Err(scrape)
            }
        })
        .await;

        // The rest of the cluster keeps working.
        let created = csi(&[
            "create-volume",
            "q-1",
            "--size",
            "1Gi",
            "--class",
            K8S_CLASS,
        ])
        .expect("a volume on the good node");
        assert!(created.contains("good"), "{created}");
        // A volume found nowhere may be on the bad node: no silent success.
        let unknown = "00000000-0000-0000-0000-000000000000";
        let refused = csi(&["delete-volume", unknown]).expect_err("delete cannot vouch");
        assert!(
            refused.contains("Unavailable") && refused.contains("node bad"),
            "{refused}"
        );
        let report = health();
        assert!(
            report.contains("node bad is quarantined") && report.contains("not a JSON object"),
            "{report}"
        );
        let note = wait_for_event(&client, None, "bad", "LedgerUnreadable", "").await;
        assert!(note.contains("kubectl edit node bad"), "{note}");

        // Repaired, the node is back.
        annotate(json!("{}")).await;
        eventually("the repaired node to be back", WAIT, || async {
            let scrape = http_get(metrics_port, "/metrics");
            if scrape.contains("vdrive_quarantined_nodes 0") {
                Ok(())
            } else {
                Err(scrape)
            }
        })
        .await;
        assert!(!health().contains("quarantined"));
        csi(&["delete-volume", unknown]).expect("an unknown volume is gone");
        drop(controller);
        drop(node);
    });
}

// ---- a Node deleted and re-created ------------------------------------------------

#[test]
#[ignore = "needs Kubernetes binaries: run e2e/run"]
fn a_re_created_node_quarantines_its_drives_until_adopted() {
    let bin = bin_dir_from_env();
    runtime().block_on(async move {
        let cluster = Cluster::start(&bin);
        let _release = ReleaseUnder::cluster(&cluster);
        let client = cluster.client().await;
        let vdrive = PathBuf::from(env!("CARGO_BIN_EXE_vdrive"));
        let labels = [("pool", "k8s"), (TOPOLOGY_KEY, "phoenix")];
        cluster.add_node("phoenix", &labels, "8", "32Gi").await;
        let mut node = cluster.start_vdrive_node("phoenix", DRIVES, &["--rescan-interval=1"]);
        wait_for_socket(&cluster.socket("phoenix"), &mut node).await;
        let controller = cluster
            .start_vdrive_controller("controller", &["--orphan-check-interval=0"])
            .await;
        let endpoint = format!("unix://{}/controller.sock", cluster.dir().display());
        let create = |name: &str| {
            Command::new(&vdrive)
                .args(["csi", "--endpoint", &endpoint, "create-volume", name])
                .args(["--size", "10Gi", "--class", K8S_CLASS])
                .output()
                .expect("run vdrive csi create-volume")
        };
        for i in 0..3 {
            let out = create(&format!("kept-{i}"));
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let before = node_ledger(&client, "phoenix").await;
        assert_eq!(before.claims.len(), 3);
        // The node writes the claims into the TLC drive's header at its next scan.
        let image = cluster.dir().join("phoenix/simulated-drives/sim-tlc-0.img");
        let image = &image;
        eventually("the claims in the drive's header", WAIT, || async move {
            let record = vdrive::node::claim_record::read(image).map_err(|e| e.to_string())?;
            match record {
                Some(stored) if stored.record.claims.len() == 3 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;

        // kubeadm reset and join: the Node object goes, and comes back bare.
        let nodes: Api<Node> = Api::all(client.clone());
        nodes
            .delete("phoenix", &Default::default())
            .await
            .expect("delete Node phoenix");
        let nodes = &nodes;
        let admin = &client;
        eventually("Node phoenix gone", WAIT, || async move {
            match nodes.get_opt("phoenix").await {
                Ok(None) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        cluster.add_node("phoenix", &labels, "8", "32Gi").await;
        let tlc = before.claims[0].physical_uuid;
        let reason = eventually("the TLC drive quarantined", WAIT, || async move {
            let ledger = support::e2e::node_ledger(admin, "phoenix").await?;
            ledger
                .drive(&tlc)
                .and_then(|d| d.quarantined.clone())
                .ok_or_else(|| format!("drives {:?}", ledger.drives))
        })
        .await;
        assert!(
            reason.contains("ledger was lost or forked")
                && reason.contains(&before.claims[0].volume_id),
            "{reason}"
        );
        let note = wait_for_event(&client, None, "phoenix", "SharedDriveQuarantined", "").await;
        assert!(
            note.contains(&tlc.to_string()) && note.contains("ledger was lost or forked"),
            "{note}"
        );
        // Nothing is carved over the three volumes: the class's TLC is refused.
        let out = create("new-after-rejoin");
        let refusal = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            !out.status.success(),
            "a volume was carved on a quarantined drive"
        );
        assert!(refusal.contains("quarantined"), "{refusal}");
        assert!(node_ledger(&client, "phoenix").await.claims.is_empty());

        // The operator brings the claims back from the drive.
        let adopted = Command::new(&vdrive)
            .args(["drives", "adopt", "--node-id", "phoenix", "--kubeconfig"])
            .arg(cluster.kubeconfig_path())
            .arg("--device")
            .arg(image)
            .output()
            .expect("run vdrive drives adopt");
        let said = String::from_utf8_lossy(&adopted.stdout).to_string()
            + &String::from_utf8_lossy(&adopted.stderr);
        assert!(adopted.status.success(), "{said}");
        assert!(said.contains("3 claim(s) brought back"), "{said}");
        eventually("the quarantine lifted", WAIT, || async move {
            let ledger = support::e2e::node_ledger(admin, "phoenix").await?;
            match ledger.drive(&tlc) {
                Some(d) if d.quarantined.is_none() && ledger.claims.len() == 3 => Ok(()),
                other => Err(format!("{other:?}, {} claims", ledger.claims.len())),
            }
        })
        .await;
        let after = node_ledger(&client, "phoenix").await;
        let ids = |l: &vdrive::ledger::NodeLedger| {
            let mut ids: Vec<String> = l.claims.iter().map(|c| c.volume_id.clone()).collect();
            ids.sort();
            ids
        };
        assert_eq!(ids(&after), ids(&before), "the same volumes are back");
        let out = create("new-after-adopt");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let last = node_ledger(&client, "phoenix").await;
        assert_eq!(last.claims.len(), 4);
        last.check_invariants().expect("no extent booked twice");
        drop(controller);
        drop(node);
    });
}
