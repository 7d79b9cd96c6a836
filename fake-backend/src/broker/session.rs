//! One MQTT connection: TLS handshake, pool identity from the client certificate,
//! CONNECT checks, then packets until DISCONNECT, an error, a keep-alive timeout or a kick.
//! Anything but a DISCONNECT fires the client's Last Will (except kicks that say not to).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{
    ConnAck, ConnectReturnCode, Packet, PubAck, PubComp, PubRec, Publish, SubAck,
    SubscribeReasonCode, UnsubAck,
};
use rumqttc::mqttbytes::QoS;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

use super::{acl, Broker, SessionCmd};
use crate::events::{kinds, NewEvent};

const MAX_PACKET: usize = 1 << 20;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) async fn run(broker: Arc<Broker>, tcp: TcpStream, peer: SocketAddr) {
    let core = broker.core.clone();
    let refuse_tls = |error: String| {
        core.record(NewEvent::new(kinds::TLS_REFUSED).data(json!({
            "listener": "mqtt", "peer": peer.to_string(), "error": error,
        })));
    };
    let Some(acceptor) = broker.acceptor.as_ref() else {
        return refuse_tls("an in-memory broker has no TLS listener".into());
    };
    let tls = match timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return refuse_tls(e.to_string()),
        Err(_) => return refuse_tls("TLS handshake timed out".into()),
    };
    let fingerprint = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| crate::pki::fingerprint(c.as_ref()))
        .unwrap_or_default();
    let identity = core.pool_for_fingerprint(&fingerprint);
    let mut conn = Conn {
        io: tls,
        buf: BytesMut::with_capacity(4096),
    };

    let refuse = |conn_reason: &str, client_id: Option<&str>| {
        core.record(NewEvent::new(kinds::MQTT_REFUSED).data(json!({
            "peer": peer.to_string(), "client_id": client_id, "reason": conn_reason,
        })));
    };
    let connect = match timeout(HANDSHAKE_TIMEOUT, conn.read_packet()).await {
        Ok(Ok(Some(Packet::Connect(c)))) => c,
        Ok(Ok(Some(other))) => {
            return refuse(&format!("expected CONNECT, got {other:?}"), None);
        }
        Ok(Ok(None)) => return refuse("closed before CONNECT", None),
        Ok(Err(e)) => return refuse(&format!("bad CONNECT: {e}"), None),
        Err(_) => return refuse("no CONNECT within 10s", None),
    };
    let client_id = connect.client_id.clone();
    let pool = match identity {
        Ok(pool) => pool,
        Err(why) => {
            let _ = conn
                .write(Packet::ConnAck(ConnAck::new(
                    ConnectReturnCode::NotAuthorized,
                    false,
                )))
                .await;
            return refuse(&why, Some(&client_id));
        }
    };
    let ns = core.namespace.clone();
    let (code, why) = connect_check(
        &broker,
        &pool,
        &client_id,
        connect.last_will.as_ref().map(|w| w.topic.as_str()),
    )
    .unwrap_or((ConnectReturnCode::Success, String::new()));
    if code != ConnectReturnCode::Success {
        let _ = conn.write(Packet::ConnAck(ConnAck::new(code, false))).await;
        return refuse(&why, Some(&client_id));
    }

    let (tx, mut rx) = mpsc::unbounded_channel();
    let key = (pool.clone(), client_id.clone());
    let conn_id = broker.register(&key, &fingerprint, tx);
    if conn
        .write(Packet::ConnAck(ConnAck::new(
            ConnectReturnCode::Success,
            false,
        )))
        .await
        .is_err()
    {
        broker.unregister(&key, conn_id);
        return;
    }
    let ev = |kind: &str| NewEvent::new(kind).pool(&pool).worker(&client_id);
    core.record(ev(kinds::MQTT_CONNECTED).data(json!({
        "peer": peer.to_string(),
        "keep_alive_s": connect.keep_alive,
        "clean_session": connect.clean_session,
        "has_will": connect.last_will.is_some(),
    })));

    let keep_alive = Duration::from_secs(u64::from(connect.keep_alive));
    let mut last_rx = Instant::now();
    let mut next_pkid: u16 = 0;
    // (clean disconnect, fire will, reason)
    let (clean, fire_will, reason) = loop {
        let deadline = if keep_alive.is_zero() {
            None
        } else {
            Some(last_rx + keep_alive.mul_f32(1.5))
        };
        let keepalive_expired = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            packet = conn.read_packet() => {
                last_rx = Instant::now();
                let packet = match packet {
                    Ok(Some(p)) => p,
                    Ok(None) => break (false, true, "connection closed by client".to_string()),
                    Err(e) => {
                        core.record(ev(kinds::MQTT_PROTOCOL_ERROR).data(json!({ "error": e })));
                        break (false, true, format!("protocol error: {e}"));
                    }
                };
                match packet {
                    Packet::Publish(p) => {
                        if !acl::may_publish(&ns, &pool, &client_id, &p.topic) {
                            core.record(ev(kinds::MQTT_DENIED).data(json!({
                                "action": "publish", "topic": p.topic,
                            })));
                            // MQTT 3.1.1 cannot refuse a publish: close, like AWS IoT does.
                            break (false, true, format!("publish to {:?} not allowed", p.topic));
                        }
                        let ack = match p.qos {
                            QoS::AtMostOnce => None,
                            QoS::AtLeastOnce => Some(Packet::PubAck(PubAck::new(p.pkid))),
                            QoS::ExactlyOnce => Some(Packet::PubRec(PubRec::new(p.pkid))),
                        };
                        let _ = broker.inbound.send((p.topic, p.payload));
                        if let Some(ack) = ack {
                            if conn.write(ack).await.is_err() {
                                break (false, true, "write failed".into());
                            }
                        }
                    }
                    Packet::PubRel(r) => {
                        if conn.write(Packet::PubComp(PubComp::new(r.pkid))).await.is_err() {
                            break (false, true, "write failed".into());
                        }
                    }
                    Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_) => {}
                    Packet::Subscribe(s) => {
                        let mut codes = Vec::with_capacity(s.filters.len());
                        for f in &s.filters {
                            if acl::may_subscribe(&ns, &pool, &client_id, &f.path) {
                                broker.add_subscription(&key, conn_id, &f.path);
                                let qos = if f.qos == QoS::AtMostOnce { QoS::AtMostOnce } else { QoS::AtLeastOnce };
                                codes.push(SubscribeReasonCode::Success(qos));
                                core.record(ev(kinds::MQTT_SUBSCRIBED).data(json!({ "filter": f.path })));
                            } else {
                                codes.push(SubscribeReasonCode::Failure);
                                core.record(ev(kinds::MQTT_DENIED).data(json!({
                                    "action": "subscribe", "topic": f.path,
                                })));
                            }
                        }
                        if conn.write(Packet::SubAck(SubAck::new(s.pkid, codes))).await.is_err() {
                            break (false, true, "write failed".into());
                        }
                    }
                    Packet::Unsubscribe(u) => {
                        for t in &u.topics {
                            broker.remove_subscription(&key, conn_id, t);
                        }
                        if conn.write(Packet::UnsubAck(UnsubAck::new(u.pkid))).await.is_err() {
                            break (false, true, "write failed".into());
                        }
                    }
                    Packet::PingReq => {
                        if conn.write(Packet::PingResp).await.is_err() {
                            break (false, true, "write failed".into());
                        }
                    }
                    Packet::Disconnect => break (true, false, "client sent DISCONNECT".into()),
                    other => {
                        let e = format!("unexpected packet from a client: {other:?}");
                        core.record(ev(kinds::MQTT_PROTOCOL_ERROR).data(json!({ "error": e })));
                        break (false, true, e);
                    }
                }
            }
            cmd = rx.recv() => match cmd {
                Some(SessionCmd::Publish { topic, payload }) => {
                    next_pkid = next_pkid.checked_add(1).unwrap_or(1);
                    let mut p = Publish::new(topic, QoS::AtLeastOnce, payload.to_vec());
                    p.pkid = next_pkid;
                    if conn.write(Packet::Publish(p)).await.is_err() {
                        break (false, true, "write failed".into());
                    }
                }
                Some(SessionCmd::Kick { fire_will, reason }) => break (false, fire_will, reason),
                None => break (false, false, "broker gone".into()),
            },
            _ = keepalive_expired => break (false, true, "keep-alive timeout".into()),
        }
    };
    broker.unregister(&key, conn_id);
    let _ = conn.io.shutdown().await;
    let will_fired = !clean && fire_will && connect.last_will.is_some();
    core.record(ev(kinds::MQTT_DISCONNECTED).data(json!({
        "clean": clean, "will_fired": will_fired, "reason": reason,
    })));
    if will_fired {
        if let Some(will) = connect.last_will {
            let _ = broker.inbound.send((will.topic, will.message));
        }
    }
}

