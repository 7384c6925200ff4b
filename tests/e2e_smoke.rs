//! The end-to-end fixture itself: a control plane of real Kubernetes processes
//! comes up, takes a kubelet-less Node with a CSINode, and the scheduler binds a
//! pod to it. Needs the binaries of e2e/build-tools; e2e/run builds them and runs
//! every `e2e_*` test.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;
use support::cluster::{self, Cluster};

const DRIVER: &str = "csi.vdrive.io";
const TOPOLOGY_KEY: &str = "topology.vdrive.io/node";

#[tokio::test]
#[ignore = "needs Kubernetes binaries: run e2e/run"]
async fn scheduler_binds_a_pod_to_a_kubelet_less_node() {
    let cluster = Cluster::start(&cluster::bin_dir_from_env());
    let node = "e2e-node-1";
    cluster
        .add_node(node, &[("pool", "k8s"), (TOPOLOGY_KEY, node)], "8", "32Gi")
        .await;
    let csinode = cluster.create_csinode(node, DRIVER, &[TOPOLOGY_KEY]).await;
    assert_eq!(csinode.spec.drivers[0].name, DRIVER);

    let pods: Api<Pod> = Api::namespaced(cluster.client().await, "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "smoke" },
        "spec": {
            // Never pulled: no kubelet runs.
            "containers": [{ "name": "main", "image": "registry.invalid/none:1" }],
            "nodeSelector": { "pool": "k8s" },
        },
    }))
    .expect("a Pod object");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create the pod");

    let bound_to = cluster
        .wait_for_pod_node("default", "smoke", Duration::from_secs(60))
        .await;
    assert_eq!(bound_to, node);

    cluster.force_delete_pod("default", "smoke").await;
    let gone = pods.get_opt("smoke").await.expect("read the pod back");
    assert!(
        gone.is_none(),
        "the force-deleted pod is still there: {gone:?}"
    );
}
