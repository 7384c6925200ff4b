//! Every pool server (a Node labelled `pool=k8s|vm`): a registered node plugin,
//! enough signed drives, and the CSIStorageCapacity objects the scheduler
//! places pods by.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::storage::v1::{CSINode, CSIStorageCapacity, StorageClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use super::{Finding, Installation, passed_and_failed, pods, unreadable};
use crate::cluster::annotations::{DRIVES_ANNOTATION, POOL_LABEL, decode_drives, pool_from_label};
use crate::csi::identity::DRIVER_NAME;
use crate::pools::{Pool, PoolSettings};

const PLUGIN_CHECK: &str = "node-plugin";
const DRIVES_CHECK: &str = "drives";
const CAPACITY_CHECK: &str = "storage-capacity";

/// The Nodes labelled into a pool, by name, with their pool.
pub fn pool_nodes(nodes: &[Node]) -> Vec<(&Node, Pool)> {
    let mut found: Vec<(&Node, Pool)> = nodes
        .iter()
        .filter_map(|n| {
            Some((
                n,
                pool_from_label(n.labels().get(POOL_LABEL).map(String::as_str))?,
            ))
        })
        .collect();
    found.sort_by_key(|(n, _)| n.name_any());
    found
}

/// Whether the node's kubelet has registered vdrive's node plugin.
pub fn registered(csinode: Option<&CSINode>) -> bool {
    csinode.is_some_and(|c| c.spec.drivers.iter().any(|d| d.name == DRIVER_NAME))
}

async fn list_nodes(client: &Client) -> Result<Vec<Node>, kube::Error> {
    Ok(Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items)
}

async fn csinodes_by_name(client: &Client) -> Result<BTreeMap<String, CSINode>, kube::Error> {
    let list = Api::<CSINode>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    Ok(list.items.into_iter().map(|c| (c.name_any(), c)).collect())
}

// ---- node plugins -------------------------------------------------------------

pub async fn node_plugins(client: &Client, inst: &Installation) -> Vec<Finding> {
    let nodes = match list_nodes(client).await {
        Ok(nodes) => nodes,
        Err(e) => return vec![unreadable(PLUGIN_CHECK, "nodes", e)],
    };
    let csinodes = match csinodes_by_name(client).await {
        Ok(found) => found,
        Err(e) => return vec![unreadable(PLUGIN_CHECK, "csinodes.storage.k8s.io", e)],
    };
    let plugin_pods: Api<Pod> = Api::namespaced(client.clone(), &inst.namespace);
    let selector = ListParams::default().labels(&inst.selector("node"));
    let plugin_pods = match plugin_pods.list(&selector).await {
        Ok(list) => list.items,
        Err(e) => return vec![unreadable(PLUGIN_CHECK, "pods", e)],
    };
    node_plugins_verdict(&nodes, &csinodes, &plugin_pods, inst)
}

