//! Telling a cached binary's bytes are still the verified ones: its [`FileStamp`], and a
//! check of one descriptor opened without following symlinks.

use std::fs::File;
use std::io;
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::io_err;
use crate::ports::BinaryError;

/// What tells one state of a file's bytes from another without reading them: a rewrite in
/// place changes the ctime (set by the kernel; `utimes` can forge the mtime, not it), a
/// replacement changes the inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileStamp {
    pub(super) dev: u64,
    pub(super) ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// Git's "racy" rule: a file changed within this long of when its stamp was taken could
/// change again without a visible ctime change (coarse timestamps); such a stamp is only
/// provisional, and the file is hashed again once the window is over.
pub(super) const RACY_WINDOW: Duration = Duration::from_secs(2);

impl FileStamp {
    /// When a stamp taken now stops being racy: None if it is not racy already.
    pub(super) fn racy_until(&self) -> Option<std::time::SystemTime> {
        let ctime = std::time::UNIX_EPOCH
            + Duration::new(
                u64::try_from(self.ctime.0).unwrap_or(0),
                u32::try_from(self.ctime.1).unwrap_or(0),
            );
        let until = ctime + RACY_WINDOW;
        (std::time::SystemTime::now() < until).then_some(until)
    }

    #[cfg(unix)]
    pub(super) fn of(meta: &std::fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    #[cfg(not(unix))]
    pub(super) fn of(meta: &std::fs::Metadata) -> FileStamp {
        let nanos = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as i64);
        FileStamp {
            dev: 0,
            ino: 0,
            len: meta.len(),
            mtime: (nanos, 0),
            ctime: (nanos, 0),
        }
    }
}

/// What [`Inner::inspect`] found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    Missing,
    Sound,
    /// Not a regular file of the expected size and SHA-256 (a symlink counts as bad).
    Bad,
}

/// Opens `path` without following a symlink and stamps that descriptor; a verdict instead
/// when the open or the metadata alone decides (missing, a symlink, not a regular file, or
/// not `size` bytes). An open and an `fstat`, without reading the file.
pub(super) fn open_stamped(
    path: &Path,
    size: Option<u64>,
) -> io::Result<Result<(File, FileStamp), Verdict>> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use rustix::fs::OFlags;
        use std::os::unix::fs::OpenOptionsExt;
        // No symlink is followed, and a FIFO planted here does not block the open.
        opts.custom_flags((OFlags::NOFOLLOW | OFlags::NONBLOCK).bits() as i32);
    }
    let f = match opts.open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Err(Verdict::Missing)),
        #[cfg(unix)]
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            return Ok(Err(Verdict::Bad))
        }
        Err(e) => return Err(e),
    };
    let meta = f.metadata()?;
    if !meta.is_file() || size.is_some_and(|s| s != meta.len()) {
        return Ok(Err(Verdict::Bad));
    }
    let stamp = FileStamp::of(&meta);
    Ok(Ok((f, stamp)))
}

/// Whether the file's bytes (read from `f`'s current offset) hash to `sha`.
pub(super) fn hash_matches(mut f: File, sha: &str) -> io::Result<bool> {
    let mut hasher = Sha256::new();
    io::copy(&mut f, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()) == sha)
}

/// Read-only and executable for everyone (runs mount it read-only into containers), set
/// on our own descriptor.
pub(super) async fn set_read_only(file: &tokio::fs::File, path: &Path) -> Result<(), BinaryError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o555))
            .await
            .map_err(|e| io_err("cannot chmod", path, e))?;
    }
    Ok(())
}
