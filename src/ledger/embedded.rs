//! The embedded ledger store: one crash-safe redb file, the default for
//! `vdrive all-in-one` and for tests. Every swap is a redb write transaction
//! committed with immediate durability (fsync) before it returns.
//!
//! Each node is a small header row (revision, pool label, drives) plus one row per
//! claim, so a commit writes only what changed, not the node's whole ledger.
//!
//! redb locks the file, so this process is its only writer. The store reads every
//! node once when it opens and then serves loads from memory; swaps are serialised
//! by a writer lock and update memory only after the commit succeeded, so memory
//! never runs ahead of the file. If a commit fails, memory and file may disagree,
//! so the store refuses every further call until it is opened again.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::model::{Claim, NodeLedger, PhysicalDrive};
use super::pool_share::Pool;
use super::store::{LedgerStore, Revision, Snapshot, StoreError};

/// node name → JSON of [`Header`].
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
/// (node name, virtual drive uuid) → JSON of [`Claim`].
const CLAIMS: TableDefinition<(&str, u128), &[u8]> = TableDefinition::new("claims");
/// (kind, key) → JSON: small records other parts of all-in-one keep beside the
/// ledger (VM records), so that one file holds all of its state.
const RECORDS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("records");

#[derive(Serialize, Deserialize)]
struct Header {
    revision: u64,
    pool: Option<Pool>,
    drives: Vec<PhysicalDrive>,
}

/// A node's committed revision and ledger.
type Committed = (u64, Arc<NodeLedger>);

#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    /// Every node in the file, as last committed.
    nodes: Mutex<HashMap<String, Committed>>,
    /// Held across a whole swap: revision check, commit and memory update.
    writer: Mutex<()>,
    /// Set when a write failed midway: memory can no longer vouch for the file.
    broken: AtomicBool,
}

