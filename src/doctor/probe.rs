//! `--probe`: a small volume created and deleted through the provisioner, each
//! step reported. A WaitForFirstConsumer class provisions only once a node is
//! chosen for the claim; with no pod to schedule, the probe chooses a pool node
//! itself and says so in the `volume.kubernetes.io/selected-node` annotation,
//! which is what the scheduler would write. Whatever fails, the claim is
//! deleted before the probe returns.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Node, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::{CSINode, CSIStorageCapacity, StorageClass};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};

use super::nodes::{pool_nodes, registered, selects};
use super::{Finding, Installation};
use crate::csi::identity::DRIVER_NAME;
use crate::pools::Pool;

const CHECK: &str = "probe";
const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// Small enough to fit anywhere a volume fits at all.
const PROBE_SIZE: &str = "1Gi";
const POLL: Duration = Duration::from_millis(500);
/// The label the probe's claims carry (set in [`probe_claim`]).
const PROBE_SELECTOR: &str = "app.kubernetes.io/component=doctor-probe";

#[derive(Debug, Clone)]
pub struct ProbeOptions {
    pub storage_class: String,
    /// For each wait: the claim to bind, and its volume to go.
    pub timeout: Duration,
}

pub async fn probe(client: &Client, inst: &Installation, options: &ProbeOptions) -> Vec<Finding> {
    let class = match probe_class(client, &options.storage_class).await {
        Ok(class) => class,
        Err(refusal) => return vec![refusal],
    };
    let node = match placement(client, &class).await {
        Ok(node) => node,
        Err(nowhere) => return vec![nowhere],
    };
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &inst.namespace);
    let mut findings: Vec<Finding> = leftovers(&claims, &inst.namespace)
        .await
        .into_iter()
        .collect();
    let name = match create(&claims, &class.name_any(), node.as_deref()).await {
        Ok((name, created)) => {
            findings.push(created);
            name
        }
        Err(refused) => {
            findings.push(refused);
            return findings;
        }
    };
    let (bound, volume) = bind(client, &claims, &name, inst, options.timeout).await;
    findings.push(bound);
    findings.extend(clean_up(client, &claims, &name, volume.as_deref(), options.timeout).await);
    findings
}

/// The class to probe with, if it is one the probe may use.
async fn probe_class(client: &Client, name: &str) -> Result<StorageClass, Finding> {
    let class = Api::<StorageClass>::all(client.clone())
        .get_opt(name)
        .await
        .map_err(|e| super::unreadable(CHECK, "storageclasses.storage.k8s.io", e))?
        .ok_or_else(|| {
            Finding::fail(
                CHECK,
                format!("no StorageClass {name} to probe with"),
                "kubectl get storageclass; vdrive doctor --probe --storage-class <a vdrive class>",
            )
        })?;
    match unsuitable(&class) {
        Some(refusal) => Err(refusal),
        None => Ok(class),
    }
}

/// The node the claim names, for a class that waits for a consumer; none for
/// one that binds at once.
async fn placement(client: &Client, class: &StorageClass) -> Result<Option<String>, Finding> {
    if class.volume_binding_mode.as_deref() != Some("WaitForFirstConsumer") {
        return Ok(None);
    }
    match choose_node(client, class).await {
        Ok(Some(node)) => Ok(Some(node)),
        Ok(None) => Err(Finding::fail(
            CHECK,
            format!(
                "no registered pool node takes {} volumes: nowhere to place the probe",
                class.name_any()
            ),
            "see the node-plugin, drives and storage-capacity findings",
        )),
        Err(e) => Err(Finding::fail(
            CHECK,
            format!("cannot choose a node for the probe: {e}"),
            "let the account vdrive doctor runs as list nodes, csinodes and csistoragecapacities",
        )),
    }
}

/// Creates the claim: its generated name, and the step's finding.
async fn create(
    claims: &Api<PersistentVolumeClaim>,
    class: &str,
    node: Option<&str>,
) -> Result<(String, Finding), Finding> {
    let namespace = claims.namespace().unwrap_or_default();
    let created = claims
        .create(&PostParams::default(), &probe_claim(class, node))
        .await
        .map_err(|e| {
            Finding::fail(
                CHECK,
                format!("cannot create a PersistentVolumeClaim in namespace {namespace}: {e}"),
                "let the account vdrive doctor runs as create, get and delete persistentvolumeclaims there (the chart's doctor.probe: true)",
            )
            .on("create")
        })?;
    let name = created.name_any();
    let on = node.map_or(String::new(), |n| format!(" on node {n}"));
    let message = format!("created PVC {namespace}/{name} ({PROBE_SIZE}, {class}){on}");
    Ok((name, Finding::ok(CHECK, message).on("create")))
}

