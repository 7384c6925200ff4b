//! The Kubernetes ledger store: each node's ledger lives on its Node object, the
//! claims and drives in two annotations (see [`super::annotations`]) and the pool
//! in the `pool` label. Kubernetes is the distributed engine; vdrive keeps no
//! database of its own in a cluster.
//!
//! Reads come from a watch-fed cache of the Nodes, so a CreateVolume that checks
//! a name across a hundred nodes costs no API round trip, and a relabelled server
//! counts at once. Every write is a merge patch carrying the resourceVersion the
//! change was computed from: the API server applies it only if the Node is still
//! at that version (409 Conflict otherwise), which is the compare-and-swap the
//! ledger needs. After a lost swap the next load of that node reads the API, not
//! the cache, so a retry never spins on a stale copy.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Map, Value, json};
use tokio::sync::watch;

use super::annotations::{
    CLAIMS_ANNOTATION, DRIVES_ANNOTATION, POOL_LABEL, decode_claims, decode_drives, encode_claims,
    encode_drives, pool_from_label,
};
use crate::ledger::{LedgerStore, NodeLedger, Revision, Snapshot, StoreError};
use crate::pools::Pool;

/// The field manager vdrive's writes are recorded under.
pub const FIELD_MANAGER: &str = "vdrive";

/// Which Nodes a store watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every Node: the controller.
    AllNodes,
    /// Only this Node: a node plugin, which never needs the others.
    OneNode(String),
}

/// Kubernetes' limit on the total size of one object's annotations (keys and
/// values), which the API server enforces on every write.
pub const ANNOTATIONS_LIMIT_BYTES: usize = 256 * 1024;

/// Whether a Node whose other annotations take `other_bytes` can hold vdrive's
/// two annotations for `ledger`. A write that adds claims is measured as if
/// every claim were marked releasing, the largest the same claims can grow, so
/// that deleting any of the node's volumes later always fits.
fn annotations_fit(
    ledger: &NodeLedger,
    other_bytes: usize,
    adds_claims: bool,
) -> Result<(), StoreError> {
    let claims = if adds_claims {
        let mut worst = ledger.claims.clone();
        worst.iter_mut().for_each(|c| c.releasing = true);
        encode_claims(&worst)
    } else {
        encode_claims(&ledger.claims)
    };
    let bytes = other_bytes
        + CLAIMS_ANNOTATION.len()
        + claims.len()
        + DRIVES_ANNOTATION.len()
        + encode_drives(&ledger.drives).len();
    if bytes <= ANNOTATIONS_LIMIT_BYTES {
        return Ok(());
    }
    let mut volumes: Vec<&str> = ledger.claims.iter().map(|c| c.volume_id.as_str()).collect();
    volumes.sort_unstable();
    volumes.dedup();
    Err(StoreError::AnnotationsFull {
        node: ledger.node.clone(),
        key: CLAIMS_ANNOTATION,
        volumes: volumes.len(),
        claims: ledger.claims.len(),
        bytes,
        limit: ANNOTATIONS_LIMIT_BYTES,
    })
}

/// What the store keeps of one Node: its revision, and its ledger decoded once.
#[derive(Debug)]
struct NodeRecord {
    revision: String,
    pool: Option<Pool>,
    claims_text: Option<String>,
    drives_text: Option<String>,
    /// The decoded ledger, or why the annotations cannot be read.
    ledger: Result<Arc<NodeLedger>, String>,
    /// Whether vdrive has anything to do with this node (a ledger or a pool).
    relevant: bool,
    /// Bytes of the Node's annotations other than vdrive's two.
    other_annotations_bytes: usize,
}

