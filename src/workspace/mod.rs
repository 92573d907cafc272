//! Per-job workspaces: a fresh directory under the agent's `workspace_root`, holding a
//! snapshot of a local checkout or a git clone at the job's commit, so nothing that
//! happens to the source during the run changes the run.

mod git;
mod job_dir;
mod snapshot;

pub use git::{
    GitError, SourceRefusal, UrlKind, check_commit, check_reference, redact_url, url_kind,
};
pub use job_dir::{Workspace, WorkspaceError, remove_leftover};
pub use snapshot::{SnapshotError, snapshot};