impl EmbeddedStore {
    /// Opens (or creates) the ledger file and reads it. A second process opening
    /// the same ledger fails here instead of corrupting it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let unavailable = |reason: String| StoreError::Unavailable {
            path: path.display().to_string(),
            reason,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| unavailable(e.to_string()))?;
        }
        let db = Database::create(&path).map_err(|e| unavailable(e.to_string()))?;
        let txn = db.begin_write().map_err(|e| unavailable(e.to_string()))?;
        txn.open_table(NODES)
            .map_err(|e| unavailable(e.to_string()))?;
        txn.open_table(CLAIMS)
            .map_err(|e| unavailable(e.to_string()))?;
        txn.open_table(RECORDS)
            .map_err(|e| unavailable(e.to_string()))?;
        txn.commit().map_err(|e| unavailable(e.to_string()))?;
        let nodes = read_all(&db).map_err(|e| match e {
            ReadError::Db(reason) => unavailable(reason),
            ReadError::Corrupt { node, reason } => StoreError::Corrupt { node, reason },
        })?;
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                db,
                path,
                nodes: Mutex::new(nodes),
                writer: Mutex::new(()),
                broken: AtomicBool::new(false),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn unavailable(&self, err: impl ToString) -> StoreError {
        StoreError::Unavailable {
            path: self.inner.path.display().to_string(),
            reason: err.to_string(),
        }
    }

    fn nodes(&self) -> MutexGuard<'_, HashMap<String, Committed>> {
        // Entries are only ever replaced whole; a panic elsewhere cannot leave one
        // half-written, so a poisoned lock still guards a valid map.
        self.inner.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn committed(&self, node: &str) -> Result<Committed, StoreError> {
        if self.inner.broken.load(Ordering::Acquire) {
            return Err(self.unavailable(
                "an earlier write failed, so memory and file may disagree; restart vdrive to reopen the ledger",
            ));
        }
        Ok(self
            .nodes()
            .get(node)
            .cloned()
            .unwrap_or_else(|| (0, Arc::new(NodeLedger::new(node)))))
    }

    fn swap_blocking(
        &self,
        expected: &Revision,
        ledger: Arc<NodeLedger>,
    ) -> Result<bool, StoreError> {
        let node = ledger.node.as_str();
        let _writer = self.inner.writer.lock().unwrap_or_else(|p| p.into_inner());
        let (current, before) = self.committed(node)?;
        if Revision(current.to_string()) != *expected {
            return Ok(false);
        }
        let revision = current + 1;
        if let Err(err) = self.write_rows(node, revision, &before, &ledger) {
            // The transaction may or may not have reached the file.
            self.inner.broken.store(true, Ordering::Release);
            return Err(err);
        }
        self.nodes().insert(node.to_string(), (revision, ledger));
        Ok(true)
    }

    /// Writes the node's header and the claim rows that differ from `before`,
    /// in one durable transaction.
    fn write_rows(
        &self,
        node: &str,
        revision: u64,
        before: &NodeLedger,
        ledger: &NodeLedger,
    ) -> Result<(), StoreError> {
        let header = serde_json::to_vec(&Header {
            revision,
            pool: ledger.pool,
            drives: ledger.drives.clone(),
        })
        .map_err(|e| self.unavailable(e))?;
        let old: HashMap<u128, &Claim> = before
            .claims
            .iter()
            .map(|c| (c.virtual_uuid.as_u128(), c))
            .collect();
        let txn = self
            .inner
            .db
            .begin_write()
            .map_err(|e| self.unavailable(e))?;
        {
            let mut nodes = txn.open_table(NODES).map_err(|e| self.unavailable(e))?;
            nodes
                .insert(node, header.as_slice())
                .map_err(|e| self.unavailable(e))?;
            let mut claims = txn.open_table(CLAIMS).map_err(|e| self.unavailable(e))?;
            let mut kept = 0usize;
            for claim in &ledger.claims {
                let key = claim.virtual_uuid.as_u128();
                let previous = old.get(&key);
                kept += usize::from(previous.is_some());
                if previous.is_none_or(|&p| p != claim) {
                    let row = serde_json::to_vec(claim).map_err(|e| self.unavailable(e))?;
                    claims
                        .insert((node, key), row.as_slice())
                        .map_err(|e| self.unavailable(e))?;
                }
            }
            if kept < old.len() {
                let now: HashSet<u128> = ledger
                    .claims
                    .iter()
                    .map(|c| c.virtual_uuid.as_u128())
                    .collect();
                for gone in old.keys().filter(|k| !now.contains(k)) {
                    claims
                        .remove((node, *gone))
                        .map_err(|e| self.unavailable(e))?;
                }
            }
        }
        txn.commit().map_err(|e| self.unavailable(e))
    }
}

/// Records beside the ledger. Each call is one durable transaction and blocks:
/// call it off the async executor's threads.
impl EmbeddedStore {
    /// The record `kind`/`key`, if there is one.
    pub fn record(&self, kind: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self
            .inner
            .db
            .begin_read()
            .map_err(|e| self.unavailable(e))?;
        let table = txn.open_table(RECORDS).map_err(|e| self.unavailable(e))?;
        let value = table
            .get((kind, key))
            .map_err(|e| self.unavailable(e))?
            .map(|v| v.value().to_vec());
        Ok(value)
    }

    /// Every record of `kind`, by key.
    pub fn records(&self, kind: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self
            .inner
            .db
            .begin_read()
            .map_err(|e| self.unavailable(e))?;
        let table = txn.open_table(RECORDS).map_err(|e| self.unavailable(e))?;
        let mut out = Vec::new();
        let rows = table.range((kind, "")..).map_err(|e| self.unavailable(e))?;
        for row in rows {
            let (key, value) = row.map_err(|e| self.unavailable(e))?;
            let (row_kind, row_key) = key.value();
            if row_kind != kind {
                break;
            }
            out.push((row_key.to_string(), value.value().to_vec()));
        }
        Ok(out)
    }

