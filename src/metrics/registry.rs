//! The process's metrics: counters and a histogram that the code paths they
//! count update as they run, and the [`Gauges`] the discovery loops set, all in
//! one `prometheus-client` registry that a scrape encodes.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::gauges::Gauges;
use super::names::{
    ALLOCATIONS, API_REQUESTS, CSI_CALL_DURATION, CSI_CALLS, LEDGER_CAS_CONFLICTS,
    LEDGER_CAS_RETRIES, Metric,
};

/// The `Content-Type` of what [`Metrics::render`] returns.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Upper bounds of the CSI latency buckets, in seconds: a GetCapacity takes
/// milliseconds, a NodeStage that erases or writes an image minutes.
const CSI_BUCKETS: [f64; 15] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

type Labels<const N: usize> = [(&'static str, String); N];

/// What became of a CreateVolume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A node took the volume (or it existed already).
    Placed,
    /// No node has room now.
    NoCapacity,
    /// The request can never be met as asked.
    Invalid,
    /// Anything else (the ledger unreachable, the same volume in flight, ...).
    Failed,
}

impl Outcome {
    /// The outcome a CreateVolume answered with `code` had.
    pub fn of(code: tonic::Code) -> Self {
        match code {
            tonic::Code::Ok => Outcome::Placed,
            tonic::Code::ResourceExhausted => Outcome::NoCapacity,
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange => Outcome::Invalid,
            _ => Outcome::Failed,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Placed => "placed",
            Outcome::NoCapacity => "no_capacity",
            Outcome::Invalid => "invalid",
            Outcome::Failed => "failed",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    csi_calls: Family<Labels<2>, Counter>,
    csi_durations: Family<Labels<1>, Histogram>,
    allocations: Family<Labels<1>, Counter>,
    cas_conflicts: Counter,
    cas_retries: Counter,
    api_requests: Family<Labels<3>, Counter>,
    gauges: Arc<Gauges>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let csi_calls = Family::default();
        let csi_durations: Family<Labels<1>, Histogram> =
            Family::new_with_constructor(|| Histogram::new(CSI_BUCKETS));
        let allocations = Family::default();
        let cas_conflicts = Counter::default();
        let cas_retries = Counter::default();
        let api_requests = Family::default();
        let gauges = Arc::new(Gauges::default());
        let r = &mut registry;
        register(r, &CSI_CALLS, csi_calls.clone());
        register(r, &CSI_CALL_DURATION, csi_durations.clone());
        register(r, &ALLOCATIONS, allocations.clone());
        register(r, &LEDGER_CAS_CONFLICTS, cas_conflicts.clone());
        register(r, &LEDGER_CAS_RETRIES, cas_retries.clone());
        register(r, &API_REQUESTS, api_requests.clone());
        registry.register_collector(Box::new(gauges.clone()));
        Metrics {
            registry,
            csi_calls,
            csi_durations,
            allocations,
            cas_conflicts,
            cas_retries,
            api_requests,
            gauges,
        }
    }

    /// The gauges the discovery loops set.
    pub fn gauges(&self) -> &Arc<Gauges> {
        &self.gauges
    }

    /// One answered CSI call: `method` as in the gRPC path (CreateVolume),
    /// `code` as gRPC spells it (OK, NotFound, ...).
    pub fn record_csi_call(&self, method: &str, code: &'static str, took: Duration) {
        self.csi_calls
            .get_or_create(&[("method", method.to_string()), ("code", code.to_string())])
            .inc();
        self.csi_durations
            .get_or_create(&[("method", method.to_string())])
            .observe(took.as_secs_f64());
    }

    pub fn record_allocation(&self, outcome: Outcome) {
        self.allocations
            .get_or_create(&[("outcome", outcome.label().to_string())])
            .inc();
    }

    /// A ledger write lost its compare-and-swap; `retrying` when it is
    /// recomputed and tried again rather than given up.
    pub fn record_cas_conflict(&self, retrying: bool) {
        self.cas_conflicts.inc();
        if retrying {
            self.cas_retries.inc();
        }
    }

    /// One answered pool API request: `route` as the router matched it
    /// (`/api/v1/vms/{vm_id}`), never the raw path.
    pub fn record_api_request(&self, route: &str, method: &str, status: u16) {
        self.api_requests
            .get_or_create(&[
                ("route", route.to_string()),
                ("method", method.to_string()),
                ("status", status.to_string()),
            ])
            .inc();
    }

    /// Everything, in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(err) = prometheus_text::encode(&mut out, &self.registry) {
            // Only a failing writer makes encoding fail, and a String never fails.
            tracing::error!(%err, "could not encode the metrics");
        }
        out
    }
}

