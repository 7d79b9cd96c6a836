//! The sandbox's own stop signals, installed before anything starts and awaited by the demo.

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, Signal, SignalKind};

/// SIGINT (Ctrl-C) and SIGTERM, registered at once so neither kills us mid-shutdown.
pub struct Stop {
    int: Signal,
    term: Signal,
}

impl Stop {
    pub fn install() -> Result<Stop> {
        Ok(Stop {
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "Ctrl-C",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}
