//! The http source: registers once (the identity is kept in the state directory), then
//! claims jobs by long poll whenever the agent has free slots, accepts each offer and hands
//! the job to the dispatcher.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::HttpSource;
use crate::job::{Job, JobTrust, OnBusy, Origin, RemoteJob, new_job_id};
use crate::protocol::client::{Body, ClientError, Retry, ServerClient};
use crate::protocol::{
    AcceptRequest, Accepted, ClaimRequest, JobResult, JobSource, LogSummary, Offer, Registered,
    Registration,
};
use crate::source::SourceEvent;

#[derive(Debug, thiserror::Error)]
pub enum HttpSourceError {
    #[error("the registration token variable {0} is not set")]
    NoToken(String),
    #[error("registering with {url}: {error}")]
    Register { url: String, error: ClientError },
    #[error("the agent identity file {path}: {error}")]
    Identity {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// Who this agent is to one server, and the timings the server asked for.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Identity {
    agent_id: String,
    agent_token: String,
    claim_wait_s: u64,
    lease_s: u64,
    log_flush_ms: u64,
    log_chunk_max: usize,
}

/// Of an accept whose job the agent cannot read, what it needs to end that job.
#[derive(Deserialize)]
struct Held {
    job_token: String,
}

/// What the agent tells the server about itself.
#[derive(Clone, Debug)]
pub struct AgentInfo {
    pub name: String,
    pub labels: Vec<String>,
    pub capacity: usize,
}

pub async fn run_http(
    source: HttpSource,
    agent: AgentInfo,
    state_dir: PathBuf,
    mut free_slots: watch::Receiver<usize>,
    tx: mpsc::Sender<SourceEvent>,
    cancel: CancellationToken,
) -> Result<(), HttpSourceError> {
    let client = ServerClient::over(&source.url);
    // Named by the first URL: replicas share their agents, and a single URL keeps its file.
    let identity_file = state_dir.join(format!(
        "http-{}.json",
        &crate::util::short_hash(client.url.as_bytes())[..12]
    ));
    let mut identity = match load_identity(&identity_file) {
        Some(identity) => identity,
        None => register(&client, &source, &agent, &identity_file, &cancel).await?,
    };
    let stream = format!("http:{}", client.url);
    loop {
        let ready = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            ready = free_slots.wait_for(|n| *n > 0) => ready.map(|n| *n),
        };
        let Ok(slots) = ready else { return Ok(()) };
        let claim_path = format!(
            "/api/v1/agents/{}/claim?wait={}",
            identity.agent_id, identity.claim_wait_s
        );
        let claim = client.call_until_answered(
            Method::POST,
            &claim_path,
            &identity.agent_token,
            Body::json(&ClaimRequest {
                free_slots: u32::try_from(slots).unwrap_or(u32::MAX),
            }),
            &[StatusCode::OK, StatusCode::NO_CONTENT],
            // A lost answer leaves an offer that lapses back to the queue.
            Retry::Transient,
            &cancel,
        );
        let offer = match claim.await.and_then(|answer| {
            (answer.status == StatusCode::OK)
                .then(|| answer.json::<Offer>())
                .transpose()
        }) {
            Ok(Some(offer)) => offer,
            Ok(None) => continue,
            Err(ClientError::Cancelled) => return Ok(()),
            Err(e) if e.status() == Some(StatusCode::UNAUTHORIZED) => {
                tracing::warn!("the server no longer knows this agent; registering again");
                let _ = std::fs::remove_file(&identity_file);
                identity = register(&client, &source, &agent, &identity_file, &cancel).await?;
                continue;
            }
            Err(e) => {
                problem(&tx, &stream, format!("claiming failed: {e}")).await;
                sleep_or_cancel(Duration::from_secs(5), &cancel).await;
                continue;
            }
        };
        let job_id = offer.job_id;
        let accepted = client
            .call_until_answered(
                Method::POST,
                &format!("/api/v1/jobs/{job_id}/accept"),
                &identity.agent_token,
                Body::json(&AcceptRequest {
                    offer_id: offer.offer_id,
                }),
                &[StatusCode::OK, StatusCode::CONFLICT, StatusCode::NOT_FOUND],
                // Idempotent on the offer.
                Retry::Transient,
                &cancel,
            )
            .await;
        let answer = match accepted {
            Ok(answer) if answer.status == StatusCode::OK => answer,
            Ok(_) => continue,
            Err(ClientError::Cancelled) => return Ok(()),
            Err(e) => {
                problem(&tx, &stream, format!("accepting {job_id} failed: {e}")).await;
                continue;
            }
        };
        let job = answer
            .json::<Accepted>()
            .map_err(|e| format!("the server's job is not understood: {e}"))
            .and_then(|accepted| job_from(&accepted, &identity, &source, &stream));
        let job = match job {
            Ok(job) => job,
            Err(message) => {
                problem(&tx, &stream, format!("job {job_id}: {message}")).await;
                if let Ok(held) = answer.json::<Held>() {
                    refuse_job(
                        &client,
                        &job_id,
                        &held.job_token,
                        &agent.name,
                        &message,
                        &cancel,
                    )
                    .await;
                }
                continue;
            }
        };
        if tx.send(SourceEvent::Job(Box::new(job))).await.is_err() {
            return Ok(());
        }
        // The dispatcher counts the job before this source claims again.
        let _ = tokio::time::timeout(Duration::from_secs(2), free_slots.changed()).await;
    }
}

