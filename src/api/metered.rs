//! Counts every pool API request by the route it matched, its HTTP method and
//! the status it was answered with.

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

use crate::metrics;

/// The route label of a request no route matched (its raw path would let any
/// caller mint series).
const UNMATCHED: &str = "unmatched";

pub async fn count(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED, MatchedPath::as_str)
        .to_string();
    let method = method_label(request.method());
    let response = next.run(request).await;
    metrics::global().record_api_request(&route, method, response.status().as_u16());
    response
}

/// The standard methods by name; any other as `other`, for the same reason.
fn method_label(method: &Method) -> &'static str {
    const STANDARD: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];
    STANDARD
        .into_iter()
        .find(|m| *m == method.as_str())
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_standard_methods_are_labelled_by_name() {
        assert_eq!(method_label(&Method::DELETE), "DELETE");
        let odd = Method::from_bytes(b"BREW").unwrap();
        assert_eq!(method_label(&odd), "other");
    }
}
