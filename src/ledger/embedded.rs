//! The embedded ledger store: one crash-safe redb file, the default for
//! `vdrive all-in-one` and for tests. Every swap is a redb write transaction
//! committed with immediate durability (fsync) before it returns.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::model::NodeLedger;
use super::store::{LedgerStore, Revision, Snapshot, StoreError};

/// node name → JSON of [`Record`].
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");

#[derive(Serialize, Deserialize)]
struct Record {
    revision: u64,
    ledger: NodeLedger,
}

#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    path: Arc<PathBuf>,
}

impl EmbeddedStore {
    /// Opens (or creates) the ledger file. redb locks the file, so a second process
    /// opening the same ledger fails here instead of corrupting it.
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
        txn.commit().map_err(|e| unavailable(e.to_string()))?;
        Ok(EmbeddedStore {
            db: Arc::new(db),
            path: Arc::new(path),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn unavailable(&self, err: impl ToString) -> StoreError {
        StoreError::Unavailable {
            path: self.path.display().to_string(),
            reason: err.to_string(),
        }
    }

    fn decode(node: &str, bytes: &[u8]) -> Result<Record, StoreError> {
        serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
            node: node.to_string(),
            reason: e.to_string(),
        })
    }

    fn load_blocking(&self, node: &str) -> Result<Snapshot, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.unavailable(e))?;
        let table = txn.open_table(NODES).map_err(|e| self.unavailable(e))?;
        let stored = table.get(node).map_err(|e| self.unavailable(e))?;
        let (revision, ledger) = match stored {
            Some(bytes) => {
                let record = Self::decode(node, bytes.value())?;
                (record.revision, record.ledger)
            }
            None => (0, NodeLedger::new(node)),
        };
        Ok(Snapshot {
            revision: Revision(revision.to_string()),
            ledger,
        })
    }

    fn swap_blocking(&self, expected: &Revision, ledger: &NodeLedger) -> Result<bool, StoreError> {
        let node = ledger.node.as_str();
        let bytes;
        {
            let txn = self.db.begin_write().map_err(|e| self.unavailable(e))?;
            {
                let mut table = txn.open_table(NODES).map_err(|e| self.unavailable(e))?;
                let current = match table.get(node).map_err(|e| self.unavailable(e))? {
                    Some(stored) => Self::decode(node, stored.value())?.revision,
                    None => 0,
                };
                if Revision(current.to_string()) != *expected {
                    return Ok(false); // dropping the transaction aborts it
                }
                bytes = serde_json::to_vec(&Record {
                    revision: current + 1,
                    ledger: ledger.clone(),
                })
                .map_err(|e| self.unavailable(e))?;
                table
                    .insert(node, bytes.as_slice())
                    .map_err(|e| self.unavailable(e))?;
            }
            txn.commit().map_err(|e| self.unavailable(e))?;
        }
        Ok(true)
    }

    fn node_names_blocking(&self) -> Result<Vec<String>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.unavailable(e))?;
        let table = txn.open_table(NODES).map_err(|e| self.unavailable(e))?;
        let mut names = Vec::new();
        for entry in table.iter().map_err(|e| self.unavailable(e))? {
            let (key, _) = entry.map_err(|e| self.unavailable(e))?;
            names.push(key.value().to_string());
        }
        Ok(names)
    }

    /// Runs blocking redb work off the async executor's threads.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&EmbeddedStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(|e| self.unavailable(format!("ledger task failed: {e}")))?
    }
}

impl LedgerStore for EmbeddedStore {
    async fn load(&self, node: &str) -> Result<Snapshot, StoreError> {
        let node = node.to_string();
        self.blocking(move |s| s.load_blocking(&node)).await
    }

    async fn compare_and_swap(
        &self,
        expected: &Revision,
        ledger: &NodeLedger,
    ) -> Result<bool, StoreError> {
        let expected = expected.clone();
        let ledger = ledger.clone();
        self.blocking(move |s| s.swap_blocking(&expected, &ledger))
            .await
    }

    async fn node_names(&self) -> Result<Vec<String>, StoreError> {
        self.blocking(EmbeddedStore::node_names_blocking).await
    }
}
