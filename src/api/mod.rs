//! The pool API of dynamic-storage-pools.md over HTTP: `/api/v1/pools/status`,
//! `/api/v1/pools/health`, the VM disks of `/api/v1/vms`, and its OpenAPI
//! document at `/api/v1/openapi.json`. Thin handlers over [`crate::pools`] and
//! a [`VmBackend`]: they parse, call, and map the answer.
//!
//! JSON in and out. A body must be JSON (`Content-Type: application/json`), at
//! most [`BODY_LIMIT`] bytes, with no unknown fields; every error, whatever its
//! cause, is `{"error": {"kind": ..., "message": ...}}` with its HTTP status.

pub mod auth;
mod error;
mod json;
mod loopback_host;
mod metered;
pub mod openapi;
mod pools;
mod vms;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use futures_util::future::BoxFuture;

pub use error::ApiError;

use crate::ledger::{Ledger, LedgerError, LedgerStore, Survey};
use crate::pools::PoolSettings;
use crate::vms::VmBackend;

/// The largest request body: a VM request is a few hundred bytes.
pub const BODY_LIMIT: usize = 64 << 10;

/// The default `--api-address` of all-in-one: loopback only.
pub const DEFAULT_LOCAL_ADDRESS: &str = "127.0.0.1:8080";

/// Where the pool answers come from: a ledger of any store.
pub trait PoolSource: Send + Sync {
    fn survey(&self) -> BoxFuture<'_, Result<Survey, LedgerError>>;
    fn settings(&self) -> &PoolSettings;
}

impl<S: LedgerStore> PoolSource for Ledger<S> {
    fn survey(&self) -> BoxFuture<'_, Result<Survey, LedgerError>> {
        Box::pin(Ledger::survey(self))
    }

    fn settings(&self) -> &PoolSettings {
        self.pool_settings()
    }
}

/// What the handlers serve.
#[derive(Clone)]
pub struct ApiState {
    pub pools: Arc<dyn PoolSource>,
    pub vms: Arc<dyn VmBackend>,
    /// Who may do what, in a cluster; None (all-in-one): everyone, everything.
    pub auth: Option<Arc<dyn auth::Authorizer>>,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/pools/status", get(pools::status))
        .route("/api/v1/pools/health", get(pools::health))
        .route("/api/v1/vms", post(vms::create).get(vms::list))
        .route("/api/v1/vms/{vm_id}", get(vms::get).delete(vms::delete))
        .route("/api/v1/vms/{vm_id}/resize", post(vms::resize))
        .route("/api/v1/openapi.json", get(openapi::document))
        .method_not_allowed_fallback(error::method_not_allowed)
        .fallback(error::no_route)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// Binds `address` now (so a taken port fails the start, not a later request)
/// and serves in the background until `shutdown` resolves. Returns the task
/// and the address it listens on (port 0 asks the kernel for a free one).
pub async fn spawn(
    address: SocketAddr,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(tokio::task::JoinHandle<()>, SocketAddr), String> {
    let listener = tokio::net::TcpListener::bind(address).await.map_err(|e| {
        format!("cannot serve the pool API on {address}: {e} (choose another --api-address)")
    })?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("cannot serve the pool API on {address}: {e}"))?;
    // Unauthenticated on loopback (all-in-one): only requests addressed to
    // loopback by name, so that a web page that rebinds its own host name to
    // 127.0.0.1 cannot drive the API from a local browser.
    let loopback_only = state.auth.is_none() && bound.ip().is_loopback();
    let mut app = router(state);
    if loopback_only {
        app = app.layer(axum::middleware::from_fn(loopback_host::only));
    }
    // Outermost, so the Host check's refusals are counted too.
    let app = app.layer(axum::middleware::from_fn(metered::count));
    let task = tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(%err, "the pool API stopped");
        }
    });
    Ok((task, bound))
}
