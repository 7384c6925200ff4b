//! Prometheus metrics, served on `/metrics` (`--metrics-address`) by a
//! `prometheus-client` registry: counters and a histogram updated where the
//! work happens (CSI calls, allocations, ledger writes, pool API requests), and
//! gauges set by the loops that discover their values (drive scans, orphan
//! checks, erasure) or computed fresh for each scrape (pools, drives).
//!
//! One registry per process ([`global`]): the counters sit deep in the ledger
//! and the servers, and a process serves one `/metrics`.

mod gauges;
pub mod ledger_gauges;
pub mod names;
mod registry;
mod server;

use std::sync::LazyLock;

pub use gauges::Gauges;
pub use registry::{CONTENT_TYPE, Metrics, Outcome};
pub use server::{Refresh, parse_address, serve, spawn, start};

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// This process's metrics.
pub fn global() -> &'static Metrics {
    &GLOBAL
}
