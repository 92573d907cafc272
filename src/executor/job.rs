//! One job: the stage list, the scheduler for build and run stages, and the job's status
//! and exit code.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::engine::ContainerEngine;
use super::policy::Sandbox;
use super::task::run_task;
use crate::build::{BuildRecords, DigestCache};
use crate::cancel::{Cancel, CancelReason};
use crate::collector::Config;
use crate::docker::{BuildRequest, BuildResult, DockerError, Leftovers, Owner, labels};
use crate::events::{
    Emitter, Event, JobStatus, StageKind, StageLog, StageOutcome, StageStatus, Timestamp,
};
use crate::exit_code;
use crate::plan::Plan;
use crate::util::off_runtime;

#[derive(Clone, Debug)]
pub struct ExecutorOptions {
    pub job_id: String,
    pub agent: String,
    /// The workspace (build contexts and bind mounts may not leave it) and what the
    /// operator allows beyond it.
    pub sandbox: Sandbox,
    /// The digest cache and build manifests (see [`crate::build::cache_dir`]).
    pub cache_dir: PathBuf,
    /// Which image each build key produced (see [`crate::build::BuildRecords`]).
    pub build_records: PathBuf,
    /// Stages of one kind running at once.
    pub parallel: usize,
    pub no_cache: bool,
    /// The timeout for a task whose pipeline step sets none.
    pub task_timeout: Option<Duration>,
    /// The whole job's time limit: when it passes, the job is cancelled and reports
    /// `timed_out`.
    pub job_timeout: Option<Duration>,
    /// What `NAME` and `NAME:DEFAULT` env entries read: the job's own environment.
    pub env: HashMap<String, String>,
    pub job_network: JobNetwork,
    pub containers: ContainerDefaults,
    /// `<results>/<job>/artifacts`: each task's artifacts go in a directory named after
    /// the task. The pipeline sets it once the results directory exists.
    pub artifacts_dir: PathBuf,
}

/// Where tasks without dependency containers run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobNetwork {
    /// The shared isolated bridge: one-shot runs, where creating a network would cost more
    /// than a trivial task.
    Shared,
    /// A network of the job's own, `dockhand-<job>`, created while the images build.
    Create { driver: String },
    /// A network of the job's own made ahead of time (the agent keeps spares); removed
    /// with the job.
    Premade { name: String },
}

/// What every container a task starts gets, unless the operator changes it: a hostile
/// task may not exhaust the agent host's memory, CPUs or process table, nor gain
/// privileges through setuid binaries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerDefaults {
    pub memory_bytes: Option<i64>,
    pub nano_cpus: Option<i64>,
    pub pids_limit: Option<i64>,
    pub no_new_privileges: bool,
    pub cap_drop: Vec<String>,
}

impl ContainerDefaults {
    /// Processes per container unless configured otherwise.
    pub const PIDS_LIMIT: i64 = 4096;
    /// Capabilities Docker grants by default that a build task has no use for: device
    /// nodes (a task could leave a world-readable node of the host's disk in the checkout)
    /// and raw sockets (spoofing other containers on a shared bridge).
    pub const CAP_DROP: &[&str] = &["MKNOD", "NET_RAW"];

    /// The defaults on this host: half its memory, every CPU, [`Self::PIDS_LIMIT`]
    /// processes, no new privileges. `memory`, `cpus` and `pids` replace them when given
    /// (`pids == 0`: no limit).
    pub fn new(memory: Option<u64>, cpus: Option<f64>, pids: Option<u64>) -> ContainerDefaults {
        let memory = memory.or_else(|| host_memory().map(|total| total / 2));
        ContainerDefaults {
            memory_bytes: memory.and_then(|m| i64::try_from(m).ok()),
            nano_cpus: cpus.map(|c| (c * 1e9) as i64),
            pids_limit: match pids {
                Some(0) => None,
                Some(n) => i64::try_from(n).ok(),
                None => Some(Self::PIDS_LIMIT),
            },
            no_new_privileges: true,
            cap_drop: Self::CAP_DROP.iter().map(|c| (*c).to_owned()).collect(),
        }
    }
}

