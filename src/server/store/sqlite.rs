//! The store in one SQLite file (WAL) through sqlx, schema in `migrations/sqlite/`; job logs are
//! files beside it, their committed length in the database.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use super::{
    Accept, Expired, Finish, Held, JobStore, LogAppend, NewEntry, OutboxEntry, Renew, StoreError,
    StoreStats, Stored, Unreported, acked_through, job_token_matches, now_ms, random_hex,
    token_hash,
};
use crate::protocol::{
    ForgeOrigin, JobResult, JobSpec, JobState, JobView, LeaseRenewal, Offer, Registration,
};

macro_rules! job_columns {
    () => {
        "SELECT id, state, spec, agent_id, log_committed, result, cancel_reason, created_at, started_at, finished_at, origin FROM jobs"
    };
}

/// The schema this build expects (`migrations/sqlite/`).
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

pub struct SqliteStore {
    pool: SqlitePool,
    logs: PathBuf,
    secret: String,
    /// Running jobs' logs, each behind a lock held by its one writer at a time; an entry
    /// is dropped once its job stops running and nobody holds it.
    log_states: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<LogState>>>>,
    /// Jobs whose entry was to be forgotten while a caller held it: that caller forgets it.
    retiring: std::sync::Mutex<HashSet<String>>,
}

/// The sha256 of a job's committed log, kept as it grows so a result is checked without
/// reading the log again. `None` until known: after a server restart it is computed once
/// from the file, on the blocking pool.
#[derive(Default)]
struct LogState {
    digest: Option<(u64, Sha256)>,
}

