//! proptest: random schedules of runs and faults against the invariants and each run's
//! expected outcome. A failure shrinks
//! to a minimal schedule and is printed as a scenario file that reproduces it.
//!
//! CI runs a handful of cases; a soak runs many: `PROPTEST_CASES=200 cargo test -p scenarios
//! --test fault_schedules`.

use proptest::prelude::*;
use scenarios::random::{scenario, Op, LAUNCHERS};

fn op() -> impl Strategy<Value = Op> {
    let launcher = 0..LAUNCHERS;
    prop_oneof![
        4 => (prop::sample::select(vec![0i64, 0, 1, 3]), 0u64..1500)
            .prop_map(|(exit_code, millis)| Op::Run { exit_code, millis }),
        1 => Just(Op::CancelLast),
        1 => launcher.clone().prop_map(|launcher| Op::DropConnection { launcher }),
        1 => (1u32..4, prop::sample::select(vec![500u16, 503, 429]))
            .prop_map(|(count, status)| Op::HttpErrors { count, status }),
        2 => launcher.clone().prop_map(|launcher| Op::Duplicate { launcher }),
        1 => (launcher.clone(), 100u64..1500).prop_map(|(launcher, millis)| Op::Delay { launcher, millis }),
        1 => Just(Op::CorruptDownload),
        1 => launcher.prop_map(|launcher| Op::Drain { launcher }),
        1 => Just(Op::PublishVersion),
    ]
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn invariants_hold_under_random_faults(
        seed in 0u64..1_000_000,
        capacities in prop::collection::vec(1u32..3, LAUNCHERS),
        ops in prop::collection::vec(op(), 1..10),
    ) {
        let s = scenario(seed, &capacities, &ops);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let report = rt
            .block_on(scenarios::engine::execute(&s, seed))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        if !report.passed {
            let yaml = serde_yaml::to_string(&s).unwrap_or_default();
            return Err(TestCaseError::fail(format!(
                "invariants broken: {:?}\n--- scenario that reproduces it (save as a .yaml and \
                 `cargo run -p scenarios --bin scenario -- run FILE`) ---\n{yaml}",
                report.failures
            )));
        }
    }
}