/// Waits for the claim to bind: the step's finding, and the claim's volume
/// if it has one (after a timeout too: one may arrive late, and the clean-up
/// then waits for it to go).
async fn bind(
    client: &Client,
    claims: &Api<PersistentVolumeClaim>,
    name: &str,
    inst: &Installation,
    timeout: Duration,
) -> (Finding, Option<String>) {
    let started = Instant::now();
    match wait_bound(claims, name, timeout).await {
        Ok(volume) => {
            let took = started.elapsed().as_secs_f64();
            let message = format!("bound to {volume} in {took:.1}s");
            (Finding::ok(CHECK, message).on("bind"), Some(volume))
        }
        Err(last) => {
            let why = last_event(client, &inst.namespace, name).await;
            let (kubectl, deployment) = (inst.kubectl(), inst.controller());
            let finding = Finding::fail(
                CHECK,
                format!(
                    "PVC {}/{name} not bound within {}s ({last}){why}",
                    inst.namespace,
                    timeout.as_secs()
                ),
                format!(
                    "{kubectl} logs deploy/{deployment} -c csi-provisioner; {kubectl} logs deploy/{deployment} -c vdrive"
                ),
            )
            .on("bind");
            (finding, current_volume(claims, name).await)
        }
    }
}

/// Claims of an earlier probe that was killed before it could clean up: they
/// hold a volume each.
async fn leftovers(claims: &Api<PersistentVolumeClaim>, namespace: &str) -> Option<Finding> {
    let params = ListParams::default().labels(PROBE_SELECTOR);
    let names: Vec<String> = claims
        .list(&params)
        .await
        .ok()?
        .items
        .iter()
        .map(|c| c.name_any())
        .collect();
    (!names.is_empty()).then(|| {
        Finding::warn(
            CHECK,
            format!("an earlier probe left PVCs behind: {}", names.join(", ")),
            format!("kubectl -n {namespace} delete pvc -l {PROBE_SELECTOR}"),
        )
        .on("leftovers")
    })
}

/// The probe deletes what it made, so a class that keeps volumes would leave
/// one behind; and a class of another driver proves nothing about vdrive.
fn unsuitable(class: &StorageClass) -> Option<Finding> {
    let name = class.name_any();
    let other = "vdrive doctor --probe --storage-class k8s-pool-storage";
    if class.provisioner != DRIVER_NAME {
        return Some(Finding::fail(
            CHECK,
            format!(
                "StorageClass {name} is not vdrive's (provisioner {})",
                class.provisioner
            ),
            other,
        ));
    }
    if class.reclaim_policy.as_deref() == Some("Retain") {
        return Some(Finding::fail(
            CHECK,
            format!(
                "StorageClass {name} retains its volumes: the probe's volume would stay behind"
            ),
            other,
        ));
    }
    None
}

/// The claim: labelled as the probe's, with the chosen node when the class
/// waits for a consumer.
pub fn probe_claim(class: &str, node: Option<&str>) -> PersistentVolumeClaim {
    let annotations: BTreeMap<&str, &str> = node.map(|n| (SELECTED_NODE, n)).into_iter().collect();
    serde_json::from_value(serde_json::json!({
        "metadata": {
            "generateName": "vdrive-doctor-probe-",
            "labels": {
                "app.kubernetes.io/name": "vdrive",
                "app.kubernetes.io/component": "doctor-probe",
            },
            "annotations": annotations,
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": class,
            "resources": { "requests": { "storage": PROBE_SIZE } },
        },
    }))
    .unwrap_or_default()
}

async fn choose_node(client: &Client, class: &StorageClass) -> Result<Option<String>, kube::Error> {
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let csinodes: BTreeMap<String, CSINode> = Api::<CSINode>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|c| (c.name_any(), c))
        .collect();
    let capacities = Api::<CSIStorageCapacity>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    Ok(node_for(class, &nodes, &csinodes, &capacities))
}