impl SqliteStore {
    /// Opens (creating when missing) the database file and migrates it; logs go to a
    /// `logs/` directory beside it.
    pub async fn open(database: &Path) -> Result<SqliteStore, StoreError> {
        let dir = database.parent().unwrap_or(Path::new("."));
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(|error| StoreError::Log {
            path: logs.clone(),
            error,
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
        MIGRATOR.run(&pool).await?;
        let fresh = random_hex()?;
        sqlx::query("INSERT OR IGNORE INTO meta (key, value) VALUES ('job_token_secret', ?)")
            .bind(&fresh)
            .execute(&pool)
            .await?;
        let secret: String = sqlx::query("SELECT value FROM meta WHERE key = 'job_token_secret'")
            .fetch_one(&pool)
            .await?
            .get(0);
        Ok(SqliteStore {
            pool,
            logs,
            secret,
            log_states: Default::default(),
            retiring: Default::default(),
        })
    }

    fn log_path(&self, job_id: &str) -> PathBuf {
        self.logs.join(format!("{job_id}.log"))
    }

    fn log_state(&self, job_id: &str) -> Arc<tokio::sync::Mutex<LogState>> {
        let mut states = self.log_states.lock().unwrap_or_else(|p| p.into_inner());
        states.entry(job_id.to_owned()).or_default().clone()
    }

    /// Drops the job's entry unless a caller holds it (it is only handed out under the
    /// map's lock, so nobody can take it meanwhile): then the holder drops it when done
    /// ([`SqliteStore::release_log_state`]). A later writer starts a fresh one.
    fn forget_log_state(&self, job_id: &str) {
        let mut states = self.log_states.lock().unwrap_or_else(|p| p.into_inner());
        match states.get(job_id) {
            Some(state) if Arc::strong_count(state) == 1 => {
                states.remove(job_id);
            }
            Some(_) => {
                let mut retiring = self.retiring.lock().unwrap_or_else(|p| p.into_inner());
                retiring.insert(job_id.to_owned());
            }
            None => {}
        }
    }

    /// A holder of the job's entry is done with it: forgets it when that was asked
    /// meanwhile, or when `forget` (the job no longer takes log bytes).
    fn release_log_state(&self, job_id: &str, forget: bool) {
        let retiring = {
            let mut retiring = self.retiring.lock().unwrap_or_else(|p| p.into_inner());
            retiring.remove(job_id)
        };
        if forget || retiring {
            self.forget_log_state(job_id);
        }
    }

    /// Blocking file work on the blocking pool, its failure named by the file.
    async fn on_file<T: Send + 'static>(
        path: PathBuf,
        work: impl FnOnce(&Path) -> std::io::Result<T> + Send + 'static,
    ) -> Stored<T> {
        let done = tokio::task::spawn_blocking({
            let path = path.clone();
            move || work(&path)
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r);
        done.map_err(|error| StoreError::Log { path, error })
    }

    /// The append itself, under the job's log lock.
    async fn append_locked(
        &self,
        entry: &tokio::sync::Mutex<LogState>,
        job_id: &str,
        offset: u64,
        bytes: &[u8],
    ) -> Stored<LogAppend> {
        let mut state = entry.lock().await;
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
        let new = bytes[skip..].to_vec();
        // Synced before the committed length moves: a crash never commits bytes that are
        // not on disk.
        let new = Self::on_file(self.log_path(job_id), move |path| {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(false)
                .open(path)?;
            file.set_len(committed)?;
            file.seek(SeekFrom::Start(committed))?;
            file.write_all(&new)?;
            file.sync_data()?;
            Ok(new)
        })
        .await?;
        let now = committed + new.len() as u64;
        sqlx::query("UPDATE jobs SET log_committed = ? WHERE id = ?")
            .bind(now as i64)
            .bind(job_id)
            .execute(&self.pool)
            .await?;
        state.digest = match state.digest.take() {
            Some((hashed, mut hasher)) if hashed == committed => {
                hasher.update(&new);
                Some((now, hasher))
            }
            None if committed == 0 => Some((now, Sha256::new_with_prefix(&new))),
            _ => None,
        };
        Ok(LogAppend::Committed(now))
    }

    /// Checking and keeping a result, under the job's log lock.
    async fn finish_locked(
        &self,
        entry: &tokio::sync::Mutex<LogState>,
        job_id: &str,
        result: &JobResult,
    ) -> Stored<Finish> {
        let mut state = entry.lock().await;
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
        let hasher = match state.digest.take() {
            Some((hashed, hasher)) if hashed == committed => hasher,
            _ => {
                Self::on_file(self.log_path(job_id), move |path| {
                    let mut hasher = Sha256::new();
                    match std::fs::File::open(path) {
                        Ok(file) => {
                            crate::util::sha256_feed(&mut hasher, file.take(committed), &mut 0)?;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound && committed == 0 => {}
                        Err(e) => return Err(e),
                    }
                    Ok(hasher)
                })
                .await?
            }
        };
        let digest = hex::encode(hasher.clone().finalize());
        state.digest = Some((committed, hasher));
        if result.log.bytes != committed || !digest.eq_ignore_ascii_case(&result.log.sha256) {
            return Ok(Finish::LogIncomplete { committed });
        }
        let final_state = JobState::from_status(&result.status);
        sqlx::query("UPDATE jobs SET state = ?, result = ?, finished_at = ? WHERE id = ? AND state = 'running'")
            .bind(final_state.as_str())
            .bind(serde_json::to_string(result)?)
            .bind(now_ms())
            .bind(job_id)
            .execute(&self.pool)
            .await?;
        Ok(Finish::Recorded)
    }
}

impl JobStore for SqliteStore {
    async fn register_agent(&self, agent: &Registration) -> Stored<(String, String)> {
        let id = format!("agent-{}", &random_hex()?[..16]);
        let token = random_hex()?;
        let now = now_ms();
        sqlx::query(
            "INSERT INTO agents (id, name, version, labels, capacity, token_hash, registered_at, last_seen)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(&agent.name)
        .bind(&agent.version)
        .bind(serde_json::to_string(&agent.labels)?)
        .bind(agent.capacity)
        .bind(token_hash(&token))
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok((id, token))
    }

    async fn agent_by_token(
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

    async fn create_job(
        &self,
        spec: &JobSpec,
        origin: Option<&ForgeOrigin>,
    ) -> Result<String, StoreError> {
        let id = format!("job-{}", &random_hex()?[..20]);
        insert_job(&mut *self.pool.acquire().await?, &id, spec, origin).await?;
        Ok(id)
    }

    async fn create_job_once(
        &self,
        spec: &JobSpec,
        origin: Option<&ForgeOrigin>,
        keys: &[String],
    ) -> Result<(String, bool), StoreError> {
        let id = format!("job-{}", &random_hex()?[..20]);
        let mut tx = self.pool.begin().await?;
        // A write first, so concurrent deliveries take the write lock in turn; a replay
        // rolls it back.
        insert_job(&mut tx, &id, spec, origin).await?;
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

    async fn active_in_stream(&self, stream: &str) -> Stored<Vec<String>> {
        Ok(sqlx::query(
            "SELECT id FROM jobs WHERE stream = ? AND state IN ('queued', 'offered', 'running')
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
             FROM jobs WHERE origin IS NOT NULL AND reported IS NOT state ORDER BY seq LIMIT ?",
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
            sqlx::query("SELECT succeeded FROM stream_outcomes WHERE stream = ?")
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
        let marked = sqlx::query(
            "UPDATE jobs SET reported = ?1 WHERE id = ?2 AND state = ?1 AND reported IS NOT ?1",
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
        let now = now_ms();
        for entry in entries {
            sqlx::query(
                "INSERT INTO outbox (ordering, repository, body, due_at, created_at)
                 VALUES (?, ?, ?, ?, ?)",
            )
            .bind(&entry.ordering)
            .bind(&entry.repository)
            .bind(entry.body.to_string())
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        if let Some((stream, succeeded)) = outcome {
            sqlx::query(
                "INSERT INTO stream_outcomes (stream, succeeded) VALUES (?, ?)
                 ON CONFLICT (stream) DO UPDATE SET succeeded = excluded.succeeded",
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
        let now = now_ms();
        sqlx::query(
            "UPDATE outbox SET due_at = ?1
             WHERE id IN (
                 SELECT o.id FROM outbox o
                 WHERE o.due_at <= ?2
                   AND o.id = (SELECT MIN(id) FROM outbox WHERE ordering = o.ordering)
                 ORDER BY o.id LIMIT ?3)
             RETURNING id, ordering, repository, body, attempts",
        )
        .bind(now + hold.as_millis() as i64)
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(outbox_entry)
        .collect()
    }

    async fn outbox_done(&self, id: i64) -> Stored<()> {
        sqlx::query("DELETE FROM outbox WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn outbox_retry(&self, id: i64, after: Duration, error: &str) -> Stored<()> {
        sqlx::query(
            "UPDATE outbox SET attempts = attempts + 1, due_at = ?, last_error = ? WHERE id = ?",
        )
        .bind(now_ms() + after.as_millis() as i64)
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

    async fn job_token_valid(&self, job_id: &str, token: &str) -> Result<bool, StoreError> {
        let offer: Option<Option<String>> =
            sqlx::query("SELECT offer_id FROM jobs WHERE id = ? AND lease_id IS NOT NULL")
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
        let held = Held {
            offer_id: row.get(0),
            agent_id: row.get(1),
            lease_id: row.get(2),
            lease_expires: row.get(3),
        };
        let who = (agent_id, offer_id);
        Ok(Accept::decide(
            accepted,
            job,
            held,
            who,
            &self.secret,
            expires_at,
        ))
    }

    async fn grant_grace(&self, lease_ttl: Duration) -> Result<u64, StoreError> {
        let until = now_ms() + lease_ttl.as_millis() as i64;
        Ok(sqlx::query(
            "UPDATE jobs SET lease_expires = MAX(lease_expires, ?) WHERE state = 'running'",
        )
        .bind(until)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn revive(&self, job_id: &str, lease_ttl: Duration) -> Result<(), StoreError> {
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
            tracing::info!(job = job_id, "its agent is back; the job runs again");
        }
        Ok(())
    }

    async fn renew(
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

    async fn expire(&self) -> Result<Expired, StoreError> {
        let now = now_ms();
        let returned: Vec<String> = sqlx::query(
            "UPDATE jobs SET state = 'queued', agent_id = NULL, offer_id = NULL, offer_expires = NULL
             WHERE state = 'offered' AND offer_expires <= ?
             RETURNING id",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
        let lost: Vec<String> = sqlx::query(
            "UPDATE jobs SET state = 'lost', finished_at = ? WHERE state = 'running' AND lease_expires <= ?
             RETURNING id",
        )
        .bind(now)
        .bind(now)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
        for job_id in &lost {
            self.forget_log_state(job_id);
        }
        Ok(Expired { returned, lost })
    }

    async fn cancel(&self, job_id: &str, reason: &str) -> Result<bool, StoreError> {
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

    async fn append_log(&self, job_id: &str, offset: u64, bytes: &[u8]) -> Stored<LogAppend> {
        let entry = self.log_state(job_id);
        let appended = self.append_locked(&entry, job_id, offset, bytes).await;
        drop(entry);
        let taking = matches!(appended, Ok(LogAppend::Committed(_) | LogAppend::Gap(_)));
        self.release_log_state(job_id, !taking);
        appended
    }

    async fn read_log(&self, job_id: &str, from: u64, max: u64) -> Stored<Option<Vec<u8>>> {
        let Some(job) = self.job(job_id).await? else {
            return Ok(None);
        };
        let end = job.log_bytes.min(from.saturating_add(max));
        if from >= end {
            return Ok(Some(Vec::new()));
        }
        Self::on_file(self.log_path(job_id), move |path| {
            let mut file = std::fs::File::open(path)?;
            file.seek(SeekFrom::Start(from))?;
            let mut out = vec![0; (end - from) as usize];
            file.read_exact(&mut out)?;
            Ok(Some(out))
        })
        .await
    }

    async fn add_events(
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
        Ok(Some(acked_through(&seqs)))
    }

    async fn finish(&self, job_id: &str, result: &JobResult) -> Stored<Finish> {
        let entry = self.log_state(job_id);
        let finished = self.finish_locked(&entry, job_id, result).await;
        drop(entry);
        let taking = matches!(finished, Ok(Finish::LogIncomplete { .. }));
        self.release_log_state(job_id, !taking);
        finished
    }

    async fn job(&self, job_id: &str) -> Result<Option<JobView>, StoreError> {
        let row = sqlx::query(concat!(job_columns!(), " WHERE id = ?"))
            .bind(job_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| job_view(&r)).transpose()
    }

    async fn jobs(&self, limit: i64) -> Result<Vec<JobView>, StoreError> {
        sqlx::query(concat!(job_columns!(), " ORDER BY seq DESC LIMIT ?"))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(job_view)
            .collect()
    }

    async fn ready(&self) -> Result<(), StoreError> {
        // Takes the write lock, as a submit would: a database another process holds
        // locked is not ready.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let applied: Vec<i64> =
            sqlx::query("SELECT version FROM _sqlx_migrations WHERE success = 1")
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
        tx.rollback().await?;
        super::schema_matches(&MIGRATOR, &applied)
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let mut stats = StoreStats::default();
        for row in sqlx::query("SELECT state, labels, COUNT(*) FROM jobs GROUP BY state, labels")
            .fetch_all(&self.pool)
            .await?
        {
            stats.jobs.push((
                row.get::<String, _>(0).parse().map_err(StoreError::State)?,
                serde_json::from_str(&row.get::<String, _>(1))?,
                row.get::<i64, _>(2) as u64,
            ));
        }
        stats.log_bytes = sqlx::query("SELECT COALESCE(SUM(log_committed), 0) FROM jobs")
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

async fn insert_job(
    conn: &mut sqlx::SqliteConnection,
    id: &str,
    spec: &JobSpec,
    origin: Option<&ForgeOrigin>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO jobs (id, seq, spec, labels, state, created_at, origin, stream)
         VALUES (?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs), ?, ?, 'queued', ?, ?, ?)",
    )
    .bind(id)
    .bind(serde_json::to_string(spec)?)
    .bind(serde_json::to_string(&spec.labels)?)
    .bind(now_ms())
    .bind(origin.map(serde_json::to_string).transpose()?)
    .bind(origin.map(ForgeOrigin::stream))
    .execute(conn)
    .await?;
    Ok(())
}

fn job_view(row: &sqlx::sqlite::SqliteRow) -> Result<JobView, StoreError> {
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

fn outbox_entry(row: &sqlx::sqlite::SqliteRow) -> Stored<OutboxEntry> {
    Ok(OutboxEntry {
        id: row.get(0),
        ordering: row.get(1),
        repository: row.get(2),
        body: serde_json::from_str(&row.get::<String, _>(3))?,
        attempts: row.get::<i64, _>(4) as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn fresh() -> (SqliteStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("jobs.db"))
            .await
            .unwrap();
        (store, dir)
    }

    crate::job_store_conformance!(fresh);

    /// A running job with `log` committed.
    async fn running_with_log(store: &SqliteStore, log: &[u8]) -> String {
        let job = store
            .create_job(
                &serde_json::from_str(r#"{"source": {"path": "/x"}}"#).unwrap(),
                None,
            )
            .await
            .unwrap();
        let (agent, _) = store
            .register_agent(&Registration {
                name: "a".into(),
                version: "0".into(),
                labels: Vec::new(),
                capacity: 1,
            })
            .await
            .unwrap();
        let offer = store.offer(&agent, &[], Duration::from_secs(60)).await;
        let offer = offer.unwrap().unwrap();
        let accepted = store
            .accept(&job, &offer.offer_id, &agent, Duration::from_secs(60))
            .await
            .unwrap();
        assert!(matches!(accepted, Accept::Accepted { .. }));
        store.append_log(&job, 0, log).await.unwrap();
        job
    }

    fn result_for(log: &[u8]) -> JobResult {
        serde_json::from_value(serde_json::json!({"status": "succeeded", "exit_code": 0,
            "started_at": null, "finished_at": null,
            "log": {"bytes": log.len(), "sha256": crate::util::sha256_hex(log)}}))
        .unwrap()
    }

    #[tokio::test]
    async fn a_restarted_store_checks_a_result_against_the_log_on_disk() {
        let (store, dir) = fresh().await;
        let job = running_with_log(&store, b"before the restart\n").await;
        store.pool.close().await;
        drop(store);
        let store = SqliteStore::open(&dir.path().join("jobs.db"))
            .await
            .unwrap();
        store.append_log(&job, 19, b"after\n").await.unwrap();
        let log = b"before the restart\nafter\n";
        let mut wrong = result_for(log);
        wrong.log.sha256 = crate::util::sha256_hex(b"before the restart\nAFTER\n");
        assert_eq!(
            store.finish(&job, &wrong).await.unwrap(),
            Finish::LogIncomplete { committed: 25 }
        );
        assert_eq!(
            store.finish(&job, &result_for(log)).await.unwrap(),
            Finish::Recorded
        );
    }

    #[tokio::test]
    async fn a_jobs_log_state_is_forgotten_when_its_result_is_kept() {
        let (store, _dir) = fresh().await;
        let job = running_with_log(&store, b"x").await;
        assert!(store.log_states.lock().unwrap().contains_key(&job));
        let incomplete = store.finish(&job, &result_for(b"xy")).await.unwrap();
        assert_eq!(incomplete, Finish::LogIncomplete { committed: 1 });
        assert!(store.log_states.lock().unwrap().contains_key(&job));
        assert_eq!(
            store.finish(&job, &result_for(b"x")).await.unwrap(),
            Finish::Recorded
        );
        assert!(store.log_states.lock().unwrap().is_empty());
        assert_eq!(
            store.append_log(&job, 1, b"late").await.unwrap(),
            LogAppend::NotRunning
        );
        assert!(
            store.log_states.lock().unwrap().is_empty(),
            "a late call leaves nothing behind"
        );
    }

    #[tokio::test]
    async fn a_lost_jobs_log_state_is_forgotten() {
        let (store, _dir) = fresh().await;
        let job = running_with_log(&store, b"x").await;
        sqlx::query("UPDATE jobs SET lease_expires = 0 WHERE id = ?")
            .bind(&job)
            .execute(&store.pool)
            .await
            .unwrap();
        let held = store.log_state(&job);
        assert_eq!(
            store.expire().await.unwrap().lost,
            std::slice::from_ref(&job)
        );
        assert!(
            !store.log_states.lock().unwrap().is_empty(),
            "an append in flight keeps it"
        );
        drop(held);
        store.release_log_state(&job, false);
        assert!(
            store.log_states.lock().unwrap().is_empty(),
            "its holder forgets it once done"
        );
        store.revive(&job, Duration::from_secs(60)).await.unwrap();
        store.append_log(&job, 1, b"y").await.unwrap();
        assert_eq!(
            store.finish(&job, &result_for(b"xy")).await.unwrap(),
            Finish::Recorded,
            "the digest is computed again from the file"
        );
    }
}
