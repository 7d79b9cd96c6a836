//! Connection to an external MQTT broker (e.g. Mosquitto) as a client with the backend's
//! own certificate: it subscribes to every worker's writeonly topic and publishes to
//! readonly topics. The broker enforces the workers' ACL; online state comes from
//! heartbeats and Last Wills, as with the embedded broker.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::{BackendError, Result};
use crate::events::{kinds, NewEvent};
use crate::pki::CertifiedKey;
use crate::rules::Core;

pub(crate) struct External {
    client: AsyncClient,
}

impl External {
    pub(crate) async fn publish(&self, topic: &str, payload: Bytes) {
        if let Err(e) = self
            .client
            .publish(topic, QoS::AtLeastOnce, false, payload.to_vec())
            .await
        {
            tracing::warn!("external broker publish: {e}");
        }
    }
}

/// Connects (with retries in the background) and forwards worker publishes to `inbound`.
pub(crate) fn connect(
    core: Arc<Core>,
    url: &str,
    identity: &CertifiedKey,
    client_id: String,
    inbound: mpsc::UnboundedSender<(String, Bytes)>,
    shutdown: CancellationToken,
) -> Result<Arc<External>> {
    let (host, port) = protocol::token::parse_endpoint(url, &["mqtts", "tls", "ssl"], 8883)
        .map_err(BackendError::Broker)?;
    let tls = crate::tls::client_config(&core.pki, identity)?;
    let mut opts = MqttOptions::new(client_id, host, port);
    opts.set_keep_alive(Duration::from_secs(10));
    opts.set_clean_session(true);
    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    let (client, mut eventloop) = AsyncClient::new(opts, 256);
    let mut net = eventloop.network_options();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
    let filter = protocol::topics::all_writeonly(&core.namespace);
    let sub_client = client.clone();
    let url = url.to_string();
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(50);
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => break,
                ev = eventloop.poll() => ev,
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = Duration::from_millis(50);
                    core.record(NewEvent::new(kinds::MQTT_CONNECTED).data(json!({
                        "external_broker": url, "as": "backend",
                    })));
                    if let Err(e) = sub_client.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
                        tracing::warn!("external broker subscribe: {e}");
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    core.record(NewEvent::new(kinds::MQTT_SUBSCRIBED).data(json!({
                        "external_broker": url, "as": "backend", "filter": filter,
                    })));
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = inbound.send((p.topic, p.payload));
                }
                Ok(_) => {}
                Err(e) => {
                    core.record(NewEvent::new(kinds::MQTT_DISCONNECTED).data(json!({
                        "external_broker": url, "as": "backend", "error": e.to_string(),
                    })));
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        let _ = sub_client.try_disconnect();
    });
    Ok(Arc::new(External { client }))
}