/// A pool node needs a CSINode listing vdrive (kubelet registered the plugin)
/// and, where the DaemonSet runs (any plugin pods at all), a Ready pod of it.
pub fn node_plugins_verdict(
    nodes: &[Node],
    csinodes: &BTreeMap<String, CSINode>,
    plugin_pods: &[Pod],
    inst: &Installation,
) -> Vec<Finding> {
    let servers = pool_nodes(nodes);
    if servers.is_empty() {
        return vec![no_pool_nodes(PLUGIN_CHECK)];
    }
    let kubectl = inst.kubectl();
    let daemonset = inst.node_plugin();
    let mut passed = Vec::new();
    let mut problems = Vec::new();
    for (node, pool) in servers {
        let name = node.name_any();
        let pod_on_node = plugin_pods
            .iter()
            .find(|p| pods::node_of(p) == Some(name.as_str()));
        let pods_here = format!(
            "{kubectl} get pods -o wide -l app.kubernetes.io/component=node --field-selector spec.nodeName={name}"
        );
        let problem = if !plugin_pods.is_empty() && pod_on_node.is_none() {
            Some((
                format!(
                    "pool={pool} node {name} has no {daemonset} pod: it cannot mount vdrive volumes"
                ),
                format!(
                    "{kubectl} rollout status ds/{daemonset}; kubectl describe node {name} (taints, nodeSelector)"
                ),
            ))
        } else if let Some(pod) = pod_on_node.filter(|p| !pods::is_ready(p)) {
            Some((
                format!(
                    "pool={pool} node {name}: node plugin pod {} is not ready",
                    pods::describe(pod)
                ),
                format!(
                    "{kubectl} describe pod {}; {kubectl} logs {} -c vdrive",
                    pod.name_any(),
                    pod.name_any()
                ),
            ))
        } else if !registered(csinodes.get(&name)) {
            Some((
                format!(
                    "pool={pool} node {name} has no registered vdrive node plugin (its CSINode does not list {DRIVER_NAME}): no volume is placed or mounted there"
                ),
                format!("{kubectl} rollout status ds/{daemonset}; {pods_here}"),
            ))
        } else {
            None
        };
        match problem {
            Some((message, fix)) => {
                problems.push(Finding::fail(PLUGIN_CHECK, message, fix).on(name))
            }
            None => passed.push(name),
        }
    }
    passed_and_failed(PLUGIN_CHECK, &passed, "node plugin registered on", problems)
}

fn no_pool_nodes(check: &'static str) -> Finding {
    Finding::fail(
        check,
        "no Node is labelled pool=k8s or pool=vm: the pools are empty and no volume can be placed",
        "kubectl label node <node> pool=k8s",
    )
}

// ---- drives -------------------------------------------------------------------

pub async fn drives(client: &Client, settings: &PoolSettings) -> Vec<Finding> {
    match list_nodes(client).await {
        Ok(nodes) => drives_verdict(&nodes, settings),
        Err(e) => vec![unreadable(DRIVES_CHECK, "nodes", e)],
    }
}

/// Each pool server needs signed drives of at least its pool share plus its
/// system reserve, as its node plugin reports them in the Node's annotation.
pub fn drives_verdict(nodes: &[Node], settings: &PoolSettings) -> Vec<Finding> {
    let servers = pool_nodes(nodes);
    if servers.is_empty() {
        return vec![no_pool_nodes(DRIVES_CHECK)];
    }
    let needed = settings.needed_per_server_gib();
    let mut passed = Vec::new();
    let mut problems = Vec::new();
    for (node, pool) in servers {
        let name = node.name_any();
        // The k8s class places on TLC, the vm class on QLC (the chart's presets).
        let drive_type = match pool {
            Pool::K8s => "tlc",
            Pool::Vm => "qlc",
        };
        let sign = format!(
            "on {name}: vdrive sign --all-not-root --type={drive_type} (or kubectl label node {name} vdrive.io/sign-drives={drive_type})"
        );
        let signed = match node.annotations().get(DRIVES_ANNOTATION) {
            None => Err(format!(
                "pool={pool} node {name} reports no signed drives (no {DRIVES_ANNOTATION} annotation: its node plugin never ran, or found no drive)"
            )),
            Some(text) => decode_drives(text)
                .map_err(|e| format!("pool={pool} node {name}: its {DRIVES_ANNOTATION} annotation cannot be read: {e}")),
        };
        let problem = match signed {
            Err(message) => Some(message),
            Ok(drives) => {
                let usable: u64 = drives
                    .iter()
                    .filter(|d| d.takes_claims())
                    .map(|d| d.capacity_gib)
                    .sum();
                (usable < needed).then(|| {
                    format!(
                        "pool={pool} node {name} has {usable} GiB of usable signed drives ({} drives), less than the {needed} GiB a pool server needs ({} GiB pool share + {} GiB system reserve)",
                        drives.len(),
                        settings.capacity_per_server_gib,
                        settings.system_reserve_per_server_gib
                    )
                })
            }
        };
        match problem {
            Some(message) => problems.push(Finding::fail(DRIVES_CHECK, message, sign).on(name)),
            None => passed.push(name),
        }
    }
    let what = format!("at least {needed} GiB of signed drives on");
    passed_and_failed(DRIVES_CHECK, &passed, &what, problems)
}