impl NodeRecord {
    fn from_node(node: &Node, previous: Option<&NodeRecord>) -> NodeRecord {
        let name = node.name_any();
        let annotation = |key: &str| node.annotations().get(key).cloned();
        let claims_text = annotation(CLAIMS_ANNOTATION);
        let drives_text = annotation(DRIVES_ANNOTATION);
        let pool = pool_from_label(node.labels().get(POOL_LABEL).map(String::as_str));
        let revision = node.resource_version().unwrap_or_default();
        let relevant = claims_text.is_some() || drives_text.is_some() || pool.is_some();
        let other_annotations_bytes = node
            .annotations()
            .iter()
            .filter(|(k, _)| *k != CLAIMS_ANNOTATION && *k != DRIVES_ANNOTATION)
            .map(|(k, v)| k.len() + v.len())
            .sum();
        // Most Node updates are status heartbeats: reuse the decoded ledger when
        // the annotations and the label are what they were.
        if let Some(previous) = previous
            && previous.claims_text == claims_text
            && previous.drives_text == drives_text
            && previous.pool == pool
        {
            return NodeRecord {
                revision,
                pool,
                claims_text,
                drives_text,
                ledger: previous.ledger.clone(),
                relevant,
                other_annotations_bytes,
            };
        }
        let ledger = decode(&name, pool, claims_text.as_deref(), drives_text.as_deref());
        NodeRecord {
            revision,
            pool,
            claims_text,
            drives_text,
            ledger,
            relevant,
            other_annotations_bytes,
        }
    }

    fn snapshot(&self, node: &str) -> Result<Snapshot, StoreError> {
        match &self.ledger {
            Ok(ledger) => Ok(Snapshot {
                revision: Revision(self.revision.clone()),
                ledger: ledger.clone(),
            }),
            Err(reason) => Err(StoreError::Corrupt {
                node: node.to_string(),
                reason: reason.clone(),
            }),
        }
    }
}

fn decode(
    name: &str,
    pool: Option<Pool>,
    claims: Option<&str>,
    drives: Option<&str>,
) -> Result<Arc<NodeLedger>, String> {
    let mut ledger = NodeLedger::new(name);
    ledger.pool = pool;
    if let Some(text) = claims {
        ledger.claims = decode_claims(text)?;
    }
    if let Some(text) = drives {
        ledger.drives = decode_drives(text)?;
    }
    ledger.normalize();
    ledger.check_invariants()?;
    Ok(Arc::new(ledger))
}

/// Whether revision `a` is newer than `b`. resourceVersions are opaque, but the
/// API server's are etcd revisions: compare them as numbers when both are, and
/// otherwise trust the newest arrival.
fn is_newer(a: &str, b: &str) -> bool {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(a), Ok(b)) => a > b,
        _ => true,
    }
}

pub struct KubeStore {
    api: Api<Node>,
    scope: Scope,
    nodes: RwLock<HashMap<String, Arc<NodeRecord>>>,
    /// Nodes whose next load reads the API: a swap on them was just lost.
    stale: Mutex<HashSet<String>>,
    /// Counts cache changes; the node plugin waits on it to notice releases.
    changes: watch::Sender<u64>,
    /// Set once the first full list has arrived.
    ready: watch::Sender<bool>,
}

impl KubeStore {
    /// Starts watching the Nodes of `scope` in the background. Loads before the
    /// first list has arrived read the API directly; see [`KubeStore::wait_ready`].
    pub fn start(client: Client, scope: Scope) -> Arc<KubeStore> {
        let store = Arc::new(KubeStore {
            api: Api::all(client),
            scope,
            nodes: RwLock::default(),
            stale: Mutex::default(),
            changes: watch::Sender::new(0),
            ready: watch::Sender::new(false),
        });
        tokio::spawn(keep_watching(Arc::downgrade(&store)));
        store
    }

    pub fn client_api(&self) -> &Api<Node> {
        &self.api
    }

