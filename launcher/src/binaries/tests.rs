//! Tests of the worker-binary cache, against an in-memory backend.

use super::*;
use crate::ports::{ByteStream, ClaimOutcome};
use futures_util::StreamExt;
use protocol::api::{Lease, LogLine, TransitionRequest};
use protocol::Arch;
use sha2::{Digest, Sha256};
use std::sync::atomic::AtomicUsize;
use tokio::sync::Semaphore;

/// Serves binaries from memory in 64 KiB chunks; counts downloads; can hold them at a
/// gate, corrupt them, or fail mid-stream once.
#[derive(Default)]
struct MemBackend {
    blobs: Mutex<HashMap<String, Vec<u8>>>,
    downloads: AtomicUsize,
    offsets: Mutex<Vec<u64>>,
    gate: Option<Arc<Semaphore>>,
    corrupt: bool,
    fail_once_after: Mutex<Option<usize>>,
    /// Streams send one byte and then hang, until cleared (or only once).
    hang: Mutex<bool>,
    hang_once: bool,
}

impl MemBackend {
    fn add(&self, data: Vec<u8>, version: &str) -> WorkerBinary {
        let sha = hex::encode(Sha256::digest(&data));
        let wb = WorkerBinary {
            version: version.into(),
            arch: Arch::Amd64,
            size: data.len() as u64,
            sha256: sha.clone(),
        };
        lock(&self.blobs).insert(sha, data);
        wb
    }
}

#[async_trait]
impl Backend for MemBackend {
    async fn claim(&self, _: &str) -> Result<ClaimOutcome, BackendError> {
        unimplemented!()
    }
    async fn renew_lease(&self, _: &str) -> Result<Lease, BackendError> {
        unimplemented!()
    }
    async fn transition(&self, _: &str, _: &TransitionRequest) -> Result<(), BackendError> {
        unimplemented!()
    }
    async fn upload_logs(&self, _: &str, _: &[LogLine]) -> Result<u64, BackendError> {
        unimplemented!()
    }
    async fn policy_sample(
        &self,
        _: &str,
        _: &protocol::api::PolicySample,
    ) -> Result<(), BackendError> {
        unimplemented!()
    }
    async fn latest_binary(&self, _: Arch) -> Result<WorkerBinary, BackendError> {
        unimplemented!()
    }
    async fn download_binary(
        &self,
        binary: &WorkerBinary,
        offset: u64,
    ) -> Result<ByteStream, BackendError> {
        self.downloads.fetch_add(1, Ordering::SeqCst);
        lock(&self.offsets).push(offset);
        if let Some(gate) = &self.gate {
            let _permit = gate.acquire().await.unwrap();
        }
        let mut data = lock(&self.blobs).get(&binary.sha256).cloned().unwrap();
        if self.corrupt {
            data[0] ^= 0xff;
        }
        let data = data[offset as usize..].to_vec();
        let hang = {
            let mut h = lock(&self.hang);
            let v = *h;
            if self.hang_once {
                *h = false;
            }
            v
        };
        if hang {
            let first = bytes::Bytes::copy_from_slice(&data[..1]);
            return Ok(Box::pin(
                futures_util::stream::iter([Ok(first)]).chain(futures_util::stream::pending()),
            ));
        }
        let fail_after = lock(&self.fail_once_after).take();
        let chunks: Vec<Result<bytes::Bytes, BackendError>> = data
            .chunks(64 * 1024)
            .enumerate()
            .map(|(i, c)| {
                if Some(i) == fail_after {
                    Err(BackendError::Transient {
                        message: "connection reset".into(),
                        retry_after: None,
                    })
                } else {
                    Ok(bytes::Bytes::copy_from_slice(c))
                }
            })
            .collect();
        // Stop at the injected error, like a broken connection.
        let cut = chunks
            .iter()
            .position(|c| c.is_err())
            .map_or(chunks.len(), |p| p + 1);
        Ok(Box::pin(futures_util::stream::iter(
            chunks.into_iter().take(cut),
        )))
    }
}

/// Cached files are 0555; the tests play an attacker who can change that.
fn make_writable(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
}

