//! Sim mode: the launcher's real core (supervisor, runs, outbox, leases) on adapters of
//! its ports that reach the fakes in memory, the whole world on one current-thread tokio
//! runtime with paused time: no socket, no TLS, no thread of ours, no wall clock.
//!
//! - [`backend`]: the `Backend` port over the fake backend's rules (the HTTPS API's calls).
//! - [`broker`]: the push channel over the backend's broker sessions (events, heartbeats,
//!   Last Will).
//! - [`docker`]: the production bollard adapter over in-memory pipes to fake-docker.
//! - [`store`]: binaries verified in memory; workspaces in memory.
//! - [`node`]: one launcher as a task (`app::run`'s wiring), crashed by aborting it.

pub mod backend;
pub mod broker;
pub mod docker;
pub mod node;
pub mod store;

use std::sync::{Arc, Mutex};

use fake_backend::BackendHandle;

/// The runtime a sim world runs on: one thread, tokio's clock paused (it jumps to the next
/// timer whenever every task waits), and its RNG (the order `select!` polls ready branches
/// in) seeded: the workspace builds with `--cfg tokio_unstable` (.cargo/config.toml) for
/// that. A build without it (a RUSTFLAGS in the environment replaces the config) lets tasks
/// racing at one virtual instant interleave differently from one repeat to the next, which
/// `tests/sim_determinism.rs` shows.
pub fn runtime(seed: u64) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_current_thread();
    b.enable_time().start_paused(true);
    #[cfg(tokio_unstable)]
    b.rng_seed(tokio::runtime::RngSeed::from_bytes(&seed.to_le_bytes()));
    #[cfg(not(tokio_unstable))]
    let _ = seed;
    b.build()
}

/// Where the launchers find the backend: replaced on a restart, empty while it is down.
#[derive(Clone, Default)]
pub struct Net(Arc<Mutex<Option<BackendHandle>>>);

impl Net {
    pub fn backend(&self) -> Option<BackendHandle> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, backend: Option<BackendHandle>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = backend;
    }
}
