//! The job server's store: agents, jobs with their offer, lease and log state, events. One
//! SQLite file (WAL) through sqlx, schema in `migrations/`; job logs are files beside it,
//! their committed length in the database. The handlers use only these methods, so another
//! backend (Postgres) is a second implementation of them.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use crate::protocol::{JobResult, JobSpec, JobState, JobView, Lease, LeaseRenewal, Offer};

macro_rules! job_columns {
    () => {
        "SELECT id, state, spec, agent_id, log_committed, result, cancel_reason, created_at, started_at, finished_at FROM jobs"
    };
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("log file {path}: {source}")]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("stored JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("no randomness from the system: {0}")]
    Random(String),
    #[error("stored job: {0}")]
    State(String),
}

#[derive(Debug)]
pub enum Accept {
    Accepted {
        job: Box<JobView>,
        lease: Lease,
        job_token: String,
    },
    /// The offer expired, was taken by another agent, or never existed.
    Conflict,
    NotFound,
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

pub struct Store {
    pool: SqlitePool,
    logs: PathBuf,
    secret: String,
    /// One writer per job log at a time.
    log_locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
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

impl Store {
    /// Opens (creating when missing) the database file and migrates it; logs go to a
    /// `logs/` directory beside it.
    pub async fn open(database: &Path) -> Result<Store, StoreError> {
        let dir = database.parent().unwrap_or(Path::new("."));
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(|source| StoreError::Log {
            path: logs.clone(),
            source,
        })?;
        let options = SqliteConnectOptions::new()
            .filename(database)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::migrate!().run(&pool).await?;
        let fresh = random_hex()?;
        sqlx::query("INSERT OR IGNORE INTO meta (key, value) VALUES ('job_token_secret', ?)")
            .bind(&fresh)
            .execute(&pool)
            .await?;
        let secret: String = sqlx::query("SELECT value FROM meta WHERE key = 'job_token_secret'")
            .fetch_one(&pool)
            .await?
            .get(0);
        Ok(Store {
            pool,
            logs,
            secret,
            log_locks: Default::default(),
        })
    }

    pub async fn register_agent(
        &self,
        name: &str,
        version: &str,
        labels: &[String],
        capacity: i64,
    ) -> Result<(String, String), StoreError> {
        let id = format!("agent-{}", &random_hex()?[..16]);
        let token = random_hex()?;
        let now = now_ms();
        sqlx::query(
            "INSERT INTO agents (id, name, version, labels, capacity, token_hash, registered_at, last_seen)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(name)
        .bind(version)
        .bind(serde_json::to_string(labels)?)
        .bind(capacity)
        .bind(token_hash(&token))
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok((id, token))
    }

    /// The agent a token belongs to, with its labels.
    pub async fn agent_by_token(
        &self,
        token: &str,
    ) -> Result<Option<(String, Vec<String>)>, StoreError> {
        let row = sqlx::query("SELECT id, labels FROM agents WHERE token_hash = ?")
            .bind(token_hash(token))
            .fetch_optional(&self.pool)
            .await?;
        match row {
            None => Ok(None),
            Some(row) => Ok(Some((
                row.get(0),
                serde_json::from_str(&row.get::<String, _>(1))?,
            ))),
        }
    }

    pub async fn create_job(&self, spec: &JobSpec) -> Result<String, StoreError> {
        let id = format!("job-{}", &random_hex()?[..20]);
        insert_job(&mut *self.pool.acquire().await?, &id, spec).await?;
        Ok(id)
    }

    /// Creates a job for a webhook delivery unless one of its `keys` (delivery id, body
    /// digest) was seen before; then returns that delivery's job. `(job id, created)`.
    pub async fn create_job_once(
        &self,
        spec: &JobSpec,
        keys: &[String],
    ) -> Result<(String, bool), StoreError> {
        let id = format!("job-{}", &random_hex()?[..20]);
        let mut tx = self.pool.begin().await?;
        // A write first, so concurrent deliveries take the write lock in turn; a replay
        // rolls it back.
        insert_job(&mut tx, &id, spec).await?;
        let mut fresh = true;
        for key in keys {
            fresh &= sqlx::query(
                "INSERT OR IGNORE INTO deliveries (key, job_id, received_at) VALUES (?, ?, ?)",
            )
            .bind(key)
            .bind(&id)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
        }
        if fresh {
            tx.commit().await?;
            return Ok((id, true));
        }
        let mut first = None;
        for key in keys {
            first = first.or(sqlx::query(
                "SELECT job_id FROM deliveries WHERE key = ? AND job_id != ?",
            )
            .bind(key)
            .bind(&id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.get::<String, _>(0)));
        }
        tx.rollback().await?;
        Ok((first.unwrap_or_default(), false))
    }

    /// Offers the oldest queued job the agent's labels cover (matched in the query, so
    /// any number of jobs no agent can take never hide one it can); the offer lapses after
    /// `ttl` unless accepted.
    pub async fn offer(
        &self,
        agent_id: &str,
        agent_labels: &[String],
        ttl: Duration,
    ) -> Result<Option<Offer>, StoreError> {
        let offer_id = format!("offer-{}", &random_hex()?[..16]);
        let expires_at = now_ms() + ttl.as_millis() as i64;
        let taken: Option<String> = sqlx::query(
            "UPDATE jobs SET state = 'offered', agent_id = ?, offer_id = ?, offer_expires = ?
             WHERE id = (
                 SELECT id FROM jobs
                 WHERE state = 'queued'
                   AND NOT EXISTS (
                       SELECT 1 FROM json_each(jobs.labels) AS wanted
                       WHERE wanted.value NOT IN (SELECT value FROM json_each(?)))
                 ORDER BY seq LIMIT 1)
               AND state = 'queued'
             RETURNING id",
        )
        .bind(agent_id)
        .bind(&offer_id)
        .bind(expires_at)
        .bind(serde_json::to_string(agent_labels)?)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| r.get(0));
        Ok(taken.map(|job_id| Offer {
            offer_id,
            job_id,
            expires_at,
        }))
    }

