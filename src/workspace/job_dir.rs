//! One job's directory: created fresh, filled from the job's origin, removed afterwards
//! unless the agent keeps it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::git::{GitError, checkout};
use super::snapshot::{Linked, SnapshotError, release, snapshot};
use crate::job::{Job, Origin};
use crate::util::{off_runtime, short_hash};

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("cannot create the workspace {path}: {cause}")]
    Create {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("snapshot of {from}: {cause}")]
    Snapshot { from: PathBuf, cause: SnapshotError },
    #[error(transparent)]
    Git(#[from] GitError),
    #[error("the snapshot thread failed: {0}")]
    Join(String),
}

/// Under the workspace root: one mirror per local source, which job directories link to.
pub const MIRRORS: &str = ".mirrors";

/// Time allowed for each git command of a checkout.
const GIT_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug)]
pub struct Workspace {
    pub dir: PathBuf,
    /// What was materialised, for the job's log: files copied, or the commit.
    pub description: String,
    /// The mirror the directory's files are linked to, for a snapshot.
    linked: Option<Linked>,
}

impl Workspace {
    /// `<root>/<job id>`, filled from the job's origin. A failure leaves no directory.
    pub async fn prepare(
        job: &Job,
        root: &Path,
        skip: Vec<PathBuf>,
        cancel: &CancellationToken,
    ) -> Result<Workspace, WorkspaceError> {
        let dir = root.join(&job.id);
        let (parent, made) = (root.to_path_buf(), dir.clone());
        off_runtime(move || {
            std::fs::create_dir_all(parent).and_then(|()| std::fs::create_dir(made))
        })
        .await
        .map_err(|cause| WorkspaceError::Create {
            path: dir.clone(),
            cause,
        })?;
        let mirrors = root.join(MIRRORS);
        let filled = fill(&job.origin, &dir, &mirrors, skip, cancel).await;
        match filled {
            Ok((description, linked)) => Ok(Workspace {
                dir,
                description,
                linked,
            }),
            Err(e) => {
                let _ = off_runtime(move || crate::files::remove_tree(&dir)).await;
                Err(e)
            }
        }
    }

    /// Ends the job's use of the directory: what it wrote through its links is dropped from
    /// the mirror, then the directory is removed, or moved to `keep` and that returned.
    /// Problems are logged: the job's outcome is settled by now.
    pub async fn close(self, keep: Option<&Path>) -> Option<PathBuf> {
        let keep = keep.map(Path::to_path_buf);
        let closed = tokio::task::spawn_blocking(move || {
            if let Some(linked) = &self.linked {
                match release(linked) {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(
                        "{}: {n} files the job wrote in place leave the mirror",
                        self.dir.display()
                    ),
                    Err(e) => {
                        tracing::warn!("{e}; the mirror is dropped");
                        let _ = crate::files::remove_tree(&linked.mirror);
                    }
                }
            }
            match keep {
                Some(kept) => match std::fs::rename(&self.dir, &kept) {
                    Ok(()) => Some(kept),
                    Err(e) => {
                        tracing::warn!("cannot keep the workspace at {}: {e}", kept.display());
                        Some(self.dir.clone())
                    }
                },
                None => {
                    if let Err(e) = crate::files::remove_tree(&self.dir) {
                        tracing::warn!("cannot remove the workspace {}: {e}", self.dir.display());
                    }
                    None
                }
            }
        })
        .await;
        closed.unwrap_or_else(|e| {
            tracing::warn!("closing a workspace failed: {e}");
            None
        })
    }
}

/// Removes a job directory no running job owns (an earlier agent's, killed mid-job): what
/// it may have written through its links is dropped from every mirror first, since when it
/// was linked is not known.
pub fn remove_leftover(root: &Path, dir: &Path) -> std::io::Result<()> {
    if let Ok(mirrors) = std::fs::read_dir(root.join(MIRRORS)) {
        for mirror in mirrors.filter_map(Result::ok) {
            let linked = Linked {
                mirror: mirror.path(),
                since: (i64::MIN, 0),
            };
            if let Err(e) = release(&linked) {
                tracing::warn!("{e}; the mirror is dropped");
                crate::files::remove_tree(&linked.mirror)?;
            }
        }
    }
    crate::files::remove_tree(dir)
}

async fn fill(
    origin: &Origin,
    dir: &Path,
    mirrors: &Path,
    skip: Vec<PathBuf>,
    cancel: &CancellationToken,
) -> Result<(String, Option<Linked>), WorkspaceError> {
    match origin {
        Origin::Path { path } => {
            let (from, to) = (path.clone(), dir.to_path_buf());
            let mirror = mirrors.join(short_hash(path.as_os_str().as_encoded_bytes()));
            let (copied, linked) =
                tokio::task::spawn_blocking(move || snapshot(&from, &mirror, &to, &skip))
                    .await
                    .map_err(|e| WorkspaceError::Join(e.to_string()))?
                    .map_err(|cause| WorkspaceError::Snapshot {
                        from: path.clone(),
                        cause,
                    })?;
            let description = format!(
                "snapshot of {}: {} files, {} bytes, {} copied since the last",
                path.display(),
                copied.files,
                copied.bytes,
                copied.copied
            );
            Ok((description, Some(linked)))
        }
        Origin::Git { url, reference } => {
            let commit = checkout(url, reference, dir, GIT_TIMEOUT, cancel).await?;
            let description = format!("{} at {reference} ({commit})", super::git::redact_url(url));
            Ok((description, None))
        }
    }
}