fn blob(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_gets_share_one_download() {
    let gate = Arc::new(Semaphore::new(0));
    let backend = Arc::new(MemBackend {
        gate: Some(gate.clone()),
        ..Default::default()
    });
    let wb = backend.add(blob(300_000, 1), "1.0.0");
    let dir = tempfile::tempdir().unwrap();
    let store = FsBinaryStore::new(dir.path().to_path_buf(), backend.clone(), 3);
    const N: usize = 8;
    let tasks: Vec<_> = (0..N)
        .map(|_| {
            let store = store.clone();
            let wb = wb.clone();
            tokio::spawn(async move { store.get(&wb).await })
        })
        .collect();
    // Wait (without sleeping) until every caller has joined the one download.
    let mut spins = 0;
    while store.waiters(&wb.sha256) < N {
        spins += 1;
        assert!(spins < 1_000_000, "callers never joined");
        tokio::task::yield_now().await;
    }
    gate.add_permits(100);
    for t in tasks {
        let got = t.await.unwrap().unwrap();
        assert_eq!(got.path, dir.path().join("sha256").join(&wb.sha256));
    }
    assert_eq!(backend.downloads.load(Ordering::SeqCst), 1);
    let c = store.counters().snapshot();
    assert_eq!((c.downloads, c.misses, c.hits), (1, N as u64, 0));
    assert_eq!(c.bytes_downloaded, 300_000);
    let path = store.path_of(&wb.sha256);
    assert_eq!(std::fs::read(&path).unwrap(), blob(300_000, 1));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o555
        );
        // Only the launcher writes in the cache directory.
        assert_eq!(
            std::fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
    }
    // A later get is a hit without a download.
    store.get(&wb).await.unwrap();
    assert_eq!(backend.downloads.load(Ordering::SeqCst), 1);
    assert_eq!(store.counters().snapshot().hits, 1);
    assert_eq!(store.waiters(&wb.sha256), 0);
}

#[tokio::test]
async fn corrupt_download_is_refused_and_deleted() {
    let backend = Arc::new(MemBackend {
        corrupt: true,
        ..Default::default()
    });
    let wb = backend.add(blob(100_000, 2), "2.0.0");
    let dir = tempfile::tempdir().unwrap();
    let store = FsBinaryStore::new(dir.path().to_path_buf(), backend.clone(), 3);
    let e = store.get(&wb).await.unwrap_err();
    match &e {
        BinaryError::Corrupt {
            version,
            expected,
            actual,
            ..
        } => {
            assert_eq!(version, "2.0.0");
            assert_eq!(expected, &wb.sha256);
            assert_ne!(actual, &wb.sha256);
        }
        other => panic!("{other:?}"),
    }
    assert!(!store.path_of(&wb.sha256).exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("sha256"))
        .unwrap()
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(store.counters().snapshot().corrupt, 1);
}

#[tokio::test]
async fn wrong_size_is_corrupt() {
    let backend = Arc::new(MemBackend::default());
    let mut wb = backend.add(blob(1000, 3), "3");
    wb.size = 999; // the stream is longer than announced
    let dir = tempfile::tempdir().unwrap();
    let store = FsBinaryStore::new(dir.path().to_path_buf(), backend, 3);
    assert!(matches!(
        store.get(&wb).await,
        Err(BinaryError::Corrupt { .. })
    ));
    assert!(!store.path_of(&wb.sha256).exists());
}

#[tokio::test]
async fn tampered_cache_file_is_rehashed_on_first_use_and_replaced() {
    let backend = Arc::new(MemBackend::default());
    let wb = backend.add(blob(5000, 4), "4");
    let dir = tempfile::tempdir().unwrap();
    let store = FsBinaryStore::new(dir.path().to_path_buf(), backend.clone(), 3);
    store.get(&wb).await.unwrap();
    // Same size, different bytes, written behind the cache's back.
    let mut bad = blob(5000, 4);
    bad[10] ^= 1;
    make_writable(&store.path_of(&wb.sha256));
    std::fs::write(store.path_of(&wb.sha256), &bad).unwrap();
    // A new process (new store) re-hashes on first use, deletes and downloads again.
    let store2 = FsBinaryStore::new(dir.path().to_path_buf(), backend.clone(), 3);
    let got = store2.get(&wb).await.unwrap();
    assert_eq!(std::fs::read(got.path).unwrap(), blob(5000, 4));
    assert_eq!(backend.downloads.load(Ordering::SeqCst), 2);
    assert_eq!(store2.counters().snapshot().corrupt, 1);
}

