//! A server job's way back: its lease renewed (a cancel from the server cancels the job),
//! its log and events uploaded from the results directory while they grow, and its result
//! reported until the server acknowledges it. The results directory is the spool: log.txt
//! and events.jsonl are on disk before a byte is sent, and `remote.json` there says what
//! is still owed, so an agent restart finishes the upload.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cancel::{Cancel, CancelReason};
use crate::job::RemoteJob;
use crate::protocol::client::{Body, ClientError, Retry, ServerClient};
use crate::protocol::{
    Committed, EventsAck, JobResult, LeaseGone, LeaseRenewal, LeaseRequest, LogSummary,
};
use crate::report::{EVENTS_FILE, JobRecord};
use crate::util::off_runtime;

/// In a job's results directory while its upload is owed.
pub const REMOTE_FILE: &str = "remote.json";

/// Events per upload call.
const EVENT_BATCH: usize = 500;

/// Events read into memory at most; the rest wait in events.jsonl.
const MAX_PENDING: usize = 4 * EVENT_BATCH;

/// One upload's share of the agent's backlog gauges: the log bytes read and not yet
/// committed (at most a chunk: the rest waits on disk unread) and the events read and not
/// yet acknowledged; given back when the upload ends.
#[derive(Default)]
struct Owed {
    bytes: i64,
    events: i64,
}

impl Owed {
    fn bytes(&mut self, now: usize) {
        let gauge = &crate::metrics::agent().upload_backlog_bytes;
        gauge.inc_by(now as i64 - std::mem::replace(&mut self.bytes, now as i64));
    }

    fn events(&mut self, now: usize) {
        let gauge = &crate::metrics::agent().upload_backlog_events;
        gauge.inc_by(now as i64 - std::mem::replace(&mut self.events, now as i64));
    }
}

impl Drop for Owed {
    fn drop(&mut self) {
        self.bytes(0);
        self.events(0);
    }
}

/// The running lease renewal and upload of one job.
pub struct Upload {
    lease: JoinHandle<()>,
    upload: JoinHandle<Result<(), ClientError>>,
    stop_lease: CancellationToken,
    /// The job's final record, once its reporter has finished.
    finished: Arc<OnceLock<Value>>,
    wake: Arc<Notify>,
}

impl Upload {
    /// Starts both for a job whose results go to `dir`. A cancel (or a lost lease) from the
    /// server cancels `job`; `agent` stops the upload (a later start resumes it).
    pub fn start(remote: &RemoteJob, dir: &Path, job: Cancel, agent: CancellationToken) -> Upload {
        if let Err(e) = super::claim::write_private(
            &dir.join(REMOTE_FILE),
            &serde_json::to_vec_pretty(remote).unwrap_or_default(),
        ) {
            tracing::warn!("cannot record the upload in {}: {e}", dir.display());
        }
        let stop_lease = agent.child_token();
        let lease = tokio::spawn(renew_lease(remote.clone(), job, stop_lease.clone()));
        let finished = Arc::new(OnceLock::new());
        let wake = Arc::new(Notify::new());
        let uploader = Uploader::new(remote.clone(), dir.to_path_buf());
        let upload = tokio::spawn(uploader.run(finished.clone(), wake.clone(), agent));
        Upload {
            lease,
            upload,
            stop_lease,
            finished,
            wake,
        }
    }

    /// After the job's reporter has finished with `record`: uploads the rest and the
    /// result, then stops renewing the lease.
    pub async fn finish(self, record: &JobRecord) -> Result<(), ClientError> {
        let record = serde_json::to_value(record).unwrap_or(Value::Null);
        let _ = self.finished.set(record);
        self.wake.notify_one();
        let uploaded = self.upload.await.unwrap_or(Err(ClientError::Cancelled));
        self.stop_lease.cancel();
        let _ = self.lease.await;
        uploaded
    }
}