/// The host's memory in bytes, from `/proc/meminfo`.
fn host_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

impl ExecutorOptions {
    pub(super) fn job_network(&self) -> Option<String> {
        match &self.job_network {
            JobNetwork::Shared => None,
            JobNetwork::Create { .. } => Some(format!("dockhand-{}", self.job_id)),
            JobNetwork::Premade { name } => Some(name.clone()),
        }
    }

    pub(super) fn owner(&self, stage: &str) -> Owner {
        Owner {
            agent: self.agent.clone(),
            job: self.job_id.clone(),
            stage: stage.to_owned(),
        }
    }
}

/// How the job ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobOutcome {
    pub status: JobStatus,
    pub exit_code: u8,
    pub stages: Vec<StageOutcome>,
}

/// Runs every stage of `plan`. Returns when all stages have ended and every container and
/// network of the job is gone; `cancel` stops it early, with the same cleanup, and its
/// reason decides the verdict (timed out, or cancelled).
pub async fn run_job<E: ContainerEngine>(
    engine: &E,
    config: &Config,
    plan: &Plan,
    options: &ExecutorOptions,
    emitter: &Emitter,
    cancel: &Cancel,
) -> JobOutcome {
    let mut stages = vec![("collect".to_owned(), StageKind::Collect)];
    stages.extend(
        plan.builds
            .iter()
            .map(|b| (b.image.clone(), StageKind::Build)),
    );
    stages.extend(plan.runs.iter().map(|r| (r.task.clone(), StageKind::Run)));
    emitter
        .send(Event::JobStarted {
            job: options.job_id.clone(),
            stages: stages.clone(),
            at: Timestamp::now(),
        })
        .await;

    let collect = emitter.stage(0);
    collect.started().await;
    let files: Vec<String> = config
        .files
        .iter()
        .map(|f| f.display().to_string())
        .collect();
    collect
        .note(format!(
            "collected {} ({} image(s), {} task(s))",
            files.join(", "),
            config.images.len(),
            config.tasks.len()
        ))
        .await;
    let mut outcomes = vec![StageOutcome::new(StageStatus::Passed)];
    collect.finished(outcomes[0].clone()).await;

    let job_cancel = cancel.child();
    let timer = options.job_timeout.map(|limit| {
        let job_cancel = job_cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            job_cancel.cancel(CancelReason::TimedOut);
        })
    });
    let cancel = &job_cancel;
    let engine = Arc::new(engine.clone());
    let options = Arc::new(options.clone());
    // Made while the images build: creating a network costs 60–230 ms here.
    let job_network = match (&options.job_network, options.job_network()) {
        (JobNetwork::Create { driver }, Some(name)) if !plan.runs.is_empty() => {
            let (engine, driver, owner) =
                (engine.clone(), driver.clone(), options.owner("network"));
            Some(tokio::spawn(async move {
                engine.create_network(&name, &driver, &owner).await
            }))
        }
        _ => None,
    };
    let digest_cache = options.cache_dir.join("digests.tsv");
    let job_started_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    let digests = {
        let (path, workspace) = (digest_cache.clone(), options.sandbox.workspace.clone());
        let cache = off_runtime(move || DigestCache::load(&path, &workspace, job_started_ns));
        Arc::new(Mutex::new(cache.await))
    };
    let keys: BuildKeys = Arc::default();
    let builds = schedule(
        plan.builds.iter().map(|b| b.after.clone()).collect(),
        |_| true,
        |_| false,
        options.parallel,
        cancel,
        |i, log, cancel| {
            let engine = engine.clone();
            let options = options.clone();
            let stage = plan.builds[i].clone();
            let (digests, keys) = (digests.clone(), keys.clone());
            async move {
                build_stage(
                    &*engine,
                    &stage.spec,
                    &options,
                    digests,
                    &keys,
                    &log,
                    &cancel,
                )
                .await
            }
        },
        |i| emitter.stage(1 + i),
    )
    .await;
    let saving = digests.clone();
    let saved = off_runtime(move || saving.lock().ok().map(|mut cache| cache.save())).await;
    if let Some(Err(e)) = saved {
        tracing::warn!(
            "cannot save the digest cache {}: {e}",
            digest_cache.display()
        );
    }
    let build_passed: Vec<bool> = builds.iter().map(|o| o.status.passed()).collect();
    let offset = 1 + plan.builds.len();
    let job_network_made =
        job_network.is_some() || matches!(options.job_network, JobNetwork::Premade { .. });
    let network_error = match job_network {
        Some(creating) => match creating.await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        },
        None => None,
    };
    let runs = schedule(
        plan.runs.iter().map(|r| r.needs.clone()).collect(),
        |i| plan.runs[i].builds.iter().all(|&b| build_passed[b]),
        |i| plan.runs[i].allow_failure,
        options.parallel,
        cancel,
        |i, log, cancel| {
            let engine = engine.clone();
            let options = options.clone();
            let stage = plan.runs[i].clone();
            let deadline = stage
                .timeout
                .or(options.task_timeout)
                .map(|t| Instant::now() + t);
            let network_error = network_error.clone();
            async move {
                if let Some(error) = network_error {
                    return Err(DockerError::JobNetwork(error));
                }
                run_task(
                    &*engine,
                    &stage,
                    offset + i,
                    &options,
                    &log,
                    &cancel,
                    deadline,
                )
                .await
            }
        },
        |i| emitter.stage(offset + i),
    )
    .await;

    if job_network_made
        && let Some(name) = options.job_network()
        && let Err(e) = engine.remove_network(&name).await
    {
        tracing::warn!("removing the job's network {name} failed: {e}");
    }
    match engine.remove_labelled(labels::JOB, &options.job_id).await {
        Ok(left) if left != Leftovers::default() => {
            tracing::warn!(
                "the job left {} container(s) and {} network(s); removed them",
                left.containers,
                left.networks
            );
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("sweeping the job's containers and networks failed: {e}"),
    }
    if let Some(timer) = timer {
        timer.abort();
    }
    let (status, exit_code) = verdict(&builds, &runs, plan, job_cancel.reason());
    outcomes.extend(builds);
    outcomes.extend(runs);
    finish(emitter, status, exit_code, outcomes).await
}

