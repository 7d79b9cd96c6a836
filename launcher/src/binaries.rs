//! [`BinaryStore`] on the filesystem: a content-addressed cache of worker binaries at
//! `<dir>/sha256/<hex>`.
//!
//! - Downloads stream to a temporary file in the same directory while hashing (memory use
//!   is one chunk, whatever the binary's size), are checked against the expected size and
//!   SHA-256, fsynced, made read-only and executable (0555, through the descriptor) and
//!   renamed into place in a 0700 directory. A corrupt download is deleted and reported as
//!   [`BinaryError::Corrupt`]; it is never at the final path.
//! - Concurrent `get`s of the same SHA-256 share one download (single flight). The
//!   download runs in its own task, so a caller that gives up does not abort it for the
//!   others; when the last one gives up (a run's prepare deadline) it is aborted, so a
//!   hung download is never joined by later runs.
//! - A download that delivers less than [`MIN_PROGRESS_BYTES`] in any
//!   [`PROGRESS_WINDOW`] counts as interrupted (a connection trickling a byte now and
//!   then never trips the read timeout), so waiters without a deadline are not stuck.
//! - A transient failure mid-download resumes from the bytes already written (HTTP
//!   `Range`), at most [`RESUME_ATTEMPTS`] times, with a short backoff on tokio time.
//! - Cache hits: the first use of a cached file in this process re-hashes it in full
//!   (it may have been damaged or tampered with since the last process wrote it). Later
//!   hits re-hash it again unless its [`FileStamp`] (inode, size, mtime, ctime) is the one
//!   recorded when it was verified: any rewrite changes the ctime, which no process can
//!   set back, so tampering is caught at the cost of a `stat`, not of hashing 50 MiB per
//!   run. The file is opened without following symlinks, and its stamp and hash come from
//!   that one descriptor; a stamp taken within 2 s of the file's ctime (git's "racy"
//!   rule) is trusted only until those 2 s are over, then the file is hashed once more
//!   ([`Recorded`]). Checks that need a hash of the same binary at once (a batch of runs
//!   after a restart) wait for one hash and take its verdict. A symlink or a file that
//!   fails is deleted and downloaded again. Runs call [`BinaryStore::still_verified`] just before creating the
//!   container, so a file swapped during a long image pull is caught.
//! - The temporary file is created exclusively (`O_EXCL`): whatever sits at its name is
//!   unlinked first, never followed.
//! - Pruning keeps the `keep` most recently used binaries (use in this process first, then
//!   the files' modification times) plus every pinned one. It runs after each download.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use protocol::api::WorkerBinary;

pub use crate::cache_counters::{CacheCounters, CacheCountersSnapshot};
use crate::ports::{Backend, BackendError, BinaryError, BinaryPin, BinaryStore, CachedBinary};

mod download;
mod file_check;
use file_check::{hash_matches, open_stamped, FileStamp, Verdict};

/// How many times a download interrupted by a transient error is resumed.
pub const RESUME_ATTEMPTS: u32 = 3;

/// A download must deliver at least [`MIN_PROGRESS_BYTES`] (or what is left) in every
/// window this long, or it is cut and resumed.
pub const PROGRESS_WINDOW: Duration = Duration::from_secs(60);

/// See [`PROGRESS_WINDOW`]: 64 KiB a minute, far below any usable link.
pub const MIN_PROGRESS_BYTES: u64 = 64 * 1024;

/// The largest worker binary we accept (today's are about 50 MiB); a larger announced
/// size is refused before any byte is written.
pub const MAX_BINARY_SIZE: u64 = 4 << 30;

type Flight = Shared<BoxFuture<'static, Result<CachedBinary, BinaryError>>>;

struct InFlight {
    future: Flight,
    /// Callers sharing it; the download is aborted when it drops to zero.
    joiners: usize,
    /// Tells this flight from a later one of the same SHA.
    id: u64,
    abort: tokio::task::AbortHandle,
}

/// One caller's share of a flight: leaving (done or dropped) counts it out.
struct Joined {
    inner: Arc<Inner>,
    sha: String,
    id: u64,
}

impl Drop for Joined {
    fn drop(&mut self) {
        let mut map = lock(&self.inner.inflight);
        if let Some(f) = map.get_mut(&self.sha).filter(|f| f.id == self.id) {
            f.joiners -= 1;
            if f.joiners == 0 {
                // Nobody waits for it any more (it finished, or every caller gave up).
                f.abort.abort();
                map.remove(&self.sha);
            }
        }
    }
}

