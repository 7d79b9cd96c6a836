//! The run's workspace: a fresh host directory per run, `<data_dir>/workspaces/<container
//! name>`, bind-mounted at `/mnt/workspace`, owned by the run user, with its `source`
//! folder (where Spacelift's worker checks the repository out). Removed once the run's
//! container is; what a crashed launcher left is removed at the next start, under the data
//! directory's lock (so no other launcher's run can be using it).
//!
//! A host directory rather than a Docker volume (a fresh volume belongs to root, so the
//! run user could not write it without an image that prepares it) or a tmpfs (a checkout,
//! providers and plans in memory, charged to the run's memory limit).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::container_spec::{container_name, SOURCE_DIR};
use crate::settings::RunUser;

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "the launcher runs as uid {launcher_uid}, not root, so it cannot give run workspaces \
         to the run user {user}; run it as root or set SPACELIFT_LAUNCHER_RUN_USER to its own \
         uid ({launcher_uid})"
    )]
    CannotOwn { launcher_uid: u32, user: RunUser },
    #[error("run id {0:?} cannot name a workspace (letters, digits, '-' and '_' only)")]
    BadRunId(String),
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> WorkspaceError {
    let path = path.display().to_string();
    move |source| WorkspaceError::Io { what, path, source }
}

/// Where run workspaces live. Sync calls: callers in async code go through
/// `spawn_blocking` (removing a checkout can take a while).
pub trait Workspaces: Send + Sync + 'static {
    /// Creates the run's workspace and its `source` folder, both owned by the run user;
    /// returns its host path.
    fn create(&self, run_ulid: &str) -> Result<PathBuf, WorkspaceError>;
    /// Removes it with everything in it; a missing one is not an error.
    fn remove(&self, run_ulid: &str) -> Result<(), WorkspaceError>;
    /// Whether `remove` may block (a directory tree): then it runs on tokio's blocking
    /// pool. An implementation that never blocks says false and is called in place.
    fn removal_blocks(&self) -> bool {
        true
    }
}

/// The production [`Workspaces`]: directories under `<data_dir>/workspaces`.
#[derive(Debug)]
pub struct DirWorkspaces {
    root: PathBuf,
    /// Chowned to after creation; None when the launcher is the run user already.
    chown_to: Option<RunUser>,
}

impl DirWorkspaces {
    /// Creates `root` (0700: the daemon mounts a run's folder as root, and inside the
    /// container nothing above the mount is checked) and checks the launcher can give
    /// workspaces to `user`: as root it chowns them; otherwise `user` must be its own uid.
    pub fn open(root: PathBuf, user: RunUser) -> Result<DirWorkspaces, WorkspaceError> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        std::fs::create_dir_all(&root).map_err(io_err("creating", &root))?;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err("setting the mode of", &root))?;
        // What we create is ours: its owner is this process's (file-system) uid.
        let launcher_uid = std::fs::metadata(&root)
            .map_err(io_err("reading", &root))?
            .uid();
        let chown_to = match launcher_uid {
            0 => Some(user),
            uid if uid == user.uid => None,
            _ => return Err(WorkspaceError::CannotOwn { launcher_uid, user }),
        };
        Ok(DirWorkspaces { root, chown_to })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Removes every workspace left in `root`. Only at start, before any run: the data
    /// directory's lock guarantees no other launcher uses them. Returns how many.
    pub fn reap(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return 0;
        };
        let mut n = 0;
        for e in entries.flatten() {
            let path = e.path();
            match remove_tree(&path) {
                Ok(()) => {
                    tracing::warn!(workspace = %path.display(), "removed a run workspace left by an earlier launcher");
                    n += 1;
                }
                Err(err) => {
                    tracing::error!(workspace = %path.display(), error = %err, "could not remove a leftover run workspace")
                }
            }
        }
        n
    }

    fn path(&self, run_ulid: &str) -> Result<PathBuf, WorkspaceError> {
        let ok = !run_ulid.is_empty()
            && run_ulid
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok {
            return Err(WorkspaceError::BadRunId(run_ulid.to_string()));
        }
        Ok(self.root.join(container_name(run_ulid)))
    }
}

impl Workspaces for DirWorkspaces {
    fn create(&self, run_ulid: &str) -> Result<PathBuf, WorkspaceError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let dir = self.path(run_ulid)?;
        // A leftover of this very run (a claim retried after a crash): start clean.
        remove_tree(&dir)?;
        let source = dir.join(SOURCE_DIR);
        for d in [&dir, &source] {
            std::fs::DirBuilder::new()
                .mode(0o755)
                .create(d)
                .map_err(io_err("creating", d))?;
            // The umask may have narrowed the mode.
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))
                .map_err(io_err("setting the mode of", d))?;
            if let Some(u) = self.chown_to {
                std::os::unix::fs::chown(d, Some(u.uid), Some(u.gid))
                    .map_err(io_err("giving the run user", d))?;
            }
        }
        Ok(dir)
    }

    fn remove(&self, run_ulid: &str) -> Result<(), WorkspaceError> {
        remove_tree(&self.path(run_ulid)?)
    }
}

/// `remove_dir_all`, and if the run left read-only folders (a Go module cache does) that
/// a non-root launcher cannot empty, makes them writable and tries once more.
fn remove_tree(path: &Path) -> Result<(), WorkspaceError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            make_writable(path);
            std::fs::remove_dir_all(path).map_err(io_err("removing", path))
        }
        Err(e) => Err(io_err("removing", path)(e)),
    }
}