/// A registered node of the class's pool (any pool node when the class names
/// none), preferring one whose published capacity for the class is not zero.
pub fn node_for(
    class: &StorageClass,
    nodes: &[Node],
    csinodes: &BTreeMap<String, CSINode>,
    capacities: &[CSIStorageCapacity],
) -> Option<String> {
    let class_name = class.name_any();
    let pool: Option<Pool> = class
        .parameters
        .as_ref()
        .and_then(|p| p.get("pool"))
        .and_then(|p| p.parse().ok());
    let candidates: Vec<&Node> = pool_nodes(nodes)
        .into_iter()
        .filter(|(n, p)| {
            pool.is_none_or(|want| want == *p) && registered(csinodes.get(&n.name_any()))
        })
        .map(|(n, _)| n)
        .collect();
    let has_room = |node: &&Node| {
        capacities.iter().any(|c| {
            c.storage_class_name == class_name
                && c.node_topology
                    .as_ref()
                    .is_some_and(|t| selects(t, node.labels()))
                && c.capacity.as_ref().is_some_and(|q| not_zero(&q.0))
        })
    };
    candidates
        .iter()
        .find(|n| has_room(n))
        .or(candidates.first())
        .map(|n| n.name_any())
}

/// Whether a quantity ("0", "100Gi", "1500M") is more than nothing.
fn not_zero(quantity: &str) -> bool {
    quantity
        .trim_start_matches(['0', '.'])
        .starts_with(|c: char| c.is_ascii_digit())
}

/// The PersistentVolume's name once the claim is Bound, or the phase last seen.
async fn wait_bound(
    claims: &Api<PersistentVolumeClaim>,
    name: &str,
    timeout: Duration,
) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let mut last = "not read yet".to_string();
    while Instant::now() < deadline {
        match claims.get_opt(name).await {
            Ok(Some(claim)) => {
                let phase = claim
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.clone())
                    .unwrap_or_default();
                let volume = claim.spec.as_ref().and_then(|s| s.volume_name.clone());
                match volume {
                    Some(volume) if phase == "Bound" => return Ok(volume),
                    _ => last = format!("phase {phase}"),
                }
            }
            Ok(None) => return Err("the claim disappeared".to_string()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(POLL).await;
    }
    Err(last)
}

async fn current_volume(claims: &Api<PersistentVolumeClaim>, name: &str) -> Option<String> {
    let claim = claims.get_opt(name).await.ok().flatten()?;
    claim.spec.and_then(|s| s.volume_name)
}

/// `: <message>` of the claim's latest Event (why the provisioner failed), or nothing.
async fn last_event(client: &Client, namespace: &str, claim: &str) -> String {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let params = ListParams::default().fields(&format!("involvedObject.name={claim}"));
    let Ok(list) = events.list(&params).await else {
        return String::new();
    };
    list.items
        .iter()
        .filter_map(|e| {
            Some((
                e.last_timestamp.as_ref().map(|t| t.0),
                e.message.as_deref()?,
            ))
        })
        .max_by_key(|(when, _)| *when)
        .map_or(String::new(), |(_, message)| format!(": {message}"))
}

