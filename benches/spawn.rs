//! Spawn latency and throughput (docs/performance.md), through the real launcher
//! (`launcher::app::run`, in-process on its own thread and runtime) against the in-process
//! fake backend and fake-docker.
//!
//! `spawn/<variant>/<c>`: one iteration schedules `c` runs at once and ends when fake-docker
//! has started `c` containers. Variants:
//! - `floor`: what cannot be avoided, made directly: per run one authenticated HTTPS round
//!   trip to the claim endpoint, then bollard inspect image, create, start.
//! - `download_every_run`: the floor plus, per run, downloading and verifying the 50 MiB
//!   worker binary: the policy of Spacelift's own launcher, made directly.
//! - `warm`: the launcher with the binary in its cache.
//! - `cold`: the launcher with its binary cache emptied before each iteration.
//!
//! `throughput/<floor|launcher>`: 128 runs through capacity 64, until every run has ended.
//!
//! Per-run latencies (from the batch's start to each container start) are also written to
//! `target/spawn-runs.json` for the report's p50/p99 (`scripts/bench-report.sh`).
//!
//! `cargo bench --profile dev --bench spawn` (we never build release here); CI does not
//! run benches. Keep it small: 2 cores.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fake_backend::{kinds, BackendHandle, ScheduleRun};
use fake_docker::FakeDockerHandle;
use futures_util::StreamExt;
use launcher::config::MapEnv;
use protocol::api::{paths, WorkerBinary};
use protocol::Arch;
use scenarios::launcher_node::LauncherNode;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::runtime::Runtime;

/// The launcher's default runner image; present in fake-docker after the warm-up run.
const IMAGE: &str = "public.ecr.aws/spacelift/runner-terraform:latest";
/// Above every batch, so latency batches never wait for a slot.
const LATENCY_CAPACITY: u32 = 128;
const THROUGHPUT_CAPACITY: u32 = 64;
const THROUGHPUT_RUNS: usize = 128;
/// Worker binary size: real ones are tens of MB.
const BINARY_BYTES: usize = 50 << 20;
/// Every container exits at once with 0.
const QUICK: &str = r#"{"duration_ms":0,"exit_code":0}"#;

struct Node {
    pool: String,
    node: LauncherNode,
    data_dir: PathBuf,
}

struct World {
    backend: BackendHandle,
    docker: FakeDockerHandle,
    client: bollard::Docker,
    https: reqwest::Client,
    api: String,
    binary: WorkerBinary,
    latency: Node,
    throughput: Node,
    floor_seq: u64,
    /// Per-run latencies in ms, by `<variant>/<c>`.
    runs: BTreeMap<String, Vec<f64>>,
    dir: tempfile::TempDir,
}

/// A pool with one launcher of `capacity`; also an HTTPS client holding the pool's
/// certificate, for the floor's direct calls.
async fn start_node(
    backend: &BackendHandle,
    docker: &FakeDockerHandle,
    dir: &Path,
    name: &str,
    capacity: u32,
) -> (Node, reqwest::Client) {
    let creds = backend.create_pool().expect("pool");
    let data_dir = dir.join(name);
    let mut env = MapEnv::default();
    for (k, v) in common::launcher_env(&creds, docker.docker_host(), &data_dir, capacity) {
        env.set(k, v);
    }
    let config = launcher::config::load(&env).expect("launcher config");
    let tls = launcher::tls::client_config(&config).expect("client TLS");
    let https = reqwest::Client::builder()
        .tls_backend_preconfigured((*tls).clone())
        .build()
        .expect("reqwest client");
    let since = backend.last_seq();
    let node = LauncherNode::start(name, config).expect("launcher thread");
    backend
        .wait_for_since(since, |e| e.kind == kinds::WORKER_ONLINE)
        .await;
    let node = Node {
        pool: creds.pool_ulid,
        node,
        data_dir,
    };
    (node, https)
}