// ---- storage capacity ---------------------------------------------------------

pub async fn storage_capacity(client: &Client, inst: &Installation) -> Vec<Finding> {
    let nodes = match list_nodes(client).await {
        Ok(nodes) => nodes,
        Err(e) => return vec![unreadable(CAPACITY_CHECK, "nodes", e)],
    };
    let csinodes = match csinodes_by_name(client).await {
        Ok(found) => found,
        Err(e) => return vec![unreadable(CAPACITY_CHECK, "csinodes.storage.k8s.io", e)],
    };
    let classes = match Api::<StorageClass>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(list) => list.items,
        Err(e) => {
            return vec![unreadable(
                CAPACITY_CHECK,
                "storageclasses.storage.k8s.io",
                e,
            )];
        }
    };
    let capacities = Api::<CSIStorageCapacity>::all(client.clone());
    let capacities = match capacities.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(e) => {
            return vec![unreadable(
                CAPACITY_CHECK,
                "csistoragecapacities.storage.k8s.io",
                e,
            )];
        }
    };
    capacity_verdict(&nodes, &csinodes, &classes, &capacities, inst)
}

/// vdrive's StorageClasses, by name.
pub fn vdrive_classes(classes: &[StorageClass]) -> Vec<&StorageClass> {
    let mut ours: Vec<&StorageClass> = classes
        .iter()
        .filter(|c| c.provisioner == DRIVER_NAME)
        .collect();
    ours.sort_by_key(|c| c.name_any());
    ours
}

/// Every registered pool node needs a CSIStorageCapacity per vdrive class
/// (csi-provisioner publishes them): the scheduler sends no pod with such a
/// volume to a node without one. Unregistered nodes are the node-plugin
/// check's finding, and have no topology to publish for.
pub fn capacity_verdict(
    nodes: &[Node],
    csinodes: &BTreeMap<String, CSINode>,
    classes: &[StorageClass],
    capacities: &[CSIStorageCapacity],
    inst: &Installation,
) -> Vec<Finding> {
    let classes = vdrive_classes(classes);
    if classes.is_empty() {
        return vec![Finding::fail(
            CAPACITY_CHECK,
            format!(
                "no StorageClass uses the provisioner {DRIVER_NAME}: no PVC can ask for a vdrive volume"
            ),
            "kubectl apply -k deploy/ (or helm upgrade --install vdrive charts/vdrive)",
        )];
    }
    let mut passed = Vec::new();
    let mut problems = Vec::new();
    for (node, _) in pool_nodes(nodes) {
        let name = node.name_any();
        if !registered(csinodes.get(&name)) {
            continue;
        }
        let missing: Vec<String> = classes
            .iter()
            .map(|c| c.name_any())
            .filter(|class| {
                !capacities.iter().any(|cap| {
                    cap.storage_class_name == *class
                        && cap
                            .node_topology
                            .as_ref()
                            .is_some_and(|t| selects(t, node.labels()))
                })
            })
            .collect();
        if missing.is_empty() {
            passed.push(name);
        } else {
            problems.push(
                Finding::fail(
                    CAPACITY_CHECK,
                    format!(
                        "node {name} has no CSIStorageCapacity for {}: the scheduler places no pod with such a volume there",
                        missing.join(", ")
                    ),
                    format!(
                        "{} logs deploy/{} -c csi-provisioner (it publishes them; it needs --enable-capacity)",
                        inst.kubectl(),
                        inst.controller()
                    ),
                )
                .on(name),
            );
        }
    }
    let names: Vec<String> = classes.iter().map(|c| c.name_any()).collect();
    let what = format!("capacity of {} published for", names.join(", "));
    passed_and_failed(CAPACITY_CHECK, &passed, &what, problems)
}

