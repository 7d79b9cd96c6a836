//! Random fault schedules against the invariants and each run's expected outcome, through
//! the explorer (`scenario explore`) in wire mode. A failure is shrunk and written under
//! `target/explore/` with the command that replays it.
//!
//! CI runs a handful of schedules; a soak runs many: `EXPLORE_SCHEDULES=200
//! EXPLORE_SEED=7 cargo test -p scenarios --test fault_schedules`.

use scenarios::explore::{explore, wire_runner, Options};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn invariants_hold_under_random_faults() {
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/explore");
    let mut opts = Options::new(
        env_u64("EXPLORE_SCHEDULES", 6),
        env_u64("EXPLORE_SEED", 0),
        out,
    );
    // Wire mode takes seconds per run: shrink within a few minutes.
    opts.shrink_budget = 30;
    opts.max_shrunk = 1;
    let mut runner = wire_runner();
    let summary = explore(&opts, &mut runner, &mut std::io::stdout()).expect("explores");
    println!("{:.2} schedules/s", summary.rate());
    let found: Vec<String> = summary
        .found
        .iter()
        .map(|f| {
            format!(
                "{:?}\n  {}\n  replay: {}",
                f.failures,
                f.file.display(),
                f.replay
            )
        })
        .collect();
    assert!(
        summary.found.is_empty(),
        "{}\n{}",
        summary.line(),
        found.join("\n")
    );
}
