//! One job, start to end, whichever way it arrived: `dockhand run` and the agent both go
//! through [`JobRun::run`]. The steps: the workspace (the checkout in place, or a fresh
//! one filled from the job's origin), the config collected there, its plan, the policy
//! check, the local sinks (and the upload to the job server), the executor, then the
//! workspace closed and old results pruned. A job that cannot run still ends as a result
//! in the results directory, with a failed `collect` stage saying why.

mod env;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

pub use env::JobEnv;

use crate::cancel::Cancel;
use crate::collector::{CollectOptions, Collected, collect};
use crate::docker::Engine;
use crate::events::{Emitter, JobStatus};
use crate::executor::{
    ExecutorOptions, JobNetwork, JobOutcome, check_policy, report_unrunnable, run_job,
};
use crate::exit_code;
use crate::job::{Job, Origin, RemoteJob};
use crate::plan::{CommandSource, Plan, Request};
use crate::report::{
    ConsoleOutput, JobInfo, JobRecord, LocalReport, MIN_SECRET_LEN, Masker, prune_results,
    secret_values,
};
use crate::source::http::Upload;
use crate::util::off_runtime;
use crate::workspace::Workspace;

/// Everything one job needs, assembled by its caller.
pub struct JobRun<'a> {
    pub id: String,
    pub engine: JobEngine<'a>,
    pub files: JobFiles<'a>,
    pub env: JobEnv,
    pub report: ReportSettings,
    /// The executor's settings; `sandbox.workspace`, `env` and `job_network` are filled in
    /// here once the workspace and config are known.
    pub executor: ExecutorOptions,
    /// The network the job's tasks get, taken only when the job really runs (an agent's
    /// spare networks are not spent on a job that fails to collect).
    pub network: Box<dyn FnOnce() -> JobNetwork + Send + 'a>,
    /// Where warnings about the job's setup go before its sinks exist: the terminal for
    /// `dockhand run`, the agent's log.
    pub warn: Box<dyn Fn(&str) + Send + 'a>,
}

/// The engine a job runs on: an agent's connection, or one made only once the job has
/// passed its checks (`dockhand run`: a refused job needs no engine).
pub enum JobEngine<'a> {
    Connected(&'a Engine),
    Connect { host: Option<String> },
}

impl JobEngine<'_> {
    async fn connect(self) -> Result<Engine, Unrunnable> {
        match self {
            JobEngine::Connected(engine) => Ok(engine.clone()),
            JobEngine::Connect { host } => Engine::connect(host.as_deref())
                .await
                .map_err(|e| Unrunnable::infrastructure(e.to_string())),
        }
    }
}

/// Where a job's files and config come from.
pub enum JobFiles<'a> {
    /// `dockhand run`: the config as collected where it lies, planned by the caller (which
    /// turns unknown task names into usage errors before any job exists).
    InPlace {
        collected: &'a Collected,
        plan: Plan,
    },
    /// The agent: a fresh workspace under `root` filled from the job's origin, then the
    /// config collected there.
    Workspace {
        job: &'a Job,
        root: PathBuf,
        /// dockhand's own directories: never copied into a workspace.
        own_dirs: Vec<PathBuf>,
    },
}

/// Where the job's record goes besides the console.
pub struct ReportSettings {
    pub results_root: PathBuf,
    pub info: JobInfo,
    pub console: ConsoleOutput,
    /// A job from the job server: its log, events and result are uploaded there.
    pub remote: Option<RemoteJob>,
    /// Cancelled when the agent stops for good: uploads then wait for its next start.
    pub agent: CancellationToken,
    /// Job directories of this kind kept in `results_root` (0: all).
    pub keep_results: Option<usize>,
}

/// How a job ended.
#[derive(Clone, Debug)]
pub struct Finished {
    pub id: String,
    pub status: JobStatus,
    pub exit_code: u8,
    /// The job's results directory, unless it could not be created.
    pub results: Option<PathBuf>,
    /// What went wrong outside the job's own stages (a sink that could not be written).
    pub message: Option<String>,
    /// Why the job could not run at all, when it could not (also its `collect` stage's).
    pub unrunnable: Option<String>,
}

/// Why a job cannot run: shown as its failed `collect` stage.
struct Unrunnable {
    text: String,
    status: JobStatus,
    exit_code: u8,
}

