//! TCP accepts with TCP_NODELAY set: small request/response writes must not wait on Nagle.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

/// Accepts one connection and disables Nagle's algorithm on it. A socket that refuses the
/// option is still served (only slower), so the failure is logged, not returned.
pub(crate) async fn accept(listener: &TcpListener) -> io::Result<(TcpStream, SocketAddr)> {
    let (mut tcp, peer) = listener.accept().await?;
    set_nodelay(&mut tcp);
    Ok((tcp, peer))
}

/// Sets TCP_NODELAY on `tcp` (`&mut` to fit `axum::serve`'s `tap_io`).
pub(crate) fn set_nodelay(tcp: &mut TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!("TCP_NODELAY not set: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_have_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move { TcpStream::connect(addr).await.unwrap() });
        let (server_side, _) = accept(&listener).await.unwrap();
        assert!(server_side.nodelay().unwrap());
        drop(client.await.unwrap());
    }
}
