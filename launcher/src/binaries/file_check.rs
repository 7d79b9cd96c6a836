//! Telling a cached binary's bytes are still the verified ones: its [`FileStamp`], and a
//! check of one descriptor opened without following symlinks.

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
/// change again without a visible ctime change (coarse timestamps); such a stamp is not
/// trusted and the file is re-hashed next time.
pub(super) const RACY_WINDOW: Duration = Duration::from_secs(2);

impl FileStamp {
    pub(super) fn is_racy(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let ctime = Duration::new(
            u64::try_from(self.ctime.0).unwrap_or(0),
            u32::try_from(self.ctime.1).unwrap_or(0),
        );
        now.saturating_sub(ctime) < RACY_WINDOW
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

pub(super) fn inspect_file(
    path: &Path,
    sha: &str,
    size: Option<u64>,
    recorded: Option<FileStamp>,
) -> io::Result<(Verdict, Option<FileStamp>)> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use rustix::fs::OFlags;
        use std::os::unix::fs::OpenOptionsExt;
        // No symlink is followed, and a FIFO planted here does not block the open.
        opts.custom_flags((OFlags::NOFOLLOW | OFlags::NONBLOCK).bits() as i32);
    }
    let mut f = match opts.open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Verdict::Missing, None)),
        #[cfg(unix)]
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            return Ok((Verdict::Bad, None))
        }
        Err(e) => return Err(e),
    };
    let meta = f.metadata()?;
    if !meta.is_file() || size.is_some_and(|s| s != meta.len()) {
        return Ok((Verdict::Bad, None));
    }
    let stamp = FileStamp::of(&meta);
    if recorded == Some(stamp) {
        return Ok((Verdict::Sound, Some(stamp)));
    }
    let mut hasher = Sha256::new();
    io::copy(&mut f, &mut hasher)?;
    if hex::encode(hasher.finalize()) != sha {
        return Ok((Verdict::Bad, None));
    }
    // The stamp from before hashing: a change during it shows next time.
    Ok((Verdict::Sound, Some(stamp)))
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
