//! Spawn latency (docs/performance.md): from the backend scheduling a run (it publishes
//! `run.scheduled`) to fake-docker's container `start` event, through an in-process
//! launcher, against the floor: the Docker calls the launcher cannot avoid (inspect image,
//! create, start) made directly with bollard, plus one authenticated HTTPS round trip to
//! the backend's claim endpoint.
//!
//! One iteration at concurrency `c` schedules `c` runs at once and ends when `c` new
//! containers have started (the floor: `c` concurrent inspect+create+start sequences and
//! claim round trips). Variants: `warm` (binary cached), `download` (a new worker version
//! is published before each iteration, so every batch downloads it).
//!
//! `cargo bench --profile dev --bench spawn` (we never build release here); CI does not
//! run benches. Keep it small: 2 cores.

use std::time::{Duration, Instant};

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use fake_backend::{kinds, BackendConfig, BackendHandle, BinaryContent, FakeBackend, ScheduleRun};
use fake_docker::{FakeDocker, FakeDockerHandle};
use launcher::config::MapEnv;
use protocol::Arch;
use scenarios::launcher_node::LauncherNode;
use tokio::runtime::Runtime;

/// The launcher's default runner image; present in fake-docker after the warm-up run.
const IMAGE: &str = "public.ecr.aws/spacelift/runner-terraform:latest";
/// Capacity well above the largest batch: the launcher frees a slot a moment after the
/// backend sees the run end, and a full launcher declines offers.
const CAPACITY: u32 = 128;
/// Worker binary size for the download variant (real ones are tens of MB; this keeps the
/// benchmark short on 2 cores in a debug build).
const BINARY_BYTES: usize = 1 << 20;

struct World {
    backend: BackendHandle,
    docker: FakeDockerHandle,
    client: bollard::Docker,
    https: reqwest::Client,
    api: String,
    pool: String,
    node: LauncherNode,
    versions: u64,
    floor_seq: u64,
    _dir: tempfile::TempDir,
}

fn binary(version: u64) -> BinaryContent {
    let mut bytes = fake_backend::binaries::elf_stub(Arch::Amd64, &format!("b{version}"));
    bytes.resize(BINARY_BYTES, 0x5a);
    BinaryContent::Bytes(bytes)
}

async fn world() -> World {
    let dir = tempfile::Builder::new()
        .prefix("bench-spawn")
        .tempdir()
        .expect("temp dir");
    let mut cfg = BackendConfig::new(dir.path().join("backend"));
    cfg.pool_key_bits = 2048;
    cfg.admin = false;
    let backend = FakeBackend::start(cfg).await.expect("fake backend");
    let creds = backend.create_pool().expect("pool");
    backend
        .publish_version(Arch::Amd64, Some("b0"), binary(0))
        .expect("publish");
    let docker = FakeDocker::start(fake_docker::Config::default())
        .await
        .expect("fake-docker");

    let data_dir = dir.path().join("launcher");
    std::fs::create_dir_all(&data_dir).expect("launcher dir");
    let mut env = MapEnv::default();
    env.set("SPACELIFT_TOKEN", creds.token.clone())
        .set(
            "SPACELIFT_POOL_PRIVATE_KEY",
            creds.private_key_b64.clone().expect("generated key"),
        )
        .set("DOCKER_HOST", docker.docker_host())
        .set("SPACELIFT_WORKER_NETWORK", "none")
        .set(
            "SPACELIFT_LAUNCHER_DATA_DIR",
            data_dir.display().to_string(),
        )
        .set("SPACELIFT_LAUNCHER_CAPACITY", CAPACITY.to_string());
    let config = launcher::config::load(&env).expect("launcher config");
    let tls = launcher::tls::client_config(&config).expect("client TLS");
    let https = reqwest::Client::builder()
        .tls_backend_preconfigured((*tls).clone())
        .build()
        .expect("reqwest client");
    let api = backend.api_endpoint().trim_end_matches('/').to_string();

    let since = backend.last_seq();
    let node = LauncherNode::start("bench", config).expect("launcher thread");
    backend
        .wait_for_since(since, |e| e.kind == kinds::WORKER_ONLINE)
        .await;
    let client = bollard::Docker::connect_with_unix(
        docker.socket_path().to_str().expect("utf-8 socket path"),
        120,
        bollard::API_DEFAULT_VERSION,
    )
    .expect("bollard");
    let mut w = World {
        backend,
        docker,
        client,
        https,
        api,
        pool: creds.pool_ulid,
        node,
        versions: 0,
        floor_seq: 0,
        _dir: dir,
    };
    // Warm-up: pulls the image and caches the binary.
    w.spawn_batch(1).await;
    w
}

fn is_start(e: &fake_docker::Event) -> bool {
    e.kind == "container" && e.action == "start"
}

impl World {
    fn next_docker_seq(&self) -> u64 {
        self.docker.events().last().map_or(0, |e| e.seq + 1)
    }

