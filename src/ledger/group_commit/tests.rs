//! Group commit on the real embedded store, with a hand on its swaps.
//!
//! On a current-thread runtime a node's writer task runs only when the test's
//! own future waits, so every change the test starts in one `join_all` is
//! queued before the writer takes its first batch: how changes are batched is
//! deterministic here, not a matter of timing.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::watch;

use crate::allocator::AllocError;
use crate::drive::DriveType::Tlc;
use crate::ledger::tests::{blank, drive, tlc_request};
use crate::ledger::*;

const NODE: &str = "node-a";

/// The embedded store, counting its swaps; a swap can be held until the test
/// opens the gate, lost to another writer, or refused as a cluster would.
struct Scripted {
    inner: EmbeddedStore,
    /// Swaps asked for so far.
    swaps: watch::Sender<usize>,
    /// Swaps wait while this is false.
    open: watch::Sender<bool>,
    /// The next swap finds that another process wrote first: a 50 GiB claim
    /// at the start of drive 1.
    lose_next: AtomicBool,
    /// The next swap fails with this.
    fail_next: Mutex<Option<StoreError>>,
    /// Swaps leaving more claims than this are refused as too big.
    max_claims: AtomicUsize,
}

impl Scripted {
    fn open(dir: &tempfile::TempDir) -> Scripted {
        Scripted {
            inner: EmbeddedStore::open(dir.path().join("ledger.redb")).unwrap(),
            swaps: watch::Sender::new(0),
            open: watch::Sender::new(true),
            lose_next: AtomicBool::new(false),
            fail_next: Mutex::new(None),
            max_claims: AtomicUsize::new(usize::MAX),
        }
    }

    fn swaps(&self) -> usize {
        *self.swaps.borrow()
    }

    /// Writes another process's claim behind the batch's back.
    async fn interlope(&self, node: &str) {
        let Snapshot { revision, ledger } = self.inner.load(node).await.unwrap();
        let mut ledger = Arc::unwrap_or_clone(ledger);
        ledger.claims.push(Claim {
            virtual_uuid: Uuid::from_u128(999),
            volume_id: "other-controller".into(),
            volume_name: "other-controller".into(),
            owner: "default:other".into(),
            pool: None,
            physical_uuid: Uuid::from_u128(1),
            offset_gib: 0,
            size_gib: 50,
            part: 0,
            fixed: false,
            releasing: false,
            spec: None,
        });
        ledger.normalize();
        assert!(
            self.inner
                .compare_and_swap(&revision, Arc::new(ledger))
                .await
                .unwrap()
        );
    }
}

impl LedgerStore for Scripted {
    async fn load(&self, node: &str) -> Result<Snapshot, StoreError> {
        self.inner.load(node).await
    }

    async fn compare_and_swap(
        &self,
        expected: &Revision,
        ledger: Arc<NodeLedger>,
    ) -> Result<bool, StoreError> {
        self.swaps.send_modify(|n| *n += 1);
        let mut open = self.open.subscribe();
        let _ = open.wait_for(|open| *open).await;
        if self.lose_next.swap(false, Ordering::SeqCst) {
            self.interlope(&ledger.node).await;
            return Ok(false);
        }
        if let Some(err) = self.fail_next.lock().unwrap().take() {
            return Err(err);
        }
        if ledger.claims.len() > self.max_claims.load(Ordering::SeqCst) {
            return Err(StoreError::AnnotationsFull {
                node: ledger.node.clone(),
                key: "vdrive.io/virtual-drive-claims",
                volumes: ledger.claims.len(),
                claims: ledger.claims.len(),
                bytes: 300_000,
                limit: 262_144,
            });
        }
        self.inner.compare_and_swap(expected, ledger).await
    }

    async fn node_names(&self) -> Result<Vec<String>, StoreError> {
        self.inner.node_names().await
    }
}

struct Fixture {
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    ledger: Arc<Ledger<Scripted>>,
}

/// A ledger whose node NODE has one 1000 GiB TLC drive (and node-b another).
fn fixture() -> Fixture {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Ledger::new(Scripted::open(&dir), PoolSettings::default()));
    rt.block_on(async {
        ledger
            .sync_drives(NODE, blank(vec![drive(1, Tlc, 1000)]))
            .await
            .unwrap();
        ledger
            .sync_drives("node-b", blank(vec![drive(2, Tlc, 1000)]))
            .await
            .unwrap();
    });
    let f = Fixture {
        rt,
        _dir: dir,
        ledger,
    };
    f.ledger.store().swaps.send_replace(0);
    f
}

