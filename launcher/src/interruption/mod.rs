//! Spot / preemptible interruption notices (`SPACELIFT_LAUNCHER_INTERRUPTION_WATCH`).
//!
//! A watcher polls the cloud's instance metadata service and hands the first notice to
//! the supervisor through a channel, as signals are: the core never does the HTTP itself,
//! so its reaction (drain, report, stop what cannot finish) is tested on paused time with
//! notices sent by hand. What the core does with a notice: `supervisor::interruption`.
//!
//! The clouds (`clouds.rs`): EC2's IMDSv2 `spot/instance-action` (with a session token),
//! GCP's `instance/preempted`, Azure's Scheduled Events (`Preempt`).

use std::time::Duration;

use async_trait::async_trait;
use protocol::messages::InterruptionNotice;
use thiserror::Error;
use tokio::sync::mpsc;

mod clouds;
pub use clouds::{Aws, Azure, Gcp};

/// The real metadata address, the same link-local IP on all three clouds (GCP's
/// `metadata.google.internal` resolves to it; the IP needs no DNS).
pub const DEFAULT_METADATA_URL: &str = "http://169.254.169.254";
/// EC2 recommends checking every 5 seconds; GCP and Azure give at least 30 s of notice.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// One metadata request's limit. The service is local, so this only bounds a host that is
/// not on the configured cloud (nothing answers). Azure's very first Scheduled Events call
/// may take longer while the service enables itself; it is retried.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Which metadata service to watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cloud {
    Aws,
    Gcp,
    Azure,
}

impl Cloud {
    /// `off` is None; anything else that is not a cloud is an error (the words).
    pub fn parse(word: &str) -> Result<Option<Cloud>, &'static str> {
        match word.to_ascii_lowercase().as_str() {
            "off" => Ok(None),
            "aws" => Ok(Some(Cloud::Aws)),
            "gcp" => Ok(Some(Cloud::Gcp)),
            "azure" => Ok(Some(Cloud::Azure)),
            _ => Err("off, aws, gcp or azure"),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Cloud::Aws => "aws",
            Cloud::Gcp => "gcp",
            Cloud::Azure => "azure",
        }
    }
}

/// The watcher's settings (from the launcher's variables).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchConfig {
    pub cloud: Cloud,
    pub poll_interval: Duration,
    /// Scheme and authority, no trailing slash (`http://169.254.169.254`).
    pub metadata_url: String,
}

/// A notice as the core gets it: what to report, and how long is left. The watcher
/// turns the cloud's wall-clock deadline into `remaining` so the core needs no clock
/// but tokio's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub notice: InterruptionNotice,
    pub remaining: Duration,
}

/// A failed metadata request. Never fatal: logged and retried at the next poll. Carries
/// no header values (the EC2 session token travels only in headers).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum MetadataError {
    #[error("metadata service unreachable: {0}")]
    Unreachable(String),
    #[error("metadata service answered {status} for {what}")]
    Status { what: &'static str, status: u16 },
    #[error("metadata service: malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
}

/// One cloud's metadata service, asked once per poll.
#[async_trait]
pub trait NoticeSource: Send {
    /// `Ok(None)`: no notice (yet).
    async fn poll(&mut self) -> Result<Option<Notice>, MetadataError>;
}

/// The production source for `config`.
pub fn source(config: &WatchConfig) -> Result<Box<dyn NoticeSource>, MetadataError> {
    let http = crate::net::http_client_builder()
        // Link-local: a proxy from HTTP_PROXY would answer for the wrong machine.
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| MetadataError::Unreachable(e.to_string()))?;
    let base = config.metadata_url.trim_end_matches('/').to_string();
    Ok(match config.cloud {
        Cloud::Aws => Box::new(Aws::new(http, base)),
        Cloud::Gcp => Box::new(Gcp::new(http, base)),
        Cloud::Azure => Box::new(Azure::new(http, base)),
    })
}

/// Polls `source` every `every` until the first notice, sends it and returns. Errors are
/// logged (the first of a series as a warning, the rest at debug) and retried.
pub async fn watch(mut source: Box<dyn NoticeSource>, every: Duration, tx: mpsc::Sender<Notice>) {
    let mut failures: u64 = 0;
    loop {
        match source.poll().await {
            Ok(Some(n)) => {
                tracing::warn!(cloud = %n.notice.cloud, action = %n.notice.action,
                    deadline = %n.notice.deadline, remaining_s = n.remaining.as_secs(),
                    "interruption notice: this machine is being reclaimed");
                let _ = tx.send(n).await;
                return;
            }
            Ok(None) => {
                if failures > 0 {
                    tracing::info!(failures, "metadata service answering again");
                }
                failures = 0;
            }
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(error = %e, "cannot read interruption notices; retrying");
                } else {
                    tracing::debug!(error = %e, failures, "cannot read interruption notices");
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// Starts the watcher for `config`; the receiver goes to `Supervisor::with_interruptions`.
pub fn spawn(
    config: &WatchConfig,
) -> Result<(mpsc::Receiver<Notice>, tokio::task::JoinHandle<()>), MetadataError> {
    let source = source(config)?;
    let (tx, rx) = mpsc::channel(1);
    tracing::info!(cloud = config.cloud.as_str(), url = %config.metadata_url,
        every_ms = config.poll_interval.as_millis() as u64, "watching for interruption notices");
    Ok((rx, tokio::spawn(watch(source, config.poll_interval, tx))))
}

#[cfg(test)]
mod tests;
