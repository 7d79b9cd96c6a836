//! The cache's download path: streamed to an exclusive temporary file while hashing,
//! resumed with `Range` after a transient failure, cut when it stops progressing, verified
//! (size, SHA-256), made read-only and renamed into place.

use std::io;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use protocol::api::WorkerBinary;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::backoff::Backoff;
use crate::ports::{BackendError, BinaryError, CachedBinary};

use super::file_check::{set_read_only, FileStamp};
use super::{io_err, lock, Inner, Recorded, MIN_PROGRESS_BYTES, PROGRESS_WINDOW, RESUME_ATTEMPTS};

impl Inner {
    pub(super) async fn download(
        self: &Arc<Self>,
        binary: &WorkerBinary,
        sha: &str,
    ) -> Result<CachedBinary, BinaryError> {
        tokio::fs::create_dir_all(&self.root)
            .await
            .map_err(|e| io_err("cannot create", &self.root, e))?;
        // Only this launcher writes here (the binaries themselves are read-only to all).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            tokio::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700))
                .await
                .map_err(|e| io_err("cannot chmod", &self.root, e))?;
        }
        let tmp = self.root.join(format!(".tmp-{sha}"));
        let result = self.download_to(binary, sha, &tmp).await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    async fn download_to(
        self: &Arc<Self>,
        binary: &WorkerBinary,
        sha: &str,
        tmp: &Path,
    ) -> Result<CachedBinary, BinaryError> {
        // A leftover of a crash, or anything planted at the name, is unlinked (a symlink
        // itself, not its target); `create_new` then refuses whatever appears meanwhile.
        match tokio::fs::remove_file(tmp).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("cannot remove stale", tmp, e)),
        }
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(tmp)
            .await
            .map_err(|e| io_err("cannot create", tmp, e))?;
        let mut hasher = Sha256::new();
        let mut written: u64 = 0;
        let mut backoff = Backoff::new(
            Duration::from_millis(200),
            Duration::from_secs(5),
            self.seed,
        );
        let mut resumes = 0;
        'attempts: loop {
            let attempt: Result<(), BackendError> = async {
                let mut stream = self.backend.download_binary(binary, written).await?;
                let mut window_end = tokio::time::Instant::now() + PROGRESS_WINDOW;
                let mut window_from = written;
                loop {
                    let next = tokio::time::timeout_at(window_end, stream.next()).await;
                    let now = tokio::time::Instant::now();
                    if now >= window_end {
                        let due = MIN_PROGRESS_BYTES.min(binary.size.saturating_sub(window_from));
                        if written - window_from < due.max(1) {
                            return Err(BackendError::Transient {
                                message: format!(
                                    "less than {} KiB received in {} s",
                                    MIN_PROGRESS_BYTES >> 10,
                                    PROGRESS_WINDOW.as_secs()
                                ),
                                retry_after: None,
                            });
                        }
                        window_end = now + PROGRESS_WINDOW;
                        window_from = written;
                    }
                    // `next` is cancel-safe: a window that ended in good health goes on.
                    let Ok(next) = next else { continue };
                    let Some(chunk) = next else { break };
                    let chunk = chunk?;
                    // Never write past the announced size: a longer stream is corrupt.
                    let room = binary.size.saturating_sub(written).saturating_add(1);
                    let take = usize::try_from(room).map_or(chunk.len(), |r| chunk.len().min(r));
                    let chunk = &chunk[..take];
                    hasher.update(chunk);
                    file.write_all(chunk)
                        .await
                        .map_err(|e| BackendError::Transient {
                            message: format!("writing {}: {e}", tmp.display()),
                            retry_after: None,
                        })?;
                    written += chunk.len() as u64;
                    self.counters
                        .bytes_downloaded
                        .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    if written > binary.size {
                        break;
                    }
                }
                Ok(())
            }
            .await;
            match attempt {
                Ok(()) => break 'attempts,
                Err(BackendError::Transient {
                    message,
                    retry_after,
                }) if resumes < RESUME_ATTEMPTS && !message.starts_with("writing ") => {
                    resumes += 1;
                    let delay = backoff.next_delay(retry_after);
                    tracing::warn!(%message, written, resumes, "worker binary download interrupted; resuming");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(BinaryError::Download(e)),
            }
        }
        file.flush()
            .await
            .map_err(|e| io_err("cannot write", tmp, e))?;
        let actual = hex::encode(hasher.finalize());
        if written != binary.size || actual != sha {
            drop(file);
            let _ = tokio::fs::remove_file(tmp).await;
            self.counters.corrupt.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                version = %binary.version, arch = %binary.arch, expected_size = binary.size,
                got_size = written, "worker binary download is corrupt; deleted"
            );
            return Err(BinaryError::Corrupt {
                version: binary.version.clone(),
                arch: binary.arch,
                expected: sha.to_string(),
                actual: if written == binary.size {
                    actual
                } else {
                    format!("{actual} ({written} bytes, expected {})", binary.size)
                },
            });
        }
        file.sync_all()
            .await
            .map_err(|e| io_err("cannot fsync", tmp, e))?;
        set_read_only(&file, tmp).await?;
        let path = self.root.join(sha);
        tokio::fs::rename(tmp, &path)
            .await
            .map_err(|e| io_err("cannot rename into", &path, e))?;
        // Make the rename durable.
        let root = self.root.clone();
        let _ = tokio::task::spawn_blocking(move || {
            std::fs::File::open(root).and_then(|d| d.sync_all())
        })
        .await;
        // The stamp is that of the file we wrote (our descriptor, after the rename, which
        // changes its ctime), and the path must still name that file.
        let ours = file
            .metadata()
            .await
            .map_err(|e| io_err("cannot stat", &path, e))?;
        drop(file);
        let ours = FileStamp::of(&ours);
        let at_path = tokio::fs::symlink_metadata(&path)
            .await
            .map_err(|e| io_err("cannot stat", &path, e))?;
        let at_path = FileStamp::of(&at_path);
        if (at_path.dev, at_path.ino) != (ours.dev, ours.ino) {
            return Err(BinaryError::Io(format!(
                "{} was replaced while it was being renamed into place",
                path.display()
            )));
        }
        lock(&self.verified).insert(sha.to_string(), Recorded::new(ours));
        tracing::info!(version = %binary.version, arch = %binary.arch, bytes = written, "worker binary downloaded and verified");
        Ok(CachedBinary {
            version: binary.version.clone(),
            sha256: sha.to_string(),
            path,
        })
    }
}
