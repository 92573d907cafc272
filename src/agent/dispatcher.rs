//! The agent's one loop: inputs (source events, finished jobs, signals, ticks) become
//! calls on [`AgentState`], whose actions this loop carries out. Cancellation runs as a
//! tree: agent → job → stage.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::health::{self, LoopState, Probe};
use super::networks::NetworkPool;
use super::notify::Notifier;
use super::runner::{self, JobContext};
use super::state::{Action, AgentState, StopLimits};
use super::sweep::sweep;
use crate::cancel::{Cancel, CancelReason};
use crate::config::{AgentConfig, LoadOptions, SourceConfig, load};
use crate::docker::Engine;
use crate::events::JobStatus;
use crate::exit_code;
use crate::metrics::{SourceLabel, StatusLabel};
use crate::pipeline::Finished;
use crate::report::ConsoleOutput;
use crate::signals::{Control, Signals};
use crate::source::http::{AgentInfo, resume_uploads, run_http};
use crate::source::{Schedule, SourceEvent, run_schedule, run_watch};

/// Source events waiting for the dispatcher.
const SOURCE_BUFFER: usize = 64;

/// How long a stopping agent waits for finished jobs' notices to be decided (they are
/// then delivered within [`crate::notifications::Retry::shutdown_grace`]).
const NOTICES_LIMIT: Duration = Duration::from_secs(1);

/// After the grace period ran out and jobs were cancelled, how long their cleanup may take
/// before the agent exits anyway.
const CLEANUP_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("no [[source]] is configured: the agent would have nothing to do")]
    NoSources,
    #[error(
        "another agent uses the workspace root {root} (it holds {root}/{LOCK_FILE}); give each agent its own workspace_root"
    )]
    WorkspaceTaken { root: String },
    #[error("cannot lock the workspace root {root}: {cause}")]
    Lock { root: String, cause: std::io::Error },
    #[error("agent.metrics_listen: cannot listen on {address}: {cause}")]
    MetricsListen {
        address: std::net::SocketAddr,
        cause: std::io::Error,
    },
}

impl AgentError {
    /// A missing source or a shared workspace root is the settings' fault; a lock that
    /// cannot be taken is the machine's.
    pub fn exit_code(&self) -> u8 {
        match self {
            AgentError::NoSources | AgentError::WorkspaceTaken { .. } => exit_code::CONFIG_ERROR,
            AgentError::Lock { .. } | AgentError::MetricsListen { .. } => exit_code::INFRASTRUCTURE,
        }
    }
}

/// Held while an agent runs, so two agents never sweep each other's workspaces.
const LOCK_FILE: &str = ".agent.lock";

/// How the agent ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentExit {
    /// Drained after a signal, or every source ended.
    Stopped,
    /// Every source failed (a watch limit, say) and nothing was left to do.
    SourcesFailed,
}

enum Input {
    Source(Option<SourceEvent>),
    Finished(Result<Finished, (tokio::task::Id, String)>),
    SourceEnded,
    Stop,
    Reload,
    Tick,
    GraceOver,
    Probe(Probe),
}

pub struct Agent {
    engine: Engine,
    networks: Arc<NetworkPool>,
    settings: Arc<AgentConfig>,
    /// How the settings were read, to read them again on SIGHUP; none for settings made in
    /// code (`dockhand watch`).
    reload: Option<LoadOptions>,
    host_env: HashMap<String, String>,
    console: ConsoleOutput,
}

impl Agent {
    pub fn new(
        engine: Engine,
        settings: AgentConfig,
        reload: Option<LoadOptions>,
        host_env: HashMap<String, String>,
        console: ConsoleOutput,
    ) -> Self {
        let networks = NetworkPool::new(
            engine.clone(),
            &settings.agent.name,
            &settings.docker.network,
            settings.agent.concurrency,
        );
        Agent {
            engine,
            networks,
            settings: Arc::new(settings),
            reload,
            host_env,
            console,
        }
    }