impl Unrunnable {
    fn config(text: String) -> Unrunnable {
        Unrunnable {
            text,
            status: JobStatus::Failed,
            exit_code: exit_code::CONFIG_ERROR,
        }
    }

    fn infrastructure(text: String) -> Unrunnable {
        Unrunnable {
            text,
            status: JobStatus::Error,
            exit_code: exit_code::INFRASTRUCTURE,
        }
    }
}

/// The plan, made by the caller or to be made here from a request.
enum PlanStep {
    Made(Plan),
    Make(Request),
}

/// The collected config a job runs from: borrowed from `dockhand run`, owned when collected
/// in the job's workspace.
enum Config<'a> {
    Borrowed(&'a Collected),
    Owned(Box<Collected>),
}

impl std::ops::Deref for Config<'_> {
    type Target = Collected;

    fn deref(&self) -> &Collected {
        match self {
            Config::Borrowed(collected) => collected,
            Config::Owned(collected) => collected,
        }
    }
}

impl JobRun<'_> {
    pub async fn run(self, cancel: &Cancel) -> Finished {
        let JobRun {
            id,
            engine,
            files,
            env,
            mut report,
            mut executor,
            network,
            warn,
        } = self;
        let (workspace, prepared) = match files {
            JobFiles::InPlace { collected, plan } => (
                None,
                Ok((Config::Borrowed(collected), PlanStep::Made(plan))),
            ),
            JobFiles::Workspace {
                job,
                root,
                own_dirs,
            } => match Workspace::prepare(job, &root, own_dirs, cancel.token()).await {
                Ok(ws) => {
                    report.info.origin = Some(ws.description.clone());
                    let collected = collect_in(&ws, job, &env).await;
                    let request = if job.tasks.is_empty() {
                        Request::Default
                    } else {
                        Request::Tasks(job.tasks.clone())
                    };
                    (Some(ws), collected.map(|c| (c, PlanStep::Make(request))))
                }
                Err(e) => {
                    let unrunnable = if cancel.is_cancelled() {
                        Unrunnable {
                            text: e.to_string(),
                            status: JobStatus::Cancelled,
                            exit_code: exit_code::CANCELLED,
                        }
                    } else {
                        Unrunnable::infrastructure(e.to_string())
                    };
                    (None, Err(unrunnable))
                }
            },
        };
        let masker = masker(&env, prepared.as_ref().ok().map(|(c, _)| &**c), &warn);
        let (emitter, local) = match start_report(&id, &report, masker).await {
            Ok(started) => started,
            Err(message) => {
                if let Some(ws) = workspace {
                    ws.close(None).await;
                }
                return Finished {
                    id,
                    status: JobStatus::Error,
                    exit_code: exit_code::INFRASTRUCTURE,
                    results: None,
                    message: Some(message),
                    unrunnable: None,
                };
            }
        };
        let upload = match report.remote.clone() {
            Some(remote) => {
                let (dir, cancel, agent) =
                    (local.dir.clone(), cancel.clone(), report.agent.clone());
                Some(off_runtime(move || Upload::start(&remote, &dir, cancel, agent)).await)
            }
            None => None,
        };
        let mut unrunnable = None;
        let outcome = match prepared {
            Err(refused) => unrunnable_job(&emitter, &id, refused, &mut unrunnable).await,
            Ok((collected, plan)) => {
                if let Some(ws) = &workspace {
                    executor.sandbox.workspace = ws.dir.clone();
                }
                executor.env = env.for_tasks(&collected.config.secrets);
                executor.artifacts_dir = local.dir.join("artifacts");
                let ready = match checked_plan(&collected, plan, &env, &executor).await {
                    Ok(plan) => match engine.connect().await {
                        Ok(engine) => check_commands(&engine, &plan)
                            .await
                            .map(|()| (plan, engine)),
                        Err(refused) => Err(refused),
                    },
                    Err(refused) => Err(refused),
                };
                match ready {
                    Ok((plan, engine)) => {
                        executor.job_network = network();
                        run_job(
                            &engine,
                            &collected.config,
                            &plan,
                            &executor,
                            &emitter,
                            cancel,
                        )
                        .await
                    }
                    Err(refused) => unrunnable_job(&emitter, &id, refused, &mut unrunnable).await,
                }
            }
        };
        drop(emitter);
        let (record, finished) = ended(id, local, outcome, unrunnable).await;
        let (id, status) = (&finished.id, finished.status);
        if let Some(upload) = upload
            && let Err(e) = upload.finish(&record).await
        {
            tracing::warn!(
                job = id,
                "job {id}: the upload to the job server stopped ({e}); the next start resumes it"
            );
        }
        if let Some(ws) = workspace {
            let kept = report.info.kept_workspace.as_ref();
            let keep = kept.and_then(|kept| kept.kept_for(Some(status)));
            if let Some(path) = ws.close(keep).await {
                tracing::info!(
                    job = id,
                    "job {id}: its workspace is kept at {}",
                    path.display()
                );
            }
        }
        if let Some(keep) = report.keep_results {
            prune(report.results_root, keep).await;
        }
        finished
    }
}