    /// The token for calls about one job: derived from the offer, so a replayed accept
    /// gets the same one, and nothing that opens it is stored.
    pub fn job_token(&self, job_id: &str, offer_id: &str) -> String {
        let digest = Sha256::digest(format!("{}\n{job_id}\n{offer_id}", self.secret).as_bytes());
        hex::encode(digest)
    }

    /// Whether `token` is the job token of `job_id`'s accepted offer.
    pub async fn job_token_valid(&self, job_id: &str, token: &str) -> Result<bool, StoreError> {
        let offer: Option<Option<String>> =
            sqlx::query("SELECT offer_id FROM jobs WHERE id = ? AND lease_id IS NOT NULL")
                .bind(job_id)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| r.get(0));
        Ok(match offer.flatten() {
            Some(offer) => {
                let expected = self.job_token(job_id, &offer);
                expected.len() == token.len()
                    && expected
                        .bytes()
                        .zip(token.bytes())
                        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                        == 0
            }
            None => false,
        })
    }

    pub async fn accept(
        &self,
        job_id: &str,
        offer_id: &str,
        agent_id: &str,
        lease_ttl: Duration,
    ) -> Result<Accept, StoreError> {
        let now = now_ms();
        let lease_id = format!("lease-{}", &random_hex()?[..16]);
        let expires_at = now + lease_ttl.as_millis() as i64;
        let accepted = sqlx::query(
            "UPDATE jobs SET state = 'running', lease_id = ?, lease_expires = ?, started_at = ?
             WHERE id = ? AND state = 'offered' AND offer_id = ? AND agent_id = ? AND offer_expires > ?",
        )
        .bind(&lease_id)
        .bind(expires_at)
        .bind(now)
        .bind(job_id)
        .bind(offer_id)
        .bind(agent_id)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        let Some(job) = self.job(job_id).await? else {
            return Ok(Accept::NotFound);
        };
        let row = sqlx::query(
            "SELECT offer_id, agent_id, lease_id, lease_expires FROM jobs WHERE id = ?",
        )
        .bind(job_id)
        .fetch_one(&self.pool)
        .await?;
        let (held_offer, held_agent, lease, lease_expires): (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<i64>,
        ) = (row.get(0), row.get(1), row.get(2), row.get(3));
        let replay = accepted == 0
            && job.state == JobState::Running
            && held_offer.as_deref() == Some(offer_id)
            && held_agent.as_deref() == Some(agent_id);
        if accepted == 0 && !replay {
            return Ok(Accept::Conflict);
        }
        Ok(Accept::Accepted {
            job_token: self.job_token(job_id, offer_id),
            lease: Lease {
                lease_id: lease.unwrap_or_default(),
                expires_at: lease_expires.unwrap_or(expires_at),
            },
            job: Box::new(job),
        })
    }

