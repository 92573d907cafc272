//! What every sink may want to know about the job so far, kept in one place.

use serde::Serialize;

use super::palette::Palette;
use crate::events::{Event, JobStatus, StageKind, StageOutcome, StageStatus, Timestamp};
use crate::exit_code::INFRASTRUCTURE;

#[derive(Clone, Debug, Serialize)]
pub struct StageRecord {
    pub name: String,
    pub kind: StageKind,
    /// How it ended; absent while it runs or when it never ran.
    #[serde(flatten)]
    pub outcome: Option<StageOutcome>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
}

impl StageRecord {
    /// `build base`, `run test`.
    pub fn label(&self) -> String {
        let kind = self.kind.as_str();
        if self.kind == StageKind::Collect {
            kind.to_owned()
        } else {
            format!("{kind} {}", self.name)
        }
    }

    pub fn seconds(&self) -> Option<f64> {
        let (Some(start), Some(end)) = (self.started_at, self.finished_at) else {
            return None;
        };
        end.0.duration_since(start.0).ok().map(|d| d.as_secs_f64())
    }

    /// `<== run test failed (exit code 3) in 1.2s`: the end of the stage's section, on the
    /// console and in log.txt.
    pub fn outcome_line(&self, outcome: &StageOutcome, palette: Palette) -> String {
        let time = self
            .seconds()
            .map(|t| format!(" in {t:.1}s"))
            .unwrap_or_default();
        let code = outcome
            .exit_code
            .filter(|&c| c != 0)
            .map(|c| format!(" (exit code {c})"))
            .unwrap_or_default();
        let status = palette.stage(Some(outcome.status), status_word(Some(outcome.status)));
        format!("<== {} {status}{code}{time}", self.label())
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct JobRecord {
    pub job: String,
    pub stages: Vec<StageRecord>,
    pub status: Option<JobStatus>,
    pub exit_code: Option<u8>,
    /// Why the job ended in error, when no stage says (see `Event::JobFinished`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
}

impl JobRecord {
    /// The record of a job whose reporter itself failed.
    pub fn failed(message: String) -> JobRecord {
        JobRecord {
            status: Some(JobStatus::Error),
            exit_code: Some(INFRASTRUCTURE),
            message: Some(message),
            ..JobRecord::default()
        }
    }

    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::JobStarted { job, stages, at } => {
                self.job = job.clone();
                self.started_at = Some(*at);
                self.stages = stages
                    .iter()
                    .map(|(name, kind)| StageRecord {
                        name: name.clone(),
                        kind: *kind,
                        outcome: None,
                        started_at: None,
                        finished_at: None,
                    })
                    .collect();
            }
            Event::StageStarted { stage, at } => {
                if let Some(s) = self.stages.get_mut(*stage) {
                    s.started_at = Some(*at);
                }
            }
            Event::StageFinished { stage, outcome, at } => {
                if let Some(s) = self.stages.get_mut(*stage) {
                    s.outcome = Some(outcome.clone());
                    s.finished_at = Some(*at);
                }
            }
            Event::JobFinished {
                status,
                exit_code,
                message,
                at,
            } => {
                self.status = Some(*status);
                self.exit_code = Some(*exit_code);
                self.message = message.clone();
                self.finished_at = Some(*at);
            }
            Event::Log { .. } => {}
        }
    }
}

impl JobRecord {
    /// `job 20261202-… failed in 3.1s (exit code 3)`: the job's last line, on the console
    /// and in log.txt.
    /// The job's wall time, once it has ended.
    pub fn seconds(&self) -> Option<f64> {
        let (start, end) = (self.started_at?, self.finished_at?);
        end.0.duration_since(start.0).ok().map(|d| d.as_secs_f64())
    }

    pub fn verdict_line(&self, status: JobStatus, exit_code: u8, palette: Palette) -> String {
        let total = self
            .seconds()
            .map(|t| format!(" in {t:.1}s"))
            .unwrap_or_default();
        let word = serde_json::to_value(status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let status = palette.job(status, &word);
        format!("job {} {status}{total} (exit code {exit_code})", self.job)
    }
}

/// A stage status as the console, log.txt and junit.xml write it.
pub fn status_word(status: Option<StageStatus>) -> &'static str {
    match status {
        None => "not run",
        Some(StageStatus::Passed) => "passed",
        Some(StageStatus::Cached) => "cached",
        Some(StageStatus::Failed) => "failed",
        Some(StageStatus::Skipped) => "skipped",
        Some(StageStatus::Cancelled) => "cancelled",
        Some(StageStatus::TimedOut) => "timed out",
        Some(StageStatus::Error) => "error",
    }
}
