//! The event types.

use std::time::SystemTime;

use bytes::Bytes;
use serde::{Serialize, Serializer};

/// A wall-clock time, shown as RFC 3339.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub SystemTime);

impl Timestamp {
    pub fn now() -> Self {
        Timestamp(SystemTime::now())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(self.0))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StageKind {
    Collect,
    Build,
    Run,
}

impl StageKind {
    /// The name results and metrics give it (as serialized).
    pub fn as_str(self) -> &'static str {
        match self {
            StageKind::Collect => "collect",
            StageKind::Build => "build",
            StageKind::Run => "run",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    Stdout,
    Stderr,
    /// The engine's build output.
    Build,
    /// dockhand's own account of the stage (waiting for a service, a dependency's logs).
    System,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    Passed,
    /// A build whose inputs match an image the engine already has: nothing was built.
    Cached,
    Failed,
    /// Not run because a stage it needs did not pass.
    Skipped,
    Cancelled,
    TimedOut,
    /// Infrastructure broke during the stage.
    Error,
}

impl StageStatus {
    /// Whether stages that need this one may go ahead.
    pub fn passed(self) -> bool {
        matches!(self, StageStatus::Passed | StageStatus::Cached)
    }
}

/// How a stage ended. A failing task or build is data here, not an error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StageOutcome {
    pub status: StageStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The last lines of a failed build's output, for a reader of the result alone (the
    /// console and log show them in place already).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub output_tail: Vec<String>,
    /// What the task's own test reports (`reports.junit`) say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tests: Option<Box<TestSummary>>,
    /// What was copied of the task's `artifacts`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<Box<ArtifactSummary>>,
}

/// A task's artifacts as copied into `artifacts/<task>/` of the job's results.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ArtifactSummary {
    /// Files and links written.
    pub files: u64,
    pub bytes: u64,
    /// Whether `max_size` or `max_files` stopped the copy.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub capped: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// A task's test results, read from the JUnit XML files it wrote: counts for everyone,
/// the failed tests for a reader of the result alone, every case for junit.xml.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TestSummary {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
    pub errors: u64,
    /// The sum of the cases' own times.
    pub duration_ms: u64,
    /// Failed and erroring cases, up to a cap.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<TestCase>,
    /// Reports that were missing, unreadable or cut short, each naming its file (and line).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Every case, up to a cap, for junit.xml; result.json keeps the counts and failures.
    #[serde(skip)]
    pub cases: Vec<TestCase>,
}

impl TestSummary {
    /// Failed and erroring tests.
    pub fn failing(&self) -> u64 {
        self.failed + self.errors
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TestCase {
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub class: String,
    pub status: TestStatus,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The start of the failure's body and the case's captured output, capped.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub output: String,
}

impl TestCase {
    /// `tests.test_app :: test_login`, or the name alone.
    pub fn label(&self) -> String {
        if self.class.is_empty() {
            self.name.clone()
        } else {
            format!("{} :: {}", self.class, self.name)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TestStatus {
    Passed,
    Failed,
    Error,
    Skipped,
}

impl StageOutcome {
    pub fn new(status: StageStatus) -> Self {
        StageOutcome {
            status,
            exit_code: None,
            image_id: None,
            message: None,
            output_tail: Vec::new(),
            tests: None,
            artifacts: None,
        }
    }

    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
    Error,
}

impl JobStatus {
    /// The name results and metrics give it (as serialized).
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::TimedOut => "timed_out",
            JobStatus::Error => "error",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    JobStarted {
        job: String,
        /// Every stage of the job, in order; stage ids index this list.
        stages: Vec<(String, StageKind)>,
        at: Timestamp,
    },
    StageStarted {
        stage: usize,
        at: Timestamp,
    },
    Log {
        stage: usize,
        stream: LogStream,
        #[serde(serialize_with = "lossy")]
        bytes: Bytes,
    },
    StageFinished {
        stage: usize,
        outcome: StageOutcome,
        at: Timestamp,
    },
    JobFinished {
        status: JobStatus,
        exit_code: u8,
        /// Why the job ended in error when that is not a stage's doing (its results could
        /// not be written).
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        at: Timestamp,
    },
}

fn lossy<S: Serializer>(bytes: &Bytes, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(bytes))
}
