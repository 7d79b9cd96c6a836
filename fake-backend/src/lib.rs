//! Fake Spacelift backend: PKI, MQTT broker, HTTPS API, admin API and CLI.
//!
//! The launcher's counterpart in tests and local sandboxes. It mints pools from CSRs,
//! runs an MQTT broker with mutual TLS and a per-worker topic ACL (or uses an external
//! one), serves the HTTPS API with the run state machine enforced, hosts worker binaries,
//! injects faults, and records every event. Start it in-process with
//! [`FakeBackend::start`] or as `fake-backend serve`.

mod admin;
mod api;
mod backend;
pub mod binaries;
mod broker;
mod clock;
pub mod error;
pub mod events;
mod external;
pub mod faults;
pub mod mosquitto;
mod net;
mod outbox;
pub mod pki;
mod rules;
mod store;
pub mod tls;

use std::collections::BTreeMap;

use protocol::api::RunType;
use serde::{Deserialize, Serialize};

pub use api::{ApiError, MAX_BODY};
pub use backend::{
    create_pool_offline, reset_pool_offline, BackendConfig, BackendHandle, BrokerMode, FakeBackend,
    PoolCredentials, DEFAULT_HTTPS_BIND, DEFAULT_MQTT_BIND,
};
pub use binaries::BinaryContent;
pub use error::BackendError;
pub use events::{kinds, Event};
pub use faults::Fault;
pub use pki::CertifiedKey;
pub use rules::{RunView, WorkerView};

/// A run to schedule. The env is how a test picks the run's behaviour in its container
/// (e.g. `SPACELIFT_TEST_EXIT_CODE` for the shell worker); the backend never reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleRun {
    pub pool: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default = "default_stack")]
    pub stack_id: String,
    #[serde(default = "default_run_type")]
    pub run_type: RunType,
    /// The stack's vendor (`protocol::api::vendors`), sent in the run spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
}

fn default_stack() -> String {
    "stack".into()
}
fn default_run_type() -> RunType {
    RunType::Tracked
}

impl ScheduleRun {
    /// A tracked run of stack `stack` in `pool`, default image, no env.
    pub fn new(pool: impl Into<String>) -> ScheduleRun {
        ScheduleRun {
            pool: pool.into(),
            image: None,
            env: BTreeMap::new(),
            stack_id: default_stack(),
            run_type: default_run_type(),
            vendor: None,
        }
    }
    pub fn image(mut self, image: impl Into<String>) -> Self {
        self.image = Some(image.into());
        self
    }
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }
    pub fn stack(mut self, stack_id: impl Into<String>) -> Self {
        self.stack_id = stack_id.into();
        self
    }
    pub fn run_type(mut self, run_type: RunType) -> Self {
        self.run_type = run_type;
        self
    }
    pub fn vendor(mut self, vendor: impl Into<String>) -> Self {
        self.vendor = Some(vendor.into());
        self
    }
}