/// Sends `JobFinished` and makes the outcome.
async fn finish(
    emitter: &Emitter,
    status: JobStatus,
    exit_code: u8,
    stages: Vec<StageOutcome>,
) -> JobOutcome {
    emitter
        .send(Event::JobFinished {
            status,
            exit_code,
            message: None,
            at: Timestamp::now(),
        })
        .await;
    JobOutcome {
        status,
        exit_code,
        stages,
    }
}

/// Reports a job that cannot run (its workspace, config or plan failed) as a collect stage
/// that failed with `text`, so it leaves the same results as any other job.
pub async fn report_unrunnable(
    emitter: &Emitter,
    job_id: &str,
    text: &str,
    verdict: (JobStatus, u8),
) -> JobOutcome {
    emitter
        .send(Event::JobStarted {
            job: job_id.to_owned(),
            stages: vec![("collect".to_owned(), StageKind::Collect)],
            at: Timestamp::now(),
        })
        .await;
    let collect = emitter.stage(0);
    collect.started().await;
    collect.note(text).await;
    let (status, exit_code) = verdict;
    let first_line = text.lines().next().unwrap_or_default().to_owned();
    let outcome = StageOutcome::new(if status == JobStatus::Error {
        StageStatus::Error
    } else {
        StageStatus::Failed
    })
    .with_message(first_line);
    collect.finished(outcome.clone()).await;
    finish(emitter, status, exit_code, vec![outcome]).await
}

