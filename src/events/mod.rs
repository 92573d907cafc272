//! Everything a job does, as events: the one vocabulary between the executor and the
//! sinks that report it (console, JSON lines, the results directory).

mod emitter;
mod event;

pub use emitter::{Emitter, StageLog};
pub use event::{
    ArtifactSummary, Event, JobStatus, LogStream, StageKind, StageOutcome, StageStatus, TestCase,
    TestStatus, TestSummary, Timestamp,
};
