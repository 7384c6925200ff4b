//! The pool API of `vdrive controller` in a real Kubernetes control plane (see
//! `support::cluster`): the controller runs with the token of deploy/'s
//! `vdrive-controller` ServiceAccount (so deploy/'s RBAC is what it may do),
//! beside csi-provisioner and csi-resizer and one `vdrive node` on simulated
//! drives. Callers are ServiceAccounts with their own tokens (TokenRequest):
//! a tenant whose Role allows the PVC verbs in namespace `vms-a` only, and a
//! pool reader who may get nodes.
//!
//! No kubelet runs: the test schedules the pod that consumes a VM's disk and
//! then reports it Running, as kubelet would once it had staged the disk (this
//! host has no device-mapper, so the block stage itself cannot run here; the
//! image import is tested in tests/vm_images.rs and tests/pool_api.rs).
//! Run with `e2e/run`, or:
//! `VDRIVE_K8S_BIN=... cargo test --locked --test e2e_api -- --ignored --nocapture`.

mod support;

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{
    Event, PersistentVolume, PersistentVolumeClaim, Pod, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use support::cluster::{Cluster, Daemon, bin_dir_from_env, eventually};
use support::e2e::{ReleaseUnder, runtime, wait_for_socket};
use support::http::{Answer, free_port, get, request_as};

const SHARE_GIB: u64 = 100;
const RESERVE_GIB: u64 = 20;
const WAIT: Duration = Duration::from_secs(90);
const TENANT_NS: &str = "vms-a";
const OTHER_NS: &str = "vms-b";
const IMAGE_SOURCE: &str = "/srv/vdrive-e2e/base.raw";

/// Field order is drop order: vdrive and the sidecars stop before the
/// control plane.
struct Setup {
    controller: Daemon,
    _node: Daemon,
    _provisioner: Daemon,
    _resizer: Daemon,
    /// After the vdrive processes, before the cluster: whatever a failed
    /// scenario left staged, and the nodes' simulated drives.
    _release: ReleaseUnder,
    cluster: Cluster,
    client: Client,
    api: String,
}

#[test]
#[ignore = "needs Kubernetes binaries: run e2e/run"]
fn the_pool_api_in_a_cluster() {
    let bin = bin_dir_from_env();
    runtime().block_on(async move {
        let setup = set_up(&bin).await;
        let tenant = account_token(&setup, TENANT_NS, "tenant").await;
        let reader = account_token(&setup, TENANT_NS, "pool-reader").await;
        let outsider = account_token(&setup, OTHER_NS, "outsider").await;

        tokens_are_required(&setup, &tenant).await;
        rights_are_the_callers(&setup, &tenant, &outsider).await;
        a_vm_lives_and_dies_as_a_pvc(&setup, &tenant).await;
        keep_disk_keeps_the_pvc(&setup, &tenant).await;
        pools_follow_the_labels(&setup, &reader, &tenant).await;
        kubevirt_gets_a_virtual_machine(&setup, &tenant).await;
    });
}

async fn set_up(bin: &Path) -> Setup {
    let cluster = Cluster::start(bin);
    let client = cluster.client().await;
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    cluster.kubectl(["apply", "-k", &deploy.display().to_string()]);
    for namespace in [TENANT_NS, OTHER_NS] {
        cluster.create_namespace(namespace).await;
    }
    // One server of the vm pool, one of the k8s pool (relabelled later).
    for (name, pool) in [("vm1", "vm"), ("k1", "k8s")] {
        cluster.add_csi_node(name, Some(pool)).await;
    }
    let dir = cluster.dir().to_path_buf();
    let mut node = cluster.start_vdrive_node("vm1", "qlc:160x1", &[]);
    wait_for_socket(&cluster.socket("vm1"), &mut node).await;

    // The controller as deploy/'s ServiceAccount, with a catalog of one local image.
    let token = token_of(&client, "vdrive", "vdrive-controller").await;
    let kubeconfig = dir.join("controller.kubeconfig");
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "e2e", "cluster": {
            "server": cluster.server(),
            "certificate-authority": dir.join("pki/ca.crt").display().to_string(),
        }}],
        "users": [{ "name": "controller", "user": { "token": token } }],
        "contexts": [{ "name": "e2e", "context": { "cluster": "e2e", "user": "controller" } }],
        "current-context": "e2e",
    });
    std::fs::write(&kubeconfig, config.to_string()).expect("write the controller's kubeconfig");
    let catalog = dir.join("vm-images.json");
    let catalog_json = json!({
        "images": { "base": { "source": IMAGE_SOURCE, "format": "raw" } },
        "server_types": { "cx21": { "cpu": 2, "memory": 4 } },
    });
    std::fs::write(&catalog, catalog_json.to_string()).expect("write the catalog");
    let api = format!("127.0.0.1:{}", free_port());
    let command = cluster.vdrive_controller_command_as(
        &kubeconfig,
        "controller",
        &[
            "--orphan-check-interval=0",
            &format!("--api-address={api}"),
            &format!("--vm-images={}", catalog.display()),
            &format!("--capacity-per-server-gib={SHARE_GIB}"),
            &format!("--system-reserve-per-server-gib={RESERVE_GIB}"),
        ],
    );
    let mut controller = cluster.spawn("vdrive-controller", command);
    let socket = cluster.socket("controller");
    wait_for_socket(&socket, &mut controller).await;
    let provisioner = cluster.start_provisioner(
        &socket,
        &[
            "--strict-topology",
            "--timeout=30s",
            "--retry-interval-max=5s",
        ],
    );
    let resizer = cluster.start_resizer(&socket, &[]);
    Setup {
        _release: ReleaseUnder::cluster(&cluster),
        controller,
        _node: node,
        _provisioner: provisioner,
        _resizer: resizer,
        cluster,
        client,
        api,
    }
}

