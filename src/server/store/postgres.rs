//! The store on PostgreSQL, schema in `migrations/postgres/`, shared by any number of server
//! replicas: claims lock their job row (`FOR UPDATE SKIP LOCKED`, labels matched in the
//! query), times are the database's, logs are chunks in the database with the sha256 state
//! of the committed log beside them, and submissions wake every replica's long polls
//! through `LISTEN/NOTIFY`.

use std::sync::Arc;
use std::time::Duration;

use sha2::digest::common::hazmat::{SerializableState, SerializedState};
use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use tokio::sync::Notify;

use super::{
    Accept, Expired, Finish, Held, JobStore, LogAppend, NewEntry, OutboxEntry, Renew, StoreError,
    StoreStats, Stored, Unreported, acked_through, job_token_matches, random_hex, token_hash,
};
use crate::protocol::{
    ForgeOrigin, JobResult, JobSpec, JobState, JobView, LeaseRenewal, Offer, Registration,
};

macro_rules! job_columns {
    () => {
        "SELECT id, state, spec, agent_id, log_committed, result, cancel_reason, created_at, started_at, finished_at, origin FROM jobs"
    };
}

/// The schema this build expects (`migrations/postgres/`). sqlx runs it under an advisory
/// lock, so replicas starting together migrate once.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Connections each replica keeps at most, unless told otherwise (`--database-pool`).
pub const POOL_SIZE: u32 = 16;

/// The channel submissions and returned offers are announced on.
const JOBS_CHANNEL: &str = "dockhand_jobs";

/// The advisory lock whose holder expires lapsed offers and leases, so replicas do not
/// race over the same rows ("dockhand" in ASCII).
const LEASE_TICKER_LOCK: i64 = 0x646f_636b_6861_6e64;