/// Finishes the uploads an earlier agent left: finished jobs (with result.json) are
/// uploaded, unfinished ones are dropped (the server has marked them lost).
pub async fn resume_uploads(results_dir: &Path, cancel: CancellationToken) {
    let Ok(entries) = std::fs::read_dir(results_dir) else {
        return;
    };
    for dir in entries.filter_map(Result::ok).map(|e| e.path()) {
        let Some(remote) = std::fs::read(dir.join(REMOTE_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<RemoteJob>(&b).ok())
        else {
            continue;
        };
        if !dir.join("result.json").exists() {
            let _ = std::fs::remove_file(dir.join(REMOTE_FILE));
            continue;
        }
        tracing::info!(
            job = remote.job_id,
            "resuming the upload of job {}",
            remote.job_id
        );
        let uploader = Uploader::new(remote, dir);
        let finished = Arc::new(OnceLock::from(Value::Null));
        if let Err(e) = uploader
            .run(finished, Arc::new(Notify::new()), cancel.clone())
            .await
        {
            tracing::warn!("resuming an upload failed: {e}");
        }
    }
}

/// Renews the job's lease until `stop`; cancels `job` when the server cancels it or no
/// longer counts this agent as its runner.
async fn renew_lease(remote: RemoteJob, job: Cancel, stop: CancellationToken) {
    let client = ServerClient::for_job(&remote);
    let every = remote.lease / 3;
    let path = format!("/api/v1/jobs/{}/lease", remote.job_id);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let answer = client
            .call(
                Method::PUT,
                &path,
                &remote.job_token,
                Body::json(&LeaseRequest {
                    lease_id: remote.lease_id.clone(),
                }),
                &[StatusCode::OK, StatusCode::GONE],
                every,
            )
            .await;
        match answer {
            Ok(answer) if answer.status == StatusCode::GONE => {
                let state = answer.json::<LeaseGone>().map(|gone| gone.state);
                tracing::warn!(
                    "job {}: the server says it is {}; stopping it",
                    remote.job_id,
                    state.map_or("gone".to_owned(), |s| s.to_string())
                );
                job.cancel(CancelReason::LeaseLost);
                return;
            }
            Ok(answer) => match answer.json::<LeaseRenewal>() {
                Ok(renewal) if renewal.cancel => {
                    tracing::warn!(
                        "job {}: the server cancels it: {}",
                        remote.job_id,
                        renewal.reason.as_deref().unwrap_or("no reason given")
                    );
                    job.cancel(CancelReason::Requested);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    job = remote.job_id,
                    "renewing the lease of {}: {e}",
                    remote.job_id
                ),
            },
            Err(e) => tracing::warn!(
                job = remote.job_id,
                "renewing the lease of {} failed: {e}",
                remote.job_id
            ),
        }
    }
}

struct Uploader {
    client: ServerClient,
    remote: RemoteJob,
    dir: PathBuf,
}

impl Uploader {
    fn new(remote: RemoteJob, dir: PathBuf) -> Uploader {
        Uploader {
            client: ServerClient::for_job(&remote),
            remote,
            dir,
        }
    }

    /// Uploads until done. Nothing is owed any more when it succeeds or the server refuses
    /// for good (the job was lost or finished elsewhere); a cancel leaves it owed.
    async fn run(
        self,
        finished: Arc<OnceLock<Value>>,
        wake: Arc<Notify>,
        cancel: CancellationToken,
    ) -> Result<(), ClientError> {
        let uploaded = self.upload(finished, wake, &cancel).await;
        if !matches!(uploaded, Err(ClientError::Cancelled)) {
            let _ = std::fs::remove_file(self.dir.join(REMOTE_FILE));
        }
        uploaded
    }

    async fn upload(
        &self,
        finished: Arc<OnceLock<Value>>,
        wake: Arc<Notify>,
        cancel: &CancellationToken,
    ) -> Result<(), ClientError> {
        let mut log = LogSpool::new(self.dir.join("log.txt"));
        let mut events = EventSpool::new(self.dir.join(EVENTS_FILE));
        let mut owed = Owed::default();
        loop {
            let done = finished.get().is_some();
            self.upload_log(&mut log, &mut owed, cancel).await?;
            events = self.upload_events(events, &mut owed, cancel).await?;
            if done {
                break;
            }
            tokio::select! {
                () = cancel.cancelled() => return Err(ClientError::Cancelled),
                () = wake.notified() => {}
                () = tokio::time::sleep(self.remote.log_flush) => {}
            }
        }
        let record = finished.get().unwrap_or(&Value::Null);
        loop {
            self.upload_log(&mut log, &mut owed, cancel).await?;
            let (answer, spool) = self.report_result(log, record, cancel).await?;
            log = spool;
            match answer {
                None => break,
                Some(server_has) => log.committed = server_has,
            }
        }
        Ok(())
    }

