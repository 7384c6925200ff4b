//! Where ledgers live. One node's ledger changes in one atomic compare-and-swap;
//! a backend only has to load a node's ledger with its revision and replace it if
//! the revision is still the same.

use std::future::Future;
use std::sync::Arc;

use thiserror::Error;

use super::model::NodeLedger;

/// Opaque version of one node's ledger (a counter in the embedded store, a
/// resourceVersion in Kubernetes). Compared only for equality.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Revision(pub String);

/// A node's ledger as loaded, with the revision a later swap must match. The
/// ledger is shared, not copied: readers pay nothing, a change clones it once.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub revision: Revision,
    pub ledger: Arc<NodeLedger>,
}

#[derive(Debug, Clone, Error)]
pub enum StoreError {
    #[error("node {0:?} is not known to the ledger store")]
    NodeNotFound(String),
    #[error(
        "the ledger of node {node:?} cannot be read: {reason}. Restore it from a backup or remove the node's record"
    )]
    Corrupt { node: String, reason: String },
    #[error("the ledger store at {path} cannot be used: {reason}")]
    Unavailable { path: String, reason: String },
    /// The write would take the Node's annotations past Kubernetes' limit.
    #[error(
        "node {node:?} holds too many volumes to record this change: with {volumes} volumes ({claims} virtual drives) in its {key} annotation its annotations would take {bytes} bytes, over Kubernetes' limit of {limit} bytes per object. Place new volumes on other nodes, delete volumes on this one, or use fewer, larger volumes"
    )]
    AnnotationsFull {
        node: String,
        key: &'static str,
        volumes: usize,
        claims: usize,
        bytes: usize,
        limit: usize,
    },
    /// The Kubernetes API did not answer as it should (not a lost swap).
    #[error("the Kubernetes API: {reason}")]
    Api { reason: String },
}

/// A backend for node ledgers.
pub trait LedgerStore: Send + Sync + 'static {
    /// The node's ledger and its revision. A node never written yet loads empty.
    fn load(&self, node: &str) -> impl Future<Output = Result<Snapshot, StoreError>> + Send;

    /// Like [`LedgerStore::load`], but never older than the store itself: a
    /// backend that reads through a cache reads the source. For a reader that
    /// missed something it was told exists (a node asked to stage a volume just
    /// created elsewhere).
    fn load_latest(&self, node: &str) -> impl Future<Output = Result<Snapshot, StoreError>> + Send {
        self.load(node)
    }

    /// Replaces `ledger.node`'s ledger if its revision is still `expected`.
    /// Ok(false) means someone else wrote first: load again and retry.
    fn compare_and_swap(
        &self,
        expected: &Revision,
        ledger: Arc<NodeLedger>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Names of all nodes that have a ledger.
    fn node_names(&self) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;
}
