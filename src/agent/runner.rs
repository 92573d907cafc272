//! One job under the agent: its settings turned into a [`JobRun`] (a fresh workspace, the
//! agent's sandbox and limits, a spare network, caches per repository), run through the
//! shared [`pipeline`](crate::pipeline).

use std::collections::HashMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::networks::NetworkPool;
use crate::cancel::Cancel;
use crate::config::{AgentConfig, AgentSection, KeepWorkspace};
use crate::docker::Engine;
use crate::executor::{ContainerDefaults, ExecutorOptions, JobNetwork, Sandbox, Widening};
use crate::job::{Job, Origin};
use crate::pipeline::{Finished, JobEngine, JobEnv, JobFiles, JobRun, ReportSettings};
use crate::report::{ConsoleOutput, JobInfo, KeptWorkspace};
use crate::util::short_hash;

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

pub async fn run(job: Job, context: &JobContext, cancel: Cancel) -> Finished {
    let settings = &context.settings;
    let agent = &settings.agent;
    let own_dirs = vec![
        agent.workspace_root.clone(),
        agent.results_dir.clone(),
        agent.state_dir.clone(),
    ];
    // Caches per repository: an image one repository built is never reused for another's
    // files, whatever a hostile job of the first did to what it built from; jobs of one
    // repository (each server job is a stream of its own) share.
    let repository = match &job.origin {
        Origin::Path { path } => path.as_os_str().as_encoded_bytes().to_vec(),
        Origin::Git { url, .. } => url.as_bytes().to_vec(),
    };
    let cache_dir = (job.build_cache.clone())
        .unwrap_or_else(|| agent.state_dir.join("cache").join(short_hash(&repository)));
    let widen = job.trust.widening;
    let executor = ExecutorOptions {
        job_id: job.id.clone(),
        agent: agent.name.clone(),
        sandbox: Sandbox {
            workspace: agent.workspace_root.join(&job.id),
            allow_host_mounts: (settings.docker.allow_host_mounts.clone())
                .into_iter()
                .filter(|_| widen)
                .collect(),
            allow_docker_socket: widen && settings.docker.allow_docker_socket,
            allow_network_modes: (settings.docker.allow_network_modes.clone())
                .into_iter()
                .filter(|_| widen)
                .collect(),
            allow_published_ports: widen && settings.docker.allow_published_ports,
            protected: own_dirs.clone(),
            widened_by: Widening::AgentConfig,
        },
        build_records: cache_dir.join("builds"),
        cache_dir,
        parallel: agent.parallel,
        no_cache: false,
        task_timeout: None,
        job_timeout: Some(job.timeout.unwrap_or(agent.job_timeout)),
        env: HashMap::new(),
        job_network: JobNetwork::Shared,
        containers: container_defaults(&settings.docker),
        artifacts_dir: std::path::PathBuf::new(),
    };
    let report = ReportSettings {
        results_root: agent.results_dir.clone(),
        info: JobInfo {
            config: job.config_file.clone(),
            tasks: job.tasks.clone(),
            stream: Some(job.stream.clone()),
            trigger: Some(job.trigger.clone()),
            origin: None,
            server_job: job.remote.as_ref().map(|remote| remote.job_id.clone()),
            kept_workspace: kept_workspace(agent, &job.id),
        },
        console: context.console,
        remote: job.remote.clone(),
        agent: context.agent.clone(),
        keep_results: Some(agent.keep_results),
    };
    let networks = context.networks.clone();
    let driver = settings.docker.network.clone();
    let id = job.id.clone();
    let run = JobRun {
        id: job.id.clone(),
        engine: JobEngine::Connected(&context.engine),
        files: JobFiles::Workspace {
            job: &job,
            root: agent.workspace_root.clone(),
            own_dirs,
        },
        env: job_env(&job, context),
        report,
        executor,
        network: Box::new(move || match networks.take() {
            Some(name) => JobNetwork::Premade { name },
            None => JobNetwork::Create { driver },
        }),
        warn: Box::new(move |warning| tracing::warn!(job = id, "job {id}: {warning}")),
    };
    let finished = run.run(&cancel).await;
    // Not `unrunnable`: it is the job's own (unmasked) text, in its record already.
    if let Some(message) = &finished.message {
        tracing::error!(job = finished.id, "job {}: {message}", finished.id);
    }
    finished
}

/// Where `keep_workspace` keeps the job's workspace: beside the others, under a name the
/// sweep of leftovers never takes for a dead job's.
fn kept_workspace(agent: &AgentSection, job: &str) -> Option<KeptWorkspace> {
    let only_on_failure = match agent.keep_workspace {
        KeepWorkspace::Never => return None,
        KeepWorkspace::OnFailure => true,
        KeepWorkspace::Always => false,
    };
    Some(KeptWorkspace {
        path: agent.workspace_root.join(format!("kept-{job}")),
        only_on_failure,
    })
}

/// The variables `agent.pass_env` names, then the job's own values over them; the secrets
/// the agent holds that the job may see.
fn job_env(job: &Job, context: &JobContext) -> JobEnv {
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
    if let Some(allowed) = &job.trust.secrets {
        secrets.retain(|name, _| allowed.contains(name));
    }
    JobEnv { public, secrets }
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
