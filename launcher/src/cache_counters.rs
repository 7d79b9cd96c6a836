//! The binary cache's counters: written by `binaries`, read by `metrics` at each scrape.
//! Apart from both so that neither adapter reaches into the other.

use std::sync::atomic::{AtomicU64, Ordering};

/// Cache counters for metrics (monotonic).
#[derive(Debug, Default)]
pub struct CacheCounters {
    /// `get`s served from disk.
    pub hits: AtomicU64,
    /// `get`s that needed a download (their own or a shared one).
    pub misses: AtomicU64,
    /// Downloads started (one per single-flight group).
    pub downloads: AtomicU64,
    /// Downloads or cached files that failed verification and were deleted.
    pub corrupt: AtomicU64,
    /// Bytes received from the backend.
    pub bytes_downloaded: AtomicU64,
    /// Cached binaries deleted by pruning.
    pub pruned: AtomicU64,
    /// Cached files read and hashed in full to check them (a first use in this process,
    /// a stamp that changed or is no longer trusted), downloads not counted.
    pub hashed: AtomicU64,
}

/// A plain copy of [`CacheCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheCountersSnapshot {
    pub hits: u64,
    pub misses: u64,
    pub downloads: u64,
    pub corrupt: u64,
    pub bytes_downloaded: u64,
    pub pruned: u64,
    pub hashed: u64,
}

impl CacheCounters {
    pub fn snapshot(&self) -> CacheCountersSnapshot {
        CacheCountersSnapshot {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            downloads: self.downloads.load(Ordering::Relaxed),
            corrupt: self.corrupt.load(Ordering::Relaxed),
            bytes_downloaded: self.bytes_downloaded.load(Ordering::Relaxed),
            pruned: self.pruned.load(Ordering::Relaxed),
            hashed: self.hashed.load(Ordering::Relaxed),
        }
    }
}
