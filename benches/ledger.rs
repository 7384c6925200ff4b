//! Embedded-ledger commits with durability on (every commit fsyncs): one claim plus
//! one release per iteration, on an empty node and on a node holding 500 claims.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vdrive::allocator::{Ratio, Request};
use vdrive::ledger::{ClaimRequest, EmbeddedStore, Ledger, LedgerStore, Revision, SizeRange};
use vdrive::pools::PoolSettings;

#[path = "common/mod.rs"]
mod common;

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
        let store =
            EmbeddedStore::open(dir.path().join(format!("{label}.redb"))).expect("open ledger");
        let mut node = common::busy_node();
        if !seeded {
            node.claims.clear();
        }
        let name = node.node.clone();
        rt.block_on(store.compare_and_swap(&Revision("0".into()), Arc::new(node)))
            .expect("seed ledger");
        let ledger = Ledger::new(store, PoolSettings::default());
        let mut layout = Request::with_ratio(10, Ratio { tlc: 1, qlc: 0 }, 1);
        layout.min_drive_gib = 1;
        let request = ClaimRequest {
            volume_name: "bench".into(),
            owner: String::new(),
            pool: None,
            layout,
            accepts: SizeRange::exactly(10),
            access: None,
            image: None,
            image_format: None,
        };
        group.bench_function(label, |b| {
            b.iter_custom(|iterations| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iterations {
                        let volume = ledger.claim(&name, &request).await.expect("claim");
                        ledger.release_on(&name, &volume.id).await.expect("release");
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
