//! The launcher's production Docker adapter ([`BollardRuntime`]) talking to fake-docker
//! over an in-memory pipe per request (bollard's custom transport, hyper on both ends):
//! the daemon's own router, faults and restarts, with no socket.

use std::sync::Arc;

use bollard::{ClientVersion, Docker};
use fake_docker::FakeDockerHandle;
use hyper_util::rt::TokioIo;
use launcher::docker::BollardRuntime;
use launcher::ports::RuntimeError;

/// What the launcher's `DOCKER_HOST` says in sim mode (a name; never dialled).
pub fn host(name: &str) -> String {
    format!("unix:///in-memory/{name}/docker.sock")
}

/// One HTTP/1 exchange with the daemon over a fresh in-memory pipe.
async fn exchange(
    daemon: Arc<FakeDockerHandle>,
    req: bollard::BollardRequest,
) -> Result<hyper::Response<hyper::body::Incoming>, bollard::errors::Error> {
    let (client, server) = tokio::io::duplex(64 * 1024);
    daemon.serve_io(server);
    let io_error =
        |e: hyper::Error| bollard::errors::Error::from(std::io::Error::other(e.to_string()));
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client))
        .await
        .map_err(io_error)?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    send.send_request(req).await.map_err(io_error)
}

/// The production runtime over `daemon`, its API version negotiated as over a socket.
pub async fn connect(
    name: &str,
    daemon: Arc<FakeDockerHandle>,
) -> Result<BollardRuntime, RuntimeError> {
    let host = host(name);
    let make = |v: &ClientVersion| {
        let d = daemon.clone();
        Docker::connect_with_custom_transport(
            move |req| exchange(d.clone(), req),
            Some("http://in-memory"),
            120,
            v,
        )
        .map_err(|e| RuntimeError::Unavailable(e.to_string()))
    };
    BollardRuntime::connect_with(&host, make).await
}
