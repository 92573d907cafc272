//! The job-server protocol (docs/protocol.md) as types both ends share: the server
//! serializes exactly what the agent and the command line deserialize, so a field renamed on
//! one side cannot silently go missing on the other. [`client`] is the one HTTP client for
//! the API, with the retry rule every caller shares.

pub mod client;
mod origin;
mod spec;

use serde::{Deserialize, Serialize};

pub use origin::{ForgeEvent, ForgeKind, ForgeOrigin};
pub use spec::{JobSource, JobSpec, SpecError};

/// Where a job is in its life. Stored and sent as its snake_case name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Offered,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
    Error,
    Lost,
}

impl JobState {
    /// Every state, for parsing a stored name back.
    pub const ALL: [JobState; 9] = [
        JobState::Queued,
        JobState::Offered,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
        JobState::TimedOut,
        JobState::Error,
        JobState::Lost,
    ];

    /// The name on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Offered => "offered",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::TimedOut => "timed_out",
            JobState::Error => "error",
            JobState::Lost => "lost",
        }
    }

    /// Whether the job may still produce log bytes: a follower keeps waiting for them.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            JobState::Queued | JobState::Offered | JobState::Running
        )
    }

    /// The state a reported result's `status` sets: an agent may only end a job in one of
    /// the final states it can know about; anything else is an error.
    pub fn from_status(status: &str) -> JobState {
        match status.parse() {
            Ok(
                state @ (JobState::Succeeded
                | JobState::Failed
                | JobState::Cancelled
                | JobState::TimedOut
                | JobState::Error),
            ) => state,
            _ => JobState::Error,
        }
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobState {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        JobState::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| format!("`{text}` is not a job state"))
    }
}

/// `POST /api/v1/agents`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub labels: Vec<String>,
    pub capacity: i64,
}

/// The answer to a registration: the agent's identity and the timings it must keep.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Registered {
    pub agent_id: String,
    pub agent_token: String,
    pub policy: Policy,
}

/// Timings the server hands its agents; an agent falls back to the defaults for any an
/// older server leaves out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Policy {
    pub claim_wait_s: u64,
    pub lease_s: u64,
    pub log_flush_ms: u64,
    pub log_chunk_max: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            claim_wait_s: 30,
            lease_s: 30,
            log_flush_ms: 200,
            log_chunk_max: 1 << 20,
        }
    }
}

/// `POST /api/v1/agents/{id}/claim`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClaimRequest {
    pub free_slots: u32,
}

/// A job held for one agent until `expires_at` (Unix ms) unless it accepts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    pub offer_id: String,
    pub job_id: String,
    pub expires_at: i64,
}

/// `POST /api/v1/jobs/{id}/accept`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AcceptRequest {
    pub offer_id: String,
}

/// The answer to an accept: the job, its lease and the token for every further call
/// about it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Accepted {
    pub job: JobView,
    pub lease: Lease,
    pub job_token: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub lease_id: String,
    pub expires_at: i64,
}

/// `PUT /api/v1/jobs/{id}/lease`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LeaseRequest {
    pub lease_id: String,
}

/// A renewed lease; `cancel` asks the agent to stop the job and report its result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRenewal {
    pub expires_at: i64,
    pub cancel: bool,
    pub reason: Option<String>,
}

/// `410` to a renewal: the job is no longer the caller's.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LeaseGone {
    #[serde(default)]
    pub error: String,
    pub state: JobState,
}

/// How much of a job's log the server holds: the answer to a log chunk (`200`, `416`) and
/// to a result whose log is incomplete (`409`, with an `error`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub committed: u64,
}

/// The answer to an events upload: every event up to `acked_seq` is held.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsAck {
    pub acked_seq: i64,
}

/// The result an agent reports, kept only when `log` is exactly what the server holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    /// A final state's name; anything else ends the job `error` ([`JobState::from_status`]).
    pub status: String,
    pub exit_code: i64,
    /// The stages as the agent's results record them; the server keeps them as they are.
    #[serde(default)]
    pub stages: Vec<serde_json::Value>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Why the job ended in error when no stage says (its results could not be written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The agent's own id of the job, which names its results directory and workspace
    /// there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_job: Option<String>,
    pub log: LogSummary,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogSummary {
    pub bytes: u64,
    pub sha256: String,
}

/// A job as the API shows it: in an accept, a listing, a detail.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    pub id: String,
    pub state: JobState,
    #[serde(flatten)]
    pub spec: JobSpec,
    pub agent_id: Option<String>,
    pub log_bytes: u64,
    pub result: Option<JobResult>,
    pub cancel_reason: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// Queued, and no connected agent has all its labels: it waits for one that does.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_agent: bool,
    /// For a job a webhook made: its repository, event and commit on the forge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<ForgeOrigin>,
}

/// The answer to a submission (and to a push webhook that made a job).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Submitted {
    pub job_id: String,
}

/// A refusal's body: what is wrong and, for a submission, which field.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_states_read_back_what_they_write() {
        for state in JobState::ALL {
            let json = serde_json::to_value(state).unwrap();
            assert_eq!(json, state.as_str());
            assert_eq!(state.as_str().parse::<JobState>(), Ok(state));
        }
        assert_eq!(JobState::from_status("timed_out"), JobState::TimedOut);
        assert_eq!(JobState::from_status("running"), JobState::Error);
        assert_eq!(JobState::from_status("whatever"), JobState::Error);
    }

    #[test]
    fn an_accepted_job_reads_back_as_the_server_wrote_it() {
        let job = JobView {
            id: "job-1".into(),
            state: JobState::Running,
            spec: serde_json::from_value(serde_json::json!({
                "source": {"git": "https://h/x.git", "ref": "main"}, "tasks": ["t"]}))
            .unwrap(),
            agent_id: Some("agent-1".into()),
            log_bytes: 3,
            result: None,
            cancel_reason: None,
            created_at: 1,
            started_at: Some(2),
            finished_at: None,
            no_agent: false,
            origin: Some(ForgeOrigin {
                forge: ForgeKind::Gitea,
                repository: "team/app".into(),
                event: ForgeEvent::PullRequest,
                commit: "c".repeat(40),
                reference: Some("feature".into()),
                pull_request: Some(4),
                fork: true,
            }),
        };
        let json = serde_json::to_value(&job).unwrap();
        assert_eq!(json["state"], "running");
        assert_eq!(json["source"]["ref"], "main");
        assert_eq!(json["config"], "config.yml");
        assert_eq!(serde_json::from_value::<JobView>(json).unwrap(), job);
    }
}