struct Inner {
    root: PathBuf,
    backend: Arc<dyn Backend>,
    keep: usize,
    counters: Arc<CacheCounters>,
    inflight: Mutex<HashMap<String, InFlight>>,
    flight_ids: AtomicU64,
    pins: Mutex<HashMap<String, usize>>,
    /// Fully re-hashed (or written) by this process, with the file's stamp at the time.
    verified: Mutex<HashMap<String, Recorded>>,
    /// One hash of a binary at a time: concurrent checks wait for it and take its verdict.
    hashing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Last use in this process, by a monotonic counter.
    used: Mutex<(u64, HashMap<String, u64>)>,
    seed: u64,
}

/// A verified file's stamp. One taken within the racy window of the file's last change
/// (always so for a download: the rename just set its ctime) is provisional: trusted
/// until the window ends, then the file is hashed once more and its stamp becomes final.
/// So a write in the same timestamp tick as the stamp goes unseen for at most the
/// window, as a change between the last check and the worker's start always can, never
/// for good; and the runs right after a download do not each hash it again.
#[derive(Debug, Clone, Copy)]
struct Recorded {
    stamp: FileStamp,
    /// None once final.
    provisional_until: Option<std::time::SystemTime>,
}

impl Recorded {
    fn new(stamp: FileStamp) -> Recorded {
        Recorded {
            stamp,
            provisional_until: stamp.racy_until(),
        }
    }

    #[cfg(test)]
    fn final_(stamp: FileStamp) -> Recorded {
        Recorded {
            stamp,
            provisional_until: None,
        }
    }

    fn trusted(&self) -> bool {
        self.provisional_until
            .is_none_or(|t| std::time::SystemTime::now() < t)
    }
}

/// The production [`BinaryStore`].
#[derive(Clone)]
pub struct FsBinaryStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FsBinaryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsBinaryStore")
            .field("root", &self.inner.root)
            .field("keep", &self.inner.keep)
            .finish_non_exhaustive()
    }
}

fn io_err(what: &str, path: &Path, e: io::Error) -> BinaryError {
    BinaryError::Io(format!("{what} {}: {e}", path.display()))
}