/// The accepted job as the agent runs it, checked as the server checks submissions (the
/// agent trusts no server to have done it) and against the agent's own permission for
/// local sources.
fn job_from(
    accepted: &Accepted,
    identity: &Identity,
    source: &HttpSource,
    stream: &str,
) -> Result<Job, String> {
    let mut urls = source
        .url
        .iter()
        .map(|u| u.trim_end_matches('/').to_owned());
    let url = urls.next().unwrap_or_default();
    let spec = accepted.job.spec.clone();
    spec.check(source.allow_local_sources).map_err(|e| {
        let hint = if e.field == "source.git" || e.field == "source.path" {
            " (the agent's `allow_local_sources` for this http source)"
        } else {
            ""
        };
        format!("refused: {e}{hint}")
    })?;
    let timeout = spec
        .timeout_duration()
        .map_err(|e| format!("timeout: {e}"))?;
    let server_id = accepted.job.id.clone();
    let origin = match spec.source {
        JobSource::Git {
            git,
            commit,
            reference,
        } => Origin::Git {
            url: git,
            reference: commit.or(reference).unwrap_or_else(|| "HEAD".to_owned()),
        },
        JobSource::Path { path } => Origin::Path { path: path.into() },
    };
    Ok(Job {
        id: new_job_id(),
        stream: format!("{stream}/{server_id}"),
        origin,
        config_file: spec.config.into(),
        tasks: spec.tasks,
        env: spec.env,
        timeout,
        trigger: format!("job {server_id} from {url}"),
        on_busy: OnBusy::Parallel,
        remote: Some(RemoteJob {
            url,
            other_urls: urls.collect(),
            job_id: server_id,
            job_token: accepted.job_token.clone(),
            lease_id: accepted.lease.lease_id.clone(),
            lease: Duration::from_secs(identity.lease_s.max(3)),
            log_flush: Duration::from_millis(identity.log_flush_ms.max(50)),
            log_chunk_max: identity.log_chunk_max.max(1024),
        }),
        build_cache: None,
        trust: JobTrust {
            secrets: if spec.untrusted {
                Some(Vec::new())
            } else {
                spec.secrets
            },
            widening: !spec.untrusted,
        },
    })
}

/// Ends a job the agent will not run as a job error whose log says why, so it does not
/// wait out its lease to end `lost`.
async fn refuse_job(
    client: &ServerClient,
    job_id: &str,
    token: &str,
    agent: &str,
    reason: &str,
    cancel: &CancellationToken,
) {
    let log = format!("agent {agent}: this job is not run: {reason}\n").into_bytes();
    let result = JobResult {
        status: "error".to_owned(),
        exit_code: crate::exit_code::INFRASTRUCTURE.into(),
        stages: Vec::new(),
        started_at: None,
        finished_at: None,
        message: None,
        agent_job: None,
        log: LogSummary {
            bytes: log.len() as u64,
            sha256: crate::util::sha256_hex(&log),
        },
    };
    let reported = async {
        client
            .call_until_answered(
                Method::PUT,
                &format!("/api/v1/jobs/{job_id}/log?offset=0"),
                token,
                Body::Bytes(log.into()),
                &[StatusCode::OK],
                Retry::Transient,
                cancel,
            )
            .await?;
        client
            .call_until_answered(
                Method::PUT,
                &format!("/api/v1/jobs/{job_id}/result"),
                token,
                Body::json(&result),
                &[StatusCode::OK],
                Retry::Transient,
                cancel,
            )
            .await
    };
    if let Err(e) = reported.await {
        tracing::warn!(
            job = job_id,
            "job {job_id}: reporting the refusal failed: {e}"
        );
    }
}

fn load_identity(path: &Path) -> Option<Identity> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

async fn register(
    client: &ServerClient,
    source: &HttpSource,
    agent: &AgentInfo,
    path: &Path,
    cancel: &CancellationToken,
) -> Result<Identity, HttpSourceError> {
    let token = std::env::var(&source.token_env)
        .map_err(|_| HttpSourceError::NoToken(source.token_env.clone()))?;
    let body = Registration {
        name: agent.name.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        labels: agent.labels.clone(),
        capacity: i64::try_from(agent.capacity).unwrap_or(i64::MAX),
    };
    let answer: Registered = client
        .call_until_answered(
            Method::POST,
            "/api/v1/agents",
            &token,
            Body::json(&body),
            &[StatusCode::CREATED],
            // A lost answer leaves an agent nobody uses; registering again is harmless.
            Retry::Transient,
            cancel,
        )
        .await
        .and_then(|answer| answer.json())
        .map_err(|error| HttpSourceError::Register {
            url: client.url.clone(),
            error,
        })?;
    let identity = Identity {
        agent_id: answer.agent_id,
        agent_token: answer.agent_token,
        claim_wait_s: answer.policy.claim_wait_s,
        lease_s: answer.policy.lease_s,
        log_flush_ms: answer.policy.log_flush_ms,
        log_chunk_max: answer.policy.log_chunk_max,
    };
    write_private(
        path,
        &serde_json::to_vec_pretty(&identity).unwrap_or_default(),
    )
    .map_err(|error| HttpSourceError::Identity {
        path: path.to_path_buf(),
        error,
    })?;
    Ok(identity)
}

/// Writes a file only its owner may read (it holds a token), atomically.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let partial = path.with_extension("partial");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(partial, path)
}

async fn problem(tx: &mpsc::Sender<SourceEvent>, stream: &str, message: String) {
    let _ = tx
        .send(SourceEvent::Problem {
            stream: stream.to_owned(),
            message,
        })
        .await;
}

async fn sleep_or_cancel(duration: Duration, cancel: &CancellationToken) {
    tokio::select! {
        () = cancel.cancelled() => {}
        () = tokio::time::sleep(duration) => {}
    }
}