async fn world() -> World {
    let common::Fakes {
        dir,
        backend,
        docker,
    } = common::start_fakes("bench-spawn").await;
    let binary = backend
        .publish_version(
            Arch::Amd64,
            Some("bench"),
            common::padded_binary("bench", BINARY_BYTES),
        )
        .expect("publish");
    let (latency, https) =
        start_node(&backend, &docker, dir.path(), "latency", LATENCY_CAPACITY).await;
    let (throughput, _) = start_node(
        &backend,
        &docker,
        dir.path(),
        "throughput",
        THROUGHPUT_CAPACITY,
    )
    .await;
    let client = bollard::Docker::connect_with_unix(
        docker.socket_path().to_str().expect("utf-8 socket path"),
        120,
        bollard::API_DEFAULT_VERSION,
    )
    .expect("bollard");
    std::fs::create_dir_all(dir.path().join("downloads")).expect("downloads dir");
    let mut w = World {
        api: backend.api_endpoint().trim_end_matches('/').to_string(),
        backend,
        docker,
        client,
        https,
        binary,
        latency,
        throughput,
        floor_seq: 0,
        runs: BTreeMap::new(),
        dir,
    };
    // Warm-up: pulls the image and caches the binary in both launchers.
    w.spawn_batch(1, "warmup").await;
    w.throughput_batch(1).await;
    w.runs.clear();
    w
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl World {
    fn next_docker_seq(&self) -> u64 {
        self.docker.events().last().map_or(0, |e| e.seq + 1)
    }

    fn schedule(&self, pool: &str, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                let req = ScheduleRun::new(pool.to_string()).env(fake_docker::BEHAVIOUR_ENV, QUICK);
                self.backend.schedule_run(req).expect("schedule")
            })
            .collect()
    }

    async fn wait_ended(&self, since: u64, runs: &[String]) {
        for run in runs {
            self.backend
                .wait_for_since(since, |e| {
                    common::run_ended(e) && e.run.as_deref() == Some(run.as_str())
                })
                .await;
        }
    }

    /// Schedules `c` runs at once on the latency launcher; the time until `c` containers
    /// have started. Then (untimed) waits until the backend has seen all of them end.
    async fn spawn_batch(&mut self, c: usize, variant: &str) -> Duration {
        let from = self.next_docker_seq();
        let since = self.backend.last_seq();
        let t0 = Instant::now();
        let runs = self.schedule(&self.latency.pool, c);
        let mut next = from;
        let mut each = Vec::with_capacity(c);
        for _ in 0..c {
            let ev = self
                .docker
                .wait_for_event(|e| e.seq >= next && common::is_start(e))
                .await;
            each.push(ms(t0.elapsed()));
            next = ev.seq + 1;
        }
        let elapsed = t0.elapsed();
        self.record(variant, c, each);
        self.wait_ended(since, &runs).await;
        elapsed
    }

    fn record(&mut self, variant: &str, c: usize, each: Vec<f64>) {
        self.runs
            .entry(format!("{variant}/{c}"))
            .or_default()
            .extend(each);
    }

    /// Empties the latency launcher's binary cache (it is idle between iterations), so
    /// the next batch must download the binary again.
    fn empty_cache(&self) {
        let dir = self.latency.data_dir.join("binaries").join("sha256");
        for entry in std::fs::read_dir(&dir).expect("binary cache dir").flatten() {
            std::fs::remove_file(entry.path()).expect("removing a cached binary");
        }
    }

    /// Downloads the worker binary as a run would, streaming it to a file and checking
    /// its SHA-256.
    async fn download(&self, seq: u64) {
        let url = format!(
            "{}{}",
            self.api,
            paths::binary(&self.binary.version, self.binary.arch)
        );
        let resp = self.https.get(url).send().await.expect("download");
        assert!(resp.status().is_success(), "download: {}", resp.status());
        let path = self.dir.path().join("downloads").join(seq.to_string());
        let mut file = tokio::fs::File::create(&path).await.expect("download file");
        let mut hasher = Sha256::new();
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.expect("download body");
            hasher.update(&chunk);
            file.write_all(&chunk).await.expect("writing the download");
        }
        file.flush().await.expect("flushing the download");
        assert_eq!(hex::encode(hasher.finalize()), self.binary.sha256);
        tokio::fs::remove_file(&path)
            .await
            .expect("removing the download");
    }

    /// One floor sequence for run number `seq`: a claim round trip (an authenticated claim
    /// of an unknown run: TLS on a kept-alive connection, client-certificate pool lookup,
    /// routing, a 4xx answer), optionally the download, then inspect image, create, start.
    async fn floor_run(&self, seq: u64, download: bool) -> String {
        let url = format!("{}/v1/runs/01BENCHFLOOR{seq:014}/claim", self.api);
        let resp = self
            .https
            .post(url)
            .json(&serde_json::json!({}))
            .send()
            .await
            .expect("claim round trip");
        let _ = resp.bytes().await;
        if download {
            self.download(seq).await;
        }
        self.client
            .inspect_image(IMAGE)
            .await
            .expect("inspect image");
        let name = format!("floor-{seq}");
        let body = ContainerCreateBody {
            image: Some(IMAGE.to_string()),
            cmd: Some(vec!["true".to_string()]),
            env: Some(vec![format!("{}={QUICK}", fake_docker::BEHAVIOUR_ENV)]),
            host_config: Some(HostConfig {
                network_mode: Some("none".to_string()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::default().name(&name).build();
        let created = self
            .client
            .create_container(Some(opts), body)
            .await
            .expect("create");
        self.client
            .start_container(&created.id, None)
            .await
            .expect("start");
        created.id
    }

    fn floor_seqs(&mut self, n: usize) -> std::ops::Range<u64> {
        let base = self.floor_seq;
        self.floor_seq += n as u64;
        base..self.floor_seq
    }

    async fn remove(&self, ids: Vec<String>) {
        let rm = RemoveContainerOptionsBuilder::default().force(true).build();
        for id in ids {
            let _ = self.client.remove_container(&id, Some(rm.clone())).await;
        }
    }

    /// `c` floor sequences at once.
    async fn floor_batch(&mut self, c: usize, download: bool) -> Duration {
        let seqs = self.floor_seqs(c);
        let t0 = Instant::now();
        let this = &*self;
        let results = futures_util::future::join_all(seqs.map(|seq| async move {
            let id = this.floor_run(seq, download).await;
            (id, ms(t0.elapsed()))
        }))
        .await;
        let elapsed = t0.elapsed();
        let (ids, each): (Vec<String>, Vec<f64>) = results.into_iter().unzip();
        let variant = if download {
            "download_every_run"
        } else {
            "floor"
        };
        self.record(variant, c, each);
        self.remove(ids).await;
        elapsed
    }

    /// `n` runs through the capacity-64 launcher, until the backend has seen all end.
    async fn throughput_batch(&mut self, n: usize) -> Duration {
        let since = self.backend.last_seq();
        let t0 = Instant::now();
        let runs = self.schedule(&self.throughput.pool, n);
        self.wait_ended(since, &runs).await;
        t0.elapsed()
    }

    /// The floor of `n` runs at most 64 at a time: a claim round trip, inspect, create,
    /// start, wait for the exit, remove.
    async fn throughput_floor(&mut self, n: usize) -> Duration {
        let seqs = self.floor_seqs(n);
        let slots = Arc::new(tokio::sync::Semaphore::new(THROUGHPUT_CAPACITY as usize));
        let t0 = Instant::now();
        let this = &*self;
        futures_util::future::join_all(seqs.map(|seq| {
            let slots = slots.clone();
            async move {
                let _slot = slots.acquire().await.expect("semaphore");
                let id = this.floor_run(seq, false).await;
                let mut wait = this.client.wait_container(&id, None);
                while let Some(r) = wait.next().await {
                    r.expect("wait");
                }
                this.remove(vec![id]).await;
            }
        }))
        .await;
        t0.elapsed()
    }
}

/// The world behind criterion's closures (they borrow it; iterations take it in turn).
type Shared = tokio::sync::Mutex<World>;

fn bench_batches<F>(b: &mut criterion::Bencher<'_>, rt: &Runtime, world: &Shared, f: F)
where
    F: for<'a> Fn(&'a mut World) -> futures_util::future::BoxFuture<'a, Duration> + Copy,
{
    b.to_async(rt).iter_custom(|iters| async move {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            total += f(&mut *world.lock().await).await;
        }
        total
    })
}

fn concurrency_levels() -> Vec<usize> {
    match std::env::var("SPAWN_BENCH_CONCURRENCY") {
        Ok(list) => list
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect(),
        Err(_) => vec![1, 8],
    }
}

fn spawn(c: &mut Criterion) {
    use futures_util::FutureExt;
    let rt = Runtime::new().expect("tokio runtime");
    let world: Shared = tokio::sync::Mutex::new(rt.block_on(world()));

    let mut g = c.benchmark_group("spawn");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for n in concurrency_levels() {
        g.bench_with_input(BenchmarkId::new("floor", n), &n, |b, &n| {
            bench_batches(b, &rt, &world, move |w| w.floor_batch(n, false).boxed())
        });
        g.bench_with_input(BenchmarkId::new("download_every_run", n), &n, |b, &n| {
            bench_batches(b, &rt, &world, move |w| w.floor_batch(n, true).boxed())
        });
        g.bench_with_input(BenchmarkId::new("warm", n), &n, |b, &n| {
            bench_batches(b, &rt, &world, move |w| w.spawn_batch(n, "warm").boxed())
        });
        g.bench_with_input(BenchmarkId::new("cold", n), &n, |b, &n| {
            bench_batches(b, &rt, &world, move |w| {
                async move {
                    w.empty_cache();
                    w.spawn_batch(n, "cold").await
                }
                .boxed()
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("throughput");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(THROUGHPUT_RUNS as u64));
    g.bench_function("floor", |b| {
        bench_batches(b, &rt, &world, |w| {
            w.throughput_floor(THROUGHPUT_RUNS).boxed()
        })
    });
    g.bench_function("launcher", |b| {
        bench_batches(b, &rt, &world, |w| {
            w.throughput_batch(THROUGHPUT_RUNS).boxed()
        })
    });
    g.finish();

    let w = world.into_inner();
    let out = Path::new("target").join("spawn-runs.json");
    let json = serde_json::to_vec_pretty(&w.runs).expect("per-run latencies");
    if let Err(e) = std::fs::write(&out, json) {
        eprintln!("writing {}: {e}", out.display());
    }
    rt.block_on(async move {
        let World {
            backend,
            docker,
            latency,
            throughput,
            ..
        } = w;
        for mut node in [latency.node, throughput.node] {
            node.signal().await;
            node.wait().await;
        }
        backend.shutdown().await;
        docker.shutdown().await;
    });
}

criterion_group!(benches, spawn);
criterion_main!(benches);