    /// Waits until the watch has listed the Nodes once.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), StoreError> {
        let mut ready = self.ready.subscribe();
        tokio::time::timeout(timeout, ready.wait_for(|r| *r))
            .await
            .map_err(|_| StoreError::Api {
                reason: format!(
                    "the Nodes could not be listed within {}s; check the API server and this pod's RBAC (nodes: get, list, watch, patch)",
                    timeout.as_secs()
                ),
            })?
            .map(|_| ())
            .map_err(|_| StoreError::Api {
                reason: "the Node watch stopped".into(),
            })
    }

    /// A receiver that changes whenever a watched Node does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Takes `node` into the cache unless the cache already has a newer version.
    fn offer(&self, node: &Node) {
        let name = node.name_any();
        let mut nodes = self.nodes.write().unwrap_or_else(PoisonError::into_inner);
        let previous = nodes.get(&name);
        if let Some(previous) = previous
            && !is_newer(
                &node.resource_version().unwrap_or_default(),
                &previous.revision,
            )
        {
            return;
        }
        let record = Arc::new(NodeRecord::from_node(node, previous.map(Arc::as_ref)));
        nodes.insert(name, record);
        drop(nodes);
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn forget(&self, name: &str) {
        let removed = self
            .nodes
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
        if removed.is_some() {
            self.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Replaces the cache with a full list, keeping entries our own writes made
    /// newer than the list.
    fn relist(&self, listed: Vec<Node>) {
        let names: HashSet<String> = listed.iter().map(ResourceExt::name_any).collect();
        self.nodes
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|name, _| names.contains(name));
        for node in &listed {
            self.offer(node);
        }
        self.ready.send_replace(true);
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn record(&self, name: &str) -> Option<Arc<NodeRecord>> {
        self.nodes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    async fn fetch(&self, name: &str) -> Result<Arc<NodeRecord>, StoreError> {
        let node = self
            .api
            .get_opt(name)
            .await
            .map_err(|e| api_error("read", name, e))?
            .ok_or_else(|| StoreError::NodeNotFound(name.to_string()))?;
        self.offer(&node);
        let previous = self.record(name);
        Ok(previous.unwrap_or_else(|| Arc::new(NodeRecord::from_node(&node, None))))
    }
}

impl LedgerStore for Arc<KubeStore> {
    async fn load(&self, node: &str) -> Result<Snapshot, StoreError> {
        let must_read = self
            .stale
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(node);
        let record = match self.record(node) {
            Some(record) if !must_read => record,
            _ => self.fetch(node).await?,
        };
        record.snapshot(node)
    }

    async fn load_latest(&self, node: &str) -> Result<Snapshot, StoreError> {
        self.fetch(node).await?.snapshot(node)
    }

    async fn compare_and_swap(
        &self,
        expected: &Revision,
        ledger: Arc<NodeLedger>,
    ) -> Result<bool, StoreError> {
        let name = ledger.node.clone();
        let current = self.record(&name);
        // Refused here, with a reason, rather than by the API server.
        let before = current
            .as_ref()
            .and_then(|r| r.ledger.as_ref().ok())
            .map_or(0, |l| l.claims.len());
        annotations_fit(
            &ledger,
            current.as_ref().map_or(0, |r| r.other_annotations_bytes),
            ledger.claims.len() > before,
        )?;
        let claims = encode_claims(&ledger.claims);
        let drives = encode_drives(&ledger.drives);
        // Write only the annotations that change, so a claim never rewrites the
        // node plugin's drive list and the other way round.
        let mut annotations = Map::new();
        let unchanged = |text: &str, old: Option<&String>| old.is_some_and(|o| o == text);
        if !unchanged(
            &claims,
            current.as_ref().and_then(|r| r.claims_text.as_ref()),
        ) {
            annotations.insert(CLAIMS_ANNOTATION.into(), Value::String(claims));
        }
        if !unchanged(
            &drives,
            current.as_ref().and_then(|r| r.drives_text.as_ref()),
        ) {
            annotations.insert(DRIVES_ANNOTATION.into(), Value::String(drives));
        }
        let patch = json!({
            "metadata": {
                "resourceVersion": expected.0,
                "annotations": annotations,
            }
        });
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        match self.api.patch(&name, &params, &Patch::Merge(&patch)).await {
            Ok(node) => {
                self.offer(&node);
                Ok(true)
            }
            Err(kube::Error::Api(status)) if status.is_conflict() => {
                self.stale
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(name);
                Ok(false)
            }
            Err(kube::Error::Api(status)) if status.is_not_found() => {
                Err(StoreError::NodeNotFound(name))
            }
            Err(err) => Err(api_error("write", &name, err)),
        }
    }

    async fn node_names(&self) -> Result<Vec<String>, StoreError> {
        if !*self.ready.borrow() {
            // Before the first list: ask the API, so early requests see every node.
            let listed = match &self.scope {
                Scope::AllNodes => {
                    self.api
                        .list(&Default::default())
                        .await
                        .map_err(|e| api_error("list", "all", e))?
                        .items
                }
                Scope::OneNode(name) => self
                    .api
                    .get_opt(name)
                    .await
                    .map_err(|e| api_error("read", name, e))?
                    .into_iter()
                    .collect(),
            };
            for node in &listed {
                self.offer(node);
            }
        }
        let nodes = self.nodes.read().unwrap_or_else(PoisonError::into_inner);
        let mut names: Vec<String> = nodes
            .iter()
            .filter(|(_, record)| record.relevant)
            .map(|(name, _)| name.clone())
            .collect();
        names.sort_unstable();
        Ok(names)
    }
}

fn api_error(verb: &str, node: &str, err: kube::Error) -> StoreError {
    StoreError::Api {
        reason: format!("could not {verb} Node {node:?}: {err}"),
    }
}

/// Feeds the cache from a Node watch until the store is dropped. The watcher
/// re-lists and re-watches on its own after errors, with backoff.
async fn keep_watching(store: std::sync::Weak<KubeStore>) {
    let (api, config) = {
        let Some(store) = store.upgrade() else { return };
        let config = match &store.scope {
            Scope::AllNodes => watcher::Config::default(),
            Scope::OneNode(name) => {
                watcher::Config::default().fields(&format!("metadata.name={name}"))
            }
        };
        (store.api.clone(), config)
    };
    use kube::runtime::WatchStreamExt;
    let mut events = std::pin::pin!(watcher(api, config).default_backoff());
    let mut listing: Vec<Node> = Vec::new();
    while let Some(event) = events.next().await {
        let Some(store) = store.upgrade() else { return };
        match event {
            Ok(watcher::Event::Apply(node)) => store.offer(&node),
            Ok(watcher::Event::Delete(node)) => store.forget(&node.name_any()),
            Ok(watcher::Event::Init) => listing.clear(),
            Ok(watcher::Event::InitApply(node)) => listing.push(node),
            Ok(watcher::Event::InitDone) => store.relist(std::mem::take(&mut listing)),
            Err(err) => tracing::warn!(%err, "the Node watch failed; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::collections::BTreeMap;

    fn node(rv: &str, pool: Option<&str>, claims: Option<&str>) -> Node {
        let mut annotations = BTreeMap::new();
        if let Some(c) = claims {
            annotations.insert(CLAIMS_ANNOTATION.to_string(), c.to_string());
        }
        let labels = pool
            .map(|p| BTreeMap::from([(POOL_LABEL.to_string(), p.to_string())]))
            .unwrap_or_default();
        Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                resource_version: Some(rv.into()),
                annotations: Some(annotations),
                labels: Some(labels),
                ..ObjectMeta::default()
            },
            ..Node::default()
        }
    }

    #[test]
    fn records_read_pool_and_claims_and_reuse_the_decoding() {
        let first = NodeRecord::from_node(&node("5", Some("vm"), Some("{}")), None);
        let ledger = first.ledger.as_ref().unwrap().clone();
        assert_eq!(ledger.pool, Some(Pool::Vm));
        assert!(first.relevant);
        let heartbeat = NodeRecord::from_node(&node("6", Some("vm"), Some("{}")), Some(&first));
        assert!(Arc::ptr_eq(heartbeat.ledger.as_ref().unwrap(), &ledger));
        assert_eq!(heartbeat.snapshot("n1").unwrap().revision.0, "6");
    }

    #[test]
    fn unreadable_annotations_are_corrupt_not_empty() {
        let record = NodeRecord::from_node(&node("5", None, Some("[1]")), None);
        assert!(matches!(
            record.snapshot("n1"),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn an_annotation_whose_extent_overflows_is_corrupt_and_named() {
        let claims = r#"{"00000000-0000-0000-0000-000000000002": ["a:b", "00000000-0000-0000-0000-000000000001", 2, 18446744073709551615, "v", null, "n", 0]}"#;
        let record = NodeRecord::from_node(&node("5", None, Some(claims)), None);
        match record.snapshot("n1") {
            Err(StoreError::Corrupt { node, reason }) => {
                assert_eq!(node, "n1");
                assert!(reason.contains(CLAIMS_ANNOTATION), "{reason}");
            }
            other => panic!("expected a corrupt ledger, got {other:?}"),
        }
    }

    #[test]
    fn a_node_without_pool_or_ledger_is_not_vdrives() {
        assert!(!NodeRecord::from_node(&node("5", Some("gpu"), None), None).relevant);
    }

    /// A node with `volumes` one-part volumes as the provisioner names them.
    fn typical_ledger(volumes: usize) -> NodeLedger {
        use crate::allocator::{Ratio, Request};
        use crate::drive::{Backend, DriveType};
        use crate::ledger::{Claim, PhysicalDrive, VolumeSpec};
        use uuid::Uuid;
        let mut ledger = NodeLedger::new("worker-17");
        ledger.drives = (0..8)
            .map(|n| PhysicalDrive {
                uuid: Uuid::from_u128(0x9e1c_0000_0000_0000_0000_0000_0000_0000 + n),
                serial: format!("S6EWNX0T{n:06}"),
                drive_type: DriveType::Tlc,
                capacity_gib: 3576,
                backend: Backend::Dm,
                missing: false,
                quarantined: None,
            })
            .collect();
        let spec = VolumeSpec::new(
            &Request::with_ratio(10, Ratio { tlc: 1, qlc: 0 }, 1),
            Some("ext4".into()),
        );
        ledger.claims = (0..volumes)
            .map(|n| Claim {
                virtual_uuid: Uuid::from_u128(
                    0x31de_939a_0000_0000_0000_0000_0000_0000 + n as u128,
                ),
                volume_id: Uuid::from_u128(0x5f1c_0000_0000_0000_0000_0000_0000_0000 + n as u128)
                    .to_string(),
                volume_name: format!(
                    "pvc-{}",
                    Uuid::from_u128(0x7a00_0000_0000_0000_0000_0000_0000_0000 + n as u128)
                ),
                owner: format!("payments:data-postgres-{n}"),
                pool: Some(Pool::K8s),
                physical_uuid: ledger.drives[n % 8].uuid,
                offset_gib: 10 * (n / 8) as u64,
                size_gib: 10,
                part: 0,
                fixed: false,
                releasing: false,
                spec: Some(spec.clone()),
            })
            .collect();
        ledger
    }

    /// Other annotations of a typical Node (kubeadm's, the CSI node's, a CNI's).
    const TYPICAL_OTHER_BYTES: usize = 1024;

    /// How many volumes of one virtual drive a typical node holds under
    /// Kubernetes' annotation limit; the README states this figure.
    const TYPICAL_VOLUMES_PER_NODE: usize = 741;

    #[test]
    fn a_node_holds_the_readmes_number_of_typical_volumes() {
        let fits = |n| annotations_fit(&typical_ledger(n), TYPICAL_OTHER_BYTES, true).is_ok();
        let (mut lo, mut hi) = (1, 5000);
        while lo + 1 < hi {
            let mid = (lo + hi) / 2;
            if fits(mid) { lo = mid } else { hi = mid }
        }
        let most = lo;
        assert_eq!(most, TYPICAL_VOLUMES_PER_NODE);
        let full = typical_ledger(most + 1);
        match annotations_fit(&full, TYPICAL_OTHER_BYTES, true) {
            Err(err @ StoreError::AnnotationsFull { .. }) => {
                let text = err.to_string();
                assert!(
                    text.contains(&format!("with {} volumes", most + 1)),
                    "{text}"
                );
                assert!(text.contains("262144 bytes"), "{text}");
                assert!(text.contains("Place new volumes on other nodes"), "{text}");
            }
            other => panic!("expected a full node, got {other:?}"),
        }
        // Deleting (marking releasing) never needs more room than was checked.
        let mut retired = typical_ledger(most);
        retired.claims.iter_mut().for_each(|c| c.releasing = true);
        assert!(annotations_fit(&retired, TYPICAL_OTHER_BYTES, false).is_ok());
    }

    #[test]
    fn other_annotations_count_against_the_limit() {
        let mut big = node("5", None, Some("{}"));
        big.metadata.annotations.as_mut().unwrap().insert(
            "example.com/big".into(),
            "x".repeat(ANNOTATIONS_LIMIT_BYTES),
        );
        let record = NodeRecord::from_node(&big, None);
        assert!(record.other_annotations_bytes > ANNOTATIONS_LIMIT_BYTES);
        assert!(matches!(
            annotations_fit(&typical_ledger(1), record.other_annotations_bytes, true),
            Err(StoreError::AnnotationsFull { .. })
        ));
    }

    #[test]
    fn revisions_compare_as_numbers() {
        assert!(is_newer("10", "9"));
        assert!(!is_newer("9", "10"));
        assert!(!is_newer("9", "9"));
        assert!(is_newer("abc", "9"));
    }
}
