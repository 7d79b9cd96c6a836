//! Sim mode is reproducible: the same file and seed give a byte-identical full trace (the
//! backend's and the daemons' event logs on virtual time), compared by hash; a random fault
//! schedule too. And sim mode is virtual: a case of minutes takes no minutes.

use std::path::Path;

use scenarios::random::{Image, Op, Output, Schedule};
use scenarios::Mode;

fn case(name: &str) -> scenarios::Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("cases")
        .join(name);
    scenarios::parse::load(&path).expect("parses")
}

fn twice(s: &scenarios::Scenario, seed: u64) -> (String, String) {
    if !cfg!(tokio_unstable) {
        panic!(
            "built without --cfg tokio_unstable, so tokio's RNG is not seeded: a RUSTFLAGS in \
             the environment replaces .cargo/config.toml's (add --cfg tokio_unstable to it)"
        );
    }
    let a = scenarios::execute_sim(s, seed).expect("runs");
    let b = scenarios::execute_sim(s, seed).expect("runs");
    assert!(a.passed, "{a}");
    assert!(!a.full.is_empty());
    if a.full != b.full {
        let at = a.full.iter().zip(&b.full).position(|(x, y)| x != y);
        panic!(
            "repeats differ at line {at:?}: {:?} vs {:?}",
            at.map(|i| &a.full[i]),
            at.map(|i| &b.full[i])
        );
    }
    (a.full_hash(), b.full_hash())
}

#[test]
fn same_file_and_seed_give_a_byte_identical_trace() {
    // The last three have tasks (of one launcher, or of several) racing at one virtual
    // instant: they replay only because the runtime's RNG is seeded (`sim::runtime`).
    for name in [
        "happy_path.yaml",
        "crash_and_restart.yaml",
        "http_error_storms.yaml",
        "cancel_racing_states.yaml",
        "concurrent_three_launchers.yaml",
        "start_while_another_reconnects.yaml",
    ] {
        let s = case(name);
        let (a, b) = twice(&s, s.seed);
        assert_eq!(a, b, "{name}");
    }
}

#[test]
fn another_seed_gives_another_trace() {
    let s = case("happy_path.yaml");
    let one = scenarios::execute_sim(&s, 1).expect("runs");
    let two = scenarios::execute_sim(&s, 2).expect("runs");
    assert!(one.passed && two.passed);
    assert_ne!(one.full_hash(), two.full_hash());
}

#[test]
fn a_random_fault_schedule_replays_byte_for_byte() {
    let ops = [
        run(0, 300, Output::Secret),
        Op::HttpErrors {
            count: 2,
            status: 503,
        },
        run(
            3,
            900,
            Output::Flood {
                lines: 200,
                line_bytes: 300,
            },
        ),
        Op::CorruptDownload,
        run(0, 50, Output::Plain),
        Op::Cancel { back: 0 },
    ];
    // Two launchers, of capacities 2 and 1.
    let s = Schedule {
        seed: 7,
        capacities: vec![2, 1],
        ops: ops.to_vec(),
    }
    .scenario();
    let (a, b) = twice(&s, 7);
    assert_eq!(a, b);
}

fn run(exit_code: i64, millis: u64, output: Output) -> Op {
    Op::Run {
        exit_code,
        millis,
        image: Image::Default,
        output,
    }
}

#[test]
fn the_run_files_mode_field_is_honoured() {
    let s = case("real_docker_end_to_end.yaml");
    let outcome = scenarios::run_in(&s, s.seed, 1, Mode::Sim).expect("runs");
    let why = outcome.skipped.expect("skipped in sim mode");
    assert!(why.contains("real dockerd"), "{why}");
}
