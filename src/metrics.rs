//! Prometheus metrics in the text exposition format, served on `/metrics`
//! (`--metrics-address`). The values are gauges set by the loops that discover
//! them (drive scans, orphan checks) plus whatever a scrape computes fresh.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use futures_util::future::BoxFuture;

/// One gauge series: name, labels, value.
type Series = (&'static str, Vec<(&'static str, String)>);

/// Gauges with their help texts, set from anywhere in the process.
#[derive(Default)]
pub struct Gauges {
    help: Mutex<BTreeMap<&'static str, &'static str>>,
    values: Mutex<BTreeMap<Series, f64>>,
}

impl Gauges {
    pub fn set(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
        value: f64,
    ) {
        self.help
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name, help);
        let labels = labels.iter().map(|(k, v)| (*k, v.to_string())).collect();
        self.values
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((name, labels), value);
    }

    /// Drops every series of `name` (before setting a fresh set of labels).
    pub fn clear(&self, name: &'static str) {
        self.values
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(n, _), _| *n != name);
    }

    pub fn render(&self) -> String {
        let help = self
            .help
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let values = self.values.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::new();
        let mut last = "";
        for ((name, labels), value) in values.iter() {
            if *name != last {
                let text = help.get(name).copied().unwrap_or("");
                let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} gauge");
                last = name;
            }
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {value}");
            } else {
                let _ = writeln!(out, "{name}{{{}}} {value}", labels.join(","));
            }
        }
        out
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Work a scrape does before rendering (e.g. reading pool usage from the ledger).
pub type Refresh = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// Serves `/metrics` in the background; a server that cannot start is logged
/// (metrics are never a reason to stop serving CSI).
pub fn spawn(
    address: SocketAddr,
    gauges: Arc<Gauges>,
    refresh: Option<Refresh>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(err) = serve(address, gauges, refresh).await {
            tracing::error!(%err, "no metrics");
        }
    })
}

/// A `--metrics-address`: `IP:PORT`, `[IPv6]:PORT`, or an IPv6 address and its
/// port joined by a last colon, as `$(POD_IP):9810` expands to on an IPv6 pod.
/// Only an address, never a name to resolve: metrics bind exactly where told.
pub fn parse_address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Ok(address);
    }
    text.rsplit_once(':')
        .and_then(|(ip, port)| {
            let ip = ip.parse::<std::net::Ipv6Addr>().ok()?;
            Some(SocketAddr::from((ip, port.parse::<u16>().ok()?)))
        })
        .ok_or_else(|| {
            format!("{text:?} is not IP:PORT (e.g. 10.1.2.3:9810, [fd00::3]:9810, fd00::3:9810)")
        })
}

/// Serves `/metrics` on `address` until the process ends.
pub async fn serve(
    address: SocketAddr,
    gauges: Arc<Gauges>,
    refresh: Option<Refresh>,
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| format!("cannot listen for metrics on {address}: {e}"))?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let gauges = gauges.clone();
            let refresh = refresh.clone();
            async move {
                if let Some(refresh) = refresh {
                    refresh().await;
                }
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    gauges.render(),
                )
                    .into_response()
            }
        }),
    );
    axum::serve(listener, app)
        .await
        .map_err(|e| format!("the metrics server stopped: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_addresses_are_addresses_with_a_port() {
        let parsed = |t: &str| parse_address(t).map(|a| a.to_string());
        assert_eq!(parsed("10.1.2.3:9810").unwrap(), "10.1.2.3:9810");
        assert_eq!(parsed("[fd00::3]:9810").unwrap(), "[fd00::3]:9810");
        // $(POD_IP):9810 on an IPv6 pod.
        assert_eq!(parsed("fd00::3:9810").unwrap(), "[fd00::3]:9810");
        for bad in [
            "localhost:9810",
            "10.1.2.3",
            ":9810",
            "$(POD_IP):9810",
            "fd00::3",
        ] {
            assert!(parse_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn gauges_render_in_the_text_format() {
        let gauges = Gauges::default();
        gauges.set(
            "vdrive_pool_capacity_gib",
            "Pool capacity.",
            &[("pool", "k8s")],
            3000.0,
        );
        gauges.set(
            "vdrive_pool_capacity_gib",
            "Pool capacity.",
            &[("pool", "vm")],
            1500.0,
        );
        gauges.set("vdrive_orphaned_claims", "Orphans.", &[], 0.0);
        assert_eq!(
            gauges.render(),
            "# HELP vdrive_orphaned_claims Orphans.\n# TYPE vdrive_orphaned_claims gauge\nvdrive_orphaned_claims 0\n\
             # HELP vdrive_pool_capacity_gib Pool capacity.\n# TYPE vdrive_pool_capacity_gib gauge\n\
             vdrive_pool_capacity_gib{pool=\"k8s\"} 3000\nvdrive_pool_capacity_gib{pool=\"vm\"} 1500\n"
        );
        gauges.clear("vdrive_pool_capacity_gib");
        assert!(!gauges.render().contains("pool_capacity"));
    }

    #[test]
    fn label_values_are_escaped() {
        let gauges = Gauges::default();
        gauges.set("m", "h", &[("node", "a\"b\\c")], 1.0);
        assert!(gauges.render().contains(r#"m{node="a\"b\\c"} 1"#));
    }
}
