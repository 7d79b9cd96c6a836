//! A backend with no listener: the same rules, outbox, timers and broker session table
//! as [`FakeBackend::start`], reached in-process through [`BackendHandle::direct_api`]
//! (the HTTPS API's calls) and [`BackendHandle::mqtt_connect`] (MQTT sessions). For a
//! simulation on one paused-time runtime: no socket, no TLS.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    open_core, set_endpoints, spawn_rules_tasks, BackendConfig, BackendHandle, FakeBackend, Inner,
};
use crate::api::DirectApi;
use crate::broker::{Broker, MemorySession, Refused};
use crate::error::Result;
use crate::events::{kinds, NewEvent};
use crate::outbox::Bus;
use crate::store::Endpoints;

/// What tokens of an in-memory backend name (never dialled).
pub const IN_MEMORY_BROKER: &str = "mqtts://in-memory.invalid:8883";
pub const IN_MEMORY_API: &str = "https://in-memory.invalid";

impl FakeBackend {
    /// Starts (or restarts, from the same data dir) a backend reached only in memory.
    pub async fn start_in_memory(config: BackendConfig) -> Result<BackendHandle> {
        let (core, out_rx) = open_core(&config)?;
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();
        let (in_tx, in_rx) = mpsc::unbounded_channel::<(String, Bytes)>();
        let broker = Broker::new(core.clone(), None, in_tx);
        let endpoints = Endpoints {
            broker: IN_MEMORY_BROKER.to_string(),
            api: IN_MEMORY_API.to_string(),
        };
        set_endpoints(&core, &endpoints);
        spawn_rules_tasks(
            &core,
            Bus::Embedded(broker.clone()),
            in_rx,
            out_rx,
            &shutdown,
            &mut tasks,
        );
        let handle = BackendHandle {
            inner: Arc::new(Inner {
                core: core.clone(),
                broker: Some(broker),
                config,
                endpoints: endpoints.clone(),
                mqtt_addr: None,
                https_addr: ([0, 0, 0, 0], 0).into(),
                admin_addr: None,
                shutdown,
                tasks: std::sync::Mutex::new(tasks),
            }),
        };
        core.record(NewEvent::new(kinds::BACKEND_STARTED).data(json!({
            "broker": endpoints.broker,
            "api": endpoints.api,
            "admin": null,
            "generation": core.read(|s| s.generation),
        })));
        Ok(handle)
    }
}

impl BackendHandle {
    /// The HTTPS API's calls for a caller presenting the certificate whose SHA-256
    /// fingerprint is `fingerprint` (see [`crate::pki::fingerprint`]).
    pub fn direct_api(&self, fingerprint: &str, name: &str) -> DirectApi {
        DirectApi::new(self.inner.core.clone(), fingerprint.to_string(), name)
    }

    /// An in-memory MQTT CONNECT (with an optional Last Will `(topic, payload)`).
    pub fn mqtt_connect(
        &self,
        fingerprint: &str,
        client_id: &str,
        will: Option<(String, Bytes)>,
    ) -> std::result::Result<MemorySession, Refused> {
        match &self.inner.broker {
            Some(b) => b.connect_in_memory(fingerprint, client_id, will),
            None => Err(Refused {
                code: "ServiceUnavailable".into(),
                reason: "an external broker cannot be reached in memory".into(),
            }),
        }
    }
}