pub struct PgStore {
    pool: PgPool,
    secret: String,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl PgStore {
    /// Connects to `url` (`postgres://…`), migrates the database, and listens for jobs
    /// submitted through any replica: each wakes `jobs_waiting`.
    pub async fn connect(url: &str, pool_size: u32, jobs_waiting: Arc<Notify>) -> Stored<PgStore> {
        // Notices ("already exists, skipping" at each start) are not the operator's business.
        let options = url
            .parse::<PgConnectOptions>()?
            .options([("client_min_messages", "warning")]);
        let pool = PgPoolOptions::new()
            .max_connections(pool_size.max(2))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        sqlx::query(
            "INSERT INTO meta (key, value) VALUES ('job_token_secret', $1) ON CONFLICT DO NOTHING",
        )
        .bind(random_hex()?)
        .execute(&pool)
        .await?;
        let secret: String = sqlx::query("SELECT value FROM meta WHERE key = 'job_token_secret'")
            .fetch_one(&pool)
            .await?
            .get(0);
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(JOBS_CHANNEL).await?;
        let listener = tokio::spawn(wake_on_jobs(listener, jobs_waiting));
        Ok(PgStore {
            pool,
            secret,
            listener,
        })
    }

    /// The committed log's sha256 state from its chunks, for a job whose state was not kept.
    async fn digest_from_chunks(
        conn: &mut sqlx::PgConnection,
        job_id: &str,
        committed: u64,
    ) -> Stored<Sha256> {
        let mut hasher = Sha256::new();
        let chunks = sqlx::query(
            "SELECT bytes FROM log_chunks WHERE job_id = $1 AND start < $2 ORDER BY start",
        )
        .bind(job_id)
        .bind(committed as i64)
        .fetch_all(&mut *conn)
        .await?;
        for chunk in chunks {
            hasher.update(chunk.get::<&[u8], _>(0));
        }
        Ok(hasher)
    }
}

/// Wakes the local long polls on every announcement; when the connection drops (and sqlx
/// reconnects), announcements may have been missed, so it wakes them too.
async fn wake_on_jobs(mut listener: PgListener, jobs_waiting: Arc<Notify>) {
    loop {
        match listener.try_recv().await {
            Ok(Some(_)) => jobs_waiting.notify_waiters(),
            Ok(None) => {
                tracing::warn!("lost the database connection that listens for jobs; reconnecting");
                jobs_waiting.notify_waiters();
            }
            Err(e) => {
                tracing::error!("listening for jobs: {e}");
                jobs_waiting.notify_waiters();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// The sha256 state kept with a log, so whichever replica takes the next chunk goes on
/// from it without reading the log again.
fn saved_digest(state: &[u8]) -> Option<Sha256> {
    let state = SerializedState::<Sha256>::try_from(state).ok()?;
    Sha256::deserialize(&state).ok()
}

impl JobStore for PgStore {
    async fn register_agent(&self, agent: &Registration) -> Stored<(String, String)> {
        let id = format!("agent-{}", &random_hex()?[..16]);
        let token = random_hex()?;
        sqlx::query(
            "INSERT INTO agents (id, name, version, labels, capacity, token_hash, registered_at, last_seen)
             VALUES ($1, $2, $3, $4, $5, $6, dockhand_now_ms(), dockhand_now_ms())",
        )
        .bind(&id)
        .bind(&agent.name)
        .bind(&agent.version)
        .bind(&agent.labels)
        .bind(agent.capacity)
        .bind(token_hash(&token))
        .execute(&self.pool)
        .await?;
        Ok((id, token))
    }

    async fn agent_by_token(&self, token: &str) -> Stored<Option<(String, Vec<String>)>> {
        let row = sqlx::query("SELECT id, labels FROM agents WHERE token_hash = $1")
            .bind(token_hash(token))
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|row| (row.get(0), row.get(1))))
    }

    async fn create_job(&self, spec: &JobSpec, origin: Option<&ForgeOrigin>) -> Stored<String> {
        let id = format!("job-{}", &random_hex()?[..20]);
        let mut tx = self.pool.begin().await?;
        insert_job(&mut tx, &id, spec, origin).await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn create_job_once(
        &self,
        spec: &JobSpec,
        origin: Option<&ForgeOrigin>,
        keys: &[String],
    ) -> Stored<(String, bool)> {
        let id = format!("job-{}", &random_hex()?[..20]);
        let mut tx = self.pool.begin().await?;
        insert_job(&mut tx, &id, spec, origin).await?;
        let mut fresh = true;
        for key in keys {
            // A concurrent delivery of the same key waits here for the first to commit.
            fresh &= sqlx::query(
                "INSERT INTO deliveries (key, job_id, received_at) VALUES ($1, $2, dockhand_now_ms())
                 ON CONFLICT DO NOTHING",
            )
            .bind(key)
            .bind(&id)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
        }
        if fresh {
            tx.commit().await?;
            return Ok((id, true));
        }
        let first: Option<String> = sqlx::query(
            "SELECT job_id FROM deliveries WHERE key = ANY($1) AND job_id != $2 ORDER BY received_at LIMIT 1",
        )
        .bind(keys)
        .bind(&id)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| r.get(0));
        tx.rollback().await?;
        Ok((first.unwrap_or_default(), false))
    }

    async fn active_in_stream(&self, stream: &str) -> Stored<Vec<String>> {
        Ok(sqlx::query(
            "SELECT id FROM jobs WHERE stream = $1 AND state IN ('queued', 'offered', 'running')
             ORDER BY seq",
        )
        .bind(stream)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
    }

    async fn unreported(&self, limit: i64) -> Stored<Vec<Unreported>> {
        sqlx::query(
            "SELECT id, state, spec, agent_id, log_committed, result, cancel_reason, created_at,
                 started_at, finished_at, origin, reported
             FROM jobs WHERE origin IS NOT NULL AND reported IS DISTINCT FROM state
             ORDER BY seq LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            let reported: Option<String> = row.get(11);
            Ok(Unreported {
                job: job_view(row)?,
                reported: reported
                    .map(|r| r.parse())
                    .transpose()
                    .map_err(StoreError::State)?,
            })
        })
        .collect()
    }

    async fn stream_outcome(&self, stream: &str) -> Stored<Option<bool>> {
        Ok(
            sqlx::query("SELECT succeeded FROM stream_outcomes WHERE stream = $1")
                .bind(stream)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| r.get(0)),
        )
    }

    async fn mark_reported(
        &self,
        job_id: &str,
        state: JobState,
        outcome: Option<(&str, bool)>,
        entries: &[NewEntry],
    ) -> Stored<bool> {
        let mut tx = self.pool.begin().await?;
        // The row lock makes a second replica's same update wait, then match nothing.
        let marked = sqlx::query(
            "UPDATE jobs SET reported = $1
             WHERE id = $2 AND state = $1 AND reported IS DISTINCT FROM $1",
        )
        .bind(state.as_str())
        .bind(job_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if marked == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        for entry in entries {
            sqlx::query(
                "INSERT INTO outbox (ordering, repository, body, due_at, created_at)
                 VALUES ($1, $2, $3, dockhand_now_ms(), dockhand_now_ms())",
            )
            .bind(&entry.ordering)
            .bind(&entry.repository)
            .bind(entry.body.to_string())
            .execute(&mut *tx)
            .await?;
        }
        if let Some((stream, succeeded)) = outcome {
            sqlx::query(
                "INSERT INTO stream_outcomes (stream, succeeded) VALUES ($1, $2)
                 ON CONFLICT (stream) DO UPDATE SET succeeded = EXCLUDED.succeeded",
            )
            .bind(stream)
            .bind(succeeded)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn outbox_due(&self, limit: i64, hold: Duration) -> Stored<Vec<OutboxEntry>> {
        sqlx::query(
            "UPDATE outbox SET due_at = dockhand_now_ms() + $1
             WHERE id IN (
                 SELECT o.id FROM outbox o
                 WHERE o.due_at <= dockhand_now_ms()
                   AND o.id = (SELECT MIN(id) FROM outbox WHERE ordering = o.ordering)
                 ORDER BY o.id LIMIT $2
                 FOR UPDATE SKIP LOCKED)
             RETURNING id, ordering, repository, body, attempts",
        )
        .bind(hold.as_millis() as i64)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(outbox_entry)
        .collect()
    }

    async fn outbox_done(&self, id: i64) -> Stored<()> {
        sqlx::query("DELETE FROM outbox WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn outbox_retry(&self, id: i64, after: Duration, error: &str) -> Stored<()> {
        sqlx::query(
            "UPDATE outbox SET attempts = attempts + 1, due_at = dockhand_now_ms() + $1,
                 last_error = $2
             WHERE id = $3",
        )
        .bind(after.as_millis() as i64)
        .bind(error)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn outbox_len(&self) -> Stored<u64> {
        Ok(sqlx::query("SELECT COUNT(*) FROM outbox")
            .fetch_one(&self.pool)
            .await?
            .get::<i64, _>(0) as u64)
    }

    async fn offer(
        &self,
        agent_id: &str,
        agent_labels: &[String],
        ttl: Duration,
    ) -> Stored<Option<Offer>> {
        let offer_id = format!("offer-{}", &random_hex()?[..16]);
        let taken = sqlx::query(
            "UPDATE jobs SET state = 'offered', agent_id = $1, offer_id = $2,
                 offer_expires = dockhand_now_ms() + $3
             WHERE id = (
                 SELECT id FROM jobs
                 WHERE state = 'queued' AND labels <@ $4
                 ORDER BY seq LIMIT 1
                 FOR UPDATE SKIP LOCKED)
               AND state = 'queued'
             RETURNING id, offer_expires",
        )
        .bind(agent_id)
        .bind(&offer_id)
        .bind(ttl.as_millis() as i64)
        .bind(agent_labels)
        .fetch_optional(&self.pool)
        .await?;
        Ok(taken.map(|row| Offer {
            offer_id,
            job_id: row.get(0),
            expires_at: row.get(1),
        }))
    }

    async fn job_token_valid(&self, job_id: &str, token: &str) -> Stored<bool> {
        let offer: Option<Option<String>> =
            sqlx::query("SELECT offer_id FROM jobs WHERE id = $1 AND lease_id IS NOT NULL")
                .bind(job_id)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| r.get(0));
        Ok(offer
            .flatten()
            .is_some_and(|offer| job_token_matches(&self.secret, job_id, &offer, token)))
    }

    async fn accept(
        &self,
        job_id: &str,
        offer_id: &str,
        agent_id: &str,
        lease_ttl: Duration,
    ) -> Stored<Accept> {
        let lease_id = format!("lease-{}", &random_hex()?[..16]);
        let accepted = sqlx::query(
            "UPDATE jobs SET state = 'running', lease_id = $1,
                 lease_expires = dockhand_now_ms() + $2, started_at = dockhand_now_ms()
             WHERE id = $3 AND state = 'offered' AND offer_id = $4 AND agent_id = $5
               AND offer_expires > dockhand_now_ms()",
        )
        .bind(&lease_id)
        .bind(lease_ttl.as_millis() as i64)
        .bind(job_id)
        .bind(offer_id)
        .bind(agent_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        let Some(row) = sqlx::query(
            "SELECT id, state, spec, agent_id, log_committed, result, cancel_reason, created_at,
                 started_at, finished_at, origin, offer_id, agent_id, lease_id, lease_expires
             FROM jobs WHERE id = $1",
        )
        .bind(job_id)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(Accept::NotFound);
        };
        let job = job_view(&row)?;
        let held = Held {
            offer_id: row.get(11),
            agent_id: row.get(12),
            lease_id: row.get(13),
            lease_expires: row.get(14),
        };
        let who = (agent_id, offer_id);
        Ok(Accept::decide(accepted, job, held, who, &self.secret, 0))
    }

    async fn grant_grace(&self, lease_ttl: Duration) -> Stored<u64> {
        Ok(sqlx::query(
            "UPDATE jobs SET lease_expires = GREATEST(lease_expires, dockhand_now_ms() + $1)
             WHERE state = 'running'",
        )
        .bind(lease_ttl.as_millis() as i64)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn revive(&self, job_id: &str, lease_ttl: Duration) -> Stored<()> {
        let revived = sqlx::query(
            "UPDATE jobs SET state = 'running', finished_at = NULL,
                 lease_expires = dockhand_now_ms() + $1
             WHERE id = $2 AND state = 'lost' AND result IS NULL",
        )
        .bind(lease_ttl.as_millis() as i64)
        .bind(job_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if revived > 0 {
            tracing::info!(job = job_id, "its agent is back; the job runs again");
        }
        Ok(())
    }

    async fn renew(&self, job_id: &str, lease_id: &str, lease_ttl: Duration) -> Stored<Renew> {
        let renewed = sqlx::query(
            "UPDATE jobs SET lease_expires = dockhand_now_ms() + $1
             WHERE id = $2 AND lease_id = $3 AND state = 'running'
             RETURNING lease_expires, cancel_reason",
        )
        .bind(lease_ttl.as_millis() as i64)
        .bind(job_id)
        .bind(lease_id)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = renewed {
            let reason: Option<String> = row.get(1);
            return Ok(Renew::Renewed(LeaseRenewal {
                expires_at: row.get(0),
                cancel: reason.is_some(),
                reason,
            }));
        }
        Ok(match self.job(job_id).await? {
            Some(job) => Renew::Gone { state: job.state },
            None => Renew::NotFound,
        })
    }

    async fn expire(&self) -> Stored<Expired> {
        let mut tx = self.pool.begin().await?;
        let ticker: bool = sqlx::query("SELECT pg_try_advisory_xact_lock($1)")
            .bind(LEASE_TICKER_LOCK)
            .fetch_one(&mut *tx)
            .await?
            .get(0);
        if !ticker {
            return Ok(Expired::default());
        }
        let ids = |rows: Vec<PgRow>| rows.iter().map(|r| r.get(0)).collect::<Vec<String>>();
        let returned = ids(sqlx::query(
            "UPDATE jobs SET state = 'queued', agent_id = NULL, offer_id = NULL, offer_expires = NULL
             WHERE state = 'offered' AND offer_expires <= dockhand_now_ms()
             RETURNING id",
        )
        .fetch_all(&mut *tx)
        .await?);
        let lost = ids(sqlx::query(
            "UPDATE jobs SET state = 'lost', finished_at = dockhand_now_ms()
             WHERE state = 'running' AND lease_expires <= dockhand_now_ms()
             RETURNING id",
        )
        .fetch_all(&mut *tx)
        .await?);
        if !returned.is_empty() {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(JOBS_CHANNEL)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Expired { returned, lost })
    }

    async fn cancel(&self, job_id: &str, reason: &str) -> Stored<bool> {
        let found = sqlx::query(
            "UPDATE jobs SET cancel_reason = $1,
                 state = CASE WHEN state IN ('queued', 'offered') THEN 'cancelled' ELSE state END,
                 finished_at = CASE WHEN state IN ('queued', 'offered') THEN dockhand_now_ms()
                                    ELSE finished_at END
             WHERE id = $2 AND state IN ('queued', 'offered', 'running')",
        )
        .bind(reason)
        .bind(job_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(found > 0 || self.job(job_id).await?.is_some())
    }

    async fn append_log(&self, job_id: &str, offset: u64, bytes: &[u8]) -> Stored<LogAppend> {
        let mut tx = self.pool.begin().await?;
        // The row lock orders appends to one job, whichever replica takes them.
        let Some(row) = sqlx::query(
            "SELECT state, log_committed, log_digest FROM jobs WHERE id = $1 FOR UPDATE",
        )
        .bind(job_id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(LogAppend::NotFound);
        };
        if row.get::<&str, _>(0) != JobState::Running.as_str() {
            return Ok(LogAppend::NotRunning);
        }
        let committed = row.get::<i64, _>(1) as u64;
        if offset > committed {
            return Ok(LogAppend::Gap(committed));
        }
        let skip = (committed - offset) as usize;
        if skip >= bytes.len() {
            return Ok(LogAppend::Committed(committed));
        }
        let new = &bytes[skip..];
        let mut hasher = match row.get::<Option<&[u8]>, _>(2).and_then(saved_digest) {
            Some(hasher) => hasher,
            None => Self::digest_from_chunks(&mut tx, job_id, committed).await?,
        };
        hasher.update(new);
        let now = committed + new.len() as u64;
        sqlx::query("INSERT INTO log_chunks (job_id, start, bytes) VALUES ($1, $2, $3)")
            .bind(job_id)
            .bind(committed as i64)
            .bind(new)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE jobs SET log_committed = $1, log_digest = $2 WHERE id = $3")
            .bind(now as i64)
            .bind(hasher.serialize().as_slice())
            .bind(job_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(LogAppend::Committed(now))
    }

    async fn read_log(&self, job_id: &str, from: u64, max: u64) -> Stored<Option<Vec<u8>>> {
        let Some(job) = self.job(job_id).await? else {
            return Ok(None);
        };
        let end = job.log_bytes.min(from.saturating_add(max));
        if from >= end {
            return Ok(Some(Vec::new()));
        }
        let chunks = sqlx::query(
            "SELECT start, bytes FROM log_chunks
             WHERE job_id = $1 AND start < $3 AND start + length(bytes) > $2
             ORDER BY start",
        )
        .bind(job_id)
        .bind(from as i64)
        .bind(end as i64)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity((end - from) as usize);
        for chunk in chunks {
            let start = chunk.get::<i64, _>(0) as u64;
            let bytes: &[u8] = chunk.get(1);
            let lo = from.saturating_sub(start) as usize;
            let hi = ((end - start) as usize).min(bytes.len());
            out.extend_from_slice(&bytes[lo..hi]);
        }
        Ok(Some(out))
    }

    async fn add_events(&self, job_id: &str, events: &[serde_json::Value]) -> Stored<Option<i64>> {
        if self.job(job_id).await?.is_none() {
            return Ok(None);
        }
        let mut tx = self.pool.begin().await?;
        for event in events {
            let Some(seq) = event.get("seq").and_then(serde_json::Value::as_i64) else {
                continue;
            };
            sqlx::query(
                "INSERT INTO events (job_id, seq, body) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(job_id)
            .bind(seq)
            .bind(event.to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        let seqs: Vec<i64> = sqlx::query("SELECT seq FROM events WHERE job_id = $1 ORDER BY seq")
            .bind(job_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        Ok(Some(acked_through(&seqs)))
    }

    async fn finish(&self, job_id: &str, result: &JobResult) -> Stored<Finish> {
        let mut tx = self.pool.begin().await?;
        let Some(row) = sqlx::query(
            "SELECT state, log_committed, log_digest, result IS NOT NULL FROM jobs
             WHERE id = $1 FOR UPDATE",
        )
        .bind(job_id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(Finish::NotFound);
        };
        if row.get::<&str, _>(0) != JobState::Running.as_str() {
            return Ok(if row.get(3) {
                Finish::Recorded
            } else {
                Finish::NotRunning
            });
        }
        let committed = row.get::<i64, _>(1) as u64;
        let hasher = match row.get::<Option<&[u8]>, _>(2).and_then(saved_digest) {
            Some(hasher) => hasher,
            None => Self::digest_from_chunks(&mut tx, job_id, committed).await?,
        };
        let digest = hex::encode(hasher.finalize());
        if result.log.bytes != committed || !digest.eq_ignore_ascii_case(&result.log.sha256) {
            return Ok(Finish::LogIncomplete { committed });
        }
        sqlx::query(
            "UPDATE jobs SET state = $1, result = $2, finished_at = dockhand_now_ms() WHERE id = $3",
        )
        .bind(JobState::from_status(&result.status).as_str())
        .bind(serde_json::to_string(result)?)
        .bind(job_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Finish::Recorded)
    }

    async fn job(&self, job_id: &str) -> Stored<Option<JobView>> {
        let row = sqlx::query(concat!(job_columns!(), " WHERE id = $1"))
            .bind(job_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| job_view(&r)).transpose()
    }

    async fn jobs(&self, limit: i64) -> Stored<Vec<JobView>> {
        sqlx::query(concat!(job_columns!(), " ORDER BY seq DESC LIMIT $1"))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(job_view)
            .collect()
    }

    async fn ready(&self) -> Stored<()> {
        let applied: Vec<i64> = sqlx::query("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        super::schema_matches(&MIGRATOR, &applied)
    }

    async fn stats(&self) -> Stored<StoreStats> {
        let mut stats = StoreStats::default();
        for row in sqlx::query("SELECT state, labels, COUNT(*) FROM jobs GROUP BY state, labels")
            .fetch_all(&self.pool)
            .await?
        {
            stats.jobs.push((
                row.get::<String, _>(0).parse().map_err(StoreError::State)?,
                row.get(1),
                row.get::<i64, _>(2) as u64,
            ));
        }
        stats.log_bytes = sqlx::query("SELECT COALESCE(SUM(log_committed), 0)::BIGINT FROM jobs")
            .fetch_one(&self.pool)
            .await?
            .get::<i64, _>(0) as u64;
        stats.running_agents = sqlx::query(
            "SELECT DISTINCT agent_id FROM jobs WHERE state = 'running' AND agent_id IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
        Ok(stats)
    }
}

/// Queues a job and announces it to every replica (delivered when the transaction commits).
async fn insert_job(
    conn: &mut sqlx::PgConnection,
    id: &str,
    spec: &JobSpec,
    origin: Option<&ForgeOrigin>,
) -> Stored<()> {
    sqlx::query(
        "INSERT INTO jobs (id, spec, labels, state, created_at, origin, stream)
         VALUES ($1, $2, $3, 'queued', dockhand_now_ms(), $4, $5)",
    )
    .bind(id)
    .bind(serde_json::to_string(spec)?)
    .bind(&spec.labels)
    .bind(origin.map(serde_json::to_string).transpose()?)
    .bind(origin.map(ForgeOrigin::stream))
    .execute(&mut *conn)
    .await?;
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(JOBS_CHANNEL)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

fn job_view(row: &PgRow) -> Stored<JobView> {
    let result: Option<String> = row.get(5);
    let origin: Option<String> = row.get(10);
    Ok(JobView {
        id: row.get(0),
        state: row.get::<String, _>(1).parse().map_err(StoreError::State)?,
        spec: serde_json::from_str(&row.get::<String, _>(2))?,
        agent_id: row.get(3),
        log_bytes: row.get::<i64, _>(4) as u64,
        result: result.map(|r| serde_json::from_str(&r)).transpose()?,
        cancel_reason: row.get(6),
        created_at: row.get(7),
        started_at: row.get(8),
        finished_at: row.get(9),
        no_agent: false,
        origin: origin.map(|o| serde_json::from_str(&o)).transpose()?,
    })
}

fn outbox_entry(row: &PgRow) -> Stored<OutboxEntry> {
    Ok(OutboxEntry {
        id: row.get(0),
        ordering: row.get(1),
        repository: row.get(2),
        body: serde_json::from_str(&row.get::<String, _>(3))?,
        attempts: row.get::<i64, _>(4) as u32,
    })
}

#[cfg(test)]
#[path = "../../../tests/support/postgres.rs"]
mod test_postgres;

#[cfg(test)]
mod tests {
    use super::*;

    async fn fresh() -> (PgStore, ()) {
        let url = test_postgres::fresh_database();
        (
            PgStore::connect(&url, POOL_SIZE, Arc::default())
                .await
                .unwrap(),
            (),
        )
    }

    crate::job_store_conformance!(fresh);

    fn spec() -> JobSpec {
        serde_json::from_value(serde_json::json!({"source": {"path": "/x"}})).unwrap()
    }

    async fn agent(store: &PgStore) -> String {
        let registration = Registration {
            name: "a".into(),
            version: "0".into(),
            labels: Vec::new(),
            capacity: 1,
        };
        store.register_agent(&registration).await.unwrap().0
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_the_holder_of_the_ticker_lock_expires() {
        let url = test_postgres::fresh_database();
        let store = PgStore::connect(&url, POOL_SIZE, Arc::default())
            .await
            .unwrap();
        let job = store.create_job(&spec(), None).await.unwrap();
        let me = agent(&store).await;
        let short = Duration::from_millis(10);
        store.offer(&me, &[], short).await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut other = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
            .await
            .unwrap();
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(LEASE_TICKER_LOCK)
            .execute(&mut other)
            .await
            .unwrap();
        assert_eq!(store.expire().await.unwrap(), Expired::default());
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(LEASE_TICKER_LOCK)
            .execute(&mut other)
            .await
            .unwrap();
        assert_eq!(store.expire().await.unwrap().returned, [job]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_share_logs_digests_and_wake_ups() {
        let url = test_postgres::fresh_database();
        let woken = Arc::new(Notify::new());
        let a = PgStore::connect(&url, POOL_SIZE, Arc::default())
            .await
            .unwrap();
        let b = PgStore::connect(&url, POOL_SIZE, woken.clone())
            .await
            .unwrap();
        let wake = woken.notified();
        let job = a.create_job(&spec(), None).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), wake)
            .await
            .expect("a job created through A wakes B's claims");
        let me = agent(&a).await;
        let offer = b.offer(&me, &[], Duration::from_secs(60)).await.unwrap();
        let offer = offer.unwrap().offer_id;
        let accepted = a.accept(&job, &offer, &me, Duration::from_secs(60));
        assert!(matches!(accepted.await.unwrap(), Accept::Accepted { .. }));
        assert_eq!(
            a.append_log(&job, 0, b"from A, ").await.unwrap(),
            LogAppend::Committed(8)
        );
        assert_eq!(
            b.append_log(&job, 8, b"then B\n").await.unwrap(),
            LogAppend::Committed(15)
        );
        assert_eq!(a.read_log(&job, 5, 6).await.unwrap().unwrap(), b"A, the");
        let log = b"from A, then B\n";
        let result: JobResult = serde_json::from_value(serde_json::json!({
            "status": "succeeded", "exit_code": 0, "started_at": null, "finished_at": null,
            "log": {"bytes": log.len(), "sha256": crate::util::sha256_hex(log)}}))
        .unwrap();
        assert_eq!(a.finish(&job, &result).await.unwrap(), Finish::Recorded);
    }
}
