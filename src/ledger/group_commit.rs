//! Group commit: concurrent changes to one node's ledger share one store write.
//!
//! A change is queued for its node and a writer task for that node (started
//! when the first change arrives, gone when the queue is empty) takes every
//! change queued meanwhile as one batch. It plans them one after another
//! against the batch's running ledger, so placements never overlap, and
//! writes the result with one compare-and-swap: one redb transaction and
//! fsync embedded, one Node patch in Kubernetes. While a batch is being
//! written the next one gathers, so the more callers wait, the more each
//! write carries.
//!
//! Each change keeps its own answer: a change that is refused (no room, a
//! bad name) leaves the running ledger as it was and fails alone. A lost
//! swap plans the whole batch again against a fresh load. A write the store
//! refuses for the size of the whole batch (a Node's annotations full) is
//! retried one change at a time, so only the changes that do not fit fail.
//!
//! The writer task, not the caller, owns a queued change: a caller that
//! gives up (a CSI deadline) leaves its change to be written or refused
//! whole, never half. Reads never pass through here: they load from the
//! store, whose swap replaces a node's ledger in one step.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;

use super::error::LedgerError;
use super::model::NodeLedger;
use super::store::{LedgerStore, Snapshot, StoreError};

/// How often a batch is planned again after losing a compare-and-swap.
pub(super) const MAX_ATTEMPTS: u32 = 16;

/// The most changes one write carries. Far above what concurrent callers
/// queue in practice; it bounds how long the last of a burst waits for the
/// first's answer and how much one plan costs.
const MAX_BATCH: usize = 512;

/// What a change function decided.
pub(super) enum Change<T> {
    /// Nothing to write; return this.
    Unchanged(T),
    /// Write the modified ledger, then return this.
    Write(T),
}

/// Batches changes per node and writes them through the store.
pub(super) struct GroupCommit<S> {
    store: Arc<S>,
    /// Changes waiting for their node's writer. A node has an entry exactly
    /// while its writer task runs.
    queues: Mutex<HashMap<String, Vec<Box<dyn Pending>>>>,
}

impl<S: LedgerStore> GroupCommit<S> {
    pub fn new(store: Arc<S>) -> Arc<Self> {
        Arc::new(GroupCommit {
            store,
            queues: Mutex::default(),
        })
    }

    /// Queues `change` for `node` and waits for its answer: the value it
    /// returned once the batch carrying it is durable, or why not.
    pub async fn update<T, F>(self: &Arc<Self>, node: &str, change: F) -> Result<T, LedgerError>
    where
        T: Send + 'static,
        F: FnMut(&mut NodeLedger) -> Result<Change<T>, LedgerError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.submit(
            node,
            Box::new(Job {
                change,
                planned: None,
                reply,
            }),
        );
        answer.await.map_err(|_| LedgerError::Invariant {
            node: node.to_string(),
            reason: "the node's ledger writer stopped before answering; nothing is known to be written, try again".into(),
        })?
    }

    fn submit(self: &Arc<Self>, node: &str, job: Box<dyn Pending>) {
        let mut queues = self.queues();
        if let Some(queue) = queues.get_mut(node) {
            queue.push(job);
            return;
        }
        queues.insert(node.to_string(), vec![job]);
        drop(queues);
        let writer = Writer {
            commits: self.clone(),
            node: node.to_string(),
            finished: false,
        };
        tokio::spawn(writer.run());
    }

    fn queues(&self) -> MutexGuard<'_, HashMap<String, Vec<Box<dyn Pending>>>> {
        // Entries are pushed and taken whole; a poisoned map is still valid.
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    pub fn writers(&self) -> usize {
        self.queues().len()
    }
}

/// One node's writer task.
struct Writer<S: LedgerStore> {
    commits: Arc<GroupCommit<S>>,
    node: String,
    /// Set when the writer removed its node's entry, its last act.
    finished: bool,
}

impl<S: LedgerStore> Writer<S> {
    async fn run(mut self) {
        while let Some(batch) = self.next_batch() {
            self.commit(batch).await;
        }
    }

    /// The changes queued since the last batch; None (and the node's entry
    /// removed, in the same step) when there are none.
    fn next_batch(&mut self) -> Option<Vec<Box<dyn Pending>>> {
        let mut queues = self.commits.queues();
        let queue = queues.get_mut(&self.node)?;
        if queue.is_empty() {
            queues.remove(&self.node);
            self.finished = true;
            return None;
        }
        let rest = queue.split_off(queue.len().min(MAX_BATCH));
        Some(std::mem::replace(queue, rest))
    }

    /// Plans and writes `batch`, then answers every change in it.
    async fn commit(&self, mut batch: Vec<Box<dyn Pending>>) {
        match self.write(&mut batch).await {
            Written::All => batch.into_iter().for_each(|job| job.answer(None)),
            Written::Failed { from, error } => {
                for (i, job) in batch.into_iter().enumerate() {
                    // Changes planned before the first write saw only committed
                    // state: their answers stand.
                    job.answer((i >= from).then(|| error.clone()));
                }
            }
            Written::TooBig => {
                tracing::debug!(
                    node = self.node,
                    changes = batch.len(),
                    "the batch does not fit the store as one write; writing its changes one at a time"
                );
                for job in batch {
                    let mut single = vec![job];
                    let failure = match self.write(&mut single).await {
                        Written::All => None,
                        Written::Failed { error, .. } => Some(error),
                        Written::TooBig => Some(LedgerError::Invariant {
                            node: self.node.clone(),
                            reason: "a single change was refused as too big twice".into(),
                        }),
                    };
                    single
                        .into_iter()
                        .for_each(|job| job.answer(failure.clone()));
                }
            }
        }
    }