    fn path(&self, call: &str) -> String {
        format!("/api/v1/jobs/{}/{call}", self.remote.job_id)
    }

    /// Sends log.txt from what the server has committed to its current end, hashing the
    /// bytes the server commits.
    async fn upload_log(
        &self,
        log: &mut LogSpool,
        owed: &mut Owed,
        cancel: &CancellationToken,
    ) -> Result<(), ClientError> {
        loop {
            let (path, offset) = (log.path.clone(), log.committed);
            let max = self.remote.log_chunk_max;
            let chunk = tokio::task::spawn_blocking(move || read_chunk(&path, offset, max))
                .await
                .unwrap_or_default();
            owed.bytes(chunk.len());
            if chunk.is_empty() {
                return Ok(());
            }
            let chunk = bytes::Bytes::from(chunk);
            let answer = self
                .client
                .call_until_answered(
                    Method::PUT,
                    &format!("{}?offset={offset}", self.path("log")),
                    &self.remote.job_token,
                    Body::Bytes(chunk.clone()),
                    &[StatusCode::OK, StatusCode::RANGE_NOT_SATISFIABLE],
                    Retry::Transient,
                    cancel,
                )
                .await?;
            let server_has = answer.json::<Committed>()?.committed;
            if answer.status == StatusCode::RANGE_NOT_SATISFIABLE {
                tracing::info!(
                    "the server holds {server_has} bytes of the log; resending from there"
                );
            } else {
                log.hash(offset, &chunk, server_has);
            }
            log.committed = server_has;
        }
    }

    /// Sends the events written since the last call, a batch at a time, reading at most
    /// [`MAX_PENDING`] of them into memory at once.
    async fn upload_events(
        &self,
        mut events: EventSpool,
        owed: &mut Owed,
        cancel: &CancellationToken,
    ) -> Result<EventSpool, ClientError> {
        loop {
            events = off_runtime(move || {
                events.read_new();
                events
            })
            .await;
            owed.events(events.pending.len());
            let batch: Vec<&Value> = events.pending.iter().take(EVENT_BATCH).collect();
            if batch.is_empty() {
                return Ok(events);
            }
            let answer = self
                .client
                .call_until_answered(
                    Method::POST,
                    &self.path("events"),
                    &self.remote.job_token,
                    Body::json(&batch),
                    &[StatusCode::OK],
                    // Idempotent by sequence number.
                    Retry::Transient,
                    cancel,
                )
                .await?;
            let before = events.pending.len();
            events.acknowledge(answer.json::<EventsAck>()?.acked_seq);
            owed.events(events.pending.len());
            if events.pending.len() == before {
                return Ok(events);
            }
        }
    }

