//! The agent's `[[notify]]`: after each job of a schedule or watch source, its outcome is
//! compared with the stream's last one (kept in the state directory, so a restarted agent
//! still knows a failure from before) and the targets that want to hear are sent a notice.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::config::AgentNotify;
use crate::notifications::{JobSummary, Outbox, Retry, decide};

/// result.json is a job's summary; more than this is not one.
const MAX_RESULT_BYTES: u64 = 16 << 20;

/// A stream's last outcome is a word: more is not ours.
const MAX_STATE_BYTES: u64 = 64;

#[derive(Debug, thiserror::Error)]
enum StateError {
    #[error("cannot read {}: {cause}", .path.display())]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{}: {cause}", .path.display())]
    Result {
        path: PathBuf,
        cause: crate::notifications::NotifyError,
    },
    #[error("cannot record the outcome in {}: {cause}", .path.display())]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
}

pub struct Notifier {
    outbox: Mutex<Outbox>,
}

impl Notifier {
    pub fn new(retry: Retry) -> Arc<Notifier> {
        Arc::new(Notifier {
            outbox: Mutex::new(Outbox::new(retry)),
        })
    }

    /// Reads the job's result, remembers its outcome for `stream` and sends the notices it
    /// deserves. Run in its own task: nothing here delays the next job.
    pub async fn job_finished(
        &self,
        targets: &[AgentNotify],
        state_dir: &Path,
        stream: &str,
        results: &Path,
    ) {
        let targets: Vec<&AgentNotify> = targets.iter().filter(|t| t.covers(stream)).collect();
        if targets.is_empty() {
            return;
        }
        // Held across read, decision and write: two jobs of one stream ending together
        // each compare with the other's outcome, never with the same old one.
        let mut outbox = self.outbox.lock().await;
        let (result, state) = (results.join("result.json"), state_file(state_dir, stream));
        let remembered = crate::util::off_runtime(move || remember(&result, &state)).await;
        let (summary, previous) = match remembered {
            Ok(Some(known)) => known,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!("{stream}: no notification: {e}");
                return;
            }
        };
        let Some(succeeded) = summary.outcome() else {
            return;
        };
        for target in targets {
            if let Some(kind) = decide(&target.on, succeeded, previous) {
                outbox.send(&target.target(), &summary.notice(kind));
            }
        }
    }

    /// See [`Outbox::shutdown`].
    pub async fn shutdown(self: Arc<Self>) {
        match Arc::try_unwrap(self) {
            Ok(notifier) => notifier.outbox.into_inner().shutdown().await,
            Err(_) => tracing::warn!("notifications still being decided are dropped"),
        }
    }
}

/// `state_dir/notify-<hash of the stream>.last`, holding `succeeded` or `failed`.
fn state_file(state_dir: &Path, stream: &str) -> PathBuf {
    let name = crate::util::short_hash(stream.as_bytes());
    state_dir.join(format!("notify-{name}.last"))
}

/// The job's summary and the stream's previous outcome, the job's own recorded in its
/// place; none for a job that counts as neither success nor failure (cancelled), which
/// leaves the record alone.
fn remember(result: &Path, state: &Path) -> Result<Option<(JobSummary, Option<bool>)>, StateError> {
    let bytes =
        crate::files::read_limited(result, MAX_RESULT_BYTES).map_err(|cause| StateError::Read {
            path: result.to_owned(),
            cause,
        })?;
    let summary = JobSummary::from_result_file(&bytes).map_err(|cause| StateError::Result {
        path: result.to_owned(),
        cause,
    })?;
    let Some(succeeded) = summary.outcome() else {
        return Ok(None);
    };
    let previous = match crate::files::read_limited(state, MAX_STATE_BYTES) {
        Ok(bytes) => match String::from_utf8_lossy(&bytes).trim() {
            "succeeded" => Some(true),
            "failed" => Some(false),
            _ => None,
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(cause) => {
            return Err(StateError::Read {
                path: state.to_owned(),
                cause,
            });
        }
    };
    let word = if succeeded { "succeeded" } else { "failed" };
    let write = || {
        if let Some(dir) = state.parent() {
            std::fs::create_dir_all(dir)?;
        }
        crate::files::write_replacing(state, |out| {
            use std::io::Write;
            writeln!(out, "{word}")
        })
    };
    write().map_err(|cause| StateError::Write {
        path: state.to_owned(),
        cause,
    })?;
    Ok(Some((summary, previous)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(dir: &Path, status: &str) -> PathBuf {
        let path = dir.join("result.json");
        let body = serde_json::json!({
            "job": "j1", "stream": "schedule:nightly", "status": status, "exit_code": 0,
            "stages": [],
        });
        std::fs::write(&path, body.to_string()).unwrap();
        path
    }

    #[test]
    fn the_outcome_is_remembered_per_stream_and_a_cancel_leaves_it_alone() {
        let dir = tempfile::tempdir().unwrap();
        let state = state_file(&dir.path().join("state"), "schedule:nightly");
        let first = remember(&result(dir.path(), "failed"), &state).unwrap();
        assert_eq!(first.map(|(_, previous)| previous), Some(None));
        let cancelled = remember(&result(dir.path(), "cancelled"), &state).unwrap();
        assert!(cancelled.is_none());
        let next = remember(&result(dir.path(), "succeeded"), &state).unwrap();
        assert_eq!(next.map(|(_, previous)| previous), Some(Some(false)));
        assert_eq!(std::fs::read_to_string(&state).unwrap(), "succeeded\n");
        let other = state_file(&dir.path().join("state"), "schedule:other");
        assert_ne!(state, other);
    }
}
