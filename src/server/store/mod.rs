//! The job server's store: agents, jobs with their offer, lease and log state, events,
//! webhook deliveries. The handlers see only [`JobStore`]; its two implementations are held
//! to the same rules by the conformance suite (`job_store_conformance!`, run in tests):
//! [`SqliteStore`], the embedded default, and [`PgStore`], which several server replicas
//! share.

#[cfg(test)]
pub mod conformance;
mod postgres;
mod sqlite;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use crate::protocol::{
    ForgeOrigin, JobResult, JobSpec, JobState, JobView, Lease, LeaseRenewal, Offer, Registration,
};

pub use postgres::{POOL_SIZE, PgStore};
pub use sqlite::SqliteStore;

/// Messages carry their cause: the server logs them on one line.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(sqlx::Error),
    #[error("database schema: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    #[error("log file {path}: {error}")]
    Log {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("stored JSON: {0}")]
    Json(serde_json::Error),
    #[error("no randomness from the system: {0}")]
    Random(String),
    #[error("stored job: {0}")]
    State(String),
    #[error("database schema: {0}")]
    Schema(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Database(e)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migrate(e)
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Json(e)
    }
}

#[derive(Debug)]
pub enum Accept {
    Accepted {
        job: Box<JobView>,
        lease: Lease,
        job_token: String,
        /// False for a replay of an accept already answered.
        first: bool,
    },
    /// The offer expired, was taken by another agent, or never existed.
    Conflict,
    NotFound,
}

/// Who holds a job after an accept's update: its offer, agent and lease, as stored.
pub struct Held {
    pub offer_id: Option<String>,
    pub agent_id: Option<String>,
    pub lease_id: Option<String>,
    pub lease_expires: Option<i64>,
}

impl Accept {
    /// The answer to `agent_id` accepting `offer_id`, once the store's update changed
    /// `accepted` rows: the same accept again (a lost answer's retry) is answered again
    /// rather than refused. One rule for every backend.
    pub fn decide(
        accepted: u64,
        job: JobView,
        held: Held,
        (agent_id, offer_id): (&str, &str),
        secret: &str,
        expires_at: i64,
    ) -> Accept {
        let replay = accepted == 0
            && job.state == JobState::Running
            && held.offer_id.as_deref() == Some(offer_id)
            && held.agent_id.as_deref() == Some(agent_id);
        if accepted == 0 && !replay {
            return Accept::Conflict;
        }
        Accept::Accepted {
            first: !replay,
            job_token: job_token(secret, &job.id, offer_id),
            lease: Lease {
                lease_id: held.lease_id.unwrap_or_default(),
                expires_at: held.lease_expires.unwrap_or(expires_at),
            },
            job: Box::new(job),
        }
    }
}

#[derive(Debug)]
pub enum Renew {
    Renewed(LeaseRenewal),
    /// Not this job's lease, or the job is no longer running (lost, finished).
    Gone {
        state: JobState,
    },
    NotFound,
}

#[derive(Debug, PartialEq, Eq)]
pub enum LogAppend {
    Committed(u64),
    /// The chunk starts after the committed length: resend from there.
    Gap(u64),
    NotRunning,
    NotFound,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Finish {
    Recorded,
    /// The log is shorter than the result says, or its digest differs.
    LogIncomplete {
        committed: u64,
    },
    NotRunning,
    NotFound,
}

/// What lapsed in one [`JobStore::expire`]: job ids.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Expired {
    /// Offered jobs queued again.
    pub returned: Vec<String>,
    /// Running jobs now `lost`.
    pub lost: Vec<String>,
}

/// What the store holds, for the metrics: computed when asked, so it is right across
/// restarts.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Jobs by state and label set (the labels as submitted).
    pub jobs: Vec<(JobState, Vec<String>, u64)>,
    /// Log bytes committed, over all jobs.
    pub log_bytes: u64,
    /// The agents holding the running jobs' leases.
    pub running_agents: Vec<String>,
}

/// A job whose state changed since its forge was last told (see [`JobStore::unreported`]).
#[derive(Debug)]
pub struct Unreported {
    pub job: JobView,
    /// The state last turned into outbox entries; none before the first.
    pub reported: Option<JobState>,
}

/// Something the outbox is to send, in the order of its `ordering` key.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEntry {
    /// Entries of one key go out one at a time, oldest first: a commit's statuses.
    pub ordering: String,
    /// The repository whose settings (forge, token, hooks) apply.
    pub repository: String,
    /// What to send, as JSON; the sender gives it its meaning.
    pub body: serde_json::Value,
}