/// A batch of runs starting together after a restart each check the cached binary: one
/// of them hashes it, the others wait and take its verdict, instead of each hashing the
/// same 50 MiB at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_checks_of_a_cached_file_hash_it_once() {
    let backend = Arc::new(MemBackend::default());
    let wb = backend.add(blob(1 << 20, 5), "5");
    let dir = tempfile::tempdir().unwrap();
    FsBinaryStore::new(dir.path().to_path_buf(), backend.clone(), 3)
        .get(&wb)
        .await
        .unwrap();
    // A new process: nothing verified yet.
    let store = FsBinaryStore::new(dir.path().to_path_buf(), backend.clone(), 3);
    let checks = (0..8).map(|_| store.get(&wb));
    for got in futures_util::future::join_all(checks).await {
        got.unwrap();
    }
    assert_eq!(store.counters().snapshot().hashed, 1);
    assert_eq!(backend.downloads.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn interrupted_download_resumes_from_offset() {
    let backend = Arc::new(MemBackend::default());
    *lock(&backend.fail_once_after) = Some(2);
    let wb = backend.add(blob(200_000, 5), "5");
    let dir = tempfile::tempdir().unwrap();
    let store = FsBinaryStore::new(dir.path().to_path_buf(), backend.clone(), 3);
    let got = store.get(&wb).await.unwrap();
    assert_eq!(std::fs::read(got.path).unwrap(), blob(200_000, 5));
    assert_eq!(*lock(&backend.offsets), [0, 2 * 64 * 1024]);
}

#[tokio::test]
async fn invalid_sha_from_network_is_refused() {
    let backend = Arc::new(MemBackend::default());
    let dir = tempfile::tempdir().unwrap();
    let store = FsBinaryStore::new(dir.path().to_path_buf(), backend, 3);
    let wb = WorkerBinary {
        version: "x".into(),
        arch: Arch::Amd64,
        size: 1,
        sha256: "../../etc/passwd".into(),
    };
    assert!(matches!(
        store.get(&wb).await,
        Err(BinaryError::Download(_))
    ));
}

#[tokio::test]
async fn prune_keeps_newest_and_pinned() {
    let backend = Arc::new(MemBackend::default());
    let dir = tempfile::tempdir().unwrap();
    let store = FsBinaryStore::new(dir.path().to_path_buf(), backend.clone(), 2);
    let v: Vec<WorkerBinary> = (0..4)
        .map(|i| backend.add(blob(1000 + i, i as u8), &format!("v{i}")))
        .collect();
    store.get(&v[0]).await.unwrap();
    let pin = store.pin(&v[0].sha256);
    store.get(&v[1]).await.unwrap();
    store.get(&v[2]).await.unwrap();
    // keep=2: v1 and v2 are newest; v0 survives because it is pinned.
    assert!(store.path_of(&v[0].sha256).exists());
    store.get(&v[3]).await.unwrap();
    // Now v2, v3 newest; v1 pruned; v0 still pinned.
    assert!(store.path_of(&v[0].sha256).exists());
    assert!(!store.path_of(&v[1].sha256).exists());
    assert!(store.path_of(&v[2].sha256).exists());
    assert!(store.path_of(&v[3].sha256).exists());
    drop(pin);
    let removed = store.prune().await.unwrap();
    assert_eq!(removed, [v[0].sha256.clone()]);
    assert!(!store.path_of(&v[0].sha256).exists());
    assert_eq!(store.counters().snapshot().pruned, 2);
    // A use refreshes recency: v2 used again, then v1 fetched; v3 is the oldest.
    store.get(&v[2]).await.unwrap();
    store.get(&v[1]).await.unwrap();
    assert!(!store.path_of(&v[3].sha256).exists());
    assert!(store.path_of(&v[2].sha256).exists());
}

#[tokio::test]
async fn absurd_announced_size_is_a_clear_error_not_a_panic() {
    let backend = Arc::new(MemBackend::default());
    let mut wb = backend.add(blob(1000, 6), "6");
    wb.size = u64::MAX;
    let dir = tempfile::tempdir().unwrap();
    let store = FsBinaryStore::new(dir.path().to_path_buf(), backend.clone(), 3);
    let e = store.get(&wb).await.unwrap_err();
    assert!(e.to_string().contains("size"), "{e}");
    assert!(!e.to_string().contains("panicked"), "{e}");
    assert!(!store.path_of(&wb.sha256).exists());
}

#[cfg(unix)]
#[tokio::test]
async fn symlink_planted_at_the_temp_path_is_not_followed() {
    let backend = Arc::new(MemBackend::default());
    let wb = backend.add(blob(3000, 7), "7");
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let root = dir.path().join("sha256");
    std::fs::create_dir_all(&root).unwrap();
    std::os::unix::fs::symlink(&victim, root.join(format!(".tmp-{}", wb.sha256))).unwrap();
    let store = FsBinaryStore::new(dir.path().to_path_buf(), backend, 3);
    let got = store.get(&wb).await.unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(std::fs::read(got.path).unwrap() == blob(3000, 7));
}

/// Tampering after this process verified the file (same size, different bytes) is
/// caught on the next use, not only by the next process.
#[tokio::test]
async fn tampered_cache_file_is_caught_within_the_same_process() {
    let backend = Arc::new(MemBackend::default());
    let wb = backend.add(blob(5000, 8), "8");
    let dir = tempfile::tempdir().unwrap();
    let store = FsBinaryStore::new(dir.path().to_path_buf(), backend.clone(), 3);
    let path = store.get(&wb).await.unwrap().path;
    // Just written, so its stamp is racy and only provisional.
    let recorded = lock(&store.inner.verified)[&wb.sha256];
    assert!(recorded.provisional_until.is_some());
    // As if verified long enough ago for the stamp to be final.
    let stamp = FileStamp::of(&std::fs::symlink_metadata(&path).unwrap());
    lock(&store.inner.verified).insert(wb.sha256.clone(), Recorded::final_(stamp));
    let mut bad = blob(5000, 8);
    bad[10] ^= 1;
    make_writable(&path);
    {
        use std::io::Write;
        let before = std::fs::metadata(&path).unwrap().modified().unwrap();
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all(&bad).unwrap();
        // The original mtime put back, as a careful attacker would: only the ctime,
        // which cannot be set back, tells the file changed.
        f.set_modified(before).unwrap();
    }
    let got = store.get(&wb).await.unwrap();
    assert!(std::fs::read(got.path).unwrap() == blob(5000, 8));
    assert_eq!(backend.downloads.load(Ordering::SeqCst), 2);
    assert_eq!(store.counters().snapshot().corrupt, 1);
}

/// A download's own stamp is taken within the racy window (the rename just set its
/// ctime): trusted while the window lasts, so the runs right after a download (a batch
/// sharing it, each checking again before its container) do not hash 50 MiB again each;
/// the first check after the window hashes it once more, and then the stamp is final.
#[tokio::test]
async fn a_fresh_download_is_trusted_within_its_racy_window_then_hashed_once_more() {
    let backend = Arc::new(MemBackend::default());
    let wb = backend.add(blob(5000, 9), "9");
    let dir = tempfile::tempdir().unwrap();
    let store = FsBinaryStore::new(dir.path().to_path_buf(), backend.clone(), 3);
    let got = store.get(&wb).await.unwrap();
    for _ in 0..3 {
        store.get(&wb).await.unwrap();
        store.still_verified(&got).await.unwrap();
    }
    let hashed = || store.counters().snapshot().hashed;
    assert_eq!(
        hashed(),
        0,
        "checks within the racy window hashed the file again"
    );
    // As if the window had passed since the download.
    lock(&store.inner.verified)
        .get_mut(&wb.sha256)
        .unwrap()
        .provisional_until = Some(std::time::UNIX_EPOCH);
    store.get(&wb).await.unwrap();
    assert_eq!(
        hashed(),
        1,
        "the first check after the window hashes the file"
    );
    store.still_verified(&got).await.unwrap();
    store.get(&wb).await.unwrap();
    assert_eq!(
        hashed(),
        1,
        "the stamp is final once hashed outside the window"
    );
    assert_eq!(backend.downloads.load(Ordering::SeqCst), 1);
}

/// A download that trickles and then hangs must not outlive its last waiter: once the
/// run that asked for it gives up, a later get starts afresh instead of joining it.
#[tokio::test(start_paused = true)]
async fn hung_download_is_abandoned_when_its_last_waiter_gives_up() {
    let backend = Arc::new(MemBackend::default());
    *lock(&backend.hang) = true;
    let wb = backend.add(blob(200_000, 9), "9");
    let dir = tempfile::tempdir().unwrap();
    let store = FsBinaryStore::new(dir.path().to_path_buf(), backend.clone(), 3);
    let first = tokio::time::timeout(Duration::from_secs(10), store.get(&wb)).await;
    assert!(first.is_err(), "the hung download cannot finish: {first:?}");
    assert_eq!(store.waiters(&wb.sha256), 0);
    *lock(&backend.hang) = false;
    let second = tokio::time::timeout(Duration::from_secs(10), store.get(&wb))
        .await
        .expect("a later get must not join the abandoned download")
        .unwrap();
    assert_eq!(std::fs::read(second.path).unwrap(), blob(200_000, 9));
}

/// A waiter with no deadline of its own (the prefetcher) is not stuck behind a
/// connection that trickles: too little progress counts as an interruption.
#[tokio::test(start_paused = true)]
async fn stalled_download_is_resumed_even_without_a_deadline() {
    let backend = Arc::new(MemBackend {
        hang_once: true,
        ..Default::default()
    });
    *lock(&backend.hang) = true;
    let wb = backend.add(blob(200_000, 10), "10");
    let dir = tempfile::tempdir().unwrap();
    let store = FsBinaryStore::new(dir.path().to_path_buf(), backend.clone(), 3);
    let got = tokio::time::timeout(Duration::from_secs(3600), store.get(&wb))
        .await
        .expect("the stalled download is given up and resumed")
        .unwrap();
    assert_eq!(std::fs::read(got.path).unwrap(), blob(200_000, 10));
    assert_eq!(*lock(&backend.offsets), [0, 1]);
}