/// Runs stages `0..n` as their predecessors finish, `limit` at a time. A stage whose
/// predecessor did not pass (and may not fail), or for which `ready` is false, is skipped;
/// once `cancel` fires, stages not started are cancelled. `start` gets the stage's
/// index, its log (from `log`) and its own cancellation token.
#[allow(clippy::too_many_arguments)]
async fn schedule<F, Fut>(
    after: Vec<Vec<usize>>,
    ready: impl Fn(usize) -> bool,
    may_fail: impl Fn(usize) -> bool,
    limit: usize,
    cancel: &Cancel,
    start: F,
    log: impl Fn(usize) -> StageLog,
) -> Vec<StageOutcome>
where
    F: Fn(usize, StageLog, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<StageOutcome, DockerError>> + Send + 'static,
{
    let n = after.len();
    let mut outcomes: Vec<Option<StageOutcome>> = vec![None; n];
    let mut started = vec![false; n];
    let mut running: JoinSet<(usize, StageOutcome)> = JoinSet::new();
    let mut stage_of: HashMap<tokio::task::Id, (usize, StageLog)> = HashMap::new();
    loop {
        for i in 0..n {
            if started[i] || running.len() >= limit.max(1) {
                continue;
            }
            if after[i].iter().any(|&d| outcomes[d].is_none()) {
                continue;
            }
            started[i] = true;
            let log = log(i);
            let need_failed = after[i]
                .iter()
                .any(|&d| outcomes[d].as_ref().is_some_and(|o| !o.status.passed()) && !may_fail(d));
            let blocked = need_failed || !ready(i);
            if blocked || cancel.is_cancelled() {
                let status = if cancel.is_cancelled() {
                    StageStatus::Cancelled
                } else {
                    StageStatus::Skipped
                };
                let outcome = StageOutcome::new(status).with_message(match cancel.reason() {
                    Some(reason) => format!("not started: {reason}"),
                    None => "a stage it needs did not pass".to_owned(),
                });
                log.finished(outcome.clone()).await;
                outcomes[i] = Some(outcome);
                continue;
            }
            let future = start(i, log.clone(), cancel.token().child_token());
            let stage_log = log.clone();
            let handle = running.spawn(async move {
                log.started().await;
                let outcome = match future.await {
                    Ok(outcome) => outcome,
                    Err(e) => {
                        log.note(format!("error: {e}")).await;
                        StageOutcome::new(StageStatus::Error).with_message(e.to_string())
                    }
                };
                log.finished(outcome.clone()).await;
                (i, outcome)
            });
            stage_of.insert(handle.id(), (i, stage_log));
        }
        if outcomes.iter().all(Option::is_some) {
            break;
        }
        match running.join_next_with_id().await {
            Some(Ok((id, (i, outcome)))) => {
                stage_of.remove(&id);
                outcomes[i] = Some(outcome);
            }
            Some(Err(e)) => {
                tracing::error!("a stage task failed: {e}");
                if let Some((i, log)) = stage_of.remove(&e.id()) {
                    let message = failure(e);
                    log.note(format!("error: {message}")).await;
                    let outcome = StageOutcome::new(StageStatus::Error).with_message(message);
                    log.finished(outcome.clone()).await;
                    outcomes[i] = Some(outcome);
                }
            }
            None => {
                for outcome in outcomes.iter_mut().filter(|o| o.is_none()) {
                    *outcome = Some(StageOutcome::new(StageStatus::Skipped));
                }
            }
        }
    }
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| StageOutcome::new(StageStatus::Skipped)))
        .collect()
}

/// Why a stage's task ended without an outcome: its panic message, or its abort.
fn failure(error: tokio::task::JoinError) -> String {
    if !error.is_panic() {
        return format!("the stage's task ended early: {error}");
    }
    let payload = error.into_panic();
    let message = payload
        .downcast_ref::<&str>()
        .map(|m| (*m).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_owned());
    format!("the stage panicked: {message}")
}

