//! Deterministic time and IDs: milliseconds come from a fixed base plus tokio's elapsed
//! time (so paused-time tests control them), ULIDs from a seeded ChaCha RNG. The wall
//! clock is never read.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::time::Instant;

/// 2024-01-01T00:00:00Z: the base of a fresh data dir's clock.
pub const BASE_MS: u64 = 1_704_067_200_000;

#[derive(Debug)]
pub struct Clock {
    base_ms: u64,
    start: Instant,
}

impl Clock {
    pub fn new(base_ms: u64) -> Clock {
        Clock {
            base_ms,
            start: Instant::now(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.base_ms + self.start.elapsed().as_millis() as u64
    }
}

/// Monotonic ULIDs whose time part is logical: `epoch_ms` plus the number of IDs issued.
/// Reading the clock here would make IDs depend on how fast the machine is, and the same
/// seed must give the same IDs on every run (scenario traces compare them). IDs still sort
/// in creation order, which the scheduler's queue relies on.
#[derive(Debug)]
pub struct IdGen {
    rng: ChaCha8Rng,
    epoch_ms: u64,
    issued: u64,
    last: u128,
}

impl IdGen {
    /// `epoch_ms` should grow across backend restarts so later IDs sort after earlier ones.
    pub fn new(seed: u64, epoch_ms: u64) -> IdGen {
        IdGen {
            rng: ChaCha8Rng::seed_from_u64(seed),
            epoch_ms,
            issued: 0,
            last: 0,
        }
    }

    pub fn next(&mut self) -> String {
        let rand_hi = u128::from(self.rng.next_u64() & 0xFFFF);
        let rand_lo = u128::from(self.rng.next_u64());
        self.issued += 1;
        let ts = u128::from(self.epoch_ms.wrapping_add(self.issued) & 0xFFFF_FFFF_FFFF);
        let mut v = (ts << 80) | (rand_hi << 64) | rand_lo;
        if v <= self.last {
            v = self.last + 1;
        }
        self.last = v;
        ulid::Ulid(v).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_ids_and_monotonic() {
        let mut a = IdGen::new(7, BASE_MS);
        let mut b = IdGen::new(7, BASE_MS);
        let xs: Vec<String> = (0..5).map(|_| a.next()).collect();
        let ys: Vec<String> = (0..5).map(|_| b.next()).collect();
        assert_eq!(xs, ys);
        let mut sorted = xs.clone();
        sorted.sort();
        assert_eq!(xs, sorted);
        assert_eq!(xs[0].len(), 26);
    }
}
