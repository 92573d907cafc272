//! One job's directory: created fresh, filled from the job's origin, removed afterwards
//! unless the agent keeps it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::git::{GitError, checkout};
use super::snapshot::{SnapshotError, snapshot};
use crate::collector::short_hash;
use crate::job::{Job, Origin};

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("cannot create the workspace {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("snapshot of {from}: {source}")]
    Snapshot {
        from: PathBuf,
        #[source]
        source: SnapshotError,
    },
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
        std::fs::create_dir_all(root)
            .and_then(|()| std::fs::create_dir(&dir))
            .map_err(|source| WorkspaceError::Create {
                path: dir.clone(),
                source,
            })?;
        let mirrors = root.join(MIRRORS);
        let filled = fill(&job.origin, &dir, &mirrors, skip, cancel).await;
        match filled {
            Ok(description) => Ok(Workspace { dir, description }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    pub fn remove(&self) -> std::io::Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

async fn fill(
    origin: &Origin,
    dir: &Path,
    mirrors: &Path,
    skip: Vec<PathBuf>,
    cancel: &CancellationToken,
) -> Result<String, WorkspaceError> {
    match origin {
        Origin::Path { path } => {
            let (from, to) = (path.clone(), dir.to_path_buf());
            let mirror = mirrors.join(short_hash(path.as_os_str().as_encoded_bytes()));
            let copied = tokio::task::spawn_blocking(move || snapshot(&from, &mirror, &to, &skip))
                .await
                .map_err(|e| WorkspaceError::Join(e.to_string()))?
                .map_err(|source| WorkspaceError::Snapshot {
                    from: path.clone(),
                    source,
                })?;
            Ok(format!(
                "snapshot of {}: {} files, {} bytes, {} copied since the last",
                path.display(),
                copied.files,
                copied.bytes,
                copied.copied
            ))
        }
        Origin::Git { url, reference } => {
            let commit = checkout(url, reference, dir, GIT_TIMEOUT, cancel).await?;
            Ok(format!(
                "{} at {reference} ({commit})",
                super::git::redact_url(url)
            ))
        }
    }
}