/// An outbox entry due for (another) attempt, held for its sender for a while.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxEntry {
    pub id: i64,
    pub ordering: String,
    pub repository: String,
    pub body: serde_json::Value,
    /// Attempts made before this one.
    pub attempts: u32,
}

/// Result of every store operation.
pub type Stored<T> = Result<T, StoreError>;

/// What the API needs of a store. Every method is one atomic step as far as callers can
/// tell: two agents claiming at once get different jobs, a log append and the committed
/// length move together, a result is kept only against the log the store holds. Futures
/// are `Send` so the handlers can run on any worker.
pub trait JobStore: Send + Sync + 'static {
    /// A new agent; `(agent id, agent token)`. Only the token's digest is kept.
    fn register_agent(
        &self,
        agent: &Registration,
    ) -> impl Future<Output = Stored<(String, String)>> + Send;

    /// The agent a token belongs to, with its labels.
    fn agent_by_token(
        &self,
        token: &str,
    ) -> impl Future<Output = Stored<Option<(String, Vec<String>)>>> + Send;

    /// A queued job, with where it comes from on a forge when a webhook made it; its id.
    fn create_job(
        &self,
        spec: &JobSpec,
        origin: Option<&ForgeOrigin>,
    ) -> impl Future<Output = Stored<String>> + Send;

    /// Creates a job for a webhook delivery unless one of its `keys` (delivery id, body
    /// digest) was seen before; then returns that delivery's job. `(job id, created)`.
    fn create_job_once(
        &self,
        spec: &JobSpec,
        origin: Option<&ForgeOrigin>,
        keys: &[String],
    ) -> impl Future<Output = Stored<(String, bool)>> + Send;

    /// The queued, offered and running jobs of a forge stream (one pull request, one
    /// ref), oldest first.
    fn active_in_stream(&self, stream: &str) -> impl Future<Output = Stored<Vec<String>>> + Send;

    /// Up to `limit` jobs with a forge origin whose state is not the one last reported,
    /// in submission order.
    fn unreported(&self, limit: i64) -> impl Future<Output = Stored<Vec<Unreported>>> + Send;

    /// Whether the stream's last finished (not cancelled) job succeeded; none before one.
    fn stream_outcome(&self, stream: &str) -> impl Future<Output = Stored<Option<bool>>> + Send;

    /// Marks `state` as reported for the job and queues `entries` with it, in one
    /// transaction, and records the stream's `outcome` when the job finished. False when
    /// the job's state moved on or another replica reported it first: nothing is queued.
    fn mark_reported(
        &self,
        job_id: &str,
        state: JobState,
        outcome: Option<(&str, bool)>,
        entries: &[NewEntry],
    ) -> impl Future<Output = Stored<bool>> + Send;

    /// Up to `limit` outbox entries due now, each the oldest of its ordering key, held
    /// from other senders for `hold`.
    fn outbox_due(
        &self,
        limit: i64,
        hold: Duration,
    ) -> impl Future<Output = Stored<Vec<OutboxEntry>>> + Send;

    /// The entry was delivered, or given up: it leaves the outbox.
    fn outbox_done(&self, id: i64) -> impl Future<Output = Stored<()>> + Send;

    /// The entry's attempt failed: it is due again after `after`.
    fn outbox_retry(
        &self,
        id: i64,
        after: Duration,
        error: &str,
    ) -> impl Future<Output = Stored<()>> + Send;

    /// Entries in the outbox, for the metrics.
    fn outbox_len(&self) -> impl Future<Output = Stored<u64>> + Send;

    /// Offers the oldest queued job whose labels are all among `agent_labels` (jobs no
    /// agent can take never hide one it can); the offer lapses after `ttl` unless accepted.
    fn offer(
        &self,
        agent_id: &str,
        agent_labels: &[String],
        ttl: Duration,
    ) -> impl Future<Output = Stored<Option<Offer>>> + Send;

    /// Whether `token` is the job token of `job_id`'s accepted offer.
    fn job_token_valid(
        &self,
        job_id: &str,
        token: &str,
    ) -> impl Future<Output = Stored<bool>> + Send;

    /// Turns the agent's live offer into a lease; a replay of an accepted offer answers
    /// the same lease and token.
    fn accept(
        &self,
        job_id: &str,
        offer_id: &str,
        agent_id: &str,
        lease_ttl: Duration,
    ) -> impl Future<Output = Stored<Accept>> + Send;

    /// At server start: every running job's lease lasts at least `lease_ttl` from now, so
    /// agents that kept running through an outage can renew. Returns how many.
    fn grant_grace(&self, lease_ttl: Duration) -> impl Future<Output = Stored<u64>> + Send;

    /// A `lost` job without a result runs again (its lease holder called back).
    fn revive(&self, job_id: &str, lease_ttl: Duration) -> impl Future<Output = Stored<()>> + Send;

    /// Extends a running job's lease, saying whether it was asked to cancel.
    fn renew(
        &self,
        job_id: &str,
        lease_id: &str,
        lease_ttl: Duration,
    ) -> impl Future<Output = Stored<Renew>> + Send;

    /// Offers not accepted in time go back to the queue; running jobs whose lease lapsed
    /// are `lost`.
    fn expire(&self) -> impl Future<Output = Stored<Expired>> + Send;

    /// A queued or offered job ends `cancelled` at once; a running one is told on its next
    /// lease renewal. Returns false for an unknown job.
    fn cancel(&self, job_id: &str, reason: &str) -> impl Future<Output = Stored<bool>> + Send;

    /// Appends `bytes` written at `offset` of a running job's log. Bytes already held are
    /// accepted and skipped (a replay after a lost answer); a chunk past the end is a gap.
    /// Bytes are durable before the committed length moves.
    fn append_log(
        &self,
        job_id: &str,
        offset: u64,
        bytes: &[u8],
    ) -> impl Future<Output = Stored<LogAppend>> + Send;

    /// At most `max` committed log bytes from `from` on; `None` for an unknown job.
    fn read_log(
        &self,
        job_id: &str,
        from: u64,
        max: u64,
    ) -> impl Future<Output = Stored<Option<Vec<u8>>>> + Send;

    /// Stores events, ignoring sequence numbers already held; returns the highest `seq` up
    /// to which every event is held (`None` for an unknown job).
    fn add_events(
        &self,
        job_id: &str,
        events: &[serde_json::Value],
    ) -> impl Future<Output = Stored<Option<i64>>> + Send;

    /// Keeps the result when the log it names is exactly what the store holds (length and
    /// sha256); the job takes its status as its state.
    fn finish(
        &self,
        job_id: &str,
        result: &JobResult,
    ) -> impl Future<Output = Stored<Finish>> + Send;

    fn job(&self, job_id: &str) -> impl Future<Output = Stored<Option<JobView>>> + Send;

    /// The newest `limit` jobs, newest first.
    fn jobs(&self, limit: i64) -> impl Future<Output = Stored<Vec<JobView>>> + Send;

    /// Whether the store answers and its schema is the one this build expects; the error
    /// says why not (`/readyz`).
    fn ready(&self) -> impl Future<Output = Stored<()>> + Send;

    /// Counts for the metrics.
    fn stats(&self) -> impl Future<Output = Stored<StoreStats>> + Send;
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// 32 random bytes as hex: ids and tokens.
pub fn random_hex() -> Result<String, StoreError> {
    crate::util::random_hex().map_err(StoreError::Random)
}

