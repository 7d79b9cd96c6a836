//! Fake Docker Engine API daemon: a deterministic, fault-injecting test instrument.
#![recursion_limit = "256"]
//!
//! Start it in-process with [`FakeDocker::start`] (a unix socket in a temp dir), point a
//! Docker client at [`FakeDockerHandle::docker_host`], and drive it through
//! [`FakeDockerHandle::admin`] (or HTTP under `/_fake/`). See README.md.

mod admin;
mod admin_routes;
mod behaviour;
mod clock;
mod config;
mod error;
mod events;
mod faults;
mod http;
mod ids;
mod registry;
mod routes;
mod runner;
mod server;
mod state;
mod stream_frames;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use admin::{Admin, ContainerInfo, RestartOptions};
pub use behaviour::{Behaviour, Flood, Line, Match, Rule, Stream, BEHAVIOUR_ENV};
pub use config::Config;
pub use error::{ApiError, Error};
pub use events::Event;
pub use faults::{PullFault, RouteFault};
pub use registry::{ImageConfig, Platform, RemoteImage};
pub use routes::ROUTE_KEYS;
pub use server::Listener;

/// Runs a daemon on the given listeners until `shutdown` completes (mini-redis style).
pub async fn serve(
    config: Config,
    listeners: Vec<Listener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let daemon = state::Daemon::new(config)?;
    server::serve(daemon, listeners, shutdown).await;
    Ok(())
}

/// Namespace for starting an in-process daemon.
pub struct FakeDocker;

impl FakeDocker {
    /// Binds a unix socket (`config.socket`, or `docker.sock` in a fresh temp dir) and serves
    /// on the current tokio runtime. Dropping the handle shuts the daemon down.
    pub async fn start(config: Config) -> Result<FakeDockerHandle, Error> {
        let (dir, socket) = match &config.socket {
            Some(p) => (None, p.clone()),
            None => {
                let dir = tempfile::Builder::new().prefix("fake-docker").tempdir()?;
                let p = dir.path().join("docker.sock");
                (Some(dir), p)
            }
        };
        let _ = std::fs::remove_file(&socket);
        let listener = tokio::net::UnixListener::bind(&socket)?;
        let daemon = state::Daemon::new(config)?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(
            daemon.clone(),
            vec![Listener::Unix(listener)],
            async move {
                let _ = rx.await;
            },
        ));
        Ok(FakeDockerHandle {
            socket,
            admin: Admin { daemon },
            shutdown: Some(tx),
            task: Some(task),
            _dir: dir,
        })
    }

    /// A daemon with no listener at all: clients reach it through
    /// [`FakeDockerHandle::serve_io`] (an in-memory pipe per connection), so a whole
    /// world can run on one paused-time runtime. `socket_path` is a name only.
    pub fn in_memory(config: Config) -> Result<FakeDockerHandle, Error> {
        let daemon = state::Daemon::new(config)?;
        Ok(FakeDockerHandle {
            socket: PathBuf::from("/in-memory/docker.sock"),
            admin: Admin { daemon },
            shutdown: None,
            task: None,
            _dir: None,
        })
    }
}

/// A running in-process daemon.
pub struct FakeDockerHandle {
    socket: PathBuf,
    admin: Admin,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: Option<tempfile::TempDir>,
}

impl FakeDockerHandle {
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// `unix:///path/to/docker.sock`, for `DOCKER_HOST`.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn admin(&self) -> &Admin {
        &self.admin
    }

    /// Serves one client connection over any byte stream (the same router, faults and
    /// restarts as a socket connection; refused while the daemon is "restarting").
    pub fn serve_io<S>(&self, stream: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        server::spawn_conn(self.admin.daemon.clone(), stream);
    }

    /// Stops accepting, drops every connection, stops all containers, and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        } else {
            // In memory: no accept loop; drop the connections and containers the same way.
            let d = &self.admin.daemon;
            d.epoch.send_modify(|e| *e = e.wrapping_add(1));
            d.lose_containers();
        }
    }
}

impl std::ops::Deref for FakeDockerHandle {
    type Target = Admin;
    fn deref(&self) -> &Admin {
        &self.admin
    }
}

impl Drop for FakeDockerHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

#[doc(hidden)]
pub fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Admin>();
    is::<Arc<FakeDockerHandle>>();
}
