//! The launcher's [`BinaryStore`] and [`Workspaces`] ports in memory: binaries are
//! downloaded through the backend port and verified (SHA-256) before use, as on disk;
//! workspaces are names in a set.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures_util::StreamExt;
use launcher::ports::{Backend, BinaryError, BinaryPin, BinaryStore, CachedBinary};
use launcher::workspace::{WorkspaceError, Workspaces};
use protocol::api::WorkerBinary;
use sha2::{Digest, Sha256};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Downloads still to fail for want of disk space (the `full_disk` fault), shared by a
/// launcher's restarts like its disk.
#[derive(Clone, Default)]
pub struct DiskFull(Arc<AtomicU32>);

impl DiskFull {
    /// The next `downloads` fail (0: there is room again).
    pub fn fail_next(&self, downloads: u32) {
        self.0.store(downloads, Ordering::Relaxed);
    }

    fn take(&self) -> bool {
        self.0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// Verified binaries by SHA-256; a failed or corrupt download is never kept.
pub struct MemoryBinaryStore {
    backend: Arc<dyn Backend>,
    verified: Mutex<BTreeMap<String, usize>>,
    full: DiskFull,
}

impl MemoryBinaryStore {
    pub fn new(backend: Arc<dyn Backend>, full: DiskFull) -> MemoryBinaryStore {
        MemoryBinaryStore {
            backend,
            verified: Mutex::new(BTreeMap::new()),
            full,
        }
    }

    fn cached(binary: &WorkerBinary) -> CachedBinary {
        CachedBinary {
            version: binary.version.clone(),
            sha256: binary.sha256.clone(),
            path: PathBuf::from(format!("/in-memory/binaries/{}", binary.sha256)),
        }
    }
}

#[async_trait]
impl BinaryStore for MemoryBinaryStore {
    async fn get(&self, binary: &WorkerBinary) -> Result<CachedBinary, BinaryError> {
        if lock(&self.verified).contains_key(&binary.sha256) {
            return Ok(Self::cached(binary));
        }
        let mut stream = self
            .backend
            .download_binary(binary, 0)
            .await
            .map_err(BinaryError::Download)?;
        let mut hasher = Sha256::new();
        let mut size = 0usize;
        let full = self.full.take();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(BinaryError::Download)?;
            if full {
                // The first write fails, as on disk: the partial file is never kept.
                return Err(BinaryError::Io(format!(
                    "writing {}: No space left on device (os error 28)",
                    Self::cached(binary).path.display()
                )));
            }
            size += chunk.len();
            hasher.update(&chunk);
        }
        let actual = hex(&hasher.finalize());
        if !actual.eq_ignore_ascii_case(&binary.sha256) {
            return Err(BinaryError::Corrupt {
                version: binary.version.clone(),
                arch: binary.arch,
                expected: binary.sha256.clone(),
                actual,
            });
        }
        lock(&self.verified).insert(binary.sha256.clone(), size);
        Ok(Self::cached(binary))
    }

    fn pin(&self, _sha256: &str) -> BinaryPin {
        // Nothing is pruned in memory.
        BinaryPin::new(|| {})
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Workspaces as a set of run ULIDs (shared across a launcher's restarts, like a disk).
#[derive(Clone, Default)]
pub struct MemoryWorkspaces(Arc<Mutex<BTreeSet<String>>>);

impl MemoryWorkspaces {
    /// Removes every workspace (what a restarted launcher does with leftovers).
    pub fn reap(&self) -> usize {
        std::mem::take(&mut *lock(&self.0)).len()
    }

    pub fn live(&self) -> Vec<String> {
        lock(&self.0).iter().cloned().collect()
    }
}

impl Workspaces for MemoryWorkspaces {
    fn create(&self, run_ulid: &str) -> Result<PathBuf, WorkspaceError> {
        lock(&self.0).insert(run_ulid.to_string());
        Ok(PathBuf::from(format!("/in-memory/workspaces/{run_ulid}")))
    }

    fn remove(&self, run_ulid: &str) -> Result<(), WorkspaceError> {
        lock(&self.0).remove(run_ulid);
        Ok(())
    }

    fn removal_blocks(&self) -> bool {
        false
    }
}
