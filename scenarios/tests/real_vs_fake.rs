//! The same scenarios on fake-docker and on the real dockerd (`TEST_DOCKER_HOST`): the
//! verdicts and canonical traces must match. Skipped, saying so, without a real daemon.

use std::path::Path;

const SUBSET: [&str; 6] = [
    "happy_path",
    "cancel",
    "run_timeout",
    "second_sigterm_cancels",
    "http_error_storms",
    "crash_and_restart",
];

#[test]
fn real_daemon_agrees_with_fake() {
    use protocol::test_support::{require_component, START_DOCKERD};
    let present = std::env::var_os("TEST_DOCKER_HOST").is_some();
    if !require_component(present, "a real dockerd (TEST_DOCKER_HOST)", START_DOCKERD) {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("cases");
    for name in SUBSET {
        let fake = scenarios::parse::load(&dir.join(format!("{name}.yaml"))).expect("parses");
        let real = scenarios::on_real_docker(&fake)
            .unwrap_or_else(|| panic!("{name} should be runnable on a real daemon"));
        let (f, r) = rt.block_on(async {
            let f = scenarios::run(&fake, fake.seed, 1).await.expect("fake run");
            let r = scenarios::run(&real, real.seed, 1).await.expect("real run");
            (f, r)
        });
        let (f, r) = (&f.reports[0], &r.reports[0]);
        println!("{name}: fake\n{f}\n{name}: real\n{r}");
        assert!(f.passed, "{name} fails on fake-docker: {:?}", f.failures);
        assert!(
            r.passed,
            "{name} fails on the real dockerd: {:?}",
            r.failures
        );
        assert_eq!(
            f.trace.canonical, r.trace.canonical,
            "{name}: fake and real traces differ"
        );
    }
}