/// A token of ServiceAccount `namespace`/`account` (TokenRequest).
async fn token_of(client: &Client, namespace: &str, account: &str) -> String {
    let request: TokenRequest = serde_json::from_value(json!({
        "spec": { "audiences": [], "expirationSeconds": 3600 },
    }))
    .expect("a TokenRequest");
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("cannot get a token of {namespace}/{account}: {e}"))
        .status
        .and_then(|s| s.token)
        .unwrap_or_else(|| panic!("the token request of {account} came back without a token"))
}

/// Makes ServiceAccount `namespace`/`account` with its rights: `tenant` the
/// PVC verbs in its namespace (a Role), `pool-reader` get on nodes (a
/// ClusterRole), `outsider` nothing; returns a token of it.
async fn account_token(setup: &Setup, namespace: &str, account: &str) -> String {
    let client = &setup.client;
    let sa: ServiceAccount =
        serde_json::from_value(json!({ "metadata": { "name": account, "namespace": namespace } }))
            .expect("a ServiceAccount");
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap_or_else(|e| panic!("cannot create ServiceAccount {account}: {e}"));
    let subject = json!([{ "kind": "ServiceAccount", "name": account, "namespace": namespace }]);
    match account {
        "tenant" => {
            let role: Role = serde_json::from_value(json!({
                "metadata": { "name": "vm-tenant", "namespace": namespace },
                "rules": [{
                    "apiGroups": [""],
                    "resources": ["persistentvolumeclaims"],
                    "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
                }],
            }))
            .expect("a Role");
            Api::<Role>::namespaced(client.clone(), namespace)
                .create(&PostParams::default(), &role)
                .await
                .expect("create the Role");
            let binding: RoleBinding = serde_json::from_value(json!({
                "metadata": { "name": "vm-tenant", "namespace": namespace },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "vm-tenant" },
                "subjects": subject,
            }))
            .expect("a RoleBinding");
            Api::<RoleBinding>::namespaced(client.clone(), namespace)
                .create(&PostParams::default(), &binding)
                .await
                .expect("create the RoleBinding");
        }
        "pool-reader" => {
            let role: ClusterRole = serde_json::from_value(json!({
                "metadata": { "name": "pool-reader" },
                "rules": [{ "apiGroups": [""], "resources": ["nodes"], "verbs": ["get"] }],
            }))
            .expect("a ClusterRole");
            Api::<ClusterRole>::all(client.clone())
                .create(&PostParams::default(), &role)
                .await
                .expect("create the ClusterRole");
            let binding: ClusterRoleBinding = serde_json::from_value(json!({
                "metadata": { "name": "pool-reader" },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "pool-reader" },
                "subjects": subject,
            }))
            .expect("a ClusterRoleBinding");
            Api::<ClusterRoleBinding>::all(client.clone())
                .create(&PostParams::default(), &binding)
                .await
                .expect("create the ClusterRoleBinding");
        }
        _ => {}
    }
    token_of(client, namespace, account).await
}

