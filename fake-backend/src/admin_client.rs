//! A tiny HTTP/1.1 client for the admin API (loopback, plain HTTP), for the CLI.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// The running backend's admin address from `DIR/admin.addr`, if it answers.
pub async fn running(data_dir: &Path) -> Option<SocketAddr> {
    let text = std::fs::read_to_string(data_dir.join("admin.addr")).ok()?;
    let addr: SocketAddr = text.trim().parse().ok()?;
    tokio::net::TcpStream::connect(addr).await.ok()?;
    Some(addr)
}

pub async fn require(data_dir: &Path) -> Result<SocketAddr> {
    running(data_dir).await.ok_or_else(|| {
        anyhow!(
            "no running fake backend for {} (start `fake-backend serve --data-dir {}`)",
            data_dir.display(),
            data_dir.display()
        )
    })
}

/// Calls `method path` with an optional JSON body; errors carry the admin API's message.
pub async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Value> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to the admin API at {addr}"))?;
    // Best effort: a request/response exchange must not wait on Nagle.
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let bytes = match body {
        Some(v) => Bytes::from(serde_json::to_vec(v)?),
        None => Bytes::new(),
    };
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(Full::new(bytes))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    let value: Value = serde_json::from_slice(&body)
        .unwrap_or(Value::String(String::from_utf8_lossy(&body).into_owned()));
    if !status.is_success() {
        let msg = value
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| value.to_string());
        bail!("{method} {path}: {status}: {msg}");
    }
    Ok(value)
}
