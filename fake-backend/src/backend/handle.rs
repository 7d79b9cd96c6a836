//! [`BackendHandle`]: what tests, the scenario engine, the admin API and the CLI call on a
//! running backend (pools, runs, workers, binaries, faults, events).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use protocol::api::WorkerBinary;
use protocol::{Arch, RunState};
use serde_json::json;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::{b64, make_token, BackendConfig, Inner, PoolCredentials};
use crate::binaries::BinaryContent;
use crate::error::{BackendError, Result};
use crate::events::{kinds, Event, NewEvent};
use crate::faults::Fault;
use crate::pki::CertifiedKey;
use crate::rules::{PoolKeySource, RunView, WorkerCommand, WorkerView};
use crate::ScheduleRun;

/// A running fake backend. Cheap to clone; [`BackendHandle::shutdown`] stops it.
#[derive(Clone)]
pub struct BackendHandle {
    pub(crate) inner: Arc<Inner>,
}

impl BackendHandle {
    pub(super) fn push_task(&self, t: JoinHandle<()>) {
        self.inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(t);
    }

    pub fn data_dir(&self) -> &Path {
        &self.inner.config.data_dir
    }
    pub fn config(&self) -> &BackendConfig {
        &self.inner.config
    }
    /// The embedded broker's address (None with an external broker).
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.inner.mqtt_addr
    }
    pub fn https_addr(&self) -> SocketAddr {
        self.inner.https_addr
    }
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.inner.admin_addr
    }
    /// `mqtts://host:port` as written into tokens.
    pub fn broker_endpoint(&self) -> &str {
        &self.inner.endpoints.broker
    }
    /// `https://host:port` as written into tokens.
    pub fn api_endpoint(&self) -> &str {
        &self.inner.endpoints.api
    }
    pub fn ca_cert_pem(&self) -> String {
        self.inner.core.pki.ca_cert_pem().to_string()
    }

    // ---- pools -------------------------------------------------------------------

    fn credentials(&self, pool: &str, key_pem: Option<String>) -> Result<PoolCredentials> {
        let cert = self
            .inner
            .core
            .read(|s| s.pools.get(pool).map(|p| p.cert_pem.clone()))
            .ok_or_else(|| BackendError::NotFound(format!("pool {pool}")))?;
        Ok(PoolCredentials {
            pool_ulid: pool.to_string(),
            token: self.token_for(pool)?,
            private_key_b64: key_pem.as_deref().map(b64),
            certificate_pem: cert,
            private_key_pem: key_pem,
        })
    }

    /// A pool from an operator's CSR (PEM), like Spacelift's UI: CSR in, token out.
    pub fn create_pool_from_csr(&self, csr_pem: &str) -> Result<PoolCredentials> {
        let (pool, _) = self.inner.core.add_pool(PoolKeySource::Csr(csr_pem))?;
        self.credentials(&pool, None)
    }

    /// A pool whose key the backend makes: full credentials.
    pub fn create_pool(&self) -> Result<PoolCredentials> {
        let bits = self.inner.config.pool_key_bits;
        let (pool, key) = self.inner.core.add_pool(PoolKeySource::Generate { bits })?;
        self.credentials(&pool, key)
    }

    /// `(SPACELIFT_TOKEN, SPACELIFT_POOL_PRIVATE_KEY)` for a new pool.
    pub fn create_pool_generated(&self) -> Result<(String, String)> {
        let c = self.create_pool()?;
        Ok((c.token, c.private_key_b64.unwrap_or_default()))
    }

    /// Issues a new certificate for `pool` (from `csr_pem`, or a new key when None); the
    /// old certificate is refused from now on and its MQTT connections are closed.
    pub fn reset_pool(&self, pool: &str, csr_pem: Option<&str>) -> Result<PoolCredentials> {
        let source = match csr_pem {
            Some(csr) => PoolKeySource::Csr(csr),
            None => PoolKeySource::Generate {
                bits: self.inner.config.pool_key_bits,
            },
        };
        let (key, old) = self.inner.core.reset_pool(pool, source)?;
        if let Some(b) = &self.inner.broker {
            b.kick_fingerprint(&old, "pool certificate reset");
        }
        self.credentials(pool, key)
    }

    /// The `SPACELIFT_TOKEN` for `pool` with this backend's endpoints.
    pub fn token_for(&self, pool: &str) -> Result<String> {
        let cert = self
            .inner
            .core
            .read(|s| s.pools.get(pool).map(|p| p.cert_pem.clone()))
            .ok_or_else(|| BackendError::NotFound(format!("pool {pool}")))?;
        Ok(make_token(
            &self.inner.endpoints,
            pool,
            cert,
            self.inner.core.pki.ca_cert_pem(),
        )
        .encode())
    }

    pub fn pools(&self) -> Vec<String> {
        self.inner.core.read(|s| s.pools.keys().cloned().collect())
    }

    // ---- runs --------------------------------------------------------------------

    /// Schedules a run; returns its ULID. It is offered to a free worker at once, or
    /// queued until one frees up.
    pub fn schedule_run(&self, req: ScheduleRun) -> Result<String> {
        self.inner.core.schedule_run(req)
    }

    /// Cancels a run; returns its state after the request (`canceled` at once when it was
    /// not claimed yet; otherwise the worker gets `run.cancel` and reports the outcome).
    pub fn cancel_run(&self, run: &str) -> Result<RunState> {
        self.inner.core.cancel_run(run, None)
    }

    /// [`BackendHandle::cancel_run`] with a reason passed on in `run.cancel`.
    pub fn cancel_run_with_reason(&self, run: &str, reason: &str) -> Result<RunState> {
        self.inner.core.cancel_run(run, Some(reason.to_string()))
    }

    pub fn run_state(&self, run: &str) -> Option<RunState> {
        self.inner.core.read(|s| s.runs.get(run).map(|r| r.state))
    }

    pub fn run(&self, run: &str) -> Option<RunView> {
        self.inner.core.run_view(run)
    }

    pub fn runs(&self) -> Vec<RunView> {
        self.inner
            .core
            .read(|s| s.runs.values().map(RunView::from).collect())
    }

    // ---- workers -----------------------------------------------------------------

    pub fn worker(&self, worker: &str) -> Option<WorkerView> {
        self.inner.core.worker_view(worker)
    }

    pub fn workers(&self) -> Vec<WorkerView> {
        self.inner
            .core
            .read(|s| s.workers.values().map(WorkerView::from).collect())
    }

    pub fn drain(&self, worker: &str) -> Result<()> {
        self.inner.core.worker_command(worker, WorkerCommand::Drain)
    }
    pub fn undrain(&self, worker: &str) -> Result<()> {
        self.inner
            .core
            .worker_command(worker, WorkerCommand::Undrain)
    }
    pub fn cycle(&self, worker: &str) -> Result<()> {
        self.inner.core.worker_command(worker, WorkerCommand::Cycle)
    }

    // ---- binaries ----------------------------------------------------------------

    /// Publishes a worker binary (version auto-numbered `0.1.N` when None) and announces
    /// it on every online worker's topic.
    pub fn publish_version(
        &self,
        arch: Arch,
        version: Option<&str>,
        content: BinaryContent,
    ) -> Result<WorkerBinary> {
        self.inner
            .core
            .publish_binary(arch, version.map(str::to_string), content)
    }

    pub fn versions(&self) -> Vec<WorkerBinary> {
        self.inner.core.read(|s| {
            s.binaries
                .iter()
                .map(|b| WorkerBinary {
                    version: b.version.clone(),
                    arch: b.arch,
                    size: b.size,
                    sha256: b.sha256.clone(),
                })
                .collect()
        })
    }

    // ---- faults ------------------------------------------------------------------

    /// Injects a fault (see [`Fault`]). Connection faults need the embedded broker.
    pub fn inject(&self, fault: Fault) -> Result<()> {
        let core = &self.inner.core;
        let embedded = || {
            self.inner.broker.as_ref().ok_or_else(|| {
                BackendError::Unsupported(format!("{fault:?} needs the embedded broker"))
            })
        };
        match &fault {
            Fault::DropConnection { worker, fire_will } => {
                let b = embedded()?;
                if !b.kick(worker, *fire_will, "connection dropped (fault)") {
                    return Err(BackendError::NotFound(format!(
                        "an MQTT connection for worker {worker}"
                    )));
                }
            }
            Fault::BrokerDown { for_ms } => embedded()?.down(for_ms.map(Duration::from_millis)),
            Fault::BrokerUp => embedded()?.up(),
            _ => core.faults.arm(&fault),
        }
        core.record(NewEvent::new(kinds::FAULT_INJECTED).data(json!({ "fault": fault })));
        Ok(())
    }

    pub fn clear_faults(&self) {
        self.inner.core.faults.clear();
        self.inner
            .core
            .record(NewEvent::new(kinds::FAULT_CLEARED).data(json!({ "fault": "all" })));
    }

    pub fn drop_connection(&self, worker: &str) -> Result<()> {
        self.inject(Fault::DropConnection {
            worker: worker.into(),
            fire_will: true,
        })
    }
    pub fn broker_down(&self, for_: Option<Duration>) -> Result<()> {
        self.inject(Fault::BrokerDown {
            for_ms: for_.map(|d| d.as_millis() as u64),
        })
    }
    pub fn broker_up(&self) -> Result<()> {
        self.inject(Fault::BrokerUp)
    }
    /// Whether `worker` has an MQTT connection to the embedded broker now.
    pub fn is_connected(&self, worker: &str) -> bool {
        self.inner
            .broker
            .as_ref()
            .is_some_and(|b| b.connected_pool(worker).is_some())
    }

    // ---- events ------------------------------------------------------------------

    pub fn events(&self) -> Vec<Event> {
        self.inner.core.events.since(0)
    }
    pub fn events_since(&self, seq: u64) -> Vec<Event> {
        self.inner.core.events.since(seq)
    }
    /// The backend's clock now: the `at_ms` an event logged now would carry.
    pub fn now_ms(&self) -> u64 {
        self.inner.core.clock.now_ms()
    }
    pub fn last_seq(&self) -> u64 {
        self.inner.core.events.last_seq()
    }
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.core.events.subscribe()
    }
    /// The first event (from the beginning) matching `pred`, waiting if needed.
    pub async fn wait_for(&self, pred: impl FnMut(&Event) -> bool) -> Event {
        self.inner.core.events.wait_for_since(0, pred).await
    }
    /// The first event after `seq` matching `pred`, waiting if needed.
    pub async fn wait_for_since(&self, seq: u64, pred: impl FnMut(&Event) -> bool) -> Event {
        self.inner.core.events.wait_for_since(seq, pred).await
    }

    // ---- PKI helpers for external brokers -----------------------------------------

    /// A server certificate for loopback (plus `names`), signed by the backend CA: for an
    /// external broker's TLS listener.
    pub fn issue_server_cert(&self, names: &[String]) -> Result<CertifiedKey> {
        self.inner.core.pki.generate_server(names)
    }

    /// Stops every listener and task; the data dir keeps everything for a restart.
    pub async fn shutdown(self) {
        self.inner
            .core
            .record(NewEvent::new(kinds::BACKEND_STOPPED));
        self.inner.shutdown.cancel();
        // In-memory sessions have no accept loop to close them: close them here.
        if let (Some(b), None) = (&self.inner.broker, self.inner.mqtt_addr) {
            b.kick_all("backend shutting down");
        }
        let tasks: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            let _ = t.await;
        }
    }
}