/// Build keys of the images built (or found cached) so far, by image name: a dependent's
/// key includes its dependencies' keys.
type BuildKeys = Arc<Mutex<HashMap<String, String>>>;

async fn build_stage<E: ContainerEngine>(
    engine: &E,
    image: &crate::collector::Image,
    options: &ExecutorOptions,
    digests: Arc<Mutex<DigestCache>>,
    keys: &BuildKeys,
    log: &StageLog,
    cancel: &CancellationToken,
) -> Result<StageOutcome, DockerError> {
    let dependency_keys = {
        let keys = keys.lock().map_err(|_| DockerError::Poisoned)?;
        image
            .build
            .depends_on
            .iter()
            .map(|d| keys.get(d).cloned().unwrap_or_default())
            .collect()
    };
    let request = BuildRequest {
        image,
        workspace: &options.sandbox.workspace,
        cache_dir: &options.cache_dir,
        records: &BuildRecords::new(&options.build_records),
        dependency_keys,
        digests,
        no_cache: options.no_cache,
    };
    let result = engine.build(request, log, cancel).await?;
    if let BuildResult::Built { key, .. } | BuildResult::Cached { key, .. } = &result {
        keys.lock()
            .map_err(|_| DockerError::Poisoned)?
            .insert(image.name.clone(), key.clone());
    }
    Ok(match result {
        BuildResult::Built {
            image_id, reason, ..
        } => StageOutcome {
            image_id: Some(image_id),
            ..StageOutcome::new(StageStatus::Passed)
        }
        .with_message(format!("built: {reason}")),
        BuildResult::Cached { image_id, .. } => StageOutcome {
            image_id: Some(image_id),
            ..StageOutcome::new(StageStatus::Cached)
        }
        .with_message("up to date: an image with the same build key exists"),
        BuildResult::Failed {
            message,
            step,
            tail,
        } => {
            let text = match &step {
                Some(step) => format!("{message} (at {step})"),
                None => message,
            };
            StageOutcome {
                output_tail: tail,
                ..StageOutcome::new(StageStatus::Failed).with_message(text)
            }
        }
        BuildResult::Cancelled => StageOutcome::new(StageStatus::Cancelled),
    })
}

/// The job's status and exit code: the job's time limit first (whatever broke while it
/// was stopped), then an infrastructure error, then cancelled stages (a cancel after every stage passed changes nothing), then
/// the first failing task's exit code (1–125) or timeout, then a failed build.
pub(super) fn verdict(
    builds: &[StageOutcome],
    runs: &[StageOutcome],
    plan: &Plan,
    cancelled: Option<CancelReason>,
) -> (JobStatus, u8) {
    if cancelled == Some(CancelReason::TimedOut) {
        return (JobStatus::TimedOut, exit_code::TIMED_OUT);
    }
    let all = || builds.iter().chain(runs);
    if all().any(|o| o.status == StageStatus::Error) {
        return (JobStatus::Error, exit_code::INFRASTRUCTURE);
    }
    if all().any(|o| o.status == StageStatus::Cancelled) {
        return (JobStatus::Cancelled, exit_code::CANCELLED);
    }
    for (outcome, stage) in runs.iter().zip(&plan.runs) {
        if stage.allow_failure {
            continue;
        }
        match outcome.status {
            StageStatus::Failed => {
                let code = outcome.exit_code.unwrap_or(1).clamp(1, 125);
                return (JobStatus::Failed, u8::try_from(code).unwrap_or(1));
            }
            StageStatus::TimedOut => return (JobStatus::TimedOut, exit_code::TIMED_OUT),
            _ => {}
        }
    }
    if builds.iter().any(|o| o.status == StageStatus::Failed) {
        return (JobStatus::Failed, exit_code::BUILD_FAILED);
    }
    (JobStatus::Succeeded, 0)
}