/// A job refused before it has a config (`dockhand run` on a config that does not
/// collect): its record, a failed `collect` stage saying why, in the results directory like
/// any other job's.
pub async fn refused(id: String, report: ReportSettings, text: String) -> Finished {
    let masker = Masker::new(Vec::<&String>::new()).0;
    let (emitter, local) = match start_report(&id, &report, masker).await {
        Ok(started) => started,
        Err(message) => {
            return Finished {
                id,
                status: JobStatus::Failed,
                exit_code: exit_code::CONFIG_ERROR,
                results: None,
                message: Some(message),
                unrunnable: Some(text),
            };
        }
    };
    let mut unrunnable = None;
    let outcome = unrunnable_job(&emitter, &id, Unrunnable::config(text), &mut unrunnable).await;
    drop(emitter);
    ended(id, local, outcome, unrunnable).await.1
}

/// The job's sinks, started off the runtime (they create its results directory).
async fn start_report(
    id: &str,
    report: &ReportSettings,
    masker: Masker,
) -> Result<(Emitter, LocalReport), String> {
    let (root, id, info) = (
        report.results_root.clone(),
        id.to_owned(),
        report.info.clone(),
    );
    let (console, events) = (report.console, report.remote.is_some());
    off_runtime(move || LocalReport::start(&root, &id, info, console, masker, events))
        .await
        .map_err(|e| {
            format!(
                "cannot create the results directory under {}: {e}",
                report.results_root.display()
            )
        })
}

/// Waits for the reporter's final record once every emitter is gone; its status and exit
/// code win over the executor's (a sink that failed makes the job an error).
async fn ended(
    id: String,
    local: LocalReport,
    outcome: JobOutcome,
    unrunnable: Option<String>,
) -> (JobRecord, Finished) {
    let results = local.dir.clone();
    let record = local.finish().await;
    let finished = Finished {
        id,
        status: record.status.unwrap_or(outcome.status),
        exit_code: record.exit_code.unwrap_or(outcome.exit_code),
        results: Some(results),
        message: record.message.clone(),
        unrunnable,
    };
    (record, finished)
}

/// Collects the config in the job's workspace, on a blocking thread.
async fn collect_in(
    ws: &Workspace,
    job: &Job,
    env: &JobEnv,
) -> Result<Config<'static>, Unrunnable> {
    let options = CollectOptions {
        config: ws.dir.join(&job.config_file),
        home_config: None,
        cli_args: Vec::new(),
        env: env.for_collect(),
        workspace: Some(ws.dir.clone()),
    };
    match tokio::task::spawn_blocking(move || collect(&options)).await {
        Ok(Ok(mut collected)) => {
            // The job reads its snapshot; people know the files by where they edit them.
            if let Origin::Path { path } = &job.origin {
                for file in &mut collected.config.files {
                    if let Ok(inside) = file.strip_prefix(&ws.dir) {
                        *file = path.join(inside);
                    }
                }
            }
            Ok(Config::Owned(Box::new(collected)))
        }
        Ok(Err(diagnostics)) => Err(Unrunnable::config(source_paths(
            &diagnostics.to_string(),
            &ws.dir,
            &job.origin,
        ))),
        Err(e) => Err(Unrunnable::infrastructure(format!(
            "collecting the config failed: {e}"
        ))),
    }
}