    /// Plans `batch` against the node's ledger and swaps the result in,
    /// planning again from a fresh load after each lost swap.
    async fn write(&self, batch: &mut [Box<dyn Pending>]) -> Written {
        let node = self.node.as_str();
        for attempt in 0..MAX_ATTEMPTS {
            let Snapshot { revision, ledger } = match self.commits.store.load(node).await {
                Ok(snapshot) => snapshot,
                Err(err) => return Written::failed(0, err),
            };
            let mut running = Arc::unwrap_or_clone(ledger);
            let mut first_write = None;
            let last = batch.len() - 1;
            for (i, job) in batch.iter_mut().enumerate() {
                // A change refused halfway must not leave half of itself in
                // the state later changes are planned on or earlier ones are
                // written with; only the last change of a batch nothing else
                // wrote in (a lone change) has neither.
                let on_copy = i < last || first_write.is_some();
                if job.plan(&mut running, on_copy) && first_write.is_none() {
                    first_write = Some(i);
                }
            }
            let Some(first_write) = first_write else {
                return Written::All;
            };
            match self
                .commits
                .store
                .compare_and_swap(&revision, Arc::new(running))
                .await
            {
                Ok(true) => return Written::All,
                Ok(false) => {
                    let retrying = attempt + 1 < MAX_ATTEMPTS;
                    crate::metrics::global().record_cas_conflict(retrying);
                    if retrying {
                        tracing::debug!(node, attempt, "ledger changed under us; retrying");
                        tokio::time::sleep(backoff(attempt)).await;
                    }
                }
                Err(StoreError::AnnotationsFull { .. })
                    if batch.iter().filter(|job| job.writes()).count() > 1 =>
                {
                    return Written::TooBig;
                }
                Err(err) => return Written::failed(first_write, err),
            }
        }
        Written::Failed {
            from: 0,
            error: LedgerError::Contended {
                node: node.to_string(),
                attempts: MAX_ATTEMPTS,
            },
        }
    }
}

impl<S: LedgerStore> Drop for Writer<S> {
    /// A writer that did not finish (a change panicked, the runtime shut
    /// down) still owns its node's entry: remove it, so its waiting callers
    /// get an error instead of waiting forever and the next change starts a
    /// new writer.
    fn drop(&mut self) {
        if !self.finished {
            self.commits.queues().remove(&self.node);
        }
    }
}

/// How a batch's write ended.
enum Written {
    /// Durable (or nothing to write): every planned answer stands.
    All,
    /// Not written: changes from index `from` on get `error`.
    Failed { from: usize, error: LedgerError },
    /// Refused for its size as a whole; its changes may fit one by one.
    TooBig,
}

impl Written {
    fn failed(from: usize, err: StoreError) -> Written {
        Written::Failed {
            from,
            error: LedgerError::Store(err),
        }
    }
}

/// A queued change, with its answer type hidden so one batch holds any.
trait Pending: Send {
    /// Applies the change to `ledger`, the batch's running state. True if it
    /// wrote. With `on_copy`, a change that is refused or writes nothing
    /// leaves `ledger` untouched; without, it may leave it half-changed.
    fn plan(&mut self, ledger: &mut NodeLedger, on_copy: bool) -> bool;
    /// Whether the last plan wrote.
    fn writes(&self) -> bool;
    /// Sends the caller its answer: what the plan returned, or `failure` if
    /// the batch could not be written.
    fn answer(self: Box<Self>, failure: Option<LedgerError>);
}

struct Job<F, T> {
    change: F,
    /// The last plan's answer, and whether it wrote.
    planned: Option<(Result<T, LedgerError>, bool)>,
    reply: oneshot::Sender<Result<T, LedgerError>>,
}

impl<F, T> Pending for Job<F, T>
where
    T: Send,
    F: FnMut(&mut NodeLedger) -> Result<Change<T>, LedgerError> + Send,
{
    fn plan(&mut self, ledger: &mut NodeLedger, on_copy: bool) -> bool {
        let mut copy = on_copy.then(|| ledger.clone());
        let trial = copy.as_mut().unwrap_or(ledger);
        let planned = match (self.change)(trial) {
            Ok(Change::Write(value)) => {
                trial.normalize();
                match trial.check_invariants() {
                    Ok(()) => {
                        if let Some(copy) = copy {
                            *ledger = copy;
                        }
                        (Ok(value), true)
                    }
                    Err(reason) => (
                        Err(LedgerError::Invariant {
                            node: trial.node.clone(),
                            reason,
                        }),
                        false,
                    ),
                }
            }
            Ok(Change::Unchanged(value)) => (Ok(value), false),
            Err(err) => (Err(err), false),
        };
        let wrote = planned.1;
        self.planned = Some(planned);
        wrote
    }

    fn writes(&self) -> bool {
        self.planned.as_ref().is_some_and(|(_, wrote)| *wrote)
    }

    fn answer(self: Box<Self>, failure: Option<LedgerError>) {
        let answer = match (failure, self.planned) {
            (Some(err), _) => Err(err),
            (None, Some((planned, _))) => planned,
            (None, None) => Err(LedgerError::Invariant {
                node: String::new(),
                reason: "a change was answered without being planned".into(),
            }),
        };
        // The caller may have given up waiting; the change stands either way.
        let _ = self.reply.send(answer);
    }
}

/// Exponential backoff with full jitter: 1 ms, 2 ms, … capped at 256 ms.
fn backoff(attempt: u32) -> Duration {
    let ceiling_us = 1000u64 << attempt.min(8);
    let jitter = RandomState::new().hash_one(attempt) % ceiling_us;
    Duration::from_micros(jitter.max(100))
}

#[cfg(test)]
mod tests;
