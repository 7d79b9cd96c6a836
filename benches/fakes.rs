//! The fakes' own capacity with a direct client (docs/performance.md "The fakes"), so the
//! launcher's figures are known not to be the fakes' limits:
//!
//! - `fakes/offers`: `run.scheduled` messages per second over MQTT: `BATCH` runs
//!   scheduled at once, until a directly connected worker (the launcher's MQTT session)
//!   has received every offer.
//! - `fakes/claims`: claims per second: `BATCH` offered runs claimed over HTTPS (the
//!   launcher's client), `IN_FLIGHT` at a time. Untimed, each is then reported to its end.
//! - `fakes/create_start`: fake-docker container create + start per second, bollard,
//!   `IN_FLIGHT` at a time. Untimed, the containers are removed.
//!
//! `cargo bench --bench fakes` (release); criterion prints elements per second.

#[allow(dead_code)] // shared with the other benches
mod common;
#[allow(dead_code)]
#[path = "common/floor.rs"]
mod floor;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fake_backend::{BackendHandle, ScheduleRun};
use fake_docker::FakeDockerHandle;
use floor::{FloorRun, FloorWorker};
use futures_util::StreamExt;
use protocol::RunState;
use tokio::runtime::Runtime;

/// Items per iteration.
const BATCH: usize = 256;
/// Requests in flight at once (the launcher's c=64).
const IN_FLIGHT: usize = 64;

struct World {
    backend: BackendHandle,
    docker: FakeDockerHandle,
    worker: FloorWorker,
    seq: u64,
    _dir: tempfile::TempDir,
}

impl World {
    async fn start() -> World {
        let common::Fakes {
            dir,
            backend,
            docker,
        } = common::start_fakes("bench-fakes").await;
        let worker =
            FloorWorker::start(&backend, &docker, dir.path(), "direct", BATCH as u32).await;
        // The floor's image, pulled once.
        let pull = bollard::query_parameters::CreateImageOptionsBuilder::default()
            .from_image(floor::IMAGE)
            .build();
        let mut pulling = worker.docker.create_image(Some(pull), None, None);
        while let Some(r) = pulling.next().await {
            r.expect("pull");
        }
        World {
            backend,
            docker,
            worker,
            seq: 0,
            _dir: dir,
        }
    }

    /// Schedules `BATCH` runs and waits for every offer; the runs and the time taken.
    async fn offers(&mut self) -> (Vec<String>, Duration) {
        let t0 = Instant::now();
        let runs: Vec<String> = (0..BATCH)
            .map(|_| {
                let req = ScheduleRun::new(self.worker.pool.clone());
                self.backend.schedule_run(req).expect("schedule")
            })
            .collect();
        let mut expected: HashSet<&str> = runs.iter().map(String::as_str).collect();
        while !expected.is_empty() {
            let r = self.worker.next_offer().await;
            expected.remove(r.as_str());
        }
        (runs.clone(), t0.elapsed())
    }

    /// Ends `runs` (claimed) so the worker's capacity is free again.
    async fn end(&self, runs: &[String]) {
        let run = FloorRun::from(&self.worker);
        futures_util::stream::iter(runs)
            .for_each_concurrent(IN_FLIGHT, |r| {
                let run = run.clone();
                async move {
                    run.report_started(r).await;
                    run.report(r, RunState::Finished).await;
                }
            })
            .await;
    }

    async fn claim_all(&self, runs: &[String]) -> Duration {
        let run = FloorRun::from(&self.worker);
        let t0 = Instant::now();
        futures_util::stream::iter(runs)
            .for_each_concurrent(IN_FLIGHT, |r| {
                let run = run.clone();
                async move { run.claim(r).await }
            })
            .await;
        t0.elapsed()
    }

    async fn offers_iter(&mut self) -> Duration {
        let (runs, took) = self.offers().await;
        self.claim_all(&runs).await;
        self.end(&runs).await;
        took
    }

    async fn claims_iter(&mut self) -> Duration {
        let (runs, _) = self.offers().await;
        let took = self.claim_all(&runs).await;
        self.end(&runs).await;
        took
    }

    async fn create_start_iter(&mut self) -> Duration {
        let run = FloorRun::from(&self.worker);
        let base = self.seq;
        self.seq += BATCH as u64;
        let t0 = Instant::now();
        let ids: Vec<String> = futures_util::stream::iter(base..self.seq)
            .map(|n| {
                let run = run.clone();
                async move { run.start_container(&format!("direct-{n}")).await }
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        let took = t0.elapsed();
        futures_util::stream::iter(ids)
            .for_each_concurrent(IN_FLIGHT, |id| {
                let run = run.clone();
                async move { run.remove(&id).await }
            })
            .await;
        took
    }
}

type Shared = tokio::sync::Mutex<World>;
/// One case: an iteration's measured time.
type Case = fn(&mut World) -> futures_util::future::BoxFuture<'_, Duration>;

fn bench(c: &mut Criterion) {
    use futures_util::FutureExt;
    let rt = Runtime::new().expect("tokio runtime");
    let world: Shared = tokio::sync::Mutex::new(rt.block_on(World::start()));
    let mut g = c.benchmark_group("fakes");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(BATCH as u64));
    let cases: [(&str, Case); 3] = [
        ("offers", |w| w.offers_iter().boxed()),
        ("claims", |w| w.claims_iter().boxed()),
        ("create_start", |w| w.create_start_iter().boxed()),
    ];
    for (name, f) in cases {
        g.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let world = &world;
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += f(&mut *world.lock().await).await;
                    }
                    total
                }
            })
        });
    }
    g.finish();
    let w = world.into_inner();
    rt.block_on(async move {
        let World {
            backend,
            docker,
            worker,
            ..
        } = w;
        drop(worker);
        backend.shutdown().await;
        docker.shutdown().await;
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
