//! Serving CSI on a unix socket, and connecting to one.

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::Status;
use tonic::transport::{Channel, Endpoint, Server, Uri};
use tower::{BoxError, Layer, Service};

use super::controller::ControllerService;
use super::identity::IdentityService;
use super::metered::Metered;
use super::node::NodeService;
use super::proto::controller_server::ControllerServer;
use super::proto::identity_server::IdentityServer;
use super::proto::node_server::NodeServer;
use crate::ledger::LedgerStore;

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("endpoint {0:?} is not a unix socket: use unix:///path/to/csi.sock")]
    BadEndpoint(String),
    #[error(
        "{path} exists and is not a socket; refusing to replace it. Remove it or choose another --endpoint"
    )]
    NotASocket { path: PathBuf },
    #[error("another server is listening on {path}; stop it or choose another --endpoint")]
    InUse { path: PathBuf },
    #[error("cannot create the socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// `unix:///run/vdrive/csi.sock`, `unix:/run/…` or a plain path → the socket path.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, ServeError> {
    let path = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .unwrap_or(endpoint);
    if path.is_empty() || (endpoint.contains("://") && !endpoint.starts_with("unix://")) {
        return Err(ServeError::BadEndpoint(endpoint.to_string()));
    }
    Ok(PathBuf::from(path))
}

/// Binds the socket with mode 0600 before it is visible at `path`: bound in a
/// private directory next to it, then renamed into place. A stale socket is
/// replaced; anything else at `path` is left alone.
pub fn bind(path: &Path) -> Result<UnixListener, ServeError> {
    let err = |source| ServeError::Socket {
        path: path.to_path_buf(),
        source,
    };
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(err)?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            // Stale only if nobody answers on it: never take over a running server.
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServeError::InUse {
                    path: path.to_path_buf(),
                });
            }
            std::fs::remove_file(path).map_err(err)?
        }
        Ok(_) => {
            return Err(ServeError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let private = parent.join(format!(".vdrive-bind-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::create_dir(&private).map_err(err)?;
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    let staged = private.join("csi.sock");
    let result = (|| {
        let listener = UnixListener::bind(&staged)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    result.map_err(err)
}

/// The services one process offers.
pub struct Services<S> {
    pub identity: IdentityService,
    pub controller: Option<ControllerService<S>>,
    pub node: Option<std::sync::Arc<NodeService<S>>>,
}

/// Serves until `shutdown` resolves, then removes the socket.
pub async fn serve<S: LedgerStore>(
    path: &Path,
    services: Services<S>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let listener = bind(path)?;
    let router = Server::builder()
        .layer(RunToEnd)
        // Inside RunToEnd, so a call whose caller gave up is still counted.
        .layer(Metered)
        .add_service(IdentityServer::new(services.identity))
        .add_optional_service(services.controller.map(ControllerServer::new))
        .add_optional_service(services.node.map(NodeServer::from_arc));
    let served = router
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    let _ = std::fs::remove_file(path);
    Ok(served?)
}

/// Runs every call to its end in a task of its own. When a caller gives up (its
/// deadline passes, it disconnects), tonic drops the call's future; a call that
/// has begun changing a volume must instead finish (or undo) what it began, and
/// keep its volume busy (its in-flight guard) until then, so that a retry is
/// refused with Aborted rather than run beside it.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunToEnd;

impl<S> Layer<S> for RunToEnd {
    type Service = RunsToEnd<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RunsToEnd(inner)
    }
}

#[derive(Debug, Clone)]
pub struct RunsToEnd<S>(S);

impl<S, R> Service<R> for RunsToEnd<S>
where
    S: Service<R>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: R) -> Self::Future {
        // Dropping the handle detaches the task: it runs on without a caller.
        let call = tokio::spawn(self.0.call(request));
        Box::pin(async move {
            match call.await {
                Ok(answer) => answer.map_err(Into::into),
                // A panic (or the runtime shutting down): the caller gets a status
                // instead of a reset connection.
                Err(ended) => Err(Box::new(Status::internal(format!(
                    "the call ended abnormally: {ended}; see the driver's log"
                ))) as BoxError),
            }
        })
    }
}

/// A gRPC channel to a CSI socket.
pub async fn connect(endpoint: &str) -> Result<Channel, ServeError> {
    let path = socket_path(endpoint)?;
    // The URI is required by tonic but unused: the connector dials the socket.
    let channel = Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await?;
    Ok(channel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_name_a_socket_path() {
        assert_eq!(
            socket_path("unix:///run/vdrive/csi.sock").unwrap(),
            PathBuf::from("/run/vdrive/csi.sock")
        );
        assert_eq!(
            socket_path("unix:/tmp/x.sock").unwrap(),
            PathBuf::from("/tmp/x.sock")
        );
        assert_eq!(
            socket_path("/tmp/x.sock").unwrap(),
            PathBuf::from("/tmp/x.sock")
        );
        assert!(socket_path("tcp://0.0.0.0:1").is_err());
        assert!(socket_path("").is_err());
    }

    #[tokio::test]
    async fn a_call_whose_caller_gives_up_still_runs_to_its_end() {
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let (ended, mut has_ended) = tokio::sync::oneshot::channel::<()>();
        let slot = std::sync::Mutex::new(Some((released, ended)));
        let inner = tower::service_fn(move |_: ()| {
            let taken = slot.lock().unwrap().take();
            async move {
                let (released, ended) = taken.expect("called once");
                let _ = released.await;
                let _ = ended.send(());
                Ok::<_, std::convert::Infallible>(())
            }
        });
        let mut service = RunToEnd.layer(inner);
        let call = service.call(());
        // The caller gives up before the call has ended.
        drop(call);
        release.send(()).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), &mut has_ended)
            .await
            .expect("the call ran on after its caller left")
            .expect("the call ended");
    }

    #[tokio::test]
    async fn a_call_that_panics_answers_internal() {
        let inner = tower::service_fn(|_: ()| async {
            if true {
                panic!("boom");
            }
            Ok::<(), std::convert::Infallible>(())
        });
        let err = RunToEnd.layer(inner).call(()).await.unwrap_err();
        let status = err.downcast::<Status>().unwrap();
        assert_eq!(status.code(), tonic::Code::Internal);
    }

    #[tokio::test]
    async fn the_socket_is_private_and_only_a_stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("csi.sock");
        let first = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(
            matches!(bind(&path), Err(ServeError::InUse { .. })),
            "a live socket is kept"
        );
        drop(first);
        bind(&path).expect("a stale socket is replaced");
        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, b"keep me").unwrap();
        assert!(matches!(bind(&file), Err(ServeError::NotASocket { .. })));
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    }
}