    /// Runs until `signals` asks to stop (and the running jobs end) or every source ended.
    pub async fn run(mut self, mut signals: Signals) -> Result<AgentExit, AgentError> {
        if self.settings.sources.is_empty() {
            return Err(AgentError::NoSources);
        }
        let _lock = self.lock_workspace_root()?;
        let root = Cancel::new();
        let mut state = AgentState::new(
            self.settings.agent.concurrency,
            StopLimits {
                grace: self.settings.agent.shutdown_grace,
                cleanup: CLEANUP_LIMIT,
            },
        );
        let mut jobs: JoinSet<Finished> = JoinSet::new();
        let mut tasks: HashMap<tokio::task::Id, String> = HashMap::new();
        let mut tokens: HashMap<String, Cancel> = HashMap::new();
        // The streams of running jobs that are the agent's own to notify (not the server's).
        let mut streams: HashMap<String, String> = HashMap::new();
        let notifier = Notifier::new(crate::notifications::Retry::default());
        let mut notices: JoinSet<()> = JoinSet::new();
        let mut context = self.context(&root);
        let metrics = crate::metrics::agent();
        let (probes, mut probed) = health::probes();
        if let Some(address) = self.settings.agent.metrics_listen {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .map_err(|cause| AgentError::MetricsListen { address, cause })?;
            let cancel = root.token().child_token();
            let (probes, engine) = (probes.clone(), self.engine.clone());
            tokio::spawn(health::serve(listener, probes, engine, cancel));
        }

        self.sweep(&HashSet::new()).await;
        let agent = &self.settings.agent;
        say(format!(
            "{} started: {} source(s), {} job(s) at once, results in {}",
            agent.name,
            self.settings.sources.len(),
            agent.concurrency,
            agent.results_dir.display()
        ));
        let spares = tokio::spawn(
            self.networks
                .clone()
                .keep_filled(root.token().child_token()),
        );
        let (tx, mut rx) = mpsc::channel(SOURCE_BUFFER);
        let (slots, free_slots) = watch::channel(state.free_slots());
        let mut sources_cancel = root.token().child_token();
        let mut sources = self.start_sources(&tx, &free_slots, &sources_cancel);
        let mut source_failures = 0usize;
        let mut tick = tokio::time::interval_at(
            Instant::now() + self.settings.agent.sweep_interval,
            self.settings.agent.sweep_interval,
        );

        loop {
            if state.is_done(!sources.is_empty()) {
                break;
            }
            let deadline = state.deadline();
            let input = tokio::select! {
                event = rx.recv() => Input::Source(event),
                Some(done) = jobs.join_next_with_id(), if !jobs.is_empty() => Input::Finished(
                    done.map(|(_, finished)| finished).map_err(|e| (e.id(), e.to_string()))
                ),
                Some(ended) = sources.join_next(), if !sources.is_empty() => {
                    if matches!(ended, Ok(false) | Err(_)) {
                        source_failures += 1;
                    }
                    Input::SourceEnded
                }
                Some(control) = signals.recv() => match control {
                    Control::Stop => Input::Stop,
                    Control::Reload => Input::Reload,
                },
                _ = tick.tick() => Input::Tick,
                _ = sleep_until(deadline), if deadline.is_some() => Input::GraceOver,
                Some(probe) = probed.recv() => Input::Probe(probe),
            };
            let actions = match input {
                Input::Source(Some(SourceEvent::Job(job))) => {
                    let source = trigger_source(&job);
                    metrics
                        .triggers
                        .get_or_create(&SourceLabel { source })
                        .inc();
                    state.submit(*job)
                }
                Input::Source(Some(SourceEvent::Problem { stream, message })) => {
                    say(format!("{stream}: {message}"));
                    Vec::new()
                }
                Input::Source(None) | Input::SourceEnded => Vec::new(),
                Input::Finished(result) => {
                    let id = match result {
                        Ok(finished) => {
                            let status = finished.status.as_str();
                            metrics
                                .jobs_finished
                                .get_or_create(&StatusLabel { status })
                                .inc();
                            let cancelled =
                                tokens.get(&finished.id).is_some_and(Cancel::is_cancelled);
                            say_job(&finished.id, finished_line(&finished, cancelled));
                            tasks.retain(|_, job| *job != finished.id);
                            while notices.try_join_next().is_some() {}
                            if let (Some(stream), Some(results)) =
                                (streams.remove(&finished.id), finished.results.clone())
                                && !self.settings.notify.is_empty()
                            {
                                let (notifier, settings) =
                                    (notifier.clone(), self.settings.clone());
                                notices.spawn(async move {
                                    let (targets, state) =
                                        (&settings.notify, &settings.agent.state_dir);
                                    notifier
                                        .job_finished(targets, state, &stream, &results)
                                        .await
                                });
                            }
                            finished.id
                        }
                        Err((task, error)) => {
                            let id = tasks.remove(&task).unwrap_or_default();
                            let status = "error";
                            metrics
                                .jobs_finished
                                .get_or_create(&StatusLabel { status })
                                .inc();
                            say_job(&id, format!("job {id} failed inside the agent: {error}"));
                            id
                        }
                    };
                    tokens.remove(&id);
                    streams.remove(&id);
                    state.finished(&id)
                }
                Input::Stop => state.stop(Instant::now()),
                Input::GraceOver => state.deadline_passed(Instant::now()),
                Input::Reload => match self.reload() {
                    Some(()) if !state.is_draining() => {
                        context = self.context(&root);
                        sources_cancel.cancel();
                        drain_sources(&mut sources).await;
                        sources_cancel = root.token().child_token();
                        sources = self.start_sources(&tx, &free_slots, &sources_cancel);
                        source_failures = 0;
                        state.set_concurrency(self.settings.agent.concurrency)
                    }
                    _ => Vec::new(),
                },
                Input::Tick => {
                    if state.is_idle() && !state.is_draining() {
                        self.sweep(&HashSet::new()).await;
                    }
                    Vec::new()
                }
                Input::Probe(Probe(reply)) => {
                    let _ = reply.send(LoopState {
                        sources: sources.len(),
                        draining: state.is_draining(),
                    });
                    Vec::new()
                }
            };
            slots.send_if_modified(|free| {
                let now = state.free_slots();
                std::mem::replace(free, now) != now
            });
            for action in actions {
                match action {
                    Action::Start(job) => {
                        say_job(
                            &job.id,
                            format!("job {} ({}): {}", job.id, job.stream, job.trigger),
                        );
                        let token = root.child();
                        tokens.insert(job.id.clone(), token.clone());
                        if job.remote.is_none() {
                            streams.insert(job.id.clone(), job.stream.clone());
                        }
                        let id = job.id.clone();
                        let context = context.clone();
                        let handle =
                            jobs.spawn(async move { runner::run(job, &context, token).await });
                        tasks.insert(handle.id(), id);
                    }
                    Action::Cancel { job, reason } => {
                        say_job(&job, format!("job {job}: cancelling, {reason}"));
                        if let Some(token) = tokens.get(&job) {
                            token.cancel(CancelReason::Superseded);
                        }
                    }
                    Action::Drop { job, reason } => {
                        say_job(
                            &job.id,
                            format!("job {} ({}) not run: {reason}", job.id, job.trigger),
                        );
                    }
                    Action::StopSources { running, grace } => {
                        sources_cancel.cancel();
                        if running > 0 {
                            say(format!(
                                "stopping: waiting up to {} for {running} running job(s); a second signal cancels them",
                                humantime::format_duration(grace),
                            ));
                        } else {
                            say("stopping: no job is running");
                        }
                    }
                    Action::CancelAll { running } => {
                        say(format!(
                            "cancelling {running} running job(s) and removing their containers"
                        ));
                        root.cancel(CancelReason::Shutdown);
                    }
                    Action::GiveUp { running } => {
                        say(format!(
                            "{running} job(s) did not finish cleaning up in time; exiting"
                        ));
                    }
                }
            }
            metrics.jobs_running.set(tokens.len() as i64);
        }
        metrics.jobs_running.set(0);
        root.cancel(CancelReason::Shutdown);
        drain_sources(&mut sources).await;
        let decided = async { while notices.join_next().await.is_some() {} };
        if tokio::time::timeout(NOTICES_LIMIT, decided).await.is_err() {
            say(format!(
                "dropping {} notification(s) not decided in time",
                notices.len()
            ));
            notices.abort_all();
            while notices.join_next().await.is_some() {}
        }
        notifier.shutdown().await;
        if tokio::time::timeout(CLEANUP_LIMIT, spares).await.is_err() {
            say("removing the spare networks took too long");
        }
        let running: HashSet<String> = HashSet::new();
        self.sweep(&running).await;
        Ok(if source_failures > 0 && !state.is_draining() {
            AgentExit::SourcesFailed
        } else {
            AgentExit::Stopped
        })
    }

