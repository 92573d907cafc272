//! The `Job`: one run of one config at one revision. Every source (command line, watched
//! checkout, schedule) produces this one type; nothing downstream knows which source it
//! came from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Job {
    pub id: String,
    /// The stream of jobs this one belongs to (one watched checkout, one schedule): what
    /// "a newer run of the same thing" means for [`OnBusy`].
    pub stream: String,
    pub origin: Origin,
    /// The config file, relative to the root of `origin`.
    pub config_file: PathBuf,
    /// Tasks to run; empty runs the config's pipeline.
    pub tasks: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub timeout: Option<Duration>,
    /// Why the job exists, for people: "change: src/main.rs", "schedule 0 3 * * *".
    pub trigger: String,
    pub on_busy: OnBusy,
    /// For a job from the job server: where its lease, log, events and result go.
    pub remote: Option<RemoteJob>,
    /// The build cache (build records, manifests, digests) this job shares with
    /// `dockhand run` in the same checkout: a watch's. Other jobs use the agent's own
    /// cache for their repository.
    pub build_cache: Option<PathBuf>,
    pub trust: JobTrust,
}

/// How much of the agent's own trust a job gets: a fork's pull request gets none of its
/// secrets and none of its sandbox widening.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JobTrust {
    /// Names of the agent's secrets the job may see; none: every one.
    pub secrets: Option<Vec<String>>,
    /// Whether the agent's `allow_*` settings widen the job's sandbox.
    pub widening: bool,
}

impl Default for JobTrust {
    fn default() -> Self {
        JobTrust {
            secrets: None,
            widening: true,
        }
    }
}

/// A job accepted from the job server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RemoteJob {
    pub url: String,
    /// The server's other replicas, tried in turn when `url` cannot be reached.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub other_urls: Vec<String>,
    /// The server's id of the job (the local job id names workspaces and results).
    pub job_id: String,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub job_token: String,
    pub lease_id: String,
    pub lease: Duration,
    pub log_flush: Duration,
    pub log_chunk_max: usize,
}

/// Where a job's files come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Origin {
    /// A local directory, snapshotted into the job's workspace.
    Path { path: PathBuf },
    /// A git repository, cloned into the job's workspace and checked out at `reference`
    /// (a branch, tag or commit).
    Git { url: String, reference: String },
}

/// What happens when a job arrives while an earlier job of its stream still runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBusy {
    /// Cancel the running job and start this one (a newer edit makes the old run moot).
    #[default]
    Cancel,
    /// Start this one when the running one ends; later arrivals replace it in the queue.
    Queue,
    /// Drop this one (a schedule firing while its last run still runs).
    Skip,
    /// Run both.
    Parallel,
}

/// `YYYYMMDD-HHMMSS-xxxx`: sortable, and unique enough for one machine.
pub fn new_job_id() -> String {
    let now = SystemTime::now();
    let stamp: String = humantime::format_rfc3339_seconds(now)
        .to_string()
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let nanos = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    static ISSUED: AtomicU32 = AtomicU32::new(0);
    let issued = ISSUED.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9e37);
    let salt = (nanos ^ (nanos >> 16) ^ std::process::id().rotate_left(16) ^ issued) & 0xffff;
    format!("{}-{}-{salt:04x}", &stamp[..8], &stamp[8..])
}

/// Build contexts and mounts may reach up to the repository the config lives in, or the
/// config's own directory outside a repository.
pub fn workspace_root(config_root: &Path) -> PathBuf {
    config_root
        .ancestors()
        .find(|dir| dir.join(".git").exists())
        .unwrap_or(config_root)
        .to_path_buf()
}
