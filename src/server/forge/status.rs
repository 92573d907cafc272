//! What a forge job's state says on its commit: GitHub's and Gitea's commit status
//! (`pending`, `success`, `failure`, `error`) with a short description.

use serde::{Deserialize, Serialize};

use crate::notifications::FailedStage;
use crate::protocol::{JobState, JobView};

/// GitHub refuses longer descriptions.
const MAX_DESCRIPTION: usize = 140;

/// One commit status, as both forges take it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitStatus {
    pub sha: String,
    pub state: String,
    pub target_url: String,
    pub description: String,
    pub context: String,
}

/// States that read the same on the forge: a job offered and queued again is still
/// queued.
pub fn same_status(a: JobState, b: JobState) -> bool {
    let class = |state| match state {
        JobState::Offered => JobState::Queued,
        other => other,
    };
    class(a) == class(b)
}

/// `dockhand/<tasks>`, or `dockhand/pipeline`: one status line per thing the repository
/// builds.
pub fn context(job: &JobView) -> String {
    match job.spec.tasks.as_slice() {
        [] => "dockhand/pipeline".to_owned(),
        tasks => format!("dockhand/{}", tasks.join(",")),
    }
}

/// The status of `job` in its current state, linking to `target_url`.
pub fn commit_status(job: &JobView, sha: &str, target_url: String) -> CommitStatus {
    let (state, description) = match job.state {
        JobState::Queued | JobState::Offered => ("pending", "Queued".to_owned()),
        JobState::Running => ("pending", "Running".to_owned()),
        JobState::Succeeded => ("success", format!("Succeeded{}", took(job))),
        JobState::Failed => ("failure", failed("Failed", job)),
        JobState::TimedOut => ("failure", failed("Timed out", job)),
        JobState::Cancelled => (
            "error",
            match &job.cancel_reason {
                Some(reason) => format!("Cancelled: {reason}"),
                None => "Cancelled".to_owned(),
            },
        ),
        JobState::Lost => ("error", "Lost: its agent stopped answering".to_owned()),
        JobState::Error => ("error", failed("Error", job)),
    };
    CommitStatus {
        sha: sha.to_owned(),
        state: state.to_owned(),
        target_url,
        description: shorten(&description),
        context: context(job),
    }
}

fn took(job: &JobView) -> String {
    match (job.started_at, job.finished_at) {
        (Some(start), Some(end)) if end >= start => {
            let seconds = (end - start) as f64 / 1000.0;
            format!(" in {seconds:.1}s")
        }
        _ => String::new(),
    }
}

/// `Failed: run test (exit code 3)`: the first stage that did not pass.
fn failed(what: &str, job: &JobView) -> String {
    let Some(result) = &job.result else {
        return what.to_owned();
    };
    match FailedStage::first(&result.stages) {
        Some(FailedStage {
            label,
            exit_code: Some(code),
            ..
        }) if code != 0 => format!("{what}: {label} (exit code {code})"),
        Some(stage) => format!("{what}: {}", stage.label),
        None => match &result.message {
            Some(message) => format!("{what}: {message}"),
            None => format!("{what} (exit code {})", result.exit_code),
        },
    }
}

/// At most [`MAX_DESCRIPTION`] characters, on one line.
fn shorten(text: &str) -> String {
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.chars().count() <= MAX_DESCRIPTION {
        return line;
    }
    let mut short: String = line.chars().take(MAX_DESCRIPTION - 1).collect();
    short.push('…');
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(state: JobState, stages: serde_json::Value) -> JobView {
        serde_json::from_value(serde_json::json!({
            "id": "job-1", "state": state, "source": {"git": "https://x/y.git"},
            "tasks": ["test"], "agent_id": null, "log_bytes": 0, "cancel_reason": null,
            "created_at": 0, "started_at": 1000, "finished_at": 3500,
            "result": {"status": state, "exit_code": 3, "stages": stages,
                       "started_at": null, "finished_at": null,
                       "log": {"bytes": 0, "sha256": ""}},
        }))
        .unwrap()
    }

    #[test]
    fn each_state_reads_as_the_forge_expects() {
        let stages = serde_json::json!([
            {"name": "base", "kind": "build", "status": "cached"},
            {"name": "test", "kind": "run", "status": "failed", "exit_code": 3},
        ]);
        let failed = commit_status(&job(JobState::Failed, stages), "abc", "http://x".into());
        assert_eq!(
            (
                failed.state.as_str(),
                failed.description.as_str(),
                failed.context.as_str()
            ),
            ("failure", "Failed: run test (exit code 3)", "dockhand/test")
        );
        let done = commit_status(
            &job(JobState::Succeeded, serde_json::json!([])),
            "a",
            "u".into(),
        );
        assert_eq!(
            (done.state.as_str(), done.description.as_str()),
            ("success", "Succeeded in 2.5s")
        );
        let mut cancelled = job(JobState::Cancelled, serde_json::json!([]));
        cancelled.cancel_reason = Some("pull request #3 closed\nby someone".into());
        let status = commit_status(&cancelled, "a", "u".into());
        assert_eq!(status.state, "error");
        assert_eq!(
            status.description,
            "Cancelled: pull request #3 closed by someone"
        );
        cancelled.cancel_reason = Some("x".repeat(500));
        assert_eq!(
            commit_status(&cancelled, "a", "u".into())
                .description
                .chars()
                .count(),
            140
        );
        assert!(same_status(JobState::Offered, JobState::Queued));
        assert!(!same_status(JobState::Queued, JobState::Running));
    }
}
