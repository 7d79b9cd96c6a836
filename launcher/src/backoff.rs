//! Full-jitter exponential backoff ("sleep = random(0, min(cap, base * 2^attempt))"), with
//! the server's Retry-After taking precedence. Randomness comes from a seeded RNG so a
//! simulation replays the same delays.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    rng: ChaCha8Rng,
}

impl Backoff {
    /// 1 s doubling to 64 s, as the launcher uses for reconnects and retries.
    pub fn standard(seed: u64) -> Backoff {
        Backoff::new(Duration::from_secs(1), Duration::from_secs(64), seed)
    }

    pub fn new(base: Duration, cap: Duration, seed: u64) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// The ceiling of the next delay: `min(cap, base * 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next delay. A server's `retry_after` wins (it knows its load), capped at 10x the
    /// cap so a hostile header cannot park us for days.
    pub fn next_delay(&mut self, retry_after: Option<Duration>) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        if let Some(ra) = retry_after {
            return ra.min(self.cap * 10);
        }
        let nanos = ceiling.as_nanos().min(u64::MAX as u128) as u64;
        Duration::from_nanos(self.rng.random_range(0..=nanos))
    }

    /// Call after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_to_cap() {
        let mut b = Backoff::standard(7);
        let mut ceilings = Vec::new();
        for _ in 0..9 {
            ceilings.push(b.ceiling().as_secs());
            b.next_delay(None);
        }
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 64, 64, 64]);
    }

    #[test]
    fn delays_stay_under_ceiling_and_replay_by_seed() {
        let run = |seed| {
            let mut b = Backoff::standard(seed);
            (0..20)
                .map(|_| {
                    let c = b.ceiling();
                    let d = b.next_delay(None);
                    assert!(d <= c);
                    d
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn retry_after_wins_and_reset_restarts() {
        let mut b = Backoff::standard(1);
        assert_eq!(
            b.next_delay(Some(Duration::from_secs(5))),
            Duration::from_secs(5)
        );
        assert_eq!(
            b.next_delay(Some(Duration::from_secs(86_400))),
            Duration::from_secs(640)
        );
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_secs(1));
    }
}