/// Why a CONNECT from `client_id` of `pool` is refused, if it is: the checks every
/// connection passes, over TLS or in memory.
pub(super) fn connect_check(
    broker: &Broker,
    pool: &str,
    client_id: &str,
    will_topic: Option<&str>,
) -> Option<(ConnectReturnCode, String)> {
    let core = &broker.core;
    let refused = if client_id.is_empty() {
        (
            ConnectReturnCode::BadClientId,
            "empty client id (use the worker ULID)".to_string(),
        )
    } else if client_id.contains(['#', '+', '/']) {
        // The id is spliced into topic names: a wildcard would widen the ACL.
        (
            ConnectReturnCode::BadClientId,
            "client id contains a topic wildcard or separator (#, + or /)".to_string(),
        )
    } else if !core.read(|s| s.workers.get(client_id).is_some_and(|w| w.pool == pool)) {
        // The same answer for "unknown" and "another pool's worker", so a certificate
        // cannot probe other pools' worker ids; either way it must not take a session over.
        (
            ConnectReturnCode::NotAuthorized,
            "client id is not a registered worker of this certificate's pool".to_string(),
        )
    } else if let Some(topic) =
        will_topic.filter(|t| !acl::may_publish(&core.namespace, pool, client_id, t))
    {
        (
            ConnectReturnCode::NotAuthorized,
            format!("last will topic {topic:?} is not this client's writeonly topic"),
        )
    } else if broker.is_down() {
        (
            ConnectReturnCode::ServiceUnavailable,
            "broker down".to_string(),
        )
    } else {
        return None;
    };
    Some(refused)
}

struct Conn<S> {
    io: S,
    buf: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// The next packet; `Ok(None)` on a clean EOF. Cancel-safe: partial reads stay in `buf`.
    async fn read_packet(&mut self) -> Result<Option<Packet>, String> {
        loop {
            if !self.buf.is_empty() {
                match Packet::read(&mut self.buf, MAX_PACKET) {
                    Ok(p) => return Ok(Some(p)),
                    Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
            let n = self
                .io
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err("connection closed mid-packet".into())
                };
            }
        }
    }

    async fn write(&mut self, packet: Packet) -> Result<(), String> {
        let mut out = BytesMut::new();
        packet
            .write(&mut out, MAX_PACKET)
            .map_err(|e| e.to_string())?;
        self.io.write_all(&out).await.map_err(|e| e.to_string())?;
        self.io.flush().await.map_err(|e| e.to_string())
    }
}
