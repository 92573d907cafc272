//! One job under the agent, start to end: its workspace, its config collected there, its
//! plan checked, the executor, the local sinks, then the workspace removed (or kept) and old
//! results pruned. Whatever goes wrong ends as a result in the results directory.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::networks::NetworkPool;
use crate::cancel::Cancel;
use crate::collector::{CollectOptions, collect};
use crate::config::{AgentConfig, KeepWorkspace};
use crate::docker::Engine;
use crate::events::JobStatus;
use crate::executor::{
    ContainerDefaults, ExecutorOptions, JobNetwork, JobOutcome, Sandbox, check_policy,
    report_unrunnable, run_job,
};
use crate::exit_code;
use crate::job::{Job, Origin};
use crate::plan::{Plan, Request};
use crate::report::{
    ConsoleOutput, JobInfo, LocalReport, MIN_SECRET_LEN, Masker, prune_results, secret_values,
};
use crate::source::http::Upload;
use crate::util::short_hash;
use crate::workspace::Workspace;

/// What every job of an agent shares.
pub struct JobContext {
    pub engine: Engine,
    pub settings: Arc<AgentConfig>,
    /// The agent's environment: jobs see only the `agent.pass_env` variables and the
    /// secrets of it (see [`JobEnv`]).
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

pub async fn run(job: Job, context: &JobContext, cancel: Cancel) -> Finished {
    let settings = &context.settings;
    let agent = &settings.agent;
    let env = JobEnv::new(&job, context);
    let own_dirs = vec![
        agent.workspace_root.clone(),
        agent.results_dir.clone(),
        agent.state_dir.clone(),
    ];
    let workspace = Workspace::prepare(&job, &agent.workspace_root, own_dirs, cancel.token()).await;
    let collected = match &workspace {
        Ok(ws) => {
            let options = CollectOptions {
                config: ws.dir.join(&job.config_file),
                home_config: None,
                cli_args: Vec::new(),
                env: env.for_collect(),
                workspace: Some(ws.dir.clone()),
            };
            let collected = tokio::task::spawn_blocking(move || collect(&options)).await;
            Some(collected.map_err(|e| format!("collecting the config failed: {e}")))
        }
        Err(_) => None,
    };
    let named_secrets = match &collected {
        Some(Ok(Ok(collected))) => collected.config.secrets.clone(),
        _ => Vec::new(),
    };
    let all = env.for_collect();
    let mut secrets: Vec<&String> = env.secrets.values().collect();
    secrets.extend(secret_values(&named_secrets, &all));
    let (masker, too_short) = Masker::new(secrets);
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
            if let Ok(ws) = workspace {
                ws.close(false).await;
            }
            return Finished {
                id: job.id,
                status: JobStatus::Error,
                exit_code: exit_code::INFRASTRUCTURE,
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
    let upload = job.remote.as_ref().map(|remote| {
        Upload::start(
            remote,
            &report.dir,
            cancel.token().clone(),
            context.agent.clone(),
        )
    });
    let config_error = (JobStatus::Failed, exit_code::CONFIG_ERROR);
    let outcome: JobOutcome = match (&workspace, collected) {
        (Err(e), _) => {
            let verdict = if cancel.is_cancelled() {
                (JobStatus::Cancelled, exit_code::CANCELLED)
            } else {
                (JobStatus::Error, exit_code::INFRASTRUCTURE)
            };
            report_unrunnable(&emitter, &job.id, &e.to_string(), verdict).await
        }
        (Ok(_), None) | (Ok(_), Some(Err(_))) => {
            let text = "collecting the config failed: its thread ended early";
            report_unrunnable(
                &emitter,
                &job.id,
                text,
                (JobStatus::Error, exit_code::INFRASTRUCTURE),
            )
            .await
        }
        (Ok(ws), Some(Ok(Err(diagnostics)))) => {
            let text = source_paths(&diagnostics.to_string(), &ws.dir, &job.origin);
            report_unrunnable(&emitter, &job.id, &text, config_error).await
        }
        (Ok(ws), Some(Ok(Ok(collected)))) => {
            let config = &collected.config;
            let request = if job.tasks.is_empty() {
                Request::Default
            } else {
                Request::Tasks(job.tasks.clone())
            };
            // Caches per repository: an image one repository built is never reused for
            // another's files, whatever a hostile job of the first did to what it built
            // from; jobs of one repository (each server job is a stream of its own) share.
            let repository = match &job.origin {
                Origin::Path { path } => path.as_os_str().as_encoded_bytes().to_vec(),
                Origin::Git { url, .. } => url.as_bytes().to_vec(),
            };
            let cache_dir = agent.state_dir.join("cache").join(short_hash(&repository));
            let options = ExecutorOptions {
                job_id: job.id.clone(),
                agent: agent.name.clone(),
                sandbox: Sandbox {
                    workspace: ws.dir.clone(),
                    allow_host_mounts: settings.docker.allow_host_mounts.clone(),
                    allow_docker_socket: settings.docker.allow_docker_socket,
                    allow_network_modes: settings.docker.allow_network_modes.clone(),
                    allow_published_ports: settings.docker.allow_published_ports,
                    protected: vec![
                        agent.workspace_root.clone(),
                        agent.results_dir.clone(),
                        agent.state_dir.clone(),
                    ],
                },
                build_records: cache_dir.join("builds"),
                cache_dir,
                parallel: agent.parallel,
                no_cache: false,
                task_timeout: None,
                job_timeout: Some(job.timeout.unwrap_or(agent.job_timeout)),
                env: env.for_tasks(&config.secrets),
                job_network: match context.networks.take() {
                    Some(name) => JobNetwork::Premade { name },
                    None => JobNetwork::Create {
                        driver: settings.docker.network.clone(),
                    },
                },
                containers: container_defaults(&settings.docker),
            };
            let unnamed = env.unnamed_secrets_read(&collected.env_read, &config.secrets);
            let checked = match Plan::new(config, &request) {
                Err(e) => Err(e.to_string()),
                Ok(_) if !unnamed.is_empty() => Err(unnamed
                    .iter()
                    .map(|name| format!("the config reads the agent's secret `{name}` ({{{name}:from_env}}) but does not name it in `secrets:`"))
                    .collect::<Vec<_>>()
                    .join("\n")),
                Ok(plan) => {
                    let (env, sandbox) = (options.env.clone(), options.sandbox.clone());
                    let checked = tokio::task::spawn_blocking(move || {
                        let problems = check_policy(&plan, &env, &sandbox);
                        (plan, problems)
                    })
                    .await;
                    match checked {
                        Ok((plan, problems)) if problems.is_empty() => Ok(plan),
                        Ok((_, problems)) => Err(problems
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("\n")),
                        Err(e) => Err(format!("checking the job's policy failed: {e}")),
                    }
                }
            };
            match checked {
                Ok(plan) => {
                    run_job(&context.engine, config, &plan, &options, &emitter, &cancel).await
                }
                Err(text) => report_unrunnable(&emitter, &job.id, &text, config_error).await,
            }
        }
    };
    drop(emitter);
    let results = report.dir.clone();
    let record = report.finish().await;
    if let Some(message) = &record.message {
        tracing::error!("job {}: {message}", job.id);
    }
    let status = record.status.unwrap_or(outcome.status);
    if let Some(upload) = upload
        && let Err(e) = upload.finish(&record).await
    {
        tracing::warn!(
            "job {}: the upload to the job server stopped ({e}); the next start resumes it",
            job.id
        );
    }
    if let Ok(ws) = workspace {
        let keep = match agent.keep_workspace {
            KeepWorkspace::Always => true,
            KeepWorkspace::OnFailure => status != JobStatus::Succeeded,
            KeepWorkspace::Never => false,
        };
        ws.close(keep).await;
    }
    if let Err(e) = prune_results(&agent.results_dir, agent.keep_results) {
        tracing::warn!("cannot prune {}: {e}", agent.results_dir.display());
    }
    Finished {
        id: job.id,
        status,
        exit_code: record.exit_code.unwrap_or(outcome.exit_code),
        results: Some(results),
    }
}

/// What a job may see of the agent's environment: the variables `agent.pass_env` names,
/// then the job's own values over them; and the agent's secrets, of which tasks get only
/// those the config names. Nothing else of the agent's environment (its tokens included)
/// reaches a job.
struct JobEnv {
    public: HashMap<String, String>,
    secrets: HashMap<String, String>,
}

impl JobEnv {
    fn new(job: &Job, context: &JobContext) -> JobEnv {
        let settings = &context.settings;
        let from_agent = |names: &[String]| -> HashMap<String, String> {
            names
                .iter()
                .filter_map(|name| Some((name.clone(), context.host_env.get(name)?.clone())))
                .collect()
        };
        let mut public = from_agent(&settings.agent.pass_env);
        public.extend(job.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let mut secrets = from_agent(&settings.secrets.from_env);
        secrets.extend(settings.secrets.values.clone());
        JobEnv { public, secrets }
    }

    /// For `{NAME:from_env}`: every secret may be read while collecting, and
    /// [`JobEnv::unnamed_secrets_read`] then refuses the config that read one it does not
    /// name.
    fn for_collect(&self) -> HashMap<String, String> {
        let mut env = self.secrets.clone();
        env.extend(self.public.clone());
        env
    }

    /// For the tasks' `NAME` env entries: the public part and the secrets `named`.
    fn for_tasks(&self, named: &[String]) -> HashMap<String, String> {
        let mut env = self.public.clone();
        for name in named {
            if let Some(value) = self.secrets.get(name).filter(|_| !env.contains_key(name)) {
                env.insert(name.clone(), value.clone());
            }
        }
        env
    }

    fn unnamed_secrets_read(
        &self,
        read: &std::collections::BTreeSet<String>,
        named: &[String],
    ) -> Vec<String> {
        read.iter()
            .filter(|name| self.secrets.contains_key(*name) && !self.public.contains_key(*name))
            .filter(|name| !named.contains(name))
            .cloned()
            .collect()
    }
}

/// What every task container of this agent gets (see [`ContainerDefaults`]).
fn container_defaults(docker: &crate::config::DockerSection) -> ContainerDefaults {
    let mut defaults = ContainerDefaults::new(
        docker.memory.map(|m| m.0),
        docker.cpus,
        Some(docker.pids_limit),
    );
    defaults.no_new_privileges = docker.no_new_privileges;
    defaults.cap_drop = docker.cap_drop.clone();
    defaults
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
