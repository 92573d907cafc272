//! One job under the agent, start to end: its workspace, its config collected there, its
//! plan checked, the executor, the local sinks, then the workspace removed (or kept) and old
//! results pruned. Whatever goes wrong ends as a result in the results directory.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::networks::NetworkPool;
use crate::collector::{CollectOptions, collect, short_hash};
use crate::config::{AgentConfig, KeepWorkspace};
use crate::docker::Engine;
use crate::events::JobStatus;
use crate::executor::{
    ExecutorOptions, JobNetwork, JobOutcome, Limits, check_policy, codes, report_unrunnable,
    run_job,
};
use crate::job::{Job, Origin};
use crate::plan::{Plan, Request};
use crate::report::{
    ConsoleOutput, JobInfo, LocalReport, MIN_SECRET_LEN, Masker, prune_results, secret_values,
};
use crate::source::http::Upload;
use crate::workspace::Workspace;

/// What every job of an agent shares.
pub struct JobContext {
    pub engine: Engine,
    pub settings: Arc<AgentConfig>,
    /// The agent's environment, for `{NAME:from_env}` and task `env` forms.
    pub host_env: HashMap<String, String>,
    pub console: ConsoleOutput,
    /// The agent's own token: cancelled when it stops for good (uploads then wait for the
    /// next start).
    pub agent: CancellationToken,
    pub networks: Arc<NetworkPool>,
}

/// How a job ended, for the dispatcher.
#[derive(Clone, Debug)]
pub struct Finished {
    pub id: String,
    pub status: JobStatus,
    pub exit_code: u8,
    pub results: Option<PathBuf>,
}

