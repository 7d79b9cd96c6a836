//! Scale in sim mode: many launchers, many runs, faults; every invariant holds and every
//! run ends. The full size (100 launchers, 10,000 runs) is ignored by default:
//! `cargo test --release -p scenarios --test sim_scale -- --ignored --nocapture`.

use scenarios::scale::{run, ScaleOptions};

fn check(o: ScaleOptions) {
    let r = run(&o).expect("runs");
    println!("{r}");
    assert!(r.report.passed, "{:?}", r.report.failures);
    let total: usize = r.runs_per_launcher.values().sum();
    assert_eq!(total, o.runs, "every run ended on some launcher");
    assert!(r.virtual_drain > std::time::Duration::ZERO);
}

#[test]
fn a_small_pool_drains_its_queue_under_faults() {
    check(ScaleOptions {
        launchers: 5,
        runs: 60,
        capacity: 2,
        fault_every: 6,
        seed: 3,
    });
}

#[test]
#[ignore = "minutes in a debug build; run in release (see the module doc)"]
fn a_hundred_launchers_drain_ten_thousand_runs() {
    check(ScaleOptions::default());
}
