//! TCP_NODELAY for every socket the launcher opens or accepts: MQTT, HTTPS, Docker over
//! TCP, metrics.
//!
//! Each run is a few small request/response exchanges; with Nagle's algorithm a small
//! write waits for the peer's delayed ACK (up to 40 ms on Linux), which dominated a
//! warm spawn. One place builds each client's socket options so a test can check them.

use std::time::Duration;

/// The base of every reqwest client the launcher builds.
///
/// reqwest builds a TLS configuration even for a client given none (the interruption
/// probes' plain HTTP) from the process's default crypto provider, and panics without one:
/// ring is installed as that default unless the process installed another first.
pub(crate) fn http_client_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().tcp_nodelay(true)
}

/// rumqttc's socket options for the broker connection.
pub(crate) fn mqtt_network_options(connect_timeout: Duration) -> rumqttc::NetworkOptions {
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(connect_timeout.as_secs().max(1));
    net
}

/// A Docker client for `tcp://` or `http://` `host`: bollard's HTTP transport (one
/// connection per request, as bollard's own) but with TCP_NODELAY, which bollard's
/// `connect_with_http` does not set.
pub(crate) fn docker_over_tcp(
    host: &str,
    timeout_secs: u64,
    version: &bollard::ClientVersion,
) -> Result<bollard::Docker, bollard::errors::Error> {
    use hyper_util::client::legacy::{connect::HttpConnector, Client};
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let mut builder = Client::builder(hyper_util::rt::TokioExecutor::new());
    builder.pool_max_idle_per_host(0);
    let client = std::sync::Arc::new(builder.build(connector));
    let addr = host.replacen("tcp://", "http://", 1);
    bollard::Docker::connect_with_custom_transport(
        move |req: bollard::BollardRequest| {
            let client = client.clone();
            async move {
                client
                    .request(req)
                    .await
                    .map_err(bollard::errors::Error::from)
            }
        },
        Some(addr),
        timeout_secs,
        version,
    )
}

/// Sets TCP_NODELAY on an accepted socket (`&mut` to fit `axum::serve`'s `tap_io`). A
/// refusal only costs speed, so it is logged, not returned.
pub(crate) fn set_nodelay(tcp: &mut tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!("TCP_NODELAY not set: {e}");
    }
}

/// Test support: whether the socket of this process bound to `local` and connected to
/// `peer` has TCP_NODELAY, found among the process's open descriptors. `None` when no
/// such socket is open. Lets tests check sockets that a library (rumqttc, reqwest) owns.
#[cfg(test)]
pub(crate) fn nodelay_of(local: std::net::SocketAddr, peer: std::net::SocketAddr) -> Option<bool> {
    use std::os::fd::BorrowedFd;
    for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        // SAFETY: `fd` was listed open just now; it is only borrowed for getsockopt-style
        // calls, which report EBADF harmlessly if another test closed it meanwhile.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let sock = socket2::SockRef::from(&fd);
        let addr = |a: std::io::Result<socket2::SockAddr>| a.ok().and_then(|a| a.as_socket());
        if addr(sock.local_addr()) == Some(local) && addr(sock.peer_addr()) == Some(peer) {
            return sock.tcp_nodelay().ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The client sets its options after connect() returns, which may be after our
    /// accept(); its first byte proves they are set.
    async fn first_byte(s: &mut tokio::net::TcpStream) {
        use tokio::io::AsyncReadExt;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
    }

    /// The launcher's HTTPS client connects with TCP_NODELAY.
    #[tokio::test]
    async fn the_http_client_sets_nodelay() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = http_client_builder().no_proxy().build().unwrap();
        let request =
            tokio::spawn(async move { client.get(format!("http://{addr}/")).send().await });
        let (mut server_side, client_addr) = listener.accept().await.unwrap();
        first_byte(&mut server_side).await;
        assert_eq!(nodelay_of(client_addr, addr), Some(true));
        request.abort();
    }

    /// The Docker client over TCP connects with TCP_NODELAY (bollard's own does not).
    #[tokio::test]
    async fn the_docker_client_over_tcp_sets_nodelay() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let host = format!("tcp://{addr}");
        let connect = tokio::spawn(async move {
            let _ = crate::docker::BollardRuntime::connect(Some(&host)).await;
        });
        let (mut server_side, client_addr) = listener.accept().await.unwrap();
        first_byte(&mut server_side).await;
        assert_eq!(nodelay_of(client_addr, addr), Some(true));
        connect.abort();
    }

    /// The TCP transport speaks to a daemon end to end (URIs built from `tcp://`).
    #[tokio::test]
    async fn the_docker_client_over_tcp_reaches_the_daemon() {
        use wiremock::matchers::{method, path_regex};
        let server = wiremock::MockServer::start().await;
        wiremock::Mock::given(method("GET"))
            .and(path_regex(r"^(/v1\.\d+)?/version$"))
            .respond_with(
                wiremock::ResponseTemplate::new(200)
                    .set_body_json(serde_json::json!({ "ApiVersion": "1.47" })),
            )
            .mount(&server)
            .await;
        let host = format!("tcp://{}", server.address());
        let rt = crate::docker::BollardRuntime::connect(Some(&host))
            .await
            .unwrap();
        assert_eq!(rt.api_version(), "1.47");
    }

    /// The MQTT client's options ask for TCP_NODELAY (rumqttc's default is off).
    #[tokio::test]
    async fn the_mqtt_client_sets_nodelay() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let opts = rumqttc::MqttOptions::new("nodelay-probe", "127.0.0.1", addr.port());
        let (_client, mut eventloop) = rumqttc::AsyncClient::new(opts, 1);
        eventloop.set_network_options(mqtt_network_options(Duration::from_secs(5)));
        let poll = tokio::spawn(async move { eventloop.poll().await.is_ok() });
        let (mut server_side, client_addr) = listener.accept().await.unwrap();
        first_byte(&mut server_side).await;
        assert_eq!(nodelay_of(client_addr, addr), Some(true));
        poll.abort();
    }
}