pub async fn run(job: Job, context: &JobContext, cancel: CancellationToken) -> Finished {
    let settings = &context.settings;
    let agent = &settings.agent;
    let (env, secrets) = job_env(&job, context);
    let own_dirs = vec![
        agent.workspace_root.clone(),
        agent.results_dir.clone(),
        agent.state_dir.clone(),
    ];
    let workspace = Workspace::prepare(&job, &agent.workspace_root, own_dirs, &cancel).await;
    let collected = workspace.as_ref().ok().map(|ws| {
        collect(&CollectOptions {
            config: ws.dir.join(&job.config_file),
            home_config: None,
            cli_args: Vec::new(),
            env: env.clone(),
        })
    });
    let mut secret_names: Vec<&String> = secrets.iter().collect();
    if let Some(Ok(collected)) = &collected {
        secret_names.extend(&collected.config.secrets);
    }
    let (masker, too_short) = Masker::new(secret_values(secret_names, &env));
    let info = JobInfo {
        config: job.config_file.clone(),
        tasks: job.tasks.clone(),
        stream: Some(job.stream.clone()),
        trigger: Some(job.trigger.clone()),
        origin: workspace.as_ref().ok().map(|ws| ws.description.clone()),
    };
    let started = LocalReport::start(
        &agent.results_dir,
        &job.id,
        info,
        context.console,
        masker,
        job.remote.is_some(),
    );
    let (emitter, report) = match started {
        Ok(started) => started,
        Err(e) => {
            tracing::error!(
                "job {}: cannot create its results directory under {}: {e}",
                job.id,
                agent.results_dir.display()
            );
            if let Ok(ws) = &workspace {
                let _ = ws.remove();
            }
            return Finished {
                id: job.id,
                status: JobStatus::Error,
                exit_code: codes::INFRASTRUCTURE,
                results: None,
            };
        }
    };
    if too_short > 0 {
        tracing::warn!(
            "job {}: {too_short} secret value(s) shorter than {MIN_SECRET_LEN} characters are not masked",
            job.id
        );
    }
    let upload = job
        .remote
        .as_ref()
        .map(|remote| Upload::start(remote, &report.dir, cancel.clone(), context.agent.clone()));
    let config_error = (JobStatus::Failed, codes::CONFIG_ERROR);
    let outcome: JobOutcome = match (&workspace, collected) {
        (Err(e), _) => {
            let verdict = if cancel.is_cancelled() {
                (JobStatus::Cancelled, codes::CANCELLED)
            } else {
                (JobStatus::Error, codes::INFRASTRUCTURE)
            };
            report_unrunnable(&emitter, &job.id, &e.to_string(), verdict).await
        }
        (Ok(ws), Some(Err(diagnostics))) => {
            let text = source_paths(&diagnostics.to_string(), &ws.dir, &job.origin);
            report_unrunnable(&emitter, &job.id, &text, config_error).await
        }
        (Ok(ws), Some(Ok(collected))) => {
            let config = &collected.config;
            let request = if job.tasks.is_empty() {
                Request::Default
            } else {
                Request::Tasks(job.tasks.clone())
            };
            let options = ExecutorOptions {
                job_id: job.id.clone(),
                agent: agent.name.clone(),
                workspace: ws.dir.clone(),
                cache_dir: agent
                    .state_dir
                    .join("cache")
                    .join(short_hash(job.stream.as_bytes())),
                build_records: agent.state_dir.join("cache").join("builds"),
                allow_host_mounts: settings.docker.allow_host_mounts.clone(),
                allow_docker_socket: settings.docker.allow_docker_socket,
                parallel: agent.parallel,
                no_cache: false,
                task_timeout: None,
                job_timeout: Some(job.timeout.unwrap_or(agent.job_timeout)),
                host_env: env.clone(),
                job_network: match context.networks.take() {
                    Some(name) => JobNetwork::Premade { name },
                    None => JobNetwork::Create {
                        driver: settings.docker.network.clone(),
                    },
                },
                limits: Limits {
                    memory_bytes: settings.docker.memory.and_then(|m| i64::try_from(m.0).ok()),
                    nano_cpus: settings.docker.cpus.map(|c| (c * 1e9) as i64),
                },
            };
            match Plan::new(config, &request) {
                Err(e) => report_unrunnable(&emitter, &job.id, &e.to_string(), config_error).await,
                Ok(plan) => {
                    let problems = check_policy(&plan, &env, &options.mount_policy());
                    if problems.is_empty() {
                        run_job(&context.engine, config, &plan, &options, &emitter, &cancel).await
                    } else {
                        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
                        report_unrunnable(&emitter, &job.id, &text.join("\n"), config_error).await
                    }
                }
            }
        }
        (Ok(_), None) => unreachable!("a prepared workspace is always collected"),
    };
    drop(emitter);
    let results = report.dir.clone();
    report.finish().await;
    if let Some(upload) = upload
        && let Err(e) = upload.finish().await
    {
        tracing::warn!(
            "job {}: the upload to the job server stopped ({e}); the next start resumes it",
            job.id
        );
    }
    if let Ok(ws) = &workspace {
        let keep = match agent.keep_workspace {
            KeepWorkspace::Always => true,
            KeepWorkspace::OnFailure => outcome.status != JobStatus::Succeeded,
            KeepWorkspace::Never => false,
        };
        if !keep && let Err(e) = ws.remove() {
            tracing::warn!("cannot remove the workspace {}: {e}", ws.dir.display());
        }
    }
    if let Err(e) = prune_results(&agent.results_dir, agent.keep_results) {
        tracing::warn!("cannot prune {}: {e}", agent.results_dir.display());
    }
    Finished {
        id: job.id,
        status: outcome.status,
        exit_code: outcome.exit_code,
        results: Some(results),
    }
}

/// The job's environment: the agent's, its secrets by name, then the job's own values.
/// Returns it with the names of the secret variables.
fn job_env(job: &Job, context: &JobContext) -> (HashMap<String, String>, Vec<String>) {
    let secrets = &context.settings.secrets;
    let mut env = context.host_env.clone();
    let mut names = secrets.from_env.clone();
    for (name, value) in &secrets.values {
        env.insert(name.clone(), value.clone());
        names.push(name.clone());
    }
    env.extend(job.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    (env, names)
}

/// Diagnostics name files in the workspace; people edit them in the source checkout.
fn source_paths(text: &str, workspace: &std::path::Path, origin: &Origin) -> String {
    match origin {
        Origin::Path { path } => text.replace(
            &workspace.display().to_string(),
            &path.display().to_string(),
        ),
        Origin::Git { .. } => text.to_owned(),
    }
}
