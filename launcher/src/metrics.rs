//! Prometheus metrics and the optional `/metrics` + `/healthz` endpoint
//! (`SPACELIFT_LAUNCHER_METRICS_ADDR`). Counters follow Prometheus naming (`_total`
//! added by the encoder); labels are bounded sets (outcomes, not run ids).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cache_counters::{CacheCounters, CacheCountersSnapshot};
use crate::error::Error;
use crate::ports::WorkerStatus;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

/// Cheap to clone; every clone records into the same registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    /// The binary cache's own counters, copied into ours at each scrape.
    cache: std::sync::Mutex<Option<(Arc<CacheCounters>, CacheCountersSnapshot)>>,
    runs: Family<OutcomeLabels, Counter>,
    spawn_latency: Histogram,
    reconnects: Counter,
    downloads: Counter,
    cache_hits: Counter,
    binary_failures: Counter,
    outbox_queued_bytes: Gauge,
    output_paused: Counter,
    /// The highest `outbox_queued_bytes` seen (for tests of the bound).
    outbox_queued_peak: std::sync::atomic::AtomicI64,
    /// The most output one run's outbox held at once (the bound is per run).
    outbox_run_peak: std::sync::atomic::AtomicUsize,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("spacelift_launcher");
        let runs = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "runs",
            "Runs that ended, by outcome (finished, failed, canceled, timed_out, lease_lost, \
             not_claimed, claim_abandoned)",
            runs.clone(),
        );
        // 10 ms .. ~80 s.
        let spawn_latency = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        registry.register(
            "spawn_latency_seconds",
            "From claim granted to the run's container started",
            spawn_latency.clone(),
        );
        let reconnects = Counter::default();
        registry.register(
            "backend_reconnects",
            "Times the backend's push channel came back after the first connection",
            reconnects.clone(),
        );
        let downloads = Counter::default();
        registry.register(
            "worker_binary_downloads",
            "Worker binaries downloaded (one per single-flight group)",
            downloads.clone(),
        );
        let cache_hits = Counter::default();
        registry.register(
            "worker_binary_cache_hits",
            "Worker binaries served from the local cache",
            cache_hits.clone(),
        );
        let binary_failures = Counter::default();
        registry.register(
            "worker_binary_failures",
            "Failed attempts to get a verified worker binary",
            binary_failures.clone(),
        );
        let outbox_queued_bytes = Gauge::default();
        registry.register(
            "outbox_queued_bytes",
            "Bytes of run output waiting for the backend, over all runs (each run's share is \
             bounded by SPACELIFT_LAUNCHER_RUN_OUTPUT_BUFFER_MIB)",
            outbox_queued_bytes.clone(),
        );
        let output_paused = Counter::default();
        registry.register(
            "run_output_paused",
            "Times a run stopped reading its container's output because its queued output \
             reached the bound",
            output_paused.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                outbox_queued_bytes,
                output_paused,
                outbox_queued_peak: Default::default(),
                outbox_run_peak: Default::default(),
                registry,
                cache: std::sync::Mutex::new(None),
                runs,
                spawn_latency,
                reconnects,
                downloads,
                cache_hits,
                binary_failures,
            }),
        }
    }

    pub fn run_ended(&self, outcome: &str) {
        self.inner
            .runs
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    pub fn spawn_latency(&self, d: Duration) {
        self.inner.spawn_latency.observe(d.as_secs_f64());
    }

    pub fn reconnected(&self) {
        self.inner.reconnects.inc();
    }

    /// Run output queued (`delta` > 0) or delivered/dropped (`delta` < 0).
    pub fn outbox_queued(&self, delta: i64) {
        let now = self.inner.outbox_queued_bytes.inc_by(delta) + delta;
        self.inner
            .outbox_queued_peak
            .fetch_max(now, std::sync::atomic::Ordering::Relaxed);
    }

    /// One run's outbox now holds `bytes`.
    pub fn outbox_run_queued(&self, bytes: usize) {
        self.inner
            .outbox_run_peak
            .fetch_max(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// The most output one run's outbox ever held at once.
    pub fn outbox_run_peak(&self) -> usize {
        self.inner
            .outbox_run_peak
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn output_paused(&self) {
        self.inner.output_paused.inc();
    }

    /// The most run output ever queued at once.
    pub fn outbox_queued_peak(&self) -> i64 {
        self.inner
            .outbox_queued_peak
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn binary_failure(&self) {
        self.inner.binary_failures.inc();
    }

    /// Reports the binary cache's downloads and hits (read at each scrape).
    pub fn attach_binary_cache(&self, counters: Arc<CacheCounters>) {
        let snap = CacheCountersSnapshot::default();
        if let Ok(mut c) = self.inner.cache.lock() {
            *c = Some((counters, snap));
        }
    }

    fn sync_binary_cache(&self) {
        let Ok(mut guard) = self.inner.cache.lock() else {
            return;
        };
        if let Some((counters, last)) = guard.as_mut() {
            let now = counters.snapshot();
            self.inner
                .downloads
                .inc_by(now.downloads.saturating_sub(last.downloads));
            self.inner
                .cache_hits
                .inc_by(now.hits.saturating_sub(last.hits));
            *last = now;
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        self.sync_binary_cache();
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.inner.registry);
        out
    }
}

/// Serves `/metrics` and `/healthz` on `addr` until the task is aborted. Returns the bound
/// address (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    status: watch::Receiver<WorkerStatus>,
) -> Result<(SocketAddr, JoinHandle<()>), Error> {
    use axum::routing::get;

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Io {
            what: format!("binding the metrics endpoint on {addr}"),
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| Error::Io {
        what: "metrics endpoint address".into(),
        source,
    })?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let body = metrics.encode();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        body,
                    )
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let s = status.borrow().clone();
                async move {
                    format!(
                        "ok state={:?} runs={} capacity={}\n",
                        s.state,
                        s.runs.len(),
                        s.capacity
                    )
                }
            }),
        );
    let task = tokio::spawn(async move {
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(crate::net::set_nodelay);
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_up_in_the_exposition() {
        let m = Metrics::new();
        m.run_ended("finished");
        m.run_ended("finished");
        m.run_ended("failed");
        m.spawn_latency(Duration::from_millis(30));
        m.reconnected();
        m.outbox_queued(300);
        m.outbox_queued(-100);
        m.output_paused();
        let cache = Arc::new(CacheCounters::default());
        m.attach_binary_cache(cache.clone());
        cache
            .downloads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        cache
            .hits
            .fetch_add(2, std::sync::atomic::Ordering::Relaxed);
        let text = m.encode();
        assert!(text.contains("spacelift_launcher_worker_binary_cache_hits_total 2"));
        cache
            .hits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let text = m.encode();
        assert!(
            text.contains("spacelift_launcher_runs_total{outcome=\"finished\"} 2"),
            "{text}"
        );
        assert!(text.contains("spacelift_launcher_runs_total{outcome=\"failed\"} 1"));
        assert!(text.contains("spacelift_launcher_spawn_latency_seconds_count 1"));
        assert!(text.contains("spacelift_launcher_backend_reconnects_total 1"));
        assert!(text.contains("spacelift_launcher_worker_binary_downloads_total 1"));
        assert!(text.contains("spacelift_launcher_worker_binary_cache_hits_total 3"));
        assert!(
            text.contains("spacelift_launcher_outbox_queued_bytes 200"),
            "{text}"
        );
        assert!(text.contains("spacelift_launcher_run_output_paused_total 1"));
        assert_eq!(m.outbox_queued_peak(), 300);
    }
    async fn get(addr: SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    /// The endpoint's accepted sockets have TCP_NODELAY (checked while the connection is
    /// open: the request is answered, so the server has accepted and tapped it).
    #[tokio::test]
    async fn endpoint_sockets_have_nodelay() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (_tx, rx) = crate::supervisor::status_channel(3);
        let (addr, task) = serve("127.0.0.1:0".parse().unwrap(), Metrics::new(), rx)
            .await
            .unwrap();
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 16];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(
            crate::net::nodelay_of(addr, s.local_addr().unwrap()),
            Some(true)
        );
        task.abort();
    }

    #[tokio::test]
    async fn endpoint_serves_metrics_and_health() {
        let m = Metrics::new();
        m.run_ended("finished");
        let (_tx, rx) = crate::supervisor::status_channel(3);
        let (addr, task) = serve("127.0.0.1:0".parse().unwrap(), m, rx).await.unwrap();
        let metrics = get(addr, "/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(metrics.contains("spacelift_launcher_runs_total{outcome=\"finished\"} 1"));
        let health = get(addr, "/healthz").await;
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        assert!(health.contains("state=Idle runs=0 capacity=3"), "{health}");
        task.abort();
    }
}
