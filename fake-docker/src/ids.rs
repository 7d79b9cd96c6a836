//! Deterministic identifiers: container IDs from a seeded RNG, image IDs from content.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

/// Generates container IDs and names from the daemon's seed, and image IDs from content.
pub struct IdGen {
    rng: ChaCha8Rng,
    seed: u64,
}

const ADJECTIVES: &[&str] = &[
    "admiring",
    "brave",
    "clever",
    "dreamy",
    "eager",
    "focused",
    "gallant",
    "happy",
    "jolly",
    "keen",
    "loving",
    "modest",
    "nifty",
    "optimistic",
    "peaceful",
    "quirky",
    "relaxed",
    "serene",
    "trusting",
    "upbeat",
    "vibrant",
    "wizardly",
    "youthful",
    "zealous",
];
const NAMES: &[&str] = &[
    "albattani",
    "babbage",
    "curie",
    "darwin",
    "euclid",
    "feynman",
    "galileo",
    "hopper",
    "jepsen",
    "knuth",
    "lovelace",
    "meitner",
    "noether",
    "pascal",
    "ritchie",
    "shannon",
    "thompson",
    "turing",
    "volta",
    "wozniak",
];

impl IdGen {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            seed,
        }
    }

    /// 64 lowercase hex characters, like a Docker container ID.
    pub fn container_id(&mut self) -> String {
        let bytes: [u8; 32] = self.rng.random();
        hex::encode(bytes)
    }

    /// A `adjective_name` pair like dockerd's generated container names.
    pub fn container_name(&mut self) -> String {
        let a = ADJECTIVES[self.rng.random_range(0..ADJECTIVES.len())];
        let n = NAMES[self.rng.random_range(0..NAMES.len())];
        format!("{a}_{n}")
    }

    pub fn network_id(&mut self) -> String {
        self.container_id()
    }

    /// Content-derived hash: the same image gets the same ID whatever the order of pulls.
    pub fn content_hash(&self, what: &str) -> String {
        let mut h = Sha256::new();
        h.update(self.seed.to_be_bytes());
        h.update(what.as_bytes());
        hex::encode(h.finalize())
    }
}
