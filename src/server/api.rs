//! The HTTP API of docs/protocol.md: routes, token checks, and the translation of store
//! answers into status codes. Long-poll claims wait on a [`Notify`] that submissions and
//! returned offers wake.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::metrics::{Presence, Present, ServerMetrics, StateLabel, covered};
use super::settings::ServerSettings;
use super::store::{Accept, Finish, JobStore, LogAppend, Renew, StoreError};
use crate::metrics::SourceLabel;
use crate::protocol::{
    AcceptRequest, Accepted, ClaimRequest, Committed, ErrorBody, EventsAck, JobResult, JobSpec,
    JobState, JobView, LeaseGone, LeaseRequest, Policy, Registered, Registration, SpecError,
    Submitted,
};

/// How often a followed log looks for new bytes.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// How long `/readyz` waits for the store before answering 503.
const READY_WAIT: Duration = Duration::from_secs(2);
/// The most log one follow event carries: a follower that starts late on a long log reads
/// it in pieces instead of all at once.
const FOLLOW_CHUNK: u64 = 1 << 20;

pub struct AppState<S> {
    pub store: Arc<S>,
    pub settings: Arc<ServerSettings>,
    /// Woken when a job may be offered: a submission, an offer returned to the queue.
    pub jobs_waiting: Arc<Notify>,
    pub metrics: Arc<ServerMetrics>,
    /// The agents that claimed lately, for the metrics and a job's `no_agent`.
    pub presence: Arc<Presence>,
}

impl<S> Clone for AppState<S> {
    fn clone(&self) -> Self {
        AppState {
            store: self.store.clone(),
            settings: self.settings.clone(),
            jobs_waiting: self.jobs_waiting.clone(),
            metrics: self.metrics.clone(),
            presence: self.presence.clone(),
        }
    }
}

pub fn router<S: JobStore>(state: AppState<S>) -> Router {
    Router::new()
        .route("/api/v1/agents", post(register::<S>))
        .route("/api/v1/agents/{id}/claim", post(claim::<S>))
        .route("/api/v1/jobs", post(submit::<S>).get(list::<S>))
        .route("/api/v1/jobs/{id}", get(detail::<S>))
        .route("/api/v1/jobs/{id}/accept", post(accept::<S>))
        .route("/api/v1/jobs/{id}/lease", put(lease::<S>))
        .route(
            "/api/v1/jobs/{id}/log",
            put(append_log::<S>).get(read_log::<S>),
        )
        .route("/api/v1/jobs/{id}/events", post(events::<S>))
        .route("/api/v1/jobs/{id}/result", put(result::<S>))
        .route("/api/v1/jobs/{id}/cancel", post(cancel::<S>))
        .route("/api/v1/jobs/{id}/rerun", post(rerun::<S>))
        .route("/api/v1/webhooks/{forge}", post(super::webhook::push::<S>))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz::<S>))
        .route("/metrics", get(metrics::<S>))
        .with_state(state)
}

/// The process is up and serving.
async fn healthz() -> &'static str {
    "ok\n"
}

/// The store answers (within [`READY_WAIT`]) and its schema is this build's: 503 with the
/// reason otherwise.
async fn readyz<S: JobStore>(State(state): State<AppState<S>>) -> Response {
    let unready = match tokio::time::timeout(READY_WAIT, state.store.ready()).await {
        Ok(Ok(())) => return "ready\n".into_response(),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("the database did not answer within {READY_WAIT:?}"),
    };
    tracing::warn!("not ready: {unready}");
    (StatusCode::SERVICE_UNAVAILABLE, format!("{unready}\n")).into_response()
}

async fn metrics<S: JobStore>(State(state): State<AppState<S>>) -> ApiResult {
    let stats = state.store.stats().await?;
    let online = state.online(&stats.running_agents);
    let text = state.metrics.scrape(&stats, &online);
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response())
}

impl<S: JobStore> AppState<S> {
    /// The connected agents; `running_agents` hold running jobs.
    fn online(&self, running_agents: &[String]) -> Vec<Present> {
        self.presence
            .online(self.settings.claim_wait, running_agents)
    }

