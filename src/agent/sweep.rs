//! Leftovers of jobs that are not running (an earlier agent that crashed or was killed):
//! their containers, networks and workspace directories. Only this agent's objects (by the
//! `dockhand.agent` label) and only directories named like job ids are touched; what those
//! wrote into the snapshot mirrors leaves the mirrors with them.

use std::collections::HashSet;
use std::path::Path;

use crate::docker::{DockerError, Engine, Leftovers, labels};
use crate::workspace::remove_leftover;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub docker: Leftovers,
    pub workspaces: usize,
}

impl Swept {
    pub fn is_empty(&self) -> bool {
        *self == Swept::default()
    }
}

/// `spare_networks`: the agent's own spares, not leftovers.
pub async fn sweep(
    engine: &Engine,
    agent: &str,
    workspace_root: &Path,
    running: &HashSet<String>,
    spare_networks: &HashSet<String>,
) -> Result<Swept, DockerError> {
    let docker = engine
        .remove_labelled_except(labels::AGENT, agent, running, spare_networks)
        .await?;
    let (root, running) = (workspace_root.to_path_buf(), running.clone());
    let workspaces = crate::util::off_runtime(move || remove_workspaces(&root, &running)).await;
    Ok(Swept { docker, workspaces })
}

/// Removes the workspaces of jobs not `running`; returns how many.
fn remove_workspaces(workspace_root: &Path, running: &HashSet<String>) -> usize {
    let Ok(entries) = std::fs::read_dir(workspace_root) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !is_job_id(&name) || running.contains(&name) {
            continue;
        }
        match remove_leftover(workspace_root, &entry.path()) {
            Ok(()) => removed += 1,
            Err(e) => tracing::warn!("cannot remove {}: {e}", entry.path().display()),
        }
    }
    removed
}

/// `YYYYMMDD-HHMMSS-xxxx`, as [`crate::job::new_job_id`] makes them.
fn is_job_id(name: &str) -> bool {
    let parts: Vec<&str> = name.split('-').collect();
    matches!(parts.as_slice(), [date, time, salt]
        if date.len() == 8 && date.bytes().all(|b| b.is_ascii_digit())
        && time.len() == 6 && time.bytes().all(|b| b.is_ascii_digit())
        && salt.len() == 4 && salt.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::is_job_id;

    #[test]
    fn only_job_ids_are_swept() {
        assert!(is_job_id(&crate::job::new_job_id()));
        for other in [
            "src",
            "20261123-101500",
            "2026112-101500-abcd",
            "20261123-101500-abcg",
        ] {
            assert!(!is_job_id(other), "{other}");
        }
    }
}