/// The plan (made here unless the caller made it), once the config reads no secret it
/// does not name and the sandbox's policy allows everything it asks for.
async fn checked_plan(
    collected: &Collected,
    plan: PlanStep,
    env: &JobEnv,
    executor: &ExecutorOptions,
) -> Result<Plan, Unrunnable> {
    let config = &collected.config;
    let plan = match plan {
        PlanStep::Made(plan) => plan,
        PlanStep::Make(request) => {
            Plan::new(config, &request).map_err(|e| Unrunnable::config(e.to_string()))?
        }
    };
    let unnamed = env.unnamed_secrets_read(&collected.env_read, &config.secrets);
    if !unnamed.is_empty() {
        return Err(Unrunnable::config(
            unnamed
                .iter()
                .map(|name| format!("the config reads the agent's secret `{name}` ({{{name}:from_env}}) but does not name it in `secrets:`"))
                .collect::<Vec<_>>()
                .join("\n"),
        ));
    }
    let (env, sandbox) = (executor.env.clone(), executor.sandbox.clone());
    let checked = tokio::task::spawn_blocking(move || {
        let problems = check_policy(&plan, &env, &sandbox);
        (plan, problems)
    })
    .await;
    match checked {
        Ok((plan, problems)) if problems.is_empty() => Ok(plan),
        Ok((_, problems)) => Err(Unrunnable::config(
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
        )),
        Err(e) => Err(Unrunnable::infrastructure(format!(
            "checking the job's policy failed: {e}"
        ))),
    }
}

/// Refuses a plan that would start a container with nothing to run, before anything
/// builds. A base image the engine lacks, or cannot be asked about, is left to the build.
async fn check_commands(engine: &Engine, plan: &Plan) -> Result<(), Unrunnable> {
    let mut problems = Vec::new();
    let mut bases: HashMap<String, Option<bool>> = HashMap::new();
    for container in plan.commandless() {
        let base = match &container.source {
            CommandSource::Known => continue,
            CommandSource::Missing => None,
            CommandSource::Base(base) => {
                if !bases.contains_key(base) {
                    let has = engine.image_has_command(base).await.ok().flatten();
                    bases.insert(base.clone(), has);
                }
                if bases[base] != Some(false) {
                    continue;
                }
                Some(base)
            }
        };
        let whose = if container.image == container.task {
            format!("`{}`", container.image)
        } else {
            format!("`{}` (for task `{}`)", container.image, container.task)
        };
        let from = base.map_or(String::new(), |b| format!(", nor does its base `{b}`"));
        problems.push(format!(
            "image {whose} has nothing to run: it sets no CMD or ENTRYPOINT{from}; give the task `command:` or `bash:`, or the image a `CMD`"
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Unrunnable::config(problems.join("\n")))
    }
}

async fn unrunnable_job(
    emitter: &Emitter,
    id: &str,
    refused: Unrunnable,
    text: &mut Option<String>,
) -> JobOutcome {
    let verdict = (refused.status, refused.exit_code);
    let reason = refused.text.trim_end();
    let outcome = report_unrunnable(emitter, id, reason, verdict).await;
    *text = Some(reason.to_owned());
    outcome
}

/// The masker for every sink: the agent's secrets and the values of those the config
/// names.
fn masker(env: &JobEnv, collected: Option<&Collected>, warn: &dyn Fn(&str)) -> Masker {
    let named = collected.map_or(&[][..], |c| &c.config.secrets[..]);
    let all = env.for_collect();
    let mut secrets: Vec<&String> = env.secrets.values().collect();
    secrets.extend(secret_values(named, &all));
    let (masker, too_short) = Masker::new(secrets);
    if too_short > 0 {
        warn(&format!(
            "{too_short} secret value(s) shorter than {MIN_SECRET_LEN} characters are not masked"
        ));
    }
    masker
}

async fn prune(root: PathBuf, keep: usize) {
    let pruned = off_runtime(move || {
        prune_results(&root, keep).map_err(|e| format!("cannot prune {}: {e}", root.display()))
    })
    .await;
    if let Err(e) = pruned {
        tracing::warn!("{e}");
    }
}

/// Diagnostics name files in the workspace; people edit them in the source checkout.
fn source_paths(text: &str, workspace: &Path, origin: &Origin) -> String {
    match origin {
        Origin::Path { path } => text.replace(
            &workspace.display().to_string(),
            &path.display().to_string(),
        ),
        Origin::Git { .. } => text.to_owned(),
    }
}
