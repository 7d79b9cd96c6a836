//! The in-memory `BinaryStore`: downloads a test can hold, fail or count.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use protocol::api::WorkerBinary;

use crate::ports::*;

use super::{lock, ChangeCounter};

#[derive(Default)]
pub struct StoreState {
    pub gets: u32,
    /// Each get takes this long (a slow or trickling download).
    pub delay: Option<Duration>,
    pub in_flight: u32,
    pub max_in_flight: u32,
    /// Versions whose get completed, in order.
    pub fetched: Vec<String>,
    /// The next this many gets fail verification.
    pub corrupt: u32,
    pub pins: HashMap<String, i64>,
    pub pinned_ever: u32,
}

pub struct MemBinaryStore {
    pub state: Arc<Mutex<StoreState>>,
    pub(super) changes: ChangeCounter,
}

impl MemBinaryStore {
    pub fn pinned_now(&self) -> i64 {
        lock(&self.state).pins.values().sum()
    }
}

struct InFlight(Arc<Mutex<StoreState>>, ChangeCounter);

impl Drop for InFlight {
    fn drop(&mut self) {
        lock(&self.0).in_flight -= 1;
        self.1.bump();
    }
}

#[async_trait]
impl BinaryStore for MemBinaryStore {
    async fn get(&self, binary: &WorkerBinary) -> Result<CachedBinary, BinaryError> {
        let delay = {
            let mut s = lock(&self.state);
            s.gets += 1;
            s.in_flight += 1;
            s.max_in_flight = s.max_in_flight.max(s.in_flight);
            s.delay
        };
        self.changes.bump();
        // Counted out even when the get is dropped half-way (a deadline, an abort).
        let _done = InFlight(self.state.clone(), self.changes.clone());
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let r = {
            let mut s = lock(&self.state);
            if s.corrupt > 0 {
                s.corrupt -= 1;
                Err(BinaryError::Corrupt {
                    version: binary.version.clone(),
                    arch: binary.arch,
                    expected: binary.sha256.clone(),
                    actual: "00".repeat(32),
                })
            } else {
                s.fetched.push(binary.version.clone());
                Ok(CachedBinary {
                    version: binary.version.clone(),
                    sha256: binary.sha256.clone(),
                    path: PathBuf::from(format!("/cache/{}/spacelift-worker", binary.sha256)),
                })
            }
        };
        self.changes.bump();
        r
    }

    fn pin(&self, sha256: &str) -> BinaryPin {
        {
            let mut s = lock(&self.state);
            *s.pins.entry(sha256.to_string()).or_default() += 1;
            s.pinned_ever += 1;
        }
        let state = self.state.clone();
        let changes = self.changes.clone();
        let sha = sha256.to_string();
        BinaryPin::new(move || {
            *lock(&state).pins.entry(sha).or_default() -= 1;
            changes.bump();
        })
    }
}