fn valid_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl FsBinaryStore {
    /// A store under `dir` (binaries at `<dir>/sha256/<hex>`; the directory is created on
    /// first use). `keep` >= 1 versions survive pruning.
    pub fn new(dir: PathBuf, backend: Arc<dyn Backend>, keep: usize) -> FsBinaryStore {
        FsBinaryStore::with_seed(dir, backend, keep, 0)
    }

    /// As [`FsBinaryStore::new`], with the seed of the resume backoff's jitter.
    pub fn with_seed(
        dir: PathBuf,
        backend: Arc<dyn Backend>,
        keep: usize,
        seed: u64,
    ) -> FsBinaryStore {
        FsBinaryStore {
            inner: Arc::new(Inner {
                root: dir.join("sha256"),
                backend,
                keep: keep.max(1),
                counters: Arc::default(),
                inflight: Mutex::default(),
                flight_ids: AtomicU64::new(0),
                pins: Mutex::default(),
                verified: Mutex::default(),
                hashing: Mutex::default(),
                used: Mutex::default(),
                seed,
            }),
        }
    }

    pub fn counters(&self) -> Arc<CacheCounters> {
        self.inner.counters.clone()
    }

    /// Where the binary with this SHA-256 lives once cached.
    pub fn path_of(&self, sha256: &str) -> PathBuf {
        self.inner.root.join(sha256)
    }

    /// Callers currently sharing the download of `sha256` (0 when none is running).
    pub fn waiters(&self, sha256: &str) -> usize {
        lock(&self.inner.inflight)
            .get(sha256)
            .map_or(0, |f| f.joiners)
    }

    /// Deletes cached binaries beyond the `keep` most recently used, sparing pinned ones
    /// and downloads in flight, plus leftover temporary files. Returns the removed SHAs.
    pub async fn prune(&self) -> Result<Vec<String>, BinaryError> {
        self.inner.clone().prune().await
    }

    async fn fetch(&self, binary: &WorkerBinary) -> Result<CachedBinary, BinaryError> {
        let sha = binary.sha256.to_ascii_lowercase();
        if !valid_sha256(&sha) {
            return Err(BinaryError::Download(BackendError::Rejected {
                message: format!(
                    "worker binary {} ({}) has an invalid sha256 {:?}",
                    binary.version, binary.arch, binary.sha256
                ),
            }));
        }
        if binary.size > MAX_BINARY_SIZE {
            return Err(BinaryError::Download(BackendError::Rejected {
                message: format!(
                    "worker binary {} ({}) announces a size of {} bytes, more than the {} MiB \
                     limit",
                    binary.version,
                    binary.arch,
                    binary.size,
                    MAX_BINARY_SIZE >> 20
                ),
            }));
        }
        let inner = &self.inner;
        if let Some(hit) = inner.check_cached(binary, &sha).await? {
            inner.counters.hits.fetch_add(1, Ordering::Relaxed);
            inner.touch(&sha);
            return Ok(hit);
        }
        inner.counters.misses.fetch_add(1, Ordering::Relaxed);
        let (flight, _joined) = {
            let mut map = lock(&inner.inflight);
            match map.get_mut(&sha) {
                Some(f) => {
                    f.joiners += 1;
                    let joined = Joined {
                        inner: inner.clone(),
                        sha: sha.clone(),
                        id: f.id,
                    };
                    (f.future.clone(), joined)
                }
                None => {
                    let id = inner.flight_ids.fetch_add(1, Ordering::Relaxed);
                    inner.counters.downloads.fetch_add(1, Ordering::Relaxed);
                    let task_inner = inner.clone();
                    let task_binary = binary.clone();
                    let task_sha = sha.clone();
                    let handle = tokio::spawn(async move {
                        let result = task_inner.download(&task_binary, &task_sha).await;
                        // Mark it used before it stops counting as in flight, so a
                        // concurrent prune never sees it as the least recently used.
                        if result.is_ok() {
                            task_inner.touch(&task_sha);
                        }
                        {
                            let mut map = lock(&task_inner.inflight);
                            if map.get(&task_sha).is_some_and(|f| f.id == id) {
                                map.remove(&task_sha);
                            }
                        }
                        if result.is_ok() {
                            if let Err(e) = task_inner.clone().prune().await {
                                tracing::warn!(error = %e, "pruning the worker binary cache failed");
                            }
                        }
                        result
                    });
                    let abort = handle.abort_handle();
                    let future: Flight = async move {
                        handle.await.unwrap_or_else(|e| {
                            Err(BinaryError::Io(format!("download task failed: {e}")))
                        })
                    }
                    .boxed()
                    .shared();
                    map.insert(
                        sha.clone(),
                        InFlight {
                            future: future.clone(),
                            joiners: 1,
                            id,
                            abort,
                        },
                    );
                    let joined = Joined {
                        inner: inner.clone(),
                        sha: sha.clone(),
                        id,
                    };
                    (future, joined)
                }
            }
        };
        let mut result = flight.await;
        if let Ok(c) = &mut result {
            // The shared result names the version of whoever started it; same bytes.
            c.version = binary.version.clone();
        }
        result
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    fn touch(&self, sha: &str) {
        let mut used = lock(&self.used);
        used.0 += 1;
        let n = used.0;
        used.1.insert(sha.to_string(), n);
    }

    /// The cached file if present and sound (see module docs for how sound is checked).
    async fn check_cached(
        self: &Arc<Self>,
        binary: &WorkerBinary,
        sha: &str,
    ) -> Result<Option<CachedBinary>, BinaryError> {
        let path = self.root.join(sha);
        match self.inspect(&path, sha, Some(binary.size)).await? {
            Verdict::Missing => Ok(None),
            Verdict::Sound => Ok(Some(CachedBinary {
                version: binary.version.clone(),
                sha256: sha.to_string(),
                path,
            })),
            Verdict::Bad => {
                tracing::warn!(path = %path.display(), "cached worker binary failed verification; deleting it");
                self.discard(sha, &path).await.map(|()| None)
            }
        }
    }

    /// Opens `path` without following a symlink, and judges that very file: its stamp
    /// (from the descriptor) against the one recorded, else a hash of the same descriptor.
    async fn inspect(
        self: &Arc<Self>,
        path: &Path,
        sha: &str,
        size: Option<u64>,
    ) -> Result<Verdict, BinaryError> {
        // The open and the stamp are made in place: they cost microseconds, where a
        // hand-off to the blocking pool costs a thread wake-up on each side, most of a
        // warm hit (docs/performance.md). Hashing runs on the blocking pool.
        let (file, stamp) =
            match open_stamped(path, size).map_err(|e| io_err("cannot read", path, e))? {
                Ok(opened) => opened,
                Err(verdict) => {
                    lock(&self.verified).remove(sha);
                    return Ok(verdict);
                }
            };
        let trusted = || {
            lock(&self.verified)
                .get(sha)
                .is_some_and(|r| r.trusted() && r.stamp == stamp)
        };
        if trusted() {
            return Ok(Verdict::Sound);
        }
        let gate = lock(&self.hashing)
            .entry(sha.to_string())
            .or_default()
            .clone();
        let _hashing = gate.lock().await;
        // A check that held the gate may have just hashed this very file.
        if trusted() {
            return Ok(Verdict::Sound);
        }
        self.counters.hashed.fetch_add(1, Ordering::Relaxed);
        let want = sha.to_string();
        let sound = tokio::task::spawn_blocking(move || hash_matches(file, &want))
            .await
            .map_err(|e| BinaryError::Io(format!("hashing task failed: {e}")))?
            .map_err(|e| io_err("cannot read", path, e))?;
        let mut verified = lock(&self.verified);
        if sound {
            // The stamp from before hashing: a change during it shows next time.
            verified.insert(sha.to_string(), Recorded::new(stamp));
            Ok(Verdict::Sound)
        } else {
            verified.remove(sha);
            Ok(Verdict::Bad)
        }
    }

    async fn discard(&self, sha: &str, path: &Path) -> Result<(), BinaryError> {
        self.counters.corrupt.fetch_add(1, Ordering::Relaxed);
        lock(&self.verified).remove(sha);
        match tokio::fs::remove_file(path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("cannot delete corrupt", path, e)),
        }
    }

    async fn prune(self: Arc<Self>) -> Result<Vec<String>, BinaryError> {
        let mut entries = match tokio::fs::read_dir(&self.root).await {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("cannot list", &self.root, e)),
        };
        // (sha, last use in this process, mtime)
        let mut cached: Vec<(String, Option<u64>, Option<std::time::SystemTime>)> = Vec::new();
        let mut stale_tmp = Vec::new();
        {
            while let Some(entry) = entries
                .next_entry()
                .await
                .map_err(|e| io_err("cannot list", &self.root, e))?
            {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(sha) = name.strip_prefix(".tmp-") {
                    if !lock(&self.inflight).contains_key(sha) {
                        stale_tmp.push(entry.path());
                    }
                    continue;
                }
                if !valid_sha256(&name) {
                    continue;
                }
                let mtime = entry.metadata().await.ok().and_then(|m| m.modified().ok());
                let used = lock(&self.used).1.get(&name).copied();
                cached.push((name, used, mtime));
            }
        }
        for p in stale_tmp {
            let _ = tokio::fs::remove_file(p).await;
        }
        // Most recently used first: used in this process (by recency), then by mtime.
        cached.sort_by(|a, b| b.1.cmp(&a.1).then(b.2.cmp(&a.2)));
        let mut removed = Vec::new();
        for (sha, _, _) in cached.into_iter().skip(self.keep) {
            let pinned = lock(&self.pins).get(&sha).copied().unwrap_or(0) > 0;
            if pinned || lock(&self.inflight).contains_key(&sha) {
                continue;
            }
            let path = self.root.join(&sha);
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {
                    lock(&self.verified).remove(&sha);
                    lock(&self.hashing).remove(&sha);
                    lock(&self.used).1.remove(&sha);
                    self.counters.pruned.fetch_add(1, Ordering::Relaxed);
                    removed.push(sha);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("cannot delete", &path, e)),
            }
        }
        Ok(removed)
    }
}