/// Deletes the claim, then waits for its volume (if it got one) to go: the
/// provisioner deletes the PersistentVolume once vdrive has deleted the volume.
async fn clean_up(
    client: &Client,
    claims: &Api<PersistentVolumeClaim>,
    name: &str,
    volume: Option<&str>,
    timeout: Duration,
) -> Vec<Finding> {
    let namespace = claims.namespace().unwrap_or_default();
    let claim = format!("{namespace}/{name}");
    if let Err(e) = claims.delete(name, &DeleteParams::default()).await {
        let gone = matches!(&e, kube::Error::Api(s) if s.is_not_found());
        if !gone {
            return vec![
                Finding::fail(
                    CHECK,
                    format!("cannot delete the probe's PVC {claim}: {e}"),
                    format!("kubectl -n {namespace} delete pvc {name}"),
                )
                .on("delete"),
            ];
        }
    }
    let Some(volume) = volume else {
        return vec![
            Finding::ok(CHECK, format!("deleted PVC {claim} (it had no volume)")).on("delete"),
        ];
    };
    let started = Instant::now();
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let deadline = started + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        match volumes.get_opt(volume).await {
            Ok(None) => {
                return vec![
                    Finding::ok(
                        CHECK,
                        format!(
                            "deleted PVC {claim}; {volume} gone in {:.1}s",
                            started.elapsed().as_secs_f64()
                        ),
                    )
                    .on("delete"),
                ];
            }
            Ok(Some(pv)) => {
                last = pv
                    .status
                    .and_then(|s| s.phase)
                    .map_or(String::new(), |p| format!(", phase {p}"));
            }
            Err(e) => last = format!(", {e}"),
        }
        tokio::time::sleep(POLL).await;
    }
    vec![
        Finding::fail(
            CHECK,
            format!(
                "deleted PVC {claim} but {volume} is still there after {}s{last}",
                timeout.as_secs()
            ),
            format!("kubectl describe pv {volume}; vdrive orphans"),
        )
        .on("delete"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    fn class(json: serde_json::Value) -> StorageClass {
        serde_json::from_value(json).unwrap_or_default()
    }

    fn node(name: &str, pool: &str) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": { "pool": pool, "topology.vdrive.io/node": name } },
        }))
        .unwrap_or_default()
    }

    fn csinode(name: &str) -> (String, CSINode) {
        let c = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name },
            "spec": { "drivers": [{ "name": DRIVER_NAME, "nodeID": name }] },
        }))
        .unwrap_or_default();
        (name.to_string(), c)
    }

    fn capacity(class: &str, node: &str, quantity: &str) -> CSIStorageCapacity {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": format!("c-{node}") },
            "storageClassName": class,
            "nodeTopology": { "matchLabels": { "topology.vdrive.io/node": node } },
            "capacity": quantity,
        }))
        .unwrap_or_default()
    }

    #[test]
    fn only_vdrive_classes_that_delete_are_probed() {
        let ours = class(
            serde_json::json!({ "metadata": { "name": "k" }, "provisioner": DRIVER_NAME, "reclaimPolicy": "Delete" }),
        );
        assert!(unsuitable(&ours).is_none());
        let kept = class(
            serde_json::json!({ "metadata": { "name": "v" }, "provisioner": DRIVER_NAME, "reclaimPolicy": "Retain" }),
        );
        assert_eq!(unsuitable(&kept).map(|f| f.status), Some(Status::Fail));
        let foreign =
            class(serde_json::json!({ "metadata": { "name": "n" }, "provisioner": "nfs.csi.io" }));
        assert!(unsuitable(&foreign).is_some_and(|f| f.message.contains("nfs.csi.io")));
    }

    #[test]
    fn the_probe_goes_to_a_registered_node_of_the_class_pool_with_room() {
        let k8s = class(serde_json::json!({
            "metadata": { "name": "k" }, "provisioner": DRIVER_NAME, "parameters": { "pool": "k8s" },
        }));
        let nodes = [
            node("a", "k8s"),
            node("b", "k8s"),
            node("c", "k8s"),
            node("v", "vm"),
        ];
        let csinodes: BTreeMap<_, _> = [csinode("b"), csinode("c"), csinode("v")].into();
        let room = [
            capacity("k", "b", "0"),
            capacity("k", "c", "100Gi"),
            capacity("k", "v", "100Gi"),
        ];
        assert_eq!(
            node_for(&k8s, &nodes, &csinodes, &room).as_deref(),
            Some("c")
        );
        // With no capacity known, the first registered node of the pool.
        assert_eq!(node_for(&k8s, &nodes, &csinodes, &[]).as_deref(), Some("b"));
        let none: BTreeMap<String, CSINode> = BTreeMap::new();
        assert_eq!(node_for(&k8s, &nodes, &none, &room), None);
    }

    #[test]
    fn quantities_of_nothing_are_zero() {
        for nothing in ["0", "0Gi", "0.0", ""] {
            assert!(!not_zero(nothing), "{nothing}");
        }
        for something in ["1", "100Gi", "0.5Gi", "1500M"] {
            assert!(not_zero(something), "{something}");
        }
    }

    #[test]
    fn the_claim_names_the_chosen_node() {
        let claim = probe_claim("k8s-pool-storage", Some("n1"));
        assert_eq!(
            claim.annotations().get(SELECTED_NODE).map(String::as_str),
            Some("n1")
        );
        assert_eq!(
            claim.metadata.generate_name.as_deref(),
            Some("vdrive-doctor-probe-")
        );
        assert!(probe_claim("x", None).annotations().is_empty());
        let (key, value) = PROBE_SELECTOR.split_once('=').unwrap_or_default();
        assert_eq!(claim.labels().get(key).map(String::as_str), Some(value));
    }
}