    /// At server start: every running job's lease lasts at least `lease_ttl` from now, so
    /// agents that kept running through an outage longer than a lease can renew.
    pub async fn grant_grace(&self, lease_ttl: Duration) -> Result<u64, StoreError> {
        let until = now_ms() + lease_ttl.as_millis() as i64;
        Ok(sqlx::query(
            "UPDATE jobs SET lease_expires = MAX(lease_expires, ?) WHERE state = 'running'",
        )
        .bind(until)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// A job marked `lost` while its agent could not reach the server runs again when
    /// its lease holder calls (only it has the job token): no other agent was given the
    /// job, so nothing of it is lost.
    pub async fn revive(&self, job_id: &str, lease_ttl: Duration) -> Result<(), StoreError> {
        let revived = sqlx::query(
            "UPDATE jobs SET state = 'running', finished_at = NULL, lease_expires = ?
             WHERE id = ? AND state = 'lost' AND result IS NULL",
        )
        .bind(now_ms() + lease_ttl.as_millis() as i64)
        .bind(job_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if revived > 0 {
            tracing::info!("job {job_id}: its agent is back; running again");
        }
        Ok(())
    }

    pub async fn renew(
        &self,
        job_id: &str,
        lease_id: &str,
        lease_ttl: Duration,
    ) -> Result<Renew, StoreError> {
        let expires_at = now_ms() + lease_ttl.as_millis() as i64;
        let renewed = sqlx::query(
            "UPDATE jobs SET lease_expires = ? WHERE id = ? AND lease_id = ? AND state = 'running'",
        )
        .bind(expires_at)
        .bind(job_id)
        .bind(lease_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        let Some(job) = self.job(job_id).await? else {
            return Ok(Renew::NotFound);
        };
        if renewed == 0 {
            return Ok(Renew::Gone { state: job.state });
        }
        Ok(Renew::Renewed(LeaseRenewal {
            expires_at,
            cancel: job.cancel_reason.is_some(),
            reason: job.cancel_reason,
        }))
    }

    /// Offers not accepted in time go back to the queue; running jobs whose lease lapsed
    /// are `lost`. Returns (offers returned, jobs lost).
    pub async fn expire(&self) -> Result<(u64, u64), StoreError> {
        let now = now_ms();
        let returned = sqlx::query(
            "UPDATE jobs SET state = 'queued', agent_id = NULL, offer_id = NULL, offer_expires = NULL
             WHERE state = 'offered' AND offer_expires <= ?",
        )
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        let lost = sqlx::query(
            "UPDATE jobs SET state = 'lost', finished_at = ? WHERE state = 'running' AND lease_expires <= ?",
        )
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok((returned, lost))
    }

    /// A queued or offered job ends `cancelled` at once; a running one is told on its next
    /// lease renewal. Returns false for an unknown job.
    pub async fn cancel(&self, job_id: &str, reason: &str) -> Result<bool, StoreError> {
        let now = now_ms();
        sqlx::query(
            "UPDATE jobs SET state = 'cancelled', cancel_reason = ?, finished_at = ?
             WHERE id = ? AND state IN ('queued', 'offered')",
        )
        .bind(reason)
        .bind(now)
        .bind(job_id)
        .execute(&self.pool)
        .await?;
        sqlx::query("UPDATE jobs SET cancel_reason = ? WHERE id = ? AND state = 'running'")
            .bind(reason)
            .bind(job_id)
            .execute(&self.pool)
            .await?;
        Ok(self.job(job_id).await?.is_some())
    }

    fn log_path(&self, job_id: &str) -> PathBuf {
        self.logs.join(format!("{job_id}.log"))
    }

    fn log_lock(&self, job_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.log_locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(job_id.to_owned()).or_default().clone()
    }

    /// Appends `bytes` written at `offset` of the job's log. Bytes the server already holds
    /// are accepted and skipped (a replay after a lost answer); a chunk past the end is a
    /// gap. The file is synced before the committed length moves, so a crash never commits
    /// bytes that are not on disk.
    pub async fn append_log(
        &self,
        job_id: &str,
        offset: u64,
        bytes: &[u8],
    ) -> Result<LogAppend, StoreError> {
        let lock = self.log_lock(job_id);
        let _writing = lock.lock().await;
        let Some(job) = self.job(job_id).await? else {
            return Ok(LogAppend::NotFound);
        };
        if job.state != JobState::Running {
            return Ok(LogAppend::NotRunning);
        }
        let committed = job.log_bytes;
        if offset > committed {
            return Ok(LogAppend::Gap(committed));
        }
        let skip = (committed - offset) as usize;
        if skip >= bytes.len() {
            return Ok(LogAppend::Committed(committed));
        }
        let path = self.log_path(job_id);
        let new = bytes[skip..].to_vec();
        let written = tokio::task::spawn_blocking({
            let path = path.clone();
            move || -> std::io::Result<()> {
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(false)
                    .open(&path)?;
                file.set_len(committed)?;
                file.seek(SeekFrom::Start(committed))?;
                file.write_all(&new)?;
                file.sync_data()
            }
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r);
        written.map_err(|source| StoreError::Log { path, source })?;
        let committed = committed + (bytes.len() - skip) as u64;
        sqlx::query("UPDATE jobs SET log_committed = ? WHERE id = ?")
            .bind(committed as i64)
            .bind(job_id)
            .execute(&self.pool)
            .await?;
        Ok(LogAppend::Committed(committed))
    }

    /// The committed log from `from` on.
    pub async fn read_log(&self, job_id: &str, from: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(job) = self.job(job_id).await? else {
            return Ok(None);
        };
        let path = self.log_path(job_id);
        let end = job.log_bytes;
        if from >= end {
            return Ok(Some(Vec::new()));
        }
        let read = (|| -> std::io::Result<Vec<u8>> {
            let mut file = std::fs::File::open(&path)?;
            file.seek(SeekFrom::Start(from))?;
            let mut out = vec![0; (end - from) as usize];
            file.read_exact(&mut out)?;
            Ok(out)
        })();
        read.map(Some)
            .map_err(|source| StoreError::Log { path, source })
    }

    /// Stores events, ignoring sequence numbers already held; returns the highest `seq` up
    /// to which every event is held.
    pub async fn add_events(
        &self,
        job_id: &str,
        events: &[serde_json::Value],
    ) -> Result<Option<i64>, StoreError> {
        if self.job(job_id).await?.is_none() {
            return Ok(None);
        }
        let mut tx = self.pool.begin().await?;
        for event in events {
            let Some(seq) = event.get("seq").and_then(serde_json::Value::as_i64) else {
                continue;
            };
            sqlx::query("INSERT OR IGNORE INTO events (job_id, seq, body) VALUES (?, ?, ?)")
                .bind(job_id)
                .bind(seq)
                .bind(event.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        let seqs: Vec<i64> = sqlx::query("SELECT seq FROM events WHERE job_id = ? ORDER BY seq")
            .bind(job_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut acked = 0;
        for seq in seqs {
            if seq == acked + 1 {
                acked = seq;
            } else if seq > acked + 1 {
                break;
            }
        }
        Ok(Some(acked))
    }

    /// Keeps the result when the log it names is exactly what the server holds.
    pub async fn finish(&self, job_id: &str, result: &JobResult) -> Result<Finish, StoreError> {
        let lock = self.log_lock(job_id);
        let _writing = lock.lock().await;
        let Some(job) = self.job(job_id).await? else {
            return Ok(Finish::NotFound);
        };
        if job.state != JobState::Running {
            return Ok(if job.result.is_some() {
                Finish::Recorded
            } else {
                Finish::NotRunning
            });
        }
        let committed = job.log_bytes;
        let log = self.read_log(job_id, 0).await?.unwrap_or_default();
        let digest = crate::util::sha256_hex(&log);
        if result.log.bytes != committed || !digest.eq_ignore_ascii_case(&result.log.sha256) {
            return Ok(Finish::LogIncomplete { committed });
        }
        let state = JobState::from_status(&result.status);
        sqlx::query("UPDATE jobs SET state = ?, result = ?, finished_at = ? WHERE id = ? AND state = 'running'")
            .bind(state.as_str())
            .bind(serde_json::to_string(result)?)
            .bind(now_ms())
            .bind(job_id)
            .execute(&self.pool)
            .await?;
        Ok(Finish::Recorded)
    }

    pub async fn job(&self, job_id: &str) -> Result<Option<JobView>, StoreError> {
        let row = sqlx::query(concat!(job_columns!(), " WHERE id = ?"))
            .bind(job_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| job_view(&r)).transpose()
    }

    /// The newest `limit` jobs, newest first.
    pub async fn jobs(&self, limit: i64) -> Result<Vec<JobView>, StoreError> {
        sqlx::query(concat!(job_columns!(), " ORDER BY seq DESC LIMIT ?"))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(job_view)
            .collect()
    }
}

async fn insert_job(
    conn: &mut sqlx::SqliteConnection,
    id: &str,
    spec: &JobSpec,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO jobs (id, seq, spec, labels, state, created_at)
         VALUES (?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs), ?, ?, 'queued', ?)",
    )
    .bind(id)
    .bind(serde_json::to_string(spec)?)
    .bind(serde_json::to_string(&spec.labels)?)
    .bind(now_ms())
    .execute(conn)
    .await?;
    Ok(())
}

fn job_view(row: &sqlx::sqlite::SqliteRow) -> Result<JobView, StoreError> {
    let result: Option<String> = row.get(5);
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
    })
}
