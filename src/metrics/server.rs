//! The `/metrics` endpoint: this process's [`Metrics`] in the Prometheus text
//! format, after whatever a scrape computes fresh ([`Refresh`]).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use futures_util::future::BoxFuture;

use super::registry::{CONTENT_TYPE, Metrics};

/// Work a scrape does before rendering (e.g. reading pool usage from the ledger).
pub type Refresh = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// Binds `address` now (port 0 takes a free port) and serves `/metrics` there
/// in the background; returns the task and the address bound. The caller logs
/// a failure and serves on: metrics are never a reason to stop serving CSI.
pub async fn spawn(
    address: SocketAddr,
    metrics: &'static Metrics,
    refresh: Option<Refresh>,
) -> Result<(tokio::task::JoinHandle<()>, SocketAddr), String> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| format!("cannot listen for metrics on {address}: {e}"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("cannot listen for metrics on {address}: {e}"))?;
    let task = tokio::spawn(async move {
        if let Err(err) = serve(listener, metrics, refresh).await {
            tracing::error!(%err, "no metrics");
        }
    });
    Ok((task, bound))
}

/// `--metrics-address` of `vdrive <program>`: serves this process's metrics
/// there, if given, and says where (the port chosen, for port 0).
pub async fn start(
    program: &str,
    address: Option<SocketAddr>,
    refresh: Option<Refresh>,
) -> Option<tokio::task::JoinHandle<()>> {
    match spawn(address?, super::global(), refresh).await {
        Ok((task, bound)) => {
            println!("vdrive {program}: metrics on http://{bound}/metrics");
            Some(task)
        }
        Err(err) => {
            eprintln!("vdrive {program}: {err}; serving on without metrics");
            None
        }
    }
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

/// Serves `/metrics` on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: &'static Metrics,
    refresh: Option<Refresh>,
) -> Result<(), String> {
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let refresh = refresh.clone();
            async move {
                if let Some(refresh) = refresh {
                    refresh().await;
                }
                ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.render()).into_response()
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
}
