//! Planning on one node with 24 drives and 500 existing claims: deriving the free
//! extents from the ledger plus the allocator's search and placement.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use vdrive::allocator::{self, Ratio, Request};

#[path = "common/mod.rs"]
mod common;

fn plan_on_busy_node(c: &mut Criterion) {
    let node = common::busy_node();
    assert_eq!(node.claims.len(), common::CLAIMS);
    let mut group = c.benchmark_group("plan_24_drives_500_claims");

    let mut pvc = Request::with_ratio(100, Ratio { tlc: 1, qlc: 0 }, 1);
    pvc.min_drive_gib = 1;
    let container = Request::with_ratio(12000, Ratio { tlc: 4, qlc: 1 }, 6);
    // Enough TLC space in total, but at most 8 drives of it and no extent above
    // ~2900 GiB: every candidate is tried before the allocator gives up.
    let too_big = Request::with_ratio(30000, Ratio { tlc: 1, qlc: 0 }, 1);
    let free = node.free_drives();
    assert!(allocator::plan(&pvc, Some(&free)).is_ok());
    assert!(allocator::plan(&container, Some(&free)).is_ok());
    assert!(allocator::plan(&too_big, Some(&free)).is_err());
    group.bench_function("pvc_100gib_tlc", |b| {
        b.iter(|| {
            allocator::plan(black_box(&pvc), Some(&node.free_drives())).map(|p| p.drive_count())
        })
    });

    group.bench_function("container_12000gib_4to1_6cores", |b| {
        b.iter(|| {
            allocator::plan(black_box(&container), Some(&node.free_drives()))
                .map(|p| p.drive_count())
        })
    });

    // Worst case: nothing fits, so every strategy is tried before giving up.
    group.bench_function("no_layout_fits_30000gib_tlc", |b| {
        b.iter(|| allocator::plan(black_box(&too_big), Some(&node.free_drives())).is_err())
    });
    // The two halves of the work, for profiling: deriving free space, and planning on it.
    group.bench_function("free_extents_only", |b| {
        b.iter(|| black_box(&node).free_drives().len())
    });
    group.bench_function("allocator_only_pvc_100gib_tlc", |b| {
        b.iter(|| allocator::plan(black_box(&pvc), Some(&free)).map(|p| p.drive_count()))
    });
    group.finish();
}

criterion_group!(benches, plan_on_busy_node);
criterion_main!(benches);
