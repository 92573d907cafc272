//! What every sink may want to know about the job so far, kept in one place.

use serde::Serialize;

use crate::events::{Event, JobStatus, StageKind, StageOutcome, Timestamp};
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
        let kind = match self.kind {
            StageKind::Collect => "collect",
            StageKind::Build => "build",
            StageKind::Run => "run",
        };
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
