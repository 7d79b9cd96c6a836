//! Accept loop and per-connection tasks; each request goes to the instrument's `/_fake/`
//! routes or to the Docker API. Every connection (and every upgraded attach
//! stream) watches the daemon's epoch, so a restart can drop them all at once.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};

use crate::admin_routes;
use crate::state::Daemon;

/// Where the daemon listens.
pub enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

/// Serves until `shutdown` completes, then drops every connection and stops containers.
pub async fn serve(
    daemon: Arc<Daemon>,
    listeners: Vec<Listener>,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for l in listeners {
        let d = daemon.clone();
        let mut stop = stop_rx.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    accepted = accept(&l) => match accepted {
                        Ok(Conn::Unix(s)) => spawn_conn(d.clone(), s),
                        Ok(Conn::Tcp(s)) => spawn_conn(d.clone(), s),
                        Err(e) => tracing::warn!("accept failed: {e}"),
                    },
                }
            }
        });
    }
    shutdown.await;
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    daemon.epoch.send_modify(|e| *e = e.wrapping_add(1));
    daemon.lose_containers();
}

enum Conn {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

async fn accept(l: &Listener) -> std::io::Result<Conn> {
    match l {
        Listener::Unix(u) => u.accept().await.map(|(s, _)| Conn::Unix(s)),
        Listener::Tcp(t) => {
            let (s, _) = t.accept().await?;
            // Small API exchanges must not wait on Nagle; a refusal only costs speed.
            if let Err(e) = s.set_nodelay(true) {
                tracing::debug!("TCP_NODELAY not set: {e}");
            }
            Ok(Conn::Tcp(s))
        }
    }
}

fn spawn_conn<S>(daemon: Arc<Daemon>, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let down = daemon
        .down_until
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_some_and(|t| tokio::time::Instant::now() < t);
    if down {
        return; // dropping the stream closes it: the daemon is "restarting"
    }
    let mut epoch = daemon.epoch.subscribe();
    tokio::spawn(async move {
        let d = daemon.clone();
        let svc = service_fn(move |req| {
            let d = d.clone();
            async move {
                if admin_routes::is_admin_path(req.uri().path()) {
                    return Ok::<_, Infallible>(admin_routes::handle(d, req).await);
                }
                Ok::<_, Infallible>(
                    crate::routes::handle(d, req)
                        .await
                        .unwrap_or_else(|e| match e {}),
                )
            }
        });
        let conn = http1::Builder::new()
            .serve_connection(TokioIo::new(stream), svc)
            .with_upgrades();
        tokio::select! {
            r = conn => if let Err(e) = r { tracing::debug!("connection ended: {e}") },
            _ = epoch.changed() => {}
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tcp_accepts_have_nodelay() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let client = tokio::spawn(async move { tokio::net::TcpStream::connect(addr).await });
        let Conn::Tcp(server_side) = accept(&Listener::Tcp(tcp)).await.unwrap() else {
            panic!("a TCP listener accepted a non-TCP connection");
        };
        assert!(server_side.nodelay().unwrap());
        drop(client.await.unwrap().unwrap());
    }
}