    /// Marks the queued ones among `jobs` that no connected agent can take.
    async fn mark_no_agent(&self, jobs: &mut [JobView]) -> Result<(), ApiError> {
        if jobs.iter().all(|j| j.state != JobState::Queued) {
            return Ok(());
        }
        let online = self.online(&self.store.stats().await?.running_agents);
        for job in jobs.iter_mut().filter(|j| j.state == JobState::Queued) {
            job.no_agent = !covered(&job.spec.labels, &online);
        }
        Ok(())
    }

    /// A new job is queued: counted, logged and offered.
    pub fn submitted(&self, job: &str, source: &'static str) {
        self.metrics
            .submitted
            .get_or_create(&SourceLabel { source })
            .inc();
        tracing::info!(job, source, "job submitted");
        self.jobs_waiting.notify_waiters();
    }
}

/// A refusal or failure, as a status and a JSON body naming it.
pub struct ApiError(StatusCode, serde_json::Value);

impl ApiError {
    pub fn new(status: StatusCode, message: &str) -> ApiError {
        ApiError::with(
            status,
            &ErrorBody {
                error: message.to_owned(),
                field: None,
            },
        )
    }

    /// A refusal whose body is a protocol type other than [`ErrorBody`].
    fn with(status: StatusCode, body: &impl Serialize) -> ApiError {
        ApiError(status, serde_json::to_value(body).unwrap_or_default())
    }

    /// 422 naming the field that is refused.
    pub fn invalid(e: &SpecError) -> ApiError {
        ApiError::with(
            StatusCode::UNPROCESSABLE_ENTITY,
            &ErrorBody {
                error: e.to_string(),
                field: Some(e.field.clone()),
            },
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!("store: {e}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the server's store failed; retry later",
        )
    }
}

fn refuse(status: StatusCode, message: &str) -> ApiError {
    ApiError::new(status, message)
}

fn unauthorized() -> ApiError {
    refuse(StatusCode::UNAUTHORIZED, "missing or wrong token")
}

fn no_job() -> ApiError {
    refuse(StatusCode::NOT_FOUND, "no such job")
}

type ApiResult = Result<Response, ApiError>;

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Compares without stopping at the first difference.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn require_admin<S: JobStore>(state: &AppState<S>, headers: &HeaderMap) -> Result<(), ApiError> {
    match bearer(headers) {
        Some(token) if same_secret(token, &state.settings.admin_token) => Ok(()),
        _ => Err(unauthorized()),
    }
}

/// The calling agent's id and labels.
async fn require_agent<S: JobStore>(
    state: &AppState<S>,
    headers: &HeaderMap,
) -> Result<(String, Vec<String>), ApiError> {
    let token = bearer(headers).ok_or_else(unauthorized)?;
    state
        .store
        .agent_by_token(token)
        .await?
        .ok_or_else(unauthorized)
}

/// The caller holds the job's lease. A job marked `lost` while its agent could not reach
/// the server is running again from here on (an outage loses nothing).
async fn require_job_token<S: JobStore>(
    state: &AppState<S>,
    headers: &HeaderMap,
    job_id: &str,
) -> Result<(), ApiError> {
    let token = bearer(headers).ok_or_else(unauthorized)?;
    if !state.store.job_token_valid(job_id, token).await? {
        return Err(unauthorized());
    }
    state.store.revive(job_id, state.settings.lease).await?;
    Ok(())
}

async fn register<S: JobStore>(
    State(state): State<AppState<S>>,
    headers: HeaderMap,
    Json(body): Json<Registration>,
) -> ApiResult {
    match bearer(&headers) {
        Some(token) if same_secret(token, &state.settings.registration_token) => {}
        _ => return Err(unauthorized()),
    }
    let (agent_id, agent_token) = state.store.register_agent(&body).await?;
    tracing::info!(
        agent = agent_id,
        name = body.name,
        version = body.version,
        labels = ?body.labels,
        capacity = body.capacity,
        "agent registered"
    );
    let s = &state.settings;
    let registered = Registered {
        agent_id,
        agent_token,
        policy: Policy {
            claim_wait_s: s.claim_wait.as_secs(),
            lease_s: s.lease.as_secs(),
            log_flush_ms: s.log_flush.as_millis() as u64,
            log_chunk_max: s.log_chunk_max,
        },
    };
    Ok((StatusCode::CREATED, Json(registered)).into_response())
}

#[derive(Deserialize)]
struct ClaimQuery {
    wait: Option<u64>,
}

async fn claim<S: JobStore>(
    State(state): State<AppState<S>>,
    Path(agent_id): Path<String>,
    Query(query): Query<ClaimQuery>,
    headers: HeaderMap,
    Json(body): Json<ClaimRequest>,
) -> ApiResult {
    let (caller, labels) = require_agent(&state, &headers).await?;
    if caller != agent_id {
        return Err(unauthorized());
    }
    state.metrics.claims.inc();
    state.presence.seen(&agent_id, &labels, body.free_slots);
    let wait = Duration::from_secs(query.wait.unwrap_or(0)).min(state.settings.claim_wait);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let arrived = state.jobs_waiting.notified();
        tokio::pin!(arrived);
        arrived.as_mut().enable();
        if body.free_slots > 0
            && let Some(offer) = state
                .store
                .offer(&agent_id, &labels, state.settings.offer_ttl)
                .await?
        {
            state.metrics.offers.inc();
            tracing::info!(job = offer.job_id, agent = agent_id, "job offered");
            return Ok(Json(offer).into_response());
        }
        tokio::select! {
            () = &mut arrived => {}
            () = tokio::time::sleep_until(deadline) => {
                state.presence.seen(&agent_id, &labels, body.free_slots);
                return Ok(StatusCode::NO_CONTENT.into_response());
            }
        }
    }
}

