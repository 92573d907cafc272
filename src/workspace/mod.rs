//! Per-job workspaces: a fresh directory under the agent's `workspace_root`, holding a
//! snapshot of a local checkout or a git clone at the job's commit, so nothing that
//! happens to the source during the run changes the run.

mod git;
mod snapshot;
mod workspace;

pub use git::{GitError, redact_url};
pub use snapshot::{SnapshotError, snapshot};
pub use workspace::{Workspace, WorkspaceError};