async fn call(
    setup: &Setup,
    method: &str,
    path: &str,
    body: Option<&Value>,
    token: Option<&str>,
) -> Answer {
    request_as(&setup.api, method, path, body, token).await
}

/// POST /api/v1/vms for `name` in the tenant's namespace, which must be 201.
async fn create_vm(setup: &Setup, tenant: &str, name: &str, storage: u64) -> Value {
    let body = vm_request(name, TENANT_NS, storage);
    call(setup, "POST", "/api/v1/vms", Some(&body), Some(tenant))
        .await
        .expect(201)
}

fn expect_error(answer: &Answer, status: u16, kind: &str) -> String {
    answer.expect(status);
    let (got, message) = answer.error();
    assert_eq!(got, kind, "{message}");
    message
}

fn vm_request(name: &str, namespace: &str, storage: u64) -> Value {
    json!({
        "name": name, "image": "base", "server_type": "cx21",
        "cpu": 2, "memory": 4, "storage": storage, "namespace": namespace,
    })
}

// ---- who may call --------------------------------------------------------------

async fn tokens_are_required(setup: &Setup, tenant: &str) {
    // The OpenAPI document is open, and names the bearer scheme.
    let doc = get(&setup.api, "/api/v1/openapi.json").await;
    assert_eq!(doc.status, 200);
    assert_eq!(
        doc.json()["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    for path in ["/api/v1/vms", "/api/v1/pools/status", "/api/v1/vms/vms-a.x"] {
        let message = expect_error(&get(&setup.api, path).await, 401, "unauthorized");
        assert!(message.contains("Authorization"), "{message}");
    }
    let bogus = call(
        setup,
        "GET",
        "/api/v1/vms?namespace=vms-a",
        None,
        Some("not-a-token"),
    )
    .await;
    expect_error(&bogus, 401, "unauthorized");
    // A real token is accepted.
    let listed = call(
        setup,
        "GET",
        "/api/v1/vms?namespace=vms-a",
        None,
        Some(tenant),
    )
    .await;
    listed.expect(200);
    assert_eq!(listed.json(), json!({ "vms": [] }));
}

async fn rights_are_the_callers(setup: &Setup, tenant: &str, outsider: &str) {
    let tenant_user = format!("system:serviceaccount:{TENANT_NS}:tenant");
    // The tenant's Role is in vms-a only.
    let elsewhere = call(
        setup,
        "POST",
        "/api/v1/vms",
        Some(&vm_request("test-vm", OTHER_NS, 5)),
        Some(tenant),
    )
    .await;
    let message = expect_error(&elsewhere, 403, "forbidden");
    for part in [&tenant_user, "create", "persistentvolumeclaims", OTHER_NS] {
        assert!(message.contains(part), "{part} in {message}");
    }
    let everywhere = call(setup, "GET", "/api/v1/vms", None, Some(tenant)).await;
    let message = expect_error(&everywhere, 403, "forbidden");
    assert!(message.contains("all namespaces"), "{message}");
    let pools = call(setup, "GET", "/api/v1/pools/status", None, Some(tenant)).await;
    let message = expect_error(&pools, 403, "forbidden");
    assert!(message.contains("get nodes"), "{message}");
    // A token without any rights may not touch vms-a either.
    let outsider_user = format!("system:serviceaccount:{OTHER_NS}:outsider");
    for (method, path, body, verb) in [
        (
            "POST",
            "/api/v1/vms".to_string(),
            Some(vm_request("x", TENANT_NS, 5)),
            "create",
        ),
        (
            "GET",
            "/api/v1/vms?namespace=vms-a".to_string(),
            None,
            "list",
        ),
        ("GET", "/api/v1/vms/vms-a.test-vm".to_string(), None, "get"),
        (
            "DELETE",
            "/api/v1/vms/vms-a.test-vm".to_string(),
            None,
            "delete",
        ),
    ] {
        let answer = call(setup, method, &path, body.as_ref(), Some(outsider)).await;
        let message = expect_error(&answer, 403, "forbidden");
        assert!(
            message.contains(&outsider_user)
                && message.contains(verb)
                && message.contains(TENANT_NS),
            "{method} {path}: {message}"
        );
    }
}

// ---- a VM's life ---------------------------------------------------------------

async fn a_vm_lives_and_dies_as_a_pvc(setup: &Setup, tenant: &str) {
    let vm = create_vm(setup, tenant, "test-vm", 5).await;
    assert_eq!(vm["id"], "vms-a.test-vm");
    assert_eq!(vm["status"], "Provisioning");
    assert_eq!(vm["virtual_machine"]["created"], false);
    assert!(
        vm["virtual_machine"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("KubeVirt is not installed")),
        "{vm}"
    );
    assert_eq!(vm["disk"]["pvc"], "vms-a/test-vm");

    // The PVC is the VM's record.
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(setup.client.clone(), TENANT_NS);
    let pvc = pvcs.get("test-vm").await.expect("the VM's PVC");
    let spec = pvc.spec.clone().expect("a spec");
    assert_eq!(spec.storage_class_name.as_deref(), Some("vm-pool-storage"));
    assert_eq!(spec.volume_mode.as_deref(), Some("Block"));
    assert_eq!(spec.access_modes, Some(vec!["ReadWriteOnce".to_string()]));
    let request = spec
        .resources
        .and_then(|r| r.requests)
        .and_then(|r| r.get("storage").cloned())
        .expect("a storage request");
    assert_eq!(request.0, "5Gi");
    assert_eq!(
        pvc.labels().get("vdrive.io/vm").map(String::as_str),
        Some("test-vm")
    );
    let annotations = pvc.annotations();
    for (key, value) in [
        ("vdrive.io/vm-image", "base"),
        ("vdrive.io/vm-image-source", IMAGE_SOURCE),
        ("vdrive.io/vm-image-format", "raw"),
        ("vdrive.io/vm-server-type", "cx21"),
        ("vdrive.io/vm-cpu", "2"),
        ("vdrive.io/vm-memory", "4"),
    ] {
        assert_eq!(
            annotations.get(key).map(String::as_str),
            Some(value),
            "{key}"
        );
    }

    // Same name again: 409. Unknown VM: 404.
    let again = call(
        setup,
        "POST",
        "/api/v1/vms",
        Some(&vm_request("test-vm", TENANT_NS, 5)),
        Some(tenant),
    )
    .await;
    expect_error(&again, 409, "already_exists");
    let missing = call(setup, "GET", "/api/v1/vms/vms-a.nope", None, Some(tenant)).await;
    expect_error(&missing, 404, "not_found");

    // No consumer, no binding: the honest state of a WaitForFirstConsumer disk.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pending = vm_of(setup, tenant, "vms-a.test-vm").await;
    assert_eq!(pending["status"], "Provisioning");
    let reason = pending["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("stays Pending until a pod that uses PVC test-vm is scheduled"),
        "{reason}"
    );
    let phase = pvcs
        .get("test-vm")
        .await
        .expect("PVC")
        .status
        .and_then(|s| s.phase);
    assert_eq!(phase.as_deref(), Some("Pending"));
    let listed = call(
        setup,
        "GET",
        "/api/v1/vms?namespace=vms-a",
        None,
        Some(tenant),
    )
    .await;
    assert_eq!(listed.json()["vms"][0]["id"], "vms-a.test-vm");
    // An unbound disk is not resized; a disk never shrinks.
    let resize = |gb: u64| json!({ "new_size_gb": gb });
    let early = call(
        setup,
        "POST",
        "/api/v1/vms/vms-a.test-vm/resize",
        Some(&resize(8)),
        Some(tenant),
    )
    .await;
    expect_error(&early, 409, "busy");
    let shrink = call(
        setup,
        "POST",
        "/api/v1/vms/vms-a.test-vm/resize",
        Some(&resize(4)),
        Some(tenant),
    )
    .await;
    expect_error(&shrink, 400, "invalid_request");

    // A consumer: the scheduler puts it on the vm server, the provisioner makes
    // the disk there, with the catalog's image for the node.
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "launcher", "namespace": TENANT_NS },
        "spec": {
            "containers": [{
                "name": "vm", "image": "busybox",
                "volumeDevices": [{ "name": "disk", "devicePath": "/dev/vda" }],
            }],
            "volumes": [{ "name": "disk", "persistentVolumeClaim": { "claimName": "test-vm" } }],
        },
    }))
    .expect("a Pod");
    let pods: Api<Pod> = Api::namespaced(setup.client.clone(), TENANT_NS);
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create the consumer");
    let node = setup
        .cluster
        .wait_for_pod_node(TENANT_NS, "launcher", WAIT)
        .await;
    assert_eq!(node, "vm1");
    let pv = bound_pv(setup, "test-vm").await;
    let csi = pv
        .spec
        .as_ref()
        .and_then(|s| s.csi.clone())
        .expect("a CSI PV");
    let context = csi.volume_attributes.unwrap_or_default();
    assert_eq!(
        context.get("vdrive.io/image").map(String::as_str),
        Some(IMAGE_SOURCE),
        "the node is told the catalog's image: {context:?}"
    );
    assert_eq!(
        context.get("vdrive.io/image-format").map(String::as_str),
        Some("raw")
    );
    let bound = vm_of(setup, tenant, "vms-a.test-vm").await;
    assert_eq!(bound["status"], "Provisioning", "{bound}");
    assert_eq!(bound["disk"]["volume_id"], csi.volume_handle.as_str());
    assert_eq!(bound["disk"]["node"], "vm1");
    assert!(
        bound["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("bound on node vm1"),
        "{bound}"
    );

    // kubelet's first stage fails as the node fails it when the image file is
    // missing (its FailedMount Event carries the node's message): Failed, why.
    let node_error = vdrive::node::NodeError::ImageFile {
        path: IMAGE_SOURCE.into(),
        reason: "No such file or directory (os error 2)".into(),
    };
    let event: Event = serde_json::from_value(json!({
        "metadata": { "name": "launcher.failedmount", "namespace": TENANT_NS },
        "involvedObject": { "kind": "Pod", "name": "launcher", "namespace": TENANT_NS },
        "reason": "FailedMount",
        "type": "Warning",
        "message": format!(
            "MountVolume.MountDevice failed for volume \"{}\" : rpc error: code = FailedPrecondition desc = {node_error}",
            pv.name_any()
        ),
    }))
    .expect("an Event");
    Api::<Event>::namespaced(setup.client.clone(), TENANT_NS)
        .create(&PostParams::default(), &event)
        .await
        .expect("post kubelet's FailedMount Event");
    let failed = vm_of(setup, tenant, "vms-a.test-vm").await;
    assert_eq!(failed["status"], "Failed", "{failed}");
    assert_eq!(failed["reason"], node_error.to_string(), "{failed}");

    // The image is put in place; kubelet's retry stages the disk (the image is
    // written) and starts the pod.
    pods.patch_status(
        "launcher",
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": { "phase": "Running" } })),
    )
    .await
    .expect("report the pod Running");
    let ready = vm_of(setup, tenant, "vms-a.test-vm").await;
    assert_eq!(ready["status"], "Ready", "{ready}");
    assert_eq!(ready["reason"], Value::Null, "{ready}");
    let pvc = pvcs.get("test-vm").await.expect("PVC");
    assert_eq!(
        pvc.annotations()
            .get("vdrive.io/vm-image-written")
            .map(String::as_str),
        Some("true"),
        "Ready is recorded on the PVC"
    );
    // It stays Ready when the VM's pod goes.
    setup.cluster.force_delete_pod(TENANT_NS, "launcher").await;
    assert_eq!(
        vm_of(setup, tenant, "vms-a.test-vm").await["status"],
        "Ready"
    );

    // No room: the ledger says so before the PVC is touched, with its reason.
    let too_big = call(
        setup,
        "POST",
        "/api/v1/vms/vms-a.test-vm/resize",
        Some(&resize(5000)),
        Some(tenant),
    )
    .await;
    too_big.expect(507);
    let (kind, message) = too_big.error();
    assert_eq!(kind, "insufficient_storage");
    assert!(message.contains("vm pool share"), "{message}");
    assert_eq!(vm_of(setup, tenant, "vms-a.test-vm").await["storage"], 5);

    // Grow: the PVC's request, carried out by csi-resizer on the PV.
    let grown = call(
        setup,
        "POST",
        "/api/v1/vms/vms-a.test-vm/resize",
        Some(&resize(8)),
        Some(tenant),
    )
    .await;
    grown.expect(200);
    assert_eq!(grown.json()["storage"], 8);
    let pvs: Api<PersistentVolume> = Api::all(setup.client.clone());
    let (pvs, pv_name) = (&pvs, pv.name_any());
    let pv_name = &pv_name;
    eventually("the PV to grow to 8Gi", WAIT, || async move {
        let pv = pvs.get(pv_name).await.map_err(|e| e.to_string())?;
        let capacity = pv
            .spec
            .and_then(|s| s.capacity)
            .and_then(|c| c.get("storage").cloned())
            .map(|q| q.0)
            .unwrap_or_default();
        if capacity == "8Gi" {
            Ok(())
        } else {
            Err(format!("capacity {capacity}"))
        }
    })
    .await;
    let vm = vm_of(setup, tenant, "vms-a.test-vm").await;
    assert_eq!(vm["storage"], 8);
    // Until kubelet grows the device on its node, the PVC still says 5.
    assert!(
        vm["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("grows from 5 to 8 GB"),
        "{vm}"
    );

    // Delete: the retained PV is switched to Delete, and goes with the PVC.
    let deleted = call(
        setup,
        "DELETE",
        "/api/v1/vms/vms-a.test-vm",
        None,
        Some(tenant),
    )
    .await;
    deleted.expect(200);
    assert_eq!(deleted.json()["disk"], "deleted");
    eventually("the PVC and PV to go", WAIT, || async move {
        let pvc = Api::<PersistentVolumeClaim>::namespaced(setup.client.clone(), TENANT_NS)
            .get_opt("test-vm")
            .await
            .map_err(|e| e.to_string())?;
        let pv = pvs.get_opt(pv_name).await.map_err(|e| e.to_string())?;
        match (pvc, pv) {
            (None, None) => Ok(()),
            (pvc, pv) => Err(format!(
                "PVC there: {}, PV there: {}",
                pvc.is_some(),
                pv.is_some()
            )),
        }
    })
    .await;
    let gone = call(
        setup,
        "GET",
        "/api/v1/vms/vms-a.test-vm",
        None,
        Some(tenant),
    )
    .await;
    expect_error(&gone, 404, "not_found");
}

async fn keep_disk_keeps_the_pvc(setup: &Setup, tenant: &str) {
    create_vm(setup, tenant, "kept", 3).await;
    let deleted = call(
        setup,
        "DELETE",
        "/api/v1/vms/vms-a.kept?keep_disk=true",
        None,
        Some(tenant),
    )
    .await;
    deleted.expect(200);
    assert_eq!(deleted.json()["disk"], "kept");
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(setup.client.clone(), TENANT_NS);
    let pvc = pvcs.get("kept").await.expect("the kept PVC");
    assert!(
        !pvc.labels().contains_key("vdrive.io/vm"),
        "no longer a VM's"
    );
    let gone = call(setup, "GET", "/api/v1/vms/vms-a.kept", None, Some(tenant)).await;
    expect_error(&gone, 404, "not_found");
    // A PVC of that name is in the way of a new VM.
    let again = call(
        setup,
        "POST",
        "/api/v1/vms",
        Some(&vm_request("kept", TENANT_NS, 3)),
        Some(tenant),
    )
    .await;
    expect_error(&again, 409, "already_exists");
    pvcs.delete("kept", &Default::default())
        .await
        .expect("delete the kept PVC");
}

// ---- pools ---------------------------------------------------------------------

async fn pools_follow_the_labels(setup: &Setup, reader: &str, tenant: &str) {
    let status = call(setup, "GET", "/api/v1/pools/status", None, Some(reader)).await;
    status.expect(200);
    let status = status.json();
    assert_eq!(status["vm_pool"]["servers"], 1, "{status}");
    assert_eq!(status["vm_pool"]["total_capacity_gb"], SHARE_GIB);
    assert_eq!(status["k8s_pool"]["servers"], 1, "{status}");
    let health = call(setup, "GET", "/api/v1/pools/health", None, Some(reader)).await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["pools"]["vm_pool"], "healthy");

    setup
        .cluster
        .kubectl(["label", "node", "k1", "pool=vm", "--overwrite"]);
    eventually("k1 to count in the vm pool", WAIT, || async move {
        let status = call(setup, "GET", "/api/v1/pools/status", None, Some(reader))
            .await
            .json();
        match (
            &status["vm_pool"]["servers"],
            &status["k8s_pool"]["servers"],
        ) {
            (vm, k8s) if *vm == 2 && *k8s == 0 => Ok(()),
            _ => Err(status.to_string()),
        }
    })
    .await;
    let status = call(setup, "GET", "/api/v1/pools/status", None, Some(reader))
        .await
        .json();
    assert_eq!(status["vm_pool"]["total_capacity_gb"], 2 * SHARE_GIB);
    let health = call(setup, "GET", "/api/v1/pools/health", None, Some(reader))
        .await
        .json();
    assert_eq!(health["pools"]["vm_pool"], "healthy", "{health}");
    assert!(
        health["warnings"].is_array() && health["errors"].is_array(),
        "{health}"
    );
    // The tenant still may not read pools.
    let refused = call(setup, "GET", "/api/v1/pools/health", None, Some(tenant)).await;
    expect_error(&refused, 403, "forbidden");
    setup
        .cluster
        .kubectl(["label", "node", "k1", "pool=k8s", "--overwrite"]);
}

