//! The data directory has one owner at a time, and what the launcher writes there is
//! written atomically and durably.
//!
//! Two launchers sharing a directory would overwrite each other's `worker.json` and prune
//! each other's downloads, so the first takes an advisory lock (`flock`) on the directory
//! itself (so deleting the lock file frees nothing) and on `<dir>/launcher.lock` for its
//! whole life, and records its pid in that file; the second is
//! refused with an error naming the directory and that pid. The kernel drops the lock
//! when the process dies, so a crash never leaves the directory locked.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::config::vars;

/// The lock file's name inside the data directory.
pub const LOCK_FILE: &str = "launcher.lock";

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error(
        "{var} {dir} is in use by another launcher{holder}; give each launcher its own data \
         directory"
    )]
    InUse {
        var: &'static str,
        dir: String,
        /// `" (pid N)"` when the holder recorded one.
        holder: String,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DataDirError {
    let path = path.display().to_string();
    move |source| DataDirError::Io { what, path, source }
}

/// Holds the data directory's lock until dropped (or the process exits).
#[derive(Debug)]
pub struct DataDirLock {
    /// The lock itself: deleting `launcher.lock` cannot release a lock on the directory.
    _dir: File,
    _file: File,
    path: PathBuf,
}

/// The pid recorded in the lock file, for the refusal's message.
fn holder(path: &Path) -> String {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
    }
    let mut text = String::new();
    if let Ok(f) = options.open(path) {
        let _ = f.take(32).read_to_string(&mut text);
    }
    match text.trim().parse::<u32>() {
        Ok(pid) => format!(" (pid {pid})"),
        Err(_) => String::new(),
    }
}

/// Takes `file`'s exclusive lock; `Ok(false)` when another holds it.
fn try_lock(file: &File, path: &Path) -> Result<bool, DataDirError> {
    match rustix::fs::flock(file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Ok(false),
        Err(e) => Err(io_err("cannot lock", path)(e.into())),
    }
}

impl DataDirLock {
    /// Creates `dir` if needed and locks it, or says who holds it.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, DataDirError> {
        std::fs::create_dir_all(dir).map_err(io_err("cannot create", dir))?;
        let path = dir.join(LOCK_FILE);
        let in_use = || DataDirError::InUse {
            var: vars::DATA_DIR.name,
            dir: dir.display().to_string(),
            holder: holder(&path),
        };
        let dir_file = File::open(dir).map_err(io_err("cannot open", dir))?;
        if !try_lock(&dir_file, dir)? {
            return Err(in_use());
        }
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            // A symlink planted at the lock's name must not make us truncate its target.
            options
                .mode(0o644)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
        }
        let mut file = options.open(&path).map_err(io_err("cannot open", &path))?;
        // Also the file's lock, which is what earlier launcher versions take.
        if !try_lock(&file, &path)? {
            return Err(in_use());
        }
        let record = |file: &mut File| -> io::Result<()> {
            file.set_len(0)?;
            file.rewind()?;
            writeln!(file, "{}", std::process::id())?;
            file.sync_all()
        };
        record(&mut file).map_err(io_err("cannot write", &path))?;
        Ok(DataDirLock {
            _dir: dir_file,
            _file: file,
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new file,
/// never a mix: a fresh temporary file with an unpredictable name (created exclusively,
/// so nothing planted is followed) in the same directory, written and fsynced, renamed
/// over `path`, then the directory fsynced so the rename itself survives a power cut.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map_or_else(|| "file".to_string(), |n| n.to_string_lossy().into_owned());
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_dir_and_pid() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = DataDirLock::acquire(&data).unwrap();
        assert_eq!(first.path(), data.join(LOCK_FILE));
        // flock locks belong to the open file description: a second open in this same
        // process conflicts exactly as another process would.
        let e = DataDirLock::acquire(&data).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "SPACELIFT_LAUNCHER_DATA_DIR {} is in use by another launcher (pid {}); give \
                 each launcher its own data directory",
                data.display(),
                std::process::id()
            )
        );
        drop(first);
        DataDirLock::acquire(&data).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_at_the_lock_path_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::os::unix::fs::symlink(&victim, data.join(LOCK_FILE)).unwrap();
        let e = DataDirLock::acquire(&data).unwrap_err().to_string();
        assert!(e.starts_with("cannot open "), "{e}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    }

    /// The lock is the directory's, not the file's: deleting `launcher.lock` under a
    /// running launcher must not let a second one in.
    #[test]
    fn a_deleted_lock_file_does_not_free_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let _first = DataDirLock::acquire(&data).unwrap();
        std::fs::remove_file(data.join(LOCK_FILE)).unwrap();
        let e = DataDirLock::acquire(&data).unwrap_err().to_string();
        assert!(e.contains("is in use by another launcher"), "{e}");
    }

    #[test]
    fn atomic_write_replaces_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.json");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["f.json"]);
    }
}