#[async_trait]
impl BinaryStore for FsBinaryStore {
    async fn get(&self, binary: &WorkerBinary) -> Result<CachedBinary, BinaryError> {
        self.fetch(binary).await
    }

    async fn still_verified(&self, cached: &CachedBinary) -> Result<(), BinaryError> {
        let sha = cached.sha256.to_ascii_lowercase();
        let path = self.path_of(&sha);
        if !valid_sha256(&sha) || path != cached.path {
            return Err(BinaryError::Io(format!(
                "{} is not a binary of this cache",
                cached.path.display()
            )));
        }
        match self.inner.inspect(&path, &sha, None).await? {
            Verdict::Sound => Ok(()),
            Verdict::Missing => Err(BinaryError::Io(format!(
                "{} disappeared after it was verified",
                path.display()
            ))),
            Verdict::Bad => {
                tracing::error!(path = %path.display(), "worker binary changed after it was verified; deleting it");
                self.inner.discard(&sha, &path).await?;
                Err(BinaryError::Changed {
                    version: cached.version.clone(),
                })
            }
        }
    }

    fn pin(&self, sha256: &str) -> BinaryPin {
        let sha = sha256.to_ascii_lowercase();
        *lock(&self.inner.pins).entry(sha.clone()).or_default() += 1;
        let inner = self.inner.clone();
        BinaryPin::new(move || {
            let mut pins = lock(&inner.pins);
            if let Some(n) = pins.get_mut(&sha) {
                *n -= 1;
                if *n == 0 {
                    pins.remove(&sha);
                }
            }
        })
    }
}

#[cfg(test)]
mod tests;
