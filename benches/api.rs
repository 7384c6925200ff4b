//! The pool API's answers on a large cluster: `GET /api/v1/pools/status` and
//! `/health` through the router (routing, survey of every node, pool arithmetic,
//! JSON), for 200 nodes of 24 drives and 500 claims each (100,000 claims).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::future::BoxFuture;
use tower::Service;
use vdrive::api::{ApiState, router};
use vdrive::ledger::{EmbeddedStore, Ledger, LedgerStore, Revision};
use vdrive::pools::{Pool, PoolSettings};
use vdrive::vms::{CreateVm, ResizeVm, Vm, VmBackend, VmDeleted, VmError};

#[path = "common/mod.rs"]
mod common;

const NODES: usize = 200;

/// The pool routes need no VMs.
struct NoVms;

impl VmBackend for NoVms {
    fn create(self: Arc<Self>, _: CreateVm) -> BoxFuture<'static, Result<Vm, VmError>> {
        Box::pin(async { Err(VmError::Unavailable("no VMs in this benchmark".into())) })
    }
    fn list(self: Arc<Self>, _: Option<String>) -> BoxFuture<'static, Result<Vec<Vm>, VmError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn get(self: Arc<Self>, id: String) -> BoxFuture<'static, Result<Vm, VmError>> {
        Box::pin(async move { Err(VmError::NotFound { id }) })
    }
    fn resize(self: Arc<Self>, id: String, _: ResizeVm) -> BoxFuture<'static, Result<Vm, VmError>> {
        Box::pin(async move { Err(VmError::NotFound { id }) })
    }
    fn delete(
        self: Arc<Self>,
        id: String,
        _: bool,
    ) -> BoxFuture<'static, Result<VmDeleted, VmError>> {
        Box::pin(async move { Err(VmError::NotFound { id }) })
    }
}

fn pool_answers(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(dir.path().join("ledger.redb")).expect("open ledger");
    let template = common::busy_node();
    for i in 0..NODES {
        let mut node = template.clone();
        node.node = format!("node-{i:03}");
        node.pool = Some(if i % 2 == 0 { Pool::K8s } else { Pool::Vm });
        rt.block_on(store.compare_and_swap(&Revision("0".into()), Arc::new(node)))
            .expect("seed a node");
    }
    let state = ApiState {
        pools: Arc::new(Ledger::new(store, PoolSettings::default())),
        vms: Arc::new(NoVms),
        // All-in-one's API: no token checks.
        auth: None,
    };
    let mut app = router(state);
    let mut group = c.benchmark_group("pool_api_200_nodes");
    group.measurement_time(Duration::from_secs(8));
    for path in ["/api/v1/pools/status", "/api/v1/pools/health"] {
        group.bench_function(path, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let request = Request::get(path).body(Body::empty()).expect("a request");
                    let response = app.call(request).await.expect("an answer");
                    assert!(response.status().is_success());
                    axum::body::to_bytes(response.into_body(), usize::MAX)
                        .await
                        .expect("the body")
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, pool_answers);
criterion_main!(benches);