// ---- KubeVirt ------------------------------------------------------------------

/// A stand-in for KubeVirt's CRD: the same group, version and names, and a
/// schema that keeps whatever it is given.
const VIRTUAL_MACHINE_CRD: &str = r#"{
  "apiVersion": "apiextensions.k8s.io/v1",
  "kind": "CustomResourceDefinition",
  "metadata": { "name": "virtualmachines.kubevirt.io" },
  "spec": {
    "group": "kubevirt.io",
    "scope": "Namespaced",
    "names": { "kind": "VirtualMachine", "plural": "virtualmachines", "singular": "virtualmachine", "shortNames": ["vm"] },
    "versions": [{
      "name": "v1", "served": true, "storage": true,
      "schema": { "openAPIV3Schema": { "type": "object", "x-kubernetes-preserve-unknown-fields": true } }
    }]
  }
}"#;

async fn kubevirt_gets_a_virtual_machine(setup: &Setup, tenant: &str) {
    setup.cluster.apply(VIRTUAL_MACHINE_CRD);
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kubevirt.io", "v1", "VirtualMachine"),
        "virtualmachines",
    );
    let vms: Api<DynamicObject> = Api::namespaced_with(setup.client.clone(), TENANT_NS, &resource);
    let vms = &vms;
    eventually("kubevirt.io/v1 to be served", WAIT, || async move {
        vms.list(&Default::default())
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await;

    let vm = create_vm(setup, tenant, "kv-vm", 4).await;
    assert_eq!(vm["virtual_machine"]["created"], true, "{vm}");
    let object = vms.get("kv-vm").await.expect("the VirtualMachine");
    let spec = &object.data["spec"];
    assert_eq!(spec["runStrategy"], "Always");
    let domain = &spec["template"]["spec"]["domain"];
    assert_eq!(domain["cpu"]["cores"], 2);
    assert_eq!(domain["resources"]["requests"]["memory"], "4Gi");
    assert_eq!(
        spec["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "kv-vm"
    );
    let shown = vm_of(setup, tenant, "vms-a.kv-vm").await;
    assert_eq!(shown["virtual_machine"]["created"], true);
    assert!(
        shown["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("virt-launcher of VirtualMachine kv-vm"),
        "{shown}"
    );

    let deleted = call(
        setup,
        "DELETE",
        "/api/v1/vms/vms-a.kv-vm",
        None,
        Some(tenant),
    )
    .await;
    deleted.expect(200);
    eventually(
        "the VirtualMachine and the PVC to go",
        WAIT,
        || async move {
            let vm = vms.get_opt("kv-vm").await.map_err(|e| e.to_string())?;
            let pvc = Api::<PersistentVolumeClaim>::namespaced(setup.client.clone(), TENANT_NS)
                .get_opt("kv-vm")
                .await
                .map_err(|e| e.to_string())?;
            match (vm, pvc) {
                (None, None) => Ok(()),
                (vm, pvc) => Err(format!(
                    "VM there: {}, PVC there: {}",
                    vm.is_some(),
                    pvc.is_some()
                )),
            }
        },
    )
    .await;
    // The controller never logged a failed call of its own account.
    let log = setup.controller.log();
    assert!(
        !log.contains("forbidden"),
        "the controller's RBAC fell short:\n{log}"
    );
}

// ---- helpers -------------------------------------------------------------------

async fn vm_of(setup: &Setup, token: &str, id: &str) -> Value {
    let answer = call(
        setup,
        "GET",
        &format!("/api/v1/vms/{id}"),
        None,
        Some(token),
    )
    .await;
    answer.expect(200);
    answer.json()
}

async fn bound_pv(setup: &Setup, pvc: &str) -> PersistentVolume {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(setup.client.clone(), TENANT_NS);
    let pvs: Api<PersistentVolume> = Api::all(setup.client.clone());
    let (pvcs, pvs) = (&pvcs, &pvs);
    eventually(&format!("PVC {pvc} to be bound"), WAIT, || async move {
        let claim = pvcs.get(pvc).await.map_err(|e| e.to_string())?;
        let phase = claim.status.as_ref().and_then(|s| s.phase.clone());
        let volume = claim.spec.as_ref().and_then(|s| s.volume_name.clone());
        match (phase.as_deref(), volume) {
            (Some("Bound"), Some(volume)) => pvs.get(&volume).await.map_err(|e| e.to_string()),
            (phase, _) => Err(format!("phase {phase:?}")),
        }
    })
    .await
}