    /// Writes the record; with `only_new`, only if there is none yet (false then
    /// means another writer was first).
    pub fn put_record(
        &self,
        kind: &str,
        key: &str,
        value: &[u8],
        only_new: bool,
    ) -> Result<bool, StoreError> {
        let txn = self
            .inner
            .db
            .begin_write()
            .map_err(|e| self.unavailable(e))?;
        {
            let mut table = txn.open_table(RECORDS).map_err(|e| self.unavailable(e))?;
            let exists = table
                .get((kind, key))
                .map_err(|e| self.unavailable(e))?
                .is_some();
            if only_new && exists {
                return Ok(false);
            }
            table
                .insert((kind, key), value)
                .map_err(|e| self.unavailable(e))?;
        }
        txn.commit().map_err(|e| self.unavailable(e))?;
        Ok(true)
    }

    /// Removes the record; false when there was none.
    pub fn remove_record(&self, kind: &str, key: &str) -> Result<bool, StoreError> {
        let txn = self
            .inner
            .db
            .begin_write()
            .map_err(|e| self.unavailable(e))?;
        let existed = {
            let mut table = txn.open_table(RECORDS).map_err(|e| self.unavailable(e))?;
            table
                .remove((kind, key))
                .map_err(|e| self.unavailable(e))?
                .is_some()
        };
        txn.commit().map_err(|e| self.unavailable(e))?;
        Ok(existed)
    }
}

impl LedgerStore for EmbeddedStore {
    async fn load(&self, node: &str) -> Result<Snapshot, StoreError> {
        let (revision, ledger) = self.committed(node)?;
        Ok(Snapshot {
            revision: Revision(revision.to_string()),
            ledger,
        })
    }

    async fn compare_and_swap(
        &self,
        expected: &Revision,
        ledger: Arc<NodeLedger>,
    ) -> Result<bool, StoreError> {
        let store = self.clone();
        let expected = expected.clone();
        // The commit fsyncs: keep it off the async executor's threads.
        tokio::task::spawn_blocking(move || store.swap_blocking(&expected, ledger))
            .await
            .map_err(|e| self.unavailable(format!("ledger task failed: {e}")))?
    }

    async fn node_names(&self) -> Result<Vec<String>, StoreError> {
        let mut names: Vec<String> = self.nodes().keys().cloned().collect();
        names.sort_unstable();
        Ok(names)
    }
}

enum ReadError {
    Db(String),
    Corrupt { node: String, reason: String },
}

/// Every node's header and claims, as committed in the file.
fn read_all(db: &Database) -> Result<HashMap<String, Committed>, ReadError> {
    let db_err = |e: &dyn std::fmt::Display| ReadError::Db(e.to_string());
    let txn = db.begin_read().map_err(|e| db_err(&e))?;
    let headers = txn.open_table(NODES).map_err(|e| db_err(&e))?;
    let claim_rows = txn.open_table(CLAIMS).map_err(|e| db_err(&e))?;
    let mut nodes = HashMap::new();
    for row in headers.iter().map_err(|e| db_err(&e))? {
        let (key, value) = row.map_err(|e| db_err(&e))?;
        let node = key.value().to_string();
        let corrupt = |e: serde_json::Error| ReadError::Corrupt {
            node: node.clone(),
            reason: e.to_string(),
        };
        let header: Header = serde_json::from_slice(value.value()).map_err(corrupt)?;
        let mut claims = Vec::new();
        let range = claim_rows
            .range((node.as_str(), 0u128)..=(node.as_str(), u128::MAX))
            .map_err(|e| db_err(&e))?;
        for claim in range {
            let (_, value) = claim.map_err(|e| db_err(&e))?;
            claims.push(serde_json::from_slice::<Claim>(value.value()).map_err(corrupt)?);
        }
        let mut ledger = NodeLedger {
            node: node.clone(),
            pool: header.pool,
            drives: header.drives,
            claims,
        };
        ledger.normalize();
        nodes.insert(node, (header.revision, Arc::new(ledger)));
    }
    Ok(nodes)
}
