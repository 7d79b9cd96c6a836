//! Spawn latency and throughput (docs/performance.md), through the real launcher
//! (`launcher::app::run`, in-process on its own thread and runtime) against the in-process
//! fake backend and fake-docker.
//!
//! `spawn/<variant>/<c>`: one iteration schedules `c` runs at once and ends when fake-docker
//! has started `c` containers. Variants:
//! - `floor`: the protocol's irreducible work (`common/floor.rs`), made directly by a worker
//!   of its own pool with the launcher's clients: the offer's delivery over the broker, one
//!   claim round trip, then bollard inspect image, create, start.
//! - `download_every_run`: the floor plus, per run, downloading and verifying the 50 MiB
//!   worker binary: the policy of Spacelift's own launcher, made directly.
//! - `warm`: the launcher with the binary in its cache.
//! - `cold`: the launcher with its binary cache emptied before each iteration.
//!
//! `throughput/<floor|launcher>`: 128 runs through capacity 64, until every run has ended;
//! the floor also sends the reports the state machine requires (`preparing` and `running`
//! beside the start, the final one after the exit) and removes the container.
//!
//! Per-run latencies (from the batch's start to each container start) are also written to
//! `target/spawn-runs.json` for the report's p50/p99 (`scripts/bench-report.sh`).
//!
//! `cargo bench --bench spawn` (release: the bench profile); CI does not run benches.
//! Keep it small: 2 cores.

mod common;
#[path = "common/floor.rs"]
mod floor;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fake_backend::{kinds, BackendHandle, ScheduleRun};
use fake_docker::FakeDockerHandle;
use floor::{FloorRun, FloorWorker, QUICK};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use launcher::config::MapEnv;
use launcher::ports::Backend;
use protocol::api::WorkerBinary;
use protocol::{Arch, RunState};
use scenarios::launcher_node::LauncherNode;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::runtime::Runtime;

/// Above every batch, so latency batches never wait for a slot.
const LATENCY_CAPACITY: u32 = 128;
const THROUGHPUT_CAPACITY: u32 = 64;
const THROUGHPUT_RUNS: usize = 128;
/// Worker binary size: real ones are tens of MB.
const BINARY_BYTES: usize = 50 << 20;

struct Node {
    pool: String,
    node: LauncherNode,
    data_dir: PathBuf,
}

struct World {
    backend: BackendHandle,
    docker: FakeDockerHandle,
    binary: WorkerBinary,
    latency: Node,
    throughput: Node,
    /// The floor's workers: capacity 128 (latency) and 64 (throughput), each in its pool.
    floor: FloorWorker,
    floor_tp: FloorWorker,
    /// Per-run latencies in ms, by `<variant>/<c>`.
    runs: BTreeMap<String, Vec<f64>>,
    dir: tempfile::TempDir,
}

/// A pool with one launcher of `capacity`.
async fn start_node(
    backend: &BackendHandle,
    docker: &FakeDockerHandle,
    dir: &Path,
    name: &str,
    capacity: u32,
) -> Node {
    let creds = backend.create_pool().expect("pool");
    let data_dir = dir.join(name);
    let mut env = MapEnv::default();
    for (k, v) in common::launcher_env(&creds, docker.docker_host(), &data_dir, capacity) {
        env.set(k, v);
    }
    let config = launcher::config::load(&env).expect("launcher config");
    let since = backend.last_seq();
    let node = LauncherNode::start_multi_thread(name, config).expect("launcher thread");
    backend
        .wait_for_since(since, |e| e.kind == kinds::WORKER_ONLINE)
        .await;
    Node {
        pool: creds.pool_ulid,
        node,
        data_dir,
    }
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
    let latency = start_node(&backend, &docker, dir.path(), "latency", LATENCY_CAPACITY).await;
    let throughput = start_node(
        &backend,
        &docker,
        dir.path(),
        "throughput",
        THROUGHPUT_CAPACITY,
    )
    .await;
    let floor = FloorWorker::start(&backend, &docker, dir.path(), "floor", LATENCY_CAPACITY).await;
    let floor_tp = FloorWorker::start(
        &backend,
        &docker,
        dir.path(),
        "floor-throughput",
        THROUGHPUT_CAPACITY,
    )
    .await;
    std::fs::create_dir_all(dir.path().join("downloads")).expect("downloads dir");
    let mut w = World {
        backend,
        docker,
        binary,
        latency,
        throughput,
        floor,
        floor_tp,
        runs: BTreeMap::new(),
        dir,
    };
    // Warm-up: pulls the image and caches the binary in both launchers.
    w.spawn_batch(1, "warmup").await;
    w.throughput_batch(1).await;
    w.runs.clear();
    w
}

