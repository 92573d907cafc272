//! Stage durations and builds cached or built, counted into the agent's metrics from the
//! job's events like any other sink sees them.

use super::record::JobRecord;
use super::reporter::{Sink, SinkError};
use crate::events::{Event, StageKind, StageStatus};
use crate::metrics::{KindLabel, OutcomeLabel, agent};

pub struct StageMetrics;

impl Sink for StageMetrics {
    fn event(&mut self, event: &Event, record: &JobRecord) -> Result<(), SinkError> {
        let Event::StageFinished { stage, outcome, .. } = event else {
            return Ok(());
        };
        let Some(stage) = record.stages.get(*stage) else {
            return Ok(());
        };
        let metrics = agent();
        if let (Some(start), Some(end)) = (stage.started_at, stage.finished_at) {
            let took = end.0.duration_since(start.0).unwrap_or_default();
            let kind = stage.kind.as_str();
            metrics
                .stage_duration
                .get_or_create(&KindLabel { kind })
                .observe(took.as_secs_f64());
        }
        let outcome = match (stage.kind, outcome.status) {
            (StageKind::Build, StageStatus::Cached) => "cached",
            (StageKind::Build, StageStatus::Passed) => "built",
            _ => return Ok(()),
        };
        metrics
            .builds
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
        Ok(())
    }
}
