//! The Host check of an unauthenticated API on loopback. Listening on loopback
//! keeps other machines out, but not a web page in a local browser whose
//! host name its owner rebinds to 127.0.0.1 (DNS rebinding): the browser then
//! sends that page's requests, same-origin, with the page's own Host. A
//! request must name a loopback host to be served.

use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;

pub async fn only(request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if is_loopback(host) {
        next.run(request).await
    } else {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this API listens on loopback without authentication and serves only requests for localhost, 127.0.0.1 or [::1], not for {host:?}"
            ),
        )
        .into_response()
    }
}

/// `localhost`, an address of 127.0.0.0/8 or `[::1]`, with or without a port.
fn is_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::is_loopback;

    #[test]
    fn only_loopback_hosts_pass() {
        for ok in [
            "localhost",
            "localhost:8080",
            "LOCALHOST:8080",
            "127.0.0.1",
            "127.0.0.1:8080",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(is_loopback(ok), "{ok}");
        }
        for bad in [
            "",
            "evil.example:8080",
            "localhost.evil.example",
            "10.0.0.1:8080",
            "[fd00::1]:8080",
            "127.0.0.1.evil.example",
        ] {
            assert!(!is_loopback(bad), "{bad}");
        }
    }
}
