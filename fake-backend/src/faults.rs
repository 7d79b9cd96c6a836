//! Faults a test can inject. Message faults apply to the next N messages the backend
//! sends to one worker (so they work with the embedded and an external broker alike);
//! HTTP faults to the next N matching HTTPS calls; download faults to the next N downloads.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}
fn default_hold_ms() -> u64 {
    1000
}
fn default_chunk() -> usize {
    1024
}

/// A fault, as the admin API (`POST /faults`) and [`crate::BackendHandle::inject`] take it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Fault {
    /// Close one worker's MQTT connection (embedded broker). The Last Will fires unless
    /// `fire_will` is false, as when a real broker drops a client.
    DropConnection {
        worker: String,
        #[serde(default = "yes")]
        fire_will: bool,
    },
    /// Close every MQTT connection and refuse new ones, for `for_ms` (tokio time) or until
    /// `BrokerUp`. Wills do not fire: the broker itself is gone.
    BrokerDown {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        for_ms: Option<u64>,
    },
    BrokerUp,
    /// Send each of the next `count` messages to `worker` twice.
    DuplicateMessage {
        worker: String,
        #[serde(default = "one")]
        count: u32,
    },
    /// Send each of the next `count` messages to `worker` `delay_ms` late, on the connection
    /// it has now: if that connection has closed by then, the message is lost with it.
    DelayMessage {
        worker: String,
        delay_ms: u64,
        #[serde(default = "one")]
        count: u32,
    },
    /// Hold the next message to `worker` and send it after the one that follows it (or
    /// after `hold_ms` if none follows).
    ReorderMessage {
        worker: String,
        #[serde(default = "default_hold_ms")]
        hold_ms: u64,
    },
    /// Answer the next `count` HTTPS calls whose path starts with `path_prefix` (all when
    /// absent) with `status` (5xx or 429), with `Retry-After: retry_after_s` if given.
    HttpError {
        status: u16,
        #[serde(default = "one")]
        count: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path_prefix: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_s: Option<u64>,
    },
    /// Flip bytes in the next `count` binary downloads (the ETag stays the true hash).
    CorruptDownload {
        #[serde(default = "one")]
        count: u32,
    },
    /// Serve the next `count` downloads in `chunk_bytes` chunks, `chunk_delay_ms` apart.
    SlowDownload {
        #[serde(default = "one")]
        count: u32,
        #[serde(default = "default_chunk")]
        chunk_bytes: usize,
        chunk_delay_ms: u64,
    },
}

/// What happens to one outgoing message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageFault {
    Duplicate,
    Delay(u64),
    Reorder(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpFault {
    pub status: u16,
    pub retry_after_s: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownloadFault {
    Corrupt,
    Slow { chunk_bytes: usize, delay_ms: u64 },
}

#[derive(Debug, Default)]
struct State {
    messages: HashMap<String, VecDeque<(MessageFault, u32)>>,
    http: Vec<(Option<String>, HttpFault, u32)>,
    downloads: VecDeque<(DownloadFault, u32)>,
}

/// Pending faults, consumed as they trigger.
#[derive(Debug, Default)]
pub struct Faults {
    state: Mutex<State>,
}

impl Faults {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Arms the counted faults; connection faults are applied by the caller.
    pub(crate) fn arm(&self, fault: &Fault) {
        let mut s = self.lock();
        match fault {
            Fault::DuplicateMessage { worker, count } => s
                .messages
                .entry(worker.clone())
                .or_default()
                .push_back((MessageFault::Duplicate, *count)),
            Fault::DelayMessage {
                worker,
                delay_ms,
                count,
            } => s
                .messages
                .entry(worker.clone())
                .or_default()
                .push_back((MessageFault::Delay(*delay_ms), *count)),
            Fault::ReorderMessage { worker, hold_ms } => s
                .messages
                .entry(worker.clone())
                .or_default()
                .push_back((MessageFault::Reorder(*hold_ms), 1)),
            Fault::HttpError {
                status,
                count,
                path_prefix,
                retry_after_s,
            } => s.http.push((
                path_prefix.clone(),
                HttpFault {
                    status: *status,
                    retry_after_s: *retry_after_s,
                },
                *count,
            )),
            Fault::CorruptDownload { count } => {
                s.downloads.push_back((DownloadFault::Corrupt, *count))
            }
            Fault::SlowDownload {
                count,
                chunk_bytes,
                chunk_delay_ms,
            } => s.downloads.push_back((
                DownloadFault::Slow {
                    chunk_bytes: (*chunk_bytes).max(1),
                    delay_ms: *chunk_delay_ms,
                },
                *count,
            )),
            Fault::DropConnection { .. } | Fault::BrokerDown { .. } | Fault::BrokerUp => {}
        }
    }

    pub(crate) fn clear(&self) {
        *self.lock() = State::default();
    }

    pub(crate) fn take_message(&self, worker: &str) -> Option<MessageFault> {
        let mut s = self.lock();
        let queue = s.messages.get_mut(worker)?;
        let (fault, left) = queue.front_mut()?;
        let fault = *fault;
        *left = left.saturating_sub(1);
        if *left == 0 {
            queue.pop_front();
        }
        Some(fault)
    }

    pub(crate) fn take_http(&self, path: &str) -> Option<HttpFault> {
        let mut s = self.lock();
        let idx = s.http.iter().position(|(prefix, _, left)| {
            *left > 0 && prefix.as_deref().is_none_or(|p| path.starts_with(p))
        })?;
        let entry = &mut s.http[idx];
        entry.2 -= 1;
        let fault = entry.1.clone();
        if entry.2 == 0 {
            s.http.remove(idx);
        }
        Some(fault)
    }

    pub(crate) fn take_download(&self) -> Option<DownloadFault> {
        let mut s = self.lock();
        let (fault, left) = s.downloads.front_mut()?;
        let fault = *fault;
        *left = left.saturating_sub(1);
        if *left == 0 {
            s.downloads.pop_front();
        }
        Some(fault)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_faults_run_out() {
        let f = Faults::default();
        f.arm(&Fault::HttpError {
            status: 503,
            count: 2,
            path_prefix: Some("/v1/runs".into()),
            retry_after_s: Some(1),
        });
        assert!(f.take_http("/v1/workers/register").is_none());
        assert!(f.take_http("/v1/runs/x/claim").is_some());
        assert!(f.take_http("/v1/runs/x/claim").is_some());
        assert!(f.take_http("/v1/runs/x/claim").is_none());
        let json = r#"{"type":"duplicate_message","worker":"W"}"#;
        let fault: Fault = serde_json::from_str(json).unwrap();
        f.arm(&fault);
        assert_eq!(f.take_message("W"), Some(MessageFault::Duplicate));
        assert_eq!(f.take_message("W"), None);
    }
}