fn make_writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let mode = meta.permissions().mode() | 0o700;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            make_writable(&e.path());
        }
    }
}

/// Removes a run's workspace when dropped, unless [`WorkspaceGuard::remove`] did: a run
/// task aborted on a fatal exit still cleans up (in the background; what the exit cuts
/// short, the next start reaps).
pub struct WorkspaceGuard {
    workspaces: Arc<dyn Workspaces>,
    run_ulid: String,
    armed: bool,
}

impl WorkspaceGuard {
    pub fn new(workspaces: Arc<dyn Workspaces>, run_ulid: &str) -> WorkspaceGuard {
        WorkspaceGuard {
            workspaces,
            run_ulid: run_ulid.to_string(),
            armed: true,
        }
    }

    /// Removes the workspace (after the container is gone) and waits for it.
    pub async fn remove(mut self) {
        self.armed = false;
        let (ws, run) = (self.workspaces.clone(), self.run_ulid.clone());
        let done = if ws.removal_blocks() {
            tokio::task::spawn_blocking(move || ws.remove(&run)).await
        } else {
            Ok(ws.remove(&run))
        };
        match done {
            Ok(Ok(())) => tracing::debug!("run workspace removed"),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "could not remove the run's workspace; the next start removes it")
            }
            Err(e) => tracing::error!(error = %e, "removing the run's workspace panicked"),
        }
    }
}

impl Drop for WorkspaceGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (ws, run) = (self.workspaces.clone(), self.run_ulid.clone());
        let remove = move || {
            if let Err(e) = ws.remove(&run) {
                tracing::error!(error = %e, "could not remove the run's workspace; the next start removes it");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) if self.workspaces.removal_blocks() => drop(h.spawn_blocking(remove)),
            _ => remove(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    const RUN: &str = "01HRUNULIDABCDEF";

    #[test]
    fn a_run_gets_its_own_workspace_owned_by_the_run_user_and_loses_it() {
        let data = tempfile::tempdir().unwrap();
        let me = std::fs::metadata(data.path()).unwrap().uid();
        // As root, Spacelift's user; otherwise our own uid (all a non-root launcher can do).
        let user = if me == 0 {
            RunUser::SPACELIFT
        } else {
            RunUser { uid: me, gid: me }
        };
        let ws = DirWorkspaces::open(data.path().join("workspaces"), user).unwrap();
        let dir = ws.create(RUN).unwrap();
        assert_eq!(
            dir,
            data.path().join("workspaces/spacelift-01hrunulidabcdef")
        );
        for d in [dir.clone(), dir.join("source")] {
            let m = std::fs::metadata(&d).unwrap();
            assert_eq!(m.uid(), user.uid, "{}", d.display());
            if me == 0 {
                assert_eq!(m.gid(), user.gid, "{}", d.display());
            }
            assert_eq!(m.permissions().mode() & 0o777, 0o755);
        }
        let root_mode = std::fs::metadata(ws.root()).unwrap().permissions().mode();
        assert_eq!(root_mode & 0o777, 0o700);
        // What the run leaves, even read-only folders, goes with it.
        std::fs::create_dir(dir.join("source/ro")).unwrap();
        std::fs::write(dir.join("source/ro/f"), "x").unwrap();
        std::fs::set_permissions(
            dir.join("source/ro"),
            std::fs::Permissions::from_mode(0o555),
        )
        .unwrap();
        ws.remove(RUN).unwrap();
        assert!(!dir.exists());
        ws.remove(RUN).unwrap();
    }

    #[test]
    fn leftovers_are_reaped_and_bad_run_ids_refused() {
        let data = tempfile::tempdir().unwrap();
        let me = std::fs::metadata(data.path()).unwrap().uid();
        let ws = DirWorkspaces::open(data.path().join("w"), RunUser { uid: me, gid: me }).unwrap();
        ws.create("R1").unwrap();
        ws.create("R2").unwrap();
        assert_eq!(ws.reap(), 2);
        assert_eq!(std::fs::read_dir(ws.root()).unwrap().count(), 0);
        for bad in ["", "../x", "a/b", "."] {
            assert!(
                matches!(ws.create(bad), Err(WorkspaceError::BadRunId(_))),
                "{bad}"
            );
        }
    }

    /// Dropped outside a runtime (or with the run task aborted), the guard removes it.
    #[test]
    fn a_dropped_guard_removes_the_workspace() {
        let data = tempfile::tempdir().unwrap();
        let me = std::fs::metadata(data.path()).unwrap().uid();
        let ws = Arc::new(
            DirWorkspaces::open(data.path().join("w"), RunUser { uid: me, gid: me }).unwrap(),
        );
        let dir = ws.create(RUN).unwrap();
        drop(WorkspaceGuard::new(ws.clone(), RUN));
        assert!(!dir.exists());
    }

    #[test]
    fn a_non_root_launcher_refuses_another_run_user() {
        let data = tempfile::tempdir().unwrap();
        let me = std::fs::metadata(data.path()).unwrap().uid();
        if me == 0 {
            return; // root can give workspaces to anyone
        }
        let e = DirWorkspaces::open(data.path().join("w"), RunUser::SPACELIFT).unwrap_err();
        assert!(e.to_string().contains("SPACELIFT_LAUNCHER_RUN_USER"), "{e}");
    }
}