    /// Schedules `c` runs at once; the time until `c` containers have started. Then
    /// (untimed) waits until the backend has seen all of them end.
    async fn spawn_batch(&mut self, c: usize) -> Duration {
        let from = self.next_docker_seq();
        let since = self.backend.last_seq();
        let t0 = Instant::now();
        let mut runs = Vec::with_capacity(c);
        for _ in 0..c {
            let req = ScheduleRun::new(self.pool.clone()).env(
                fake_docker::BEHAVIOUR_ENV,
                r#"{"duration_ms":0,"exit_code":0}"#,
            );
            runs.push(self.backend.schedule_run(req).expect("schedule"));
        }
        let mut next = from;
        for _ in 0..c {
            let ev = self
                .docker
                .wait_for_event(|e| e.seq >= next && is_start(e))
                .await;
            next = ev.seq + 1;
        }
        let elapsed = t0.elapsed();
        for run in &runs {
            self.backend
                .wait_for_since(since, |e| {
                    e.kind == kinds::RUN_TRANSITION
                        && e.run.as_deref() == Some(run.as_str())
                        && matches!(
                            e.str("to"),
                            Some("finished" | "failed" | "canceled" | "timed_out")
                        )
                })
                .await;
        }
        elapsed
    }

    /// Publishes a new worker version, so the next batch must download it.
    fn bump(&mut self) {
        self.versions += 1;
        let v = self.versions;
        self.backend
            .publish_version(Arch::Amd64, Some(&format!("b{v}")), binary(v))
            .expect("publish");
    }

    /// The floor for `c`: `c` concurrent (claim round trip; inspect image; create; start).
    async fn floor_batch(&mut self, c: usize) -> Duration {
        let base = self.floor_seq;
        self.floor_seq += c as u64;
        let t0 = Instant::now();
        let tasks = (0..c as u64).map(|i| {
            let client = self.client.clone();
            let https = self.https.clone();
            let api = self.api.clone();
            async move {
                // An authenticated claim of an unknown run: TLS (kept-alive connection),
                // client-certificate pool lookup, routing, a 4xx answer.
                let url = format!("{api}/v1/runs/01BENCHFLOOR{:014}/claim", base + i);
                let resp = https
                    .post(url)
                    .json(&serde_json::json!({}))
                    .send()
                    .await
                    .expect("claim round trip");
                let _ = resp.bytes().await;
                client.inspect_image(IMAGE).await.expect("inspect image");
                let name = format!("floor-{}", base + i);
                let body = ContainerCreateBody {
                    image: Some(IMAGE.to_string()),
                    cmd: Some(vec!["true".to_string()]),
                    host_config: Some(HostConfig {
                        network_mode: Some("none".to_string()),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                let opts = CreateContainerOptionsBuilder::default().name(&name).build();
                let created = client
                    .create_container(Some(opts), body)
                    .await
                    .expect("create");
                client
                    .start_container(&created.id, None)
                    .await
                    .expect("start");
                created.id
            }
        });
        let ids = futures_util::future::join_all(tasks).await;
        let elapsed = t0.elapsed();
        let rm = RemoveContainerOptionsBuilder::default().force(true).build();
        for id in ids {
            let _ = self.client.remove_container(&id, Some(rm.clone())).await;
        }
        elapsed
    }
}

fn spawn(c: &mut Criterion) {
    let rt = Runtime::new().expect("tokio runtime");
    let world = tokio::sync::Mutex::new(rt.block_on(world()));
    let concurrency: &[usize] = match std::env::var("SPAWN_BENCH_CONCURRENCY") {
        Ok(list) => Box::leak(
            list.split(',')
                .filter_map(|s| s.trim().parse().ok())
                .collect::<Vec<usize>>()
                .into_boxed_slice(),
        ),
        Err(_) => &[1, 8],
    };

    let mut g = c.benchmark_group("spawn");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for &n in concurrency {
        g.bench_with_input(BenchmarkId::new("floor", n), &n, |b, &n| {
            b.to_async(&rt).iter_custom(|iters| {
                let world = &world;
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += world.lock().await.floor_batch(n).await;
                    }
                    total
                }
            })
        });
        g.bench_with_input(BenchmarkId::new("warm", n), &n, |b, &n| {
            b.to_async(&rt).iter_custom(|iters| {
                let world = &world;
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += world.lock().await.spawn_batch(n).await;
                    }
                    total
                }
            })
        });
        g.bench_with_input(BenchmarkId::new("download", n), &n, |b, &n| {
            b.to_async(&rt).iter_custom(|iters| {
                let world = &world;
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let mut w = world.lock().await;
                        w.bump();
                        total += w.spawn_batch(n).await;
                    }
                    total
                }
            })
        });
    }
    g.finish();

    let mut w = world.into_inner();
    rt.block_on(async {
        w.node.signal().await;
        w.node.wait().await;
        w.backend.shutdown().await;
        w.docker.shutdown().await;
    });
}

criterion_group!(benches, spawn);
criterion_main!(benches);