impl Fixture {
    fn claim_all(&self, requests: &[ClaimRequest]) -> Vec<Result<Volume, LedgerError>> {
        self.rt.block_on(join_all(
            requests.iter().map(|r| self.ledger.claim(NODE, r)),
        ))
    }

    /// Whether every node's writer task has ended.
    fn writers_gone(&self) -> bool {
        self.rt.block_on(async {
            for _ in 0..100 {
                if self.ledger.commits.writers() == 0 {
                    return true;
                }
                tokio::task::yield_now().await;
            }
            false
        })
    }
}

fn names(prefix: &str, n: usize) -> Vec<ClaimRequest> {
    (0..n)
        .map(|i| tlc_request(&format!("{prefix}-{i}"), 10))
        .collect()
}

/// Every answered volume is in the ledger as answered, and no two overlap.
fn assert_recorded(f: &Fixture, volumes: &[&Volume]) {
    let node = f.rt.block_on(f.ledger.node(NODE)).unwrap();
    node.check_invariants().unwrap();
    for volume in volumes {
        assert_eq!(node.volume(&volume.id).as_ref(), Some(*volume));
    }
}

#[test]
fn concurrent_claims_on_one_node_share_one_write() {
    let f = fixture();
    let results = f.claim_all(&names("pvc", 64));
    let made: Vec<&Volume> = results.iter().map(|r| r.as_ref().unwrap()).collect();
    assert_eq!(f.ledger.store().swaps(), 1, "64 claims, one swap");
    assert_recorded(&f, &made);
    let node = f.rt.block_on(f.ledger.node(NODE)).unwrap();
    assert_eq!(
        node.claimed_gib(),
        640,
        "planned one after another, never overlapping"
    );
    assert!(f.writers_gone());
}

#[test]
fn a_refused_change_fails_alone_and_leaves_the_batch_its_room() {
    let f = fixture();
    let mut mixed = names("ok", 3);
    // Bigger than the drive: refused.
    mixed.insert(1, tlc_request("too-big", 5000));
    // 990 GiB fits only if the refused change left nothing behind.
    mixed.push(tlc_request("rest", 960));
    let results = f.claim_all(&mixed);
    assert!(
        matches!(
            results[1],
            Err(LedgerError::Allocation(
                AllocError::InsufficientDriveCapacity { .. }
            ))
        ),
        "{:?}",
        results[1]
    );
    let made: Vec<&Volume> = [0, 2, 3, 4]
        .iter()
        .map(|&i| results[i].as_ref().unwrap())
        .collect();
    assert_eq!(f.ledger.store().swaps(), 1);
    assert_recorded(&f, &made);
    assert_eq!(
        f.rt.block_on(f.ledger.node(NODE)).unwrap().claimed_gib(),
        990
    );
}

#[test]
fn a_batch_that_fills_the_node_refuses_only_the_changes_past_the_end() {
    let f = fixture();
    // 1000 GiB takes 100 volumes of 10 GiB; the batch asks for 104.
    let results = f.claim_all(&names("pvc", 104));
    let made = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(made, 100);
    assert!(results[100..].iter().all(|r| r.is_err()), "the last four");
    assert_eq!(f.ledger.store().swaps(), 1);
}

#[test]
fn a_lost_swap_plans_the_whole_batch_again_on_the_winners_ledger() {
    let f = fixture();
    f.ledger.store().lose_next.store(true, Ordering::SeqCst);
    let results = f.claim_all(&names("pvc", 8));
    let made: Vec<&Volume> = results.iter().map(|r| r.as_ref().unwrap()).collect();
    assert_eq!(f.ledger.store().swaps(), 2, "the lost swap and the retry");
    assert_recorded(&f, &made);
    let node = f.rt.block_on(f.ledger.node(NODE)).unwrap();
    assert!(node.volume("other-controller").is_some());
    assert!(
        made.iter().all(|v| v.extents[0].offset_gib >= 50),
        "every claim moved past the other writer's: {made:?}"
    );
}