    /// Reports result.json (or, when it could not be written, the job's `record`) with the
    /// log's length and sha256. `Some(committed)` when the server holds less of the log
    /// than that.
    async fn report_result(
        &self,
        mut log: LogSpool,
        record: &Value,
        cancel: &CancellationToken,
    ) -> Result<(Option<u64>, LogSpool), ClientError> {
        let dir = self.dir.clone();
        let read = tokio::task::spawn_blocking(move || {
            let result = std::fs::read(dir.join("result.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
            let digest = log.digest();
            (result, log, digest)
        });
        let (result, log, (log_len, sha256)) = read.await.map_err(|_| ClientError::Cancelled)?;
        let body = result_body(result.as_ref().unwrap_or(record), log_len, &sha256);
        let answer = self
            .client
            .call_until_answered(
                Method::PUT,
                &self.path("result"),
                &self.remote.job_token,
                Body::json(&body),
                &[StatusCode::OK, StatusCode::CONFLICT],
                Retry::Transient,
                cancel,
            )
            .await?;
        if answer.status == StatusCode::OK {
            return Ok((None, log));
        }
        match answer.json::<Committed>() {
            Ok(held) if held.committed < log.committed.max(log_len) => {
                Ok((Some(held.committed), log))
            }
            _ => Err(ClientError::Refused {
                url: answer.url.clone(),
                status: answer.status,
                body: String::from_utf8_lossy(&answer.body).into_owned(),
                retry_after: None,
            }),
        }
    }
}

/// log.txt as far as the server has it, and the sha256 of its first `hashed` bytes: each
/// flush reads only the bytes after `committed`, and the digest at the end only those
/// never hashed.
struct LogSpool {
    path: PathBuf,
    committed: u64,
    hasher: Sha256,
    hashed: u64,
}

impl LogSpool {
    fn new(path: PathBuf) -> LogSpool {
        LogSpool {
            path,
            committed: 0,
            hasher: Sha256::new(),
            hashed: 0,
        }
    }

    /// Hashes the bytes of `chunk` (read at `offset`) that the server now holds up to
    /// `server_has` and the hasher has not seen.
    fn hash(&mut self, offset: u64, chunk: &[u8], server_has: u64) {
        let end = server_has.min(offset + chunk.len() as u64);
        if self.hashed < offset || self.hashed >= end {
            return;
        }
        let from = (self.hashed - offset) as usize;
        let to = (end - offset) as usize;
        self.hasher.update(&chunk[from..to]);
        self.hashed = end;
    }

    /// The log's length and sha256, reading only what was never hashed: a log may be
    /// hundreds of MB. Blocking.
    fn digest(&mut self) -> (u64, String) {
        if let Ok(mut file) = std::fs::File::open(&self.path)
            && file.seek(SeekFrom::Start(self.hashed)).is_ok()
        {
            let _ = crate::util::sha256_feed(&mut self.hasher, file, &mut self.hashed);
        }
        (self.hashed, hex::encode(self.hasher.clone().finalize()))
    }
}

/// events.jsonl read as it grows: complete lines after `read` become events numbered by
/// line, held until the server acknowledges them.
struct EventSpool {
    path: PathBuf,
    /// Bytes of the file up to the end of the last complete line taken.
    read: u64,
    /// Lines taken so far: the last one's sequence number.
    lines: u64,
    pending: VecDeque<Value>,
}

impl EventSpool {
    fn new(path: PathBuf) -> EventSpool {
        EventSpool {
            path,
            read: 0,
            lines: 0,
            pending: VecDeque::new(),
        }
    }

    /// Takes the complete lines written since the last call, until [`MAX_PENDING`] are
    /// held. Blocking.
    fn read_new(&mut self) {
        if self.pending.len() >= MAX_PENDING {
            return;
        }
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return;
        };
        if file.seek(SeekFrom::Start(self.read)).is_err() {
            return;
        }
        let mut reader = BufReader::new(file);
        let mut line = Vec::new();
        while self.pending.len() < MAX_PENDING {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(read) if line.last() == Some(&b'\n') => {
                    self.read += read as u64;
                    self.lines += 1;
                    let text = String::from_utf8_lossy(&line[..read - 1]);
                    let mut event: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    if let Value::Object(map) = &mut event {
                        map.insert("seq".to_owned(), json!(self.lines));
                    }
                    self.pending.push_back(event);
                }
                // The end, or a line still being written: the rest next time.
                _ => return,
            }
        }
    }

    /// Drops the events the server holds: every one up to `acked`.
    fn acknowledge(&mut self, acked: i64) {
        let first_pending = self.lines - self.pending.len() as u64;
        let held = u64::try_from(acked)
            .unwrap_or_default()
            .saturating_sub(first_pending);
        let held = usize::try_from(held).unwrap_or(usize::MAX);
        self.pending.drain(..held.min(self.pending.len()));
    }
}

/// The result call's body: `stages` is always a list (the server refuses anything else), a
/// job with no status is an error.
fn result_body(result: &Value, log_bytes: u64, sha256: &str) -> JobResult {
    let text = |field: &str| result[field].as_str().map(str::to_owned);
    JobResult {
        status: text("status").unwrap_or_else(|| "error".to_owned()),
        exit_code: result["exit_code"]
            .as_i64()
            .unwrap_or(i64::from(crate::exit_code::INFRASTRUCTURE)),
        stages: result["stages"].as_array().cloned().unwrap_or_default(),
        started_at: text("started_at"),
        finished_at: text("finished_at"),
        message: text("message"),
        agent_job: text("job"),
        log: LogSummary {
            bytes: log_bytes,
            sha256: sha256.to_owned(),
        },
    }
}

