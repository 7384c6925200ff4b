//! Counts every CSI call by method and gRPC code, and times it, as a tower
//! layer around the gRPC services: no handler needs to remember to.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::Code;
use tower::{Layer, Service};

use crate::metrics;

/// The method label of a call whose path names no CSI method (bounded, so a
/// caller cannot mint series).
const UNKNOWN_METHOD: &str = "unknown";

#[derive(Debug, Clone, Copy, Default)]
pub struct Metered;

impl<S> Layer<S> for Metered {
    type Service = MeteredService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MeteredService(inner)
    }
}

#[derive(Debug, Clone)]
pub struct MeteredService<S>(S);

impl<S, B, R> Service<http::Request<B>> for MeteredService<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = method_of(request.uri().path()).to_string();
        let started = Instant::now();
        let answer = self.0.call(request);
        Box::pin(async move {
            let answer = answer.await;
            let code = match &answer {
                Ok(response) => code_of(response.headers()),
                // The transport failed the call before any status was written.
                Err(_) => Code::Unknown,
            };
            metrics::global().record_csi_call(&method, code_name(code), started.elapsed());
            answer
        })
    }
}

/// `/csi.v1.Controller/CreateVolume` → `CreateVolume`.
fn method_of(path: &str) -> &str {
    path.strip_prefix("/csi.v1.")
        .and_then(|rest| rest.split_once('/'))
        .map(|(_, method)| method)
        .filter(|m| !m.is_empty() && m.len() <= 64 && m.bytes().all(|b| b.is_ascii_alphanumeric()))
        .unwrap_or(UNKNOWN_METHOD)
}

/// A failed unary call's status is in the response headers (a trailers-only
/// response); a call that succeeded sends its OK in the trailers, after the
/// message, so no status in the headers means OK.
fn code_of(headers: &http::HeaderMap) -> Code {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i32>().ok())
        .map_or(Code::Ok, Code::from)
}

/// A gRPC code as gRPC's own libraries label it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_method_is_the_last_part_of_a_csi_path() {
        assert_eq!(method_of("/csi.v1.Controller/CreateVolume"), "CreateVolume");
        assert_eq!(method_of("/csi.v1.Node/NodeStageVolume"), "NodeStageVolume");
        assert_eq!(method_of("/other.Service/Method"), UNKNOWN_METHOD);
        assert_eq!(method_of("/csi.v1.Node/a%20b"), UNKNOWN_METHOD);
        assert_eq!(method_of("/csi.v1.Node/"), UNKNOWN_METHOD);
    }

    #[test]
    fn the_code_comes_from_the_headers_of_a_failed_call() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(code_of(&headers), Code::Ok);
        headers.insert("grpc-status", http::HeaderValue::from_static("5"));
        assert_eq!(code_of(&headers), Code::NotFound);
        assert_eq!(code_name(code_of(&headers)), "NotFound");
    }
}