async fn accept<S: JobStore>(
    State(state): State<AppState<S>>,
    Path(job_id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<AcceptRequest>,
) -> ApiResult {
    let (agent_id, _) = require_agent(&state, &headers).await?;
    match state
        .store
        .accept(&job_id, &body.offer_id, &agent_id, state.settings.lease)
        .await?
    {
        Accept::Accepted {
            job,
            lease,
            job_token,
            first,
        } => {
            if first {
                let wait = job.started_at.unwrap_or(job.created_at) - job.created_at;
                let wait = wait.max(0) as f64 / 1000.0;
                state.metrics.queue_wait.observe(wait);
                tracing::info!(
                    job = job_id,
                    agent = agent_id,
                    queued_s = wait,
                    "job accepted"
                );
            }
            Ok(Json(Accepted {
                job: *job,
                lease,
                job_token,
            })
            .into_response())
        }
        Accept::Conflict => Err(refuse(
            StatusCode::CONFLICT,
            "the offer expired or was taken; claim again",
        )),
        Accept::NotFound => Err(no_job()),
    }
}

async fn lease<S: JobStore>(
    State(state): State<AppState<S>>,
    Path(job_id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<LeaseRequest>,
) -> ApiResult {
    require_job_token(&state, &headers, &job_id).await?;
    match state
        .store
        .renew(&job_id, &body.lease_id, state.settings.lease)
        .await?
    {
        Renew::Renewed(renewal) => Ok(Json(renewal).into_response()),
        Renew::Gone { state: job_state } => Err(ApiError::with(
            StatusCode::GONE,
            &LeaseGone {
                error: "the lease is gone: stop the job".to_owned(),
                state: job_state,
            },
        )),
        Renew::NotFound => Err(no_job()),
    }
}

#[derive(Deserialize)]
struct OffsetQuery {
    offset: u64,
}

async fn append_log<S: JobStore>(
    State(state): State<AppState<S>>,
    Path(job_id): Path<String>,
    Query(query): Query<OffsetQuery>,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult {
    require_job_token(&state, &headers, &job_id).await?;
    if bytes.len() > state.settings.log_chunk_max {
        return Err(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the chunk is larger than policy.log_chunk_max",
        ));
    }
    match state
        .store
        .append_log(&job_id, query.offset, &bytes)
        .await?
    {
        LogAppend::Committed(committed) => Ok(Json(Committed {
            error: None,
            committed,
        })
        .into_response()),
        LogAppend::Gap(committed) => Err(ApiError::with(
            StatusCode::RANGE_NOT_SATISFIABLE,
            &Committed {
                error: None,
                committed,
            },
        )),
        LogAppend::NotRunning => Err(refuse(StatusCode::CONFLICT, "the job is not running")),
        LogAppend::NotFound => Err(no_job()),
    }
}

async fn events<S: JobStore>(
    State(state): State<AppState<S>>,
    Path(job_id): Path<String>,
    headers: HeaderMap,
    Json(events): Json<Vec<serde_json::Value>>,
) -> ApiResult {
    require_job_token(&state, &headers, &job_id).await?;
    match state.store.add_events(&job_id, &events).await? {
        Some(acked_seq) => Ok(Json(EventsAck { acked_seq }).into_response()),
        None => Err(no_job()),
    }
}

async fn result<S: JobStore>(
    State(state): State<AppState<S>>,
    Path(job_id): Path<String>,
    headers: HeaderMap,
    Json(result): Json<JobResult>,
) -> ApiResult {
    require_job_token(&state, &headers, &job_id).await?;
    // A replayed result is answered as recorded, but counted once.
    let before = state.store.job(&job_id).await?;
    match state.store.finish(&job_id, &result).await? {
        Finish::Recorded => {
            if let Some(job) = before.filter(|j| j.state == JobState::Running) {
                let ended = JobState::from_status(&result.status);
                let ran = super::store::now_ms() - job.started_at.unwrap_or(job.created_at);
                let ran = ran.max(0) as f64 / 1000.0;
                state
                    .metrics
                    .job_duration
                    .get_or_create(&StateLabel {
                        state: ended.as_str(),
                    })
                    .observe(ran);
                tracing::info!(
                    job = job_id,
                    state = ended.as_str(),
                    exit_code = result.exit_code,
                    ran_s = ran,
                    "job finished"
                );
            }
            Ok(StatusCode::OK.into_response())
        }
        Finish::LogIncomplete { committed } => Err(ApiError::with(
            StatusCode::CONFLICT,
            &Committed {
                error: Some("the log does not match the result's length and sha256".to_owned()),
                committed,
            },
        )),
        Finish::NotRunning => Err(refuse(StatusCode::CONFLICT, "the job is not running")),
        Finish::NotFound => Err(no_job()),
    }
}

/// A submitted job read and checked, or a 422 naming the field at fault.
fn submitted_spec(body: &[u8], allow_local: bool) -> Result<JobSpec, ApiError> {
    let mut json = serde_json::Deserializer::from_slice(body);
    let spec: JobSpec = serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let field = match e.path().to_string() {
            path if path == "." => "body".to_owned(),
            path => path,
        };
        ApiError::invalid(&SpecError {
            message: e.into_inner().to_string(),
            field,
        })
    })?;
    spec.check(allow_local).map_err(|e| ApiError::invalid(&e))?;
    Ok(spec)
}