fn read_chunk(path: &Path, offset: u64, max: usize) -> Vec<u8> {
    let Ok(mut file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let mut chunk = Vec::new();
    let read = file
        .seek(SeekFrom::Start(offset))
        .and_then(|_| (&mut file).take(max as u64).read_to_end(&mut chunk));
    if read.is_err() {
        chunk.clear();
    }
    chunk
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_result_body_always_carries_a_list_of_stages_and_a_status() {
        let body = serde_json::to_value(result_body(&Value::Null, 0, "e3b0")).unwrap();
        assert_eq!(body["stages"], json!([]));
        assert_eq!(
            (body["status"].as_str(), body["exit_code"].as_i64()),
            (Some("error"), Some(202))
        );
        let record = json!({"status": "error", "exit_code": 202, "stages": null, "message": "writing log.txt: full"});
        let body = serde_json::to_value(result_body(&record, 3, "ab")).unwrap();
        assert_eq!(body["stages"], json!([]));
        assert_eq!(body["message"], "writing log.txt: full");
        assert_eq!(body["log"], json!({"bytes": 3, "sha256": "ab"}));
    }

    #[test]
    fn the_log_digest_is_read_in_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.txt");
        let log: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &log).unwrap();
        let (length, digest) = LogSpool::new(path).digest();
        assert_eq!(length, log.len() as u64);
        assert_eq!(digest, crate::util::sha256_hex(&log));
        assert_eq!(LogSpool::new(dir.path().join("none")).digest().0, 0);
    }

    #[test]
    fn the_log_is_hashed_as_the_server_commits_it_and_only_the_rest_is_read_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.txt");
        let log: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &log).unwrap();
        let mut spool = LogSpool::new(path.clone());
        spool.hash(0, &log[..4000], 3000);
        assert_eq!(spool.hashed, 3000, "only what the server committed");
        spool.hash(2000, &log[2000..6000], 6000);
        assert_eq!(spool.hashed, 6000, "a replayed range is hashed once");
        spool.hash(8000, &log[8000..], 10_000);
        assert_eq!(spool.hashed, 6000, "a range after a hole waits");
        // What was hashed is never read again: overwriting it on disk changes nothing.
        let mut changed = log.clone();
        changed[..6000].fill(0);
        std::fs::write(&path, &changed).unwrap();
        assert_eq!(
            spool.digest(),
            (log.len() as u64, crate::util::sha256_hex(&log))
        );
    }

    #[test]
    fn events_are_read_once_numbered_by_line_and_held_until_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(EVENTS_FILE);
        std::fs::write(&path, "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n{\"a\"").unwrap();
        let mut spool = EventSpool::new(path.clone());
        spool.read_new();
        let seqs = |spool: &EventSpool| -> Vec<u64> {
            spool
                .pending
                .iter()
                .map(|e| e["seq"].as_u64().unwrap())
                .collect()
        };
        assert_eq!(seqs(&spool), [1, 2, 3], "the unfinished line waits");
        // Lines already taken are not read again.
        std::fs::write(&path, "{\"b\":1}\n{\"b\":2}\n{\"b\":3}\n{\"a\":4}\n").unwrap();
        spool.read_new();
        assert_eq!(seqs(&spool), [1, 2, 3, 4]);
        assert_eq!(spool.pending[3]["a"], 4);
        assert_eq!(spool.pending[0]["a"], 1);
        spool.acknowledge(2);
        assert_eq!(seqs(&spool), [3, 4]);
        spool.acknowledge(1);
        assert_eq!(
            seqs(&spool),
            [3, 4],
            "an older acknowledgement drops nothing"
        );
        spool.acknowledge(9);
        assert!(spool.pending.is_empty());
    }

    #[test]
    fn a_long_job_s_events_are_held_a_bounded_number_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(EVENTS_FILE);
        let lines: String = (1..=2 * MAX_PENDING + 7)
            .map(|i| format!("{{\"n\":{i}}}\n"))
            .collect();
        std::fs::write(&path, lines).unwrap();
        let mut spool = EventSpool::new(path);
        let mut seen = 0;
        loop {
            spool.read_new();
            assert!(spool.pending.len() <= MAX_PENDING);
            let Some(last) = spool.pending.back() else {
                break;
            };
            assert_eq!(last["seq"], last["n"], "numbered by line");
            seen = last["n"].as_u64().unwrap();
            spool.acknowledge(i64::try_from(seen).unwrap());
        }
        assert_eq!(seen, 2 * MAX_PENDING as u64 + 7);
    }
}