    fn lock_workspace_root(&self) -> Result<std::fs::File, AgentError> {
        let root = &self.settings.agent.workspace_root;
        let error = |cause| AgentError::Lock {
            root: root.display().to_string(),
            cause,
        };
        std::fs::create_dir_all(root).map_err(error)?;
        let file = std::fs::File::create(root.join(LOCK_FILE)).map_err(error)?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => Err(AgentError::WorkspaceTaken {
                root: root.display().to_string(),
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(error(e)),
        }
    }

    fn context(&self, root: &Cancel) -> Arc<JobContext> {
        Arc::new(JobContext {
            engine: self.engine.clone(),
            settings: self.settings.clone(),
            host_env: self.host_env.clone(),
            console: self.console,
            agent: root.token().clone(),
            networks: self.networks.clone(),
        })
    }

    /// Re-reads agent.toml; a bad file keeps the running settings.
    fn reload(&mut self) -> Option<()> {
        let Some(options) = &self.reload else {
            say("SIGHUP: these settings were not read from a file; nothing to reload");
            return None;
        };
        match load(options) {
            Ok((mut settings, _)) => {
                let running = &self.settings.agent;
                if settings.agent.name != running.name
                    || settings.agent.workspace_root != running.workspace_root
                {
                    say(
                        "SIGHUP: agent.name and agent.workspace_root change only with a restart (they own the agent's objects and lock); keeping them",
                    );
                    settings.agent.name = running.name.clone();
                    settings.agent.workspace_root = running.workspace_root.clone();
                }
                say("SIGHUP: settings reloaded; sources restarted");
                self.settings = Arc::new(settings);
                Some(())
            }
            Err(e) => {
                say(format!("SIGHUP: keeping the running settings: {e}"));
                None
            }
        }
    }

    /// One task per source; each ends `true` when cancelled, `false` when it failed.
    fn start_sources(
        &self,
        tx: &mpsc::Sender<SourceEvent>,
        free_slots: &watch::Receiver<usize>,
        cancel: &CancellationToken,
    ) -> JoinSet<bool> {
        let mut sources = JoinSet::new();
        let agent = &self.settings.agent;
        let own_dirs = vec![
            agent.workspace_root.clone(),
            agent.results_dir.clone(),
            agent.state_dir.clone(),
        ];
        for source in &self.settings.sources {
            let (tx, cancel) = (tx.clone(), cancel.clone());
            match source {
                SourceConfig::Watch(watch) => {
                    let (watch, own_dirs) = (watch.clone(), own_dirs.clone());
                    sources.spawn(async move {
                        match run_watch(watch, own_dirs, tx, cancel).await {
                            Ok(()) => true,
                            Err(e) => {
                                say(format!("error: {e}"));
                                false
                            }
                        }
                    });
                }
                SourceConfig::Http(http) => {
                    let info = AgentInfo {
                        name: agent.name.clone(),
                        labels: agent.labels.clone(),
                        capacity: agent.concurrency,
                    };
                    let (http, state_dir, results) = (
                        http.clone(),
                        agent.state_dir.clone(),
                        agent.results_dir.clone(),
                    );
                    let free_slots = free_slots.clone();
                    sources.spawn(async move {
                        resume_uploads(&results, cancel.clone()).await;
                        match run_http(http, info, state_dir, free_slots, tx, cancel).await {
                            Ok(()) => true,
                            Err(e) => {
                                say(format!("error: {e}"));
                                false
                            }
                        }
                    });
                }
                SourceConfig::Schedule(schedule) => match Schedule::new(schedule) {
                    Ok(schedule) => {
                        let state_dir = agent.state_dir.clone();
                        sources.spawn(async move {
                            run_schedule(schedule, state_dir, tx, cancel).await;
                            true
                        });
                    }
                    Err(e) => say(format!("error: {e}")),
                },
            }
        }
        sources
    }

    async fn sweep(&self, running: &HashSet<String>) {
        let agent = &self.settings.agent;
        let spares = self.networks.spares();
        let swept = sweep(
            &self.engine,
            &agent.name,
            &agent.workspace_root,
            running,
            &spares,
        );
        match swept.await {
            Ok(swept) if !swept.is_empty() => say(format!(
                "removed leftovers of jobs that are not running: {} container(s), {} network(s), {} workspace(s)",
                swept.docker.containers, swept.docker.networks, swept.workspaces
            )),
            Ok(_) => {}
            Err(e) => say(format!("sweeping leftovers failed: {e}")),
        }
    }
}

/// Waits (bounded) for cancelled sources to end.
async fn drain_sources(sources: &mut JoinSet<bool>) {
    let all = async { while sources.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), all)
        .await
        .is_err()
    {
        sources.abort_all();
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// How a job ended, for the agent's own output. `cancelled`: a cancel was asked for, which
/// a job that had already run every stage ignores.
fn finished_line(finished: &Finished, cancelled: bool) -> String {
    let status = match finished.status {
        JobStatus::Succeeded => "succeeded",
        JobStatus::Failed => "failed",
        JobStatus::Cancelled => "cancelled",
        JobStatus::TimedOut => "timed out",
        JobStatus::Error => "error",
    };
    let results = finished
        .results
        .as_ref()
        .map(|d| format!(", results in {}", d.display()))
        .unwrap_or_default();
    let late = if cancelled && matches!(finished.status, JobStatus::Succeeded | JobStatus::Failed) {
        " (it had run every stage when the cancel came)"
    } else {
        ""
    };
    format!(
        "job {} {status} (exit code {}){late}{results}",
        finished.id, finished.exit_code
    )
}

/// Which kind of source a job came from, for the metrics.
fn trigger_source(job: &crate::job::Job) -> &'static str {
    if job.remote.is_some() {
        "http"
    } else if job.stream.starts_with("schedule:") {
        "schedule"
    } else {
        "watch"
    }
}

/// The agent's own messages go to stderr (or the JSON log); job output goes to stdout.
fn say(text: impl AsRef<str>) {
    crate::logging::say("agent", None, text.as_ref());
}

/// A message about one job: in the JSON log it carries the job's id.
fn say_job(job: &str, text: impl AsRef<str>) {
    crate::logging::say("agent", Some(job), text.as_ref());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_that_came_after_every_stage_is_said_so() {
        let finished = |status| Finished {
            id: "j".into(),
            status,
            exit_code: 0,
            results: None,
            message: None,
            unrunnable: None,
        };
        assert_eq!(
            finished_line(&finished(JobStatus::Succeeded), true),
            "job j succeeded (exit code 0) (it had run every stage when the cancel came)"
        );
        assert_eq!(
            finished_line(&finished(JobStatus::Succeeded), false),
            "job j succeeded (exit code 0)"
        );
        assert_eq!(
            finished_line(&finished(JobStatus::Cancelled), true),
            "job j cancelled (exit code 0)"
        );
    }
}