#[test]
fn a_batch_too_big_for_the_store_is_written_one_change_at_a_time() {
    let f = fixture();
    f.ledger.store().max_claims.store(3, Ordering::SeqCst);
    let results = f.claim_all(&names("pvc", 5));
    for result in &results[..3] {
        assert!(result.is_ok(), "{result:?}");
    }
    for result in &results[3..] {
        assert!(
            matches!(
                result,
                Err(LedgerError::Store(StoreError::AnnotationsFull { .. }))
            ),
            "{result:?}"
        );
    }
    assert_eq!(f.ledger.store().swaps(), 1 + 5);
    let node = f.rt.block_on(f.ledger.node(NODE)).unwrap();
    assert_eq!(node.claims.len(), 3);
}

#[test]
fn a_failed_write_fails_the_changes_planned_on_it_and_no_others() {
    let f = fixture();
    *f.ledger.store().fail_next.lock().unwrap() = Some(StoreError::Api {
        reason: "the API server is restarting".into(),
    });
    let request = tlc_request("pvc-1", 10);
    let (unchanged, claimed) = f.rt.block_on(async {
        tokio::join!(
            // Planned first, against committed state, writing nothing.
            f.ledger.set_pool(NODE, None),
            f.ledger.claim(NODE, &request),
        )
    });
    unchanged.unwrap();
    assert!(
        matches!(claimed, Err(LedgerError::Store(StoreError::Api { .. }))),
        "{claimed:?}"
    );
    assert!(f.rt.block_on(f.ledger.volumes()).unwrap().is_empty());
    // The next write goes through.
    f.claim_all(&names("after", 1))[0].as_ref().unwrap();
}

#[test]
fn reads_answer_while_a_write_is_held() {
    let f = fixture();
    let store = &f.ledger.store();
    f.rt.block_on(async {
        store.open.send_replace(false);
        let claim = tokio::spawn({
            let ledger = f.ledger.clone();
            async move { ledger.claim(NODE, &tlc_request("held", 10)).await }
        });
        let mut swaps = store.swaps.subscribe();
        swaps.wait_for(|n| *n == 1).await.unwrap();
        // A read that waited for the held write would never answer.
        let reads = async {
            let capacity = f
                .ledger
                .capacity(&tlc_request("probe", 1).class(), None)
                .await
                .unwrap();
            let volumes = f.ledger.volumes().await.unwrap();
            (capacity, volumes)
        };
        let (capacity, volumes) = tokio::time::timeout(Duration::from_secs(30), reads)
            .await
            .expect("reads answer while a write is held");
        assert!(volumes.is_empty(), "the held write is not visible yet");
        assert_eq!(capacity.available_gib, 2000);
        store.open.send_replace(true);
        claim.await.unwrap().unwrap();
    });
}

#[test]
fn a_caller_that_gives_up_leaves_its_name_held_until_its_change_is_written() {
    let f = fixture();
    let store = &f.ledger.store();
    let volumes = f.rt.block_on(async {
        store.open.send_replace(false);
        let first = tokio::spawn({
            let ledger = f.ledger.clone();
            async move { ledger.claim(NODE, &tlc_request("pvc-1", 10)).await }
        });
        store.swaps.subscribe().wait_for(|n| *n == 1).await.unwrap();
        // A CO's deadline passes: it drops the call and retries elsewhere.
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        let retry = tokio::spawn({
            let ledger = f.ledger.clone();
            async move { ledger.claim("node-b", &tlc_request("pvc-1", 10)).await }
        });
        tokio::task::yield_now().await;
        assert!(!retry.is_finished(), "the retry waits for the name");
        store.open.send_replace(true);
        let again = retry.await.unwrap().unwrap();
        (again, f.ledger.volumes().await.unwrap())
    });
    let (again, all) = volumes;
    assert_eq!(all.len(), 1, "one name, one volume: {all:?}");
    assert_eq!(again, all[0]);
    assert_eq!(again.node, NODE, "the retry found the first claim's volume");
}

#[test]
fn changes_to_different_nodes_are_written_separately_and_each_writer_ends() {
    let f = fixture();
    let results = f.rt.block_on(join_all((0..8).map(|i| {
        let node = if i % 2 == 0 { NODE } else { "node-b" };
        let ledger = f.ledger.clone();
        async move {
            ledger
                .claim(node, &tlc_request(&format!("pvc-{i}"), 10))
                .await
        }
    })));
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(f.ledger.store().swaps(), 2, "one per node");
    assert!(f.writers_gone());
}