/// Registers `value` under its catalog name and help text.
fn register(
    registry: &mut Registry,
    metric: &Metric,
    value: impl prometheus_client::registry::Metric,
) {
    registry.register(metric.name, metric.help, value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::names::{POOL_CAPACITY, POOL_USED};

    #[test]
    fn counters_and_histograms_render_under_their_catalog_names() {
        let metrics = Metrics::new();
        metrics.record_csi_call("CreateVolume", "OK", Duration::from_millis(20));
        metrics.record_csi_call("CreateVolume", "ResourceExhausted", Duration::from_secs(2));
        metrics.record_allocation(Outcome::of(tonic::Code::ResourceExhausted));
        metrics.record_cas_conflict(true);
        metrics.record_cas_conflict(false);
        metrics.record_api_request("/api/v1/vms/{vm_id}", "GET", 404);
        let text = metrics.render();
        for line in [
            "# TYPE vdrive_csi_calls_total counter",
            "vdrive_csi_calls_total{method=\"CreateVolume\",code=\"OK\"} 1",
            "vdrive_csi_calls_total{method=\"CreateVolume\",code=\"ResourceExhausted\"} 1",
            "# TYPE vdrive_csi_call_duration_seconds histogram",
            "vdrive_csi_call_duration_seconds_bucket{method=\"CreateVolume\",le=\"0.01\"} 0",
            "vdrive_csi_call_duration_seconds_bucket{method=\"CreateVolume\",le=\"0.025\"} 1",
            "vdrive_csi_call_duration_seconds_bucket{method=\"CreateVolume\",le=\"+Inf\"} 2",
            "vdrive_csi_call_duration_seconds_count{method=\"CreateVolume\"} 2",
            "vdrive_allocations_total{outcome=\"no_capacity\"} 1",
            "vdrive_ledger_cas_conflicts_total 2",
            "vdrive_ledger_cas_retries_total 1",
            "vdrive_api_requests_total{route=\"/api/v1/vms/{vm_id}\",method=\"GET\",status=\"404\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in:\n{text}"
            );
        }
        assert!(text.contains(
            "# HELP vdrive_csi_calls_total CSI calls answered, by method and gRPC code.\n"
        ));
    }

    #[test]
    fn families_without_series_are_left_out() {
        let metrics = Metrics::new();
        let text = metrics.render();
        assert!(!text.contains("vdrive_csi_calls"), "{text}");
        assert!(!text.contains("vdrive_allocations"), "{text}");
        // Plain counters are there from the start, at zero.
        assert!(
            text.contains("\nvdrive_ledger_cas_conflicts_total 0\n"),
            "{text}"
        );
    }

    #[test]
    fn gauges_render_in_the_same_exposition() {
        let metrics = Metrics::new();
        let gauges = metrics.gauges();
        gauges.set(&POOL_CAPACITY, &[("pool", "k8s")], 3000.0);
        gauges.set(&POOL_CAPACITY, &[("pool", "vm")], 1500.0);
        gauges.set(&POOL_USED, &[("pool", "k8s")], 2.5);
        let text = metrics.render();
        assert!(text.contains(
            "# HELP vdrive_pool_capacity_gib The pool's capacity: servers x capacityPerServerGiB.\n\
             # TYPE vdrive_pool_capacity_gib gauge\n\
             vdrive_pool_capacity_gib{pool=\"k8s\"} 3000.0\n\
             vdrive_pool_capacity_gib{pool=\"vm\"} 1500.0\n"
        ), "{text}");
        assert!(
            text.contains("vdrive_pool_used_gib{pool=\"k8s\"} 2.5\n"),
            "{text}"
        );
    }

    #[test]
    fn replacing_a_gauge_drops_the_series_that_left() {
        let metrics = Metrics::new();
        let gauges = metrics.gauges();
        gauges.replace(
            &POOL_USED,
            [
                (vec![("pool", "k8s".to_string())], 1.0),
                (vec![("pool", "vm".to_string())], 2.0),
            ],
        );
        gauges.replace(&POOL_USED, [(vec![("pool", "vm".to_string())], 3.0)]);
        assert_eq!(gauges.get(&POOL_USED, &[("pool", "k8s")]), None);
        assert_eq!(gauges.get(&POOL_USED, &[("pool", "vm")]), Some(3.0));
        gauges.replace(&POOL_USED, []);
        assert!(!metrics.render().contains("vdrive_pool_used_gib"));
    }

    #[test]
    fn label_values_are_escaped() {
        let metrics = Metrics::new();
        metrics
            .gauges()
            .set(&POOL_USED, &[("pool", "a\"b\\c\nd")], 1.0);
        assert!(
            metrics
                .render()
                .contains(r#"vdrive_pool_used_gib{pool="a\"b\\c\nd"} 1.0"#),
            "{}",
            metrics.render()
        );
    }

    #[test]
    fn outcomes_follow_the_grpc_code() {
        assert_eq!(Outcome::of(tonic::Code::Ok), Outcome::Placed);
        assert_eq!(
            Outcome::of(tonic::Code::ResourceExhausted),
            Outcome::NoCapacity
        );
        assert_eq!(Outcome::of(tonic::Code::InvalidArgument), Outcome::Invalid);
        assert_eq!(Outcome::of(tonic::Code::OutOfRange), Outcome::Invalid);
        assert_eq!(Outcome::of(tonic::Code::Aborted), Outcome::Failed);
    }
}