pub fn token_hash(token: &str) -> String {
    crate::util::sha256_hex(token.as_bytes())
}

/// The token for calls about one job: derived from the offer and the server's secret, so a
/// replayed accept gets the same one, and nothing that opens it is stored.
pub fn job_token(secret: &str, job_id: &str, offer_id: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(
        format!("{secret}\n{job_id}\n{offer_id}").as_bytes(),
    ))
}

/// Whether `token` is [`job_token`]'s, compared in constant time.
pub fn job_token_matches(secret: &str, job_id: &str, offer_id: &str, token: &str) -> bool {
    let expected = job_token(secret, job_id, offer_id);
    expected.len() == token.len()
        && expected
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The highest event sequence number up to which every one is held, from the held ones in
/// ascending order.
pub fn acked_through(seqs: &[i64]) -> i64 {
    let mut acked = 0;
    for &seq in seqs {
        if seq == acked + 1 {
            acked = seq;
        } else if seq > acked + 1 {
            break;
        }
    }
    acked
}

/// Whether the `applied` migration versions are exactly the `expected` ones; the error
/// names the first that differs.
pub fn schema_matches(expected: &sqlx::migrate::Migrator, applied: &[i64]) -> Stored<()> {
    if let Some(missing) = expected.iter().find(|m| !applied.contains(&m.version)) {
        return Err(StoreError::Schema(format!(
            "migration {} ({}) is not applied",
            missing.version, missing.description
        )));
    }
    if let Some(newer) = applied
        .iter()
        .find(|v| !expected.iter().any(|m| m.version == **v))
    {
        return Err(StoreError::Schema(format!(
            "migration {newer} is from a newer dockhand"
        )));
    }
    Ok(())
}