async fn submit<S: JobStore>(
    State(state): State<AppState<S>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    require_admin(&state, &headers)?;
    let spec = submitted_spec(&body, state.settings.allow_local_sources)?;
    let job_id = state.store.create_job(&spec, None).await?;
    state.submitted(&job_id, "api");
    Ok((StatusCode::CREATED, Json(Submitted { job_id })).into_response())
}

/// A new job with an ended job's spec, checked again against today's settings.
async fn rerun<S: JobStore>(
    State(state): State<AppState<S>>,
    Path(job_id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    require_admin(&state, &headers)?;
    let Some(job) = state.store.job(&job_id).await? else {
        return Err(no_job());
    };
    if job.state.is_active() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            &format!("job {job_id} is {}; re-run it once it has ended", job.state),
        ));
    }
    job.spec
        .check(state.settings.allow_local_sources)
        .map_err(|e| ApiError::invalid(&e))?;
    let new_id = state
        .store
        .create_job(&job.spec, job.origin.as_ref())
        .await?;
    tracing::info!(job = new_id, rerun_of = job_id, "re-running a job");
    state.submitted(&new_id, "rerun");
    Ok((StatusCode::CREATED, Json(Submitted { job_id: new_id })).into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<i64>,
}

async fn list<S: JobStore>(
    State(state): State<AppState<S>>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> ApiResult {
    require_admin(&state, &headers)?;
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let mut jobs = state.store.jobs(limit).await?;
    state.mark_no_agent(&mut jobs).await?;
    Ok(Json(jobs).into_response())
}

async fn detail<S: JobStore>(
    State(state): State<AppState<S>>,
    Path(job_id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    require_admin(&state, &headers)?;
    match state.store.job(&job_id).await? {
        Some(job) => {
            let mut jobs = [job];
            state.mark_no_agent(&mut jobs).await?;
            let [job] = jobs;
            Ok(Json(job).into_response())
        }
        None => Err(no_job()),
    }
}

#[derive(Deserialize)]
struct LogQuery {
    #[serde(default)]
    follow: u8,
    #[serde(default)]
    offset: u64,
}

/// The job's log; with `follow=1`, server-sent events: `log` (a JSON string of new text, as
/// it is committed) until the job ends, then `end` (its state).
async fn read_log<S: JobStore>(
    State(state): State<AppState<S>>,
    Path(job_id): Path<String>,
    Query(query): Query<LogQuery>,
    headers: HeaderMap,
) -> ApiResult {
    require_admin(&state, &headers)?;
    if query.follow == 0 {
        return match state
            .store
            .read_log(&job_id, query.offset, u64::MAX)
            .await?
        {
            Some(log) => {
                Ok(([(header::CONTENT_TYPE, "application/octet-stream")], log).into_response())
            }
            None => Err(no_job()),
        };
    }
    if state.store.job(&job_id).await?.is_none() {
        return Err(no_job());
    }
    let store = state.store.clone();
    let events = futures_util::stream::unfold(
        (store, job_id, query.offset, false),
        |(store, job_id, offset, ended)| async move {
            if ended {
                return None;
            }
            loop {
                let job = store.job(&job_id).await.ok().flatten()?;
                let running = job.state.is_active();
                let mut text = store
                    .read_log(&job_id, offset, FOLLOW_CHUNK)
                    .await
                    .ok()
                    .flatten()?;
                if text.len() as u64 == FOLLOW_CHUNK {
                    keep_whole_characters(&mut text);
                }
                if !text.is_empty() {
                    let next = offset + text.len() as u64;
                    let data = serde_json::to_string(&String::from_utf8_lossy(&text)).ok()?;
                    let event = Event::default()
                        .event("log")
                        .id(next.to_string())
                        .data(data);
                    return Some((Ok::<_, Infallible>(event), (store, job_id, next, false)));
                }
                if !running {
                    let event = Event::default().event("end").data(job.state.as_str());
                    return Some((Ok(event), (store, job_id, offset, true)));
                }
                tokio::time::sleep(FOLLOW_POLL).await;
            }
        },
    );
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Drops a UTF-8 character cut in two at the end of a piece of log: the next piece starts
/// with it whole.
fn keep_whole_characters(text: &mut Vec<u8>) {
    if let Err(e) = std::str::from_utf8(text)
        && e.error_len().is_none()
        && e.valid_up_to() > 0
    {
        text.truncate(e.valid_up_to());
    }
}

async fn cancel<S: JobStore>(
    State(state): State<AppState<S>>,
    Path(job_id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    require_admin(&state, &headers)?;
    if state
        .store
        .cancel(&job_id, "cancelled through the API")
        .await?
    {
        tracing::info!(job = job_id, "job cancelled through the API");
        Ok(StatusCode::ACCEPTED.into_response())
    } else {
        Err(no_job())
    }
}
