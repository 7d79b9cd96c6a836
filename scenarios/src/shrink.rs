//! Shrinking a failing schedule: delta debugging (ddmin) over its op list, then fewer
//! launchers, then each op replaced by simpler ones, keeping every step that still fails.

use crate::random::{Image, Op, Output, Schedule};

/// Runs left for shrinking; each candidate tried costs one.
pub struct Budget(pub usize);

impl Budget {
    fn take(&mut self) -> bool {
        if self.0 == 0 {
            return false;
        }
        self.0 -= 1;
        true
    }
}

/// A smaller schedule that still fails (`fails` decides), or the input when none is found.
pub fn shrink(
    failing: &Schedule,
    budget: &mut Budget,
    fails: &mut dyn FnMut(&Schedule) -> bool,
) -> Schedule {
    let mut best = failing.clone();
    loop {
        let before = best.clone();
        let ops = ddmin(&best.ops, budget, &mut |ops: &[Op]| {
            fails(&Schedule {
                ops: ops.to_vec(),
                ..best.clone()
            })
        });
        best.ops = ops;
        while best.capacities.len() > 1 {
            let mut fewer = best.clone();
            fewer.capacities.pop();
            if budget.take() && fails(&fewer) {
                best = fewer;
            } else {
                break;
            }
        }
        for i in 0..best.ops.len() {
            for simpler in simpler(&best.ops[i]) {
                let mut candidate = best.clone();
                candidate.ops[i] = simpler;
                if budget.take() && fails(&candidate) {
                    best = candidate;
                    break;
                }
            }
        }
        if best == before || budget.0 == 0 {
            return best;
        }
    }
}

/// Zeller's ddmin: a 1-minimal sublist of `items` for which `fails` holds (every single
/// removal passes), assuming `fails(items)`.
pub fn ddmin<T: Clone>(
    items: &[T],
    budget: &mut Budget,
    fails: &mut dyn FnMut(&[T]) -> bool,
) -> Vec<T> {
    let mut current = items.to_vec();
    let mut n = 2usize;
    while current.len() >= 2 {
        let chunk = current.len().div_ceil(n);
        let chunks: Vec<Vec<T>> = current.chunks(chunk).map(<[T]>::to_vec).collect();
        let mut reduced = false;
        // A subset alone, then its complement.
        for c in &chunks {
            if !budget.take() {
                return current;
            }
            if fails(c) {
                current = c.clone();
                n = 2;
                reduced = true;
                break;
            }
        }
        if !reduced && chunks.len() > 2 {
            for i in 0..chunks.len() {
                let complement: Vec<T> = chunks
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .flat_map(|(_, c)| c.iter().cloned())
                    .collect();
                if !budget.take() {
                    return current;
                }
                if fails(&complement) {
                    current = complement;
                    n = (n - 1).max(2);
                    reduced = true;
                    break;
                }
            }
        }
        if !reduced {
            if n >= current.len() {
                break;
            }
            n = (n * 2).min(current.len());
        }
    }
    current
}

/// Simpler versions of one op, simplest first.
pub fn simpler(op: &Op) -> Vec<Op> {
    let mut out = Vec::new();
    match op {
        Op::Run {
            exit_code,
            millis,
            image,
            output,
        } => {
            let plain = Op::Run {
                exit_code: 0,
                millis: 0,
                image: Image::Default,
                output: Output::Plain,
            };
            out.push(plain);
            if *output != Output::Plain {
                out.push(Op::Run {
                    exit_code: *exit_code,
                    millis: *millis,
                    image: *image,
                    output: Output::Plain,
                });
            }
            if *image != Image::Default {
                out.push(Op::Run {
                    exit_code: *exit_code,
                    millis: *millis,
                    image: Image::Default,
                    output: *output,
                });
            }
            if *millis > 0 {
                out.push(Op::Run {
                    exit_code: *exit_code,
                    millis: 0,
                    image: *image,
                    output: *output,
                });
            }
            if *exit_code != 0 {
                out.push(Op::Run {
                    exit_code: 0,
                    millis: *millis,
                    image: *image,
                    output: *output,
                });
            }
        }
        Op::Cancel { back } if *back > 0 => out.push(Op::Cancel { back: 0 }),
        Op::Await { back, state } if *back > 0 => out.push(Op::Await {
            back: 0,
            state: *state,
        }),
        Op::HttpErrors { count, status } if *count > 1 => out.push(Op::HttpErrors {
            count: 1,
            status: *status,
        }),
        Op::DockerErrors { route, count } if *count > 1 => out.push(Op::DockerErrors {
            route: *route,
            count: 1,
        }),
        Op::FailPulls { count } if *count > 1 => out.push(Op::FailPulls { count: 1 }),
        Op::FullDisk {
            launcher,
            downloads,
        } if *downloads > 1 => out.push(Op::FullDisk {
            launcher: *launcher,
            downloads: 1,
        }),
        _ => {}
    }
    // Launcher 0 is the simplest launcher.
    let on_first = match op.clone() {
        Op::DropConnection { launcher } if launcher > 0 => Some(Op::DropConnection { launcher: 0 }),
        Op::Duplicate { launcher } if launcher > 0 => Some(Op::Duplicate { launcher: 0 }),
        Op::Delay { launcher, millis } if launcher > 0 => Some(Op::Delay {
            launcher: 0,
            millis,
        }),
        Op::Drain { launcher } if launcher > 0 => Some(Op::Drain { launcher: 0 }),
        Op::Undrain { launcher } if launcher > 0 => Some(Op::Undrain { launcher: 0 }),
        Op::Cycle { launcher } if launcher > 0 => Some(Op::Cycle { launcher: 0 }),
        Op::Signal { launcher } if launcher > 0 => Some(Op::Signal { launcher: 0 }),
        Op::CrashLauncher { launcher } if launcher > 0 => Some(Op::CrashLauncher { launcher: 0 }),
        Op::StartLauncher { launcher } if launcher > 0 => Some(Op::StartLauncher { launcher: 0 }),
        Op::FullDisk {
            launcher,
            downloads,
        } if launcher > 0 => Some(Op::FullDisk {
            launcher: 0,
            downloads,
        }),
        _ => None,
    };
    out.extend(on_first);
    out.retain(|o| o != op);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddmin_finds_the_two_items_that_fail_together() {
        let items: Vec<u32> = (0..40).collect();
        let mut calls = 0;
        let got = ddmin(&items, &mut Budget(1000), &mut |xs: &[u32]| {
            calls += 1;
            xs.contains(&7) && xs.contains(&31)
        });
        assert_eq!(got, vec![7, 31]);
        assert!(calls < 100, "{calls} calls");
    }

    #[test]
    fn ddmin_stops_when_the_budget_is_spent() {
        let items: Vec<u32> = (0..40).collect();
        let mut calls = 0;
        let got = ddmin(&items, &mut Budget(3), &mut |xs: &[u32]| {
            calls += 1;
            xs.contains(&7)
        });
        assert_eq!(calls, 3);
        assert!(got.contains(&7));
    }

    #[test]
    fn a_run_simplifies_to_the_plainest_run_first() {
        let op = Op::Run {
            exit_code: 3,
            millis: 900,
            image: Image::Flaky,
            output: Output::Secret,
        };
        assert_eq!(
            simpler(&op)[0],
            Op::Run {
                exit_code: 0,
                millis: 0,
                image: Image::Default,
                output: Output::Plain
            }
        );
        assert!(simpler(&simpler(&op)[0]).is_empty());
    }
}