fn is_destroy(e: &fake_docker::Event) -> bool {
    e.kind == "container" && e.action == "destroy"
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Downloads the worker binary as a run would, streaming it to `path` and checking its
/// SHA-256.
async fn download(run: &FloorRun, binary: &WorkerBinary, path: PathBuf) {
    let mut body = run.api.download_binary(binary, 0).await.expect("download");
    let mut file = tokio::fs::File::create(&path).await.expect("download file");
    let mut hasher = Sha256::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.expect("download body");
        hasher.update(&chunk);
        file.write_all(&chunk).await.expect("writing the download");
    }
    file.flush().await.expect("flushing the download");
    assert_eq!(hex::encode(hasher.finalize()), binary.sha256);
    tokio::fs::remove_file(&path)
        .await
        .expect("removing the download");
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
    /// have started. Then (untimed) waits until the backend has seen all of them end and
    /// fake-docker has removed their containers.
    async fn spawn_batch(&mut self, c: usize, variant: &str) -> Duration {
        let from = self.next_docker_seq();
        let since = self.backend.last_seq();
        let t0 = Instant::now();
        let runs = self.schedule(&self.latency.pool, c);
        let mut next = from;
        let mut each = Vec::with_capacity(c);
        let mut ids = Vec::with_capacity(c);
        for _ in 0..c {
            let ev = self
                .docker
                .wait_for_event(|e| e.seq >= next && common::is_start(e))
                .await;
            each.push(ms(t0.elapsed()));
            next = ev.seq + 1;
            ids.push(ev.id);
        }
        let elapsed = t0.elapsed();
        self.record(variant, c, each);
        self.wait_ended(since, &runs).await;
        // As the floor's batch does before it returns: every container of the batch
        // removed, so a batch never overlaps the previous one's clean-up.
        for id in &ids {
            self.docker
                .wait_for_event(|e| e.seq >= from && is_destroy(e) && e.id == *id)
                .await;
        }
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

    /// `c` runs scheduled at once into the floor's pool; the time until the floor worker
    /// has started `c` containers: per run, the offer over the broker, one claim, then
    /// (optionally the download) inspect, create, start. Then, untimed, each run is
    /// reported to its end and its container removed.
    async fn floor_batch(&mut self, c: usize, download_each: bool) -> Duration {
        let run = FloorRun::from(&self.floor);
        let binary = self.binary.clone();
        let binary = &binary;
        let downloads = self.dir.path().join("downloads");
        let t0 = Instant::now();
        let mut expected: HashSet<String> =
            self.schedule(&self.floor.pool, c).into_iter().collect();
        let mut started = FuturesUnordered::new();
        let mut done = Vec::with_capacity(c);
        let mut each = Vec::with_capacity(c);
        while done.len() < c {
            tokio::select! {
                r = self.floor.next_offer(), if !expected.is_empty() => {
                    if !expected.remove(&r) {
                        continue;
                    }
                    let run = run.clone();
                    let path = downloads.join(&r);
                    started.push(async move {
                        run.claim(&r).await;
                        if download_each {
                            download(&run, binary, path).await;
                        }
                        let id = run.start_container(&format!("floor-{r}")).await;
                        (r, id)
                    });
                }
                Some(started) = started.next() => {
                    each.push(ms(t0.elapsed()));
                    done.push(started);
                }
            }
        }
        let elapsed = t0.elapsed();
        futures_util::future::join_all(done.iter().map(|(r, id)| {
            let run = run.clone();
            async move {
                run.report_started(r).await;
                run.report(r, RunState::Finished).await;
                run.remove(id).await;
            }
        }))
        .await;
        let variant = if download_each {
            "download_every_run"
        } else {
            "floor"
        };
        self.record(variant, c, each);
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

    /// The floor of `n` runs through a worker of capacity 64 (the backend offers no more
    /// at a time): per run the offer, a claim, inspect, create, start (with the
    /// `preparing` and `running` reports beside them), the container's exit, the final
    /// report, the container's removal.
    async fn throughput_floor(&mut self, n: usize) -> Duration {
        let run = FloorRun::from(&self.floor_tp);
        let t0 = Instant::now();
        let mut expected: HashSet<String> =
            self.schedule(&self.floor_tp.pool, n).into_iter().collect();
        let mut runs = FuturesUnordered::new();
        let mut ended = 0;
        while ended < n {
            tokio::select! {
                r = self.floor_tp.next_offer(), if !expected.is_empty() => {
                    if !expected.remove(&r) {
                        continue;
                    }
                    let run = run.clone();
                    runs.push(async move {
                        run.claim(&r).await;
                        let name = format!("floor-{r}");
                        let (id, ()) =
                            tokio::join!(run.start_container(&name), run.report_started(&r));
                        run.finish(&r, &id).await;
                    });
                }
                Some(()) = runs.next() => ended += 1,
            }
        }
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