/// Whether a label selector matches a set of labels.
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = selector.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let listed = |v: &String| e.values.iter().flatten().any(|x| x == v);
        match e.operator.as_str() {
            "In" => value.is_some_and(listed),
            "NotIn" => !value.is_some_and(listed),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    by_labels && by_expressions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::annotations::encode_drives;
    use crate::doctor::Status;
    use crate::doctor::pods::fixtures::pod;
    use crate::drive::{Backend, DriveType};
    use crate::ledger::PhysicalDrive;

    fn inst() -> Installation {
        Installation {
            namespace: "vdrive".into(),
            release: "vdrive".into(),
        }
    }

    fn node(name: &str, pool: Option<&str>, drives_gib: Option<&[u64]>) -> Node {
        let mut labels = serde_json::json!({ "topology.vdrive.io/node": name });
        if let Some(pool) = pool {
            labels["pool"] = pool.into();
        }
        let mut annotations = serde_json::Map::new();
        if let Some(sizes) = drives_gib {
            let drives: Vec<PhysicalDrive> = sizes
                .iter()
                .map(|&capacity_gib| PhysicalDrive {
                    uuid: uuid::Uuid::new_v4(),
                    serial: "s".into(),
                    drive_type: DriveType::Tlc,
                    capacity_gib,
                    backend: Backend::Loop,
                    missing: false,
                    quarantined: None,
                })
                .collect();
            annotations.insert(DRIVES_ANNOTATION.into(), encode_drives(&drives).into());
        }
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": labels, "annotations": annotations },
        }))
        .unwrap_or_default()
    }

    fn csinode(name: &str, driver: &str) -> (String, CSINode) {
        let c = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name },
            "spec": { "drivers": [{ "name": driver, "nodeID": name }] },
        }))
        .unwrap_or_default();
        (name.to_string(), c)
    }

    fn class(name: &str, provisioner: &str) -> StorageClass {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": name },
            "provisioner": provisioner,
        }))
        .unwrap_or_default()
    }

    fn capacity(class: &str, node: &str) -> CSIStorageCapacity {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": format!("csisc-{class}-{node}"), "namespace": "vdrive" },
            "storageClassName": class,
            "nodeTopology": { "matchLabels": { "topology.vdrive.io/node": node } },
            "capacity": "100Gi",
        }))
        .unwrap_or_default()
    }

    fn verdicts(findings: &[Finding]) -> Vec<(Status, Option<&str>)> {
        findings
            .iter()
            .map(|f| (f.status, f.subject.as_deref()))
            .collect()
    }

    #[test]
    fn only_pool_nodes_are_servers() {
        let nodes = [
            node("b", Some("vm"), None),
            node("a", Some("k8s"), None),
            node("c", None, None),
            node("d", Some("gpu"), None),
        ];
        let names: Vec<String> = pool_nodes(&nodes)
            .iter()
            .map(|(n, _)| n.name_any())
            .collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn a_pool_node_without_a_registered_plugin_fails_by_name() {
        let nodes = [
            node("n1", Some("k8s"), None),
            node("n2", Some("k8s"), None),
            node("other", None, None),
        ];
        let csinodes: BTreeMap<_, _> =
            [csinode("n1", DRIVER_NAME), csinode("n2", "other.csi.io")].into();
        let found = node_plugins_verdict(&nodes, &csinodes, &[], &inst());
        assert_eq!(
            verdicts(&found),
            [(Status::Ok, None), (Status::Fail, Some("n2"))]
        );
        assert!(found[1].message.contains("node n2"), "{}", found[1].message);
        assert!(
            found[1]
                .fix
                .as_deref()
                .is_some_and(|f| f.contains("rollout status ds/vdrive-node"))
        );
    }

    #[test]
    fn with_plugin_pods_every_pool_node_needs_a_ready_one() {
        let nodes = [
            node("n1", Some("k8s"), None),
            node("n2", Some("vm"), None),
            node("n3", Some("vm"), None),
        ];
        let csinodes: BTreeMap<_, _> = ["n1", "n2", "n3"].map(|n| csinode(n, DRIVER_NAME)).into();
        let plugin_pods = [
            pod("vdrive-node-a", "n1", true),
            pod("vdrive-node-b", "n2", false),
        ];
        let found = node_plugins_verdict(&nodes, &csinodes, &plugin_pods, &inst());
        assert_eq!(
            verdicts(&found),
            [
                (Status::Ok, None),
                (Status::Fail, Some("n2")),
                (Status::Fail, Some("n3"))
            ]
        );
        assert!(
            found[1]
                .message
                .contains("vdrive-node-b (Pending, not ready)"),
            "{}",
            found[1].message
        );
    }

    #[test]
    fn no_pool_nodes_at_all_fails() {
        let found = node_plugins_verdict(&[node("x", None, None)], &BTreeMap::new(), &[], &inst());
        assert_eq!(verdicts(&found), [(Status::Fail, None)]);
    }

    #[test]
    fn a_pool_node_needs_its_share_and_reserve_in_signed_drives() {
        let settings = PoolSettings::default();
        assert_eq!(settings.needed_per_server_gib(), 1800);
        let nodes = [
            node("full", Some("k8s"), Some(&[1000, 800])),
            node("short", Some("k8s"), Some(&[1000])),
            node("none", Some("vm"), None),
            node("empty", Some("vm"), Some(&[])),
            node("unpooled", None, None),
        ];
        let found = drives_verdict(&nodes, &settings);
        assert_eq!(
            verdicts(&found),
            [
                (Status::Ok, None),
                (Status::Fail, Some("empty")),
                (Status::Fail, Some("none")),
                (Status::Fail, Some("short")),
            ]
        );
        assert!(found[0].message.ends_with(": full"), "{}", found[0].message);
        assert!(
            found[2]
                .fix
                .as_deref()
                .is_some_and(|f| f.contains("vdrive sign --all-not-root --type=qlc"))
        );
        assert!(
            found[3].message.contains("1000 GiB"),
            "{}",
            found[3].message
        );
    }

    #[test]
    fn a_registered_pool_node_needs_capacity_for_every_vdrive_class() {
        let nodes = [
            node("n1", Some("k8s"), None),
            node("n2", Some("vm"), None),
            node("n3", Some("vm"), None),
        ];
        let csinodes: BTreeMap<_, _> =
            [csinode("n1", DRIVER_NAME), csinode("n2", DRIVER_NAME)].into();
        let classes = [
            class("fast", DRIVER_NAME),
            class("bulk", DRIVER_NAME),
            class("nfs", "nfs.csi.io"),
        ];
        let caps = [
            capacity("fast", "n1"),
            capacity("bulk", "n1"),
            capacity("fast", "n2"),
        ];
        let found = capacity_verdict(&nodes, &csinodes, &classes, &caps, &inst());
        assert_eq!(
            verdicts(&found),
            [(Status::Ok, None), (Status::Fail, Some("n2"))]
        );
        assert!(
            found[1].message.contains("for bulk"),
            "{}",
            found[1].message
        );
        let none = capacity_verdict(
            &nodes,
            &csinodes,
            &[class("nfs", "nfs.csi.io")],
            &caps,
            &inst(),
        );
        assert_eq!(verdicts(&none), [(Status::Fail, None)]);
    }

    #[test]
    fn selectors_match_labels_and_expressions() {
        let labels: BTreeMap<String, String> = [("a".to_string(), "1".to_string())].into();
        let selector = |json| serde_json::from_value::<LabelSelector>(json).unwrap_or_default();
        assert!(selects(
            &selector(serde_json::json!({ "matchLabels": { "a": "1" } })),
            &labels
        ));
        assert!(!selects(
            &selector(serde_json::json!({ "matchLabels": { "a": "2" } })),
            &labels
        ));
        let expr = |op: &str, values: serde_json::Value| {
            selector(
                serde_json::json!({ "matchExpressions": [{ "key": "a", "operator": op, "values": values }] }),
            )
        };
        assert!(selects(&expr("In", serde_json::json!(["1", "3"])), &labels));
        assert!(!selects(&expr("NotIn", serde_json::json!(["1"])), &labels));
        assert!(selects(&expr("Exists", serde_json::Value::Null), &labels));
        assert!(!selects(
            &expr("DoesNotExist", serde_json::Value::Null),
            &labels
        ));
    }
}
