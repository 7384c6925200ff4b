//! Embedded-ledger commits with durability on (every commit fsyncs): one claim plus
//! one release per iteration, on an empty node and on a node holding 500 claims;
//! then the same from 32 and 256 concurrent callers on the node with 500 claims,
//! where group commit combines what they queue meanwhile into one write.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use vdrive::allocator::{Ratio, Request};
use vdrive::ledger::{ClaimRequest, EmbeddedStore, Ledger, LedgerStore, Revision, SizeRange};
use vdrive::pools::PoolSettings;

#[path = "common/mod.rs"]
mod common;

fn request(name: &str) -> ClaimRequest {
    let mut layout = Request::with_ratio(10, Ratio { tlc: 1, qlc: 0 }, 1);
    layout.min_drive_gib = 1;
    ClaimRequest {
        volume_name: name.into(),
        owner: String::new(),
        pool: None,
        layout,
        accepts: SizeRange::exactly(10),
        access: None,
        image: None,
        image_format: None,
    }
}

/// A ledger file holding one node: the busy one of `common`, or empty.
fn seeded_ledger(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    label: &str,
    with_claims: bool,
) -> (Ledger<EmbeddedStore>, String) {
    let store = EmbeddedStore::open(dir.join(format!("{label}.redb"))).expect("open ledger");
    let mut node = common::busy_node();
    if !with_claims {
        node.claims.clear();
    }
    let name = node.node.clone();
    rt.block_on(store.compare_and_swap(&Revision("0".into()), Arc::new(node)))
        .expect("seed ledger");
    (Ledger::new(store, PoolSettings::default()), name)
}

fn claim_and_release(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut group = c.benchmark_group("ledger_claim_release");
    group.throughput(Throughput::Elements(2)); // two durable commits per iteration
    group.measurement_time(Duration::from_secs(8));

    for (label, seeded) in [("empty_node", false), ("node_with_500_claims", true)] {
        let (ledger, name) = seeded_ledger(&rt, dir.path(), label, seeded);
        let request = request("bench");
        group.bench_function(label, |b| {
            b.iter_custom(|iterations| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iterations {
                        let volume = ledger.claim(&name, &request).await.expect("claim");
                        ledger.release_on(&name, &volume).await.expect("release");
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("ledger_claim_release_concurrent");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    for callers in [32usize, 256] {
        let label = format!("{callers}_callers_node_with_500_claims");
        let (ledger, name) = seeded_ledger(&rt, dir.path(), &label, true);
        let ledger = Arc::new(ledger);
        let requests: Vec<ClaimRequest> = (0..callers)
            .map(|i| request(&format!("bench-{i}")))
            .collect();
        // Two durable changes per caller per iteration.
        group.throughput(Throughput::Elements(2 * callers as u64));
        group.bench_function(label, |b| {
            b.iter_custom(|iterations| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iterations {
                        let mut tasks = tokio::task::JoinSet::new();
                        for request in &requests {
                            let (ledger, name, request) =
                                (ledger.clone(), name.clone(), request.clone());
                            tasks.spawn(async move {
                                let volume = ledger.claim(&name, &request).await.expect("claim");
                                ledger.release_on(&name, &volume).await.expect("release");
                            });
                        }
                        while let Some(done) = tasks.join_next().await {
                            if let Err(e) = done {
                                std::panic::resume_unwind(e.into_panic());
                            }
                        }
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, claim_and_release);
criterion_main!(benches);
