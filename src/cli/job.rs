//! `dockhand build` and `dockhand run`: plan, make dockhand's own directories, connect, run
//! the job through the [`pipeline`](crate::pipeline) with the console (or JSON lines) and
//! the results directory as sinks, and exit with the job's code.

use std::path::{Path, PathBuf};

use super::args::{JobArgs, SandboxArgs};
use super::runtime::{self, Threads};
use crate::build::cache_dir;
use crate::build::context::STATE_DIR;
use crate::cancel::Cancel;
use crate::collector::{CollectOptions, Collected, Diagnostics};
use crate::executor::{
    ContainerDefaults, ExecutorOptions, JobNetwork, Sandbox, Widening, make_own_dir,
};
use crate::exit_code;
use crate::job::{new_job_id, workspace_root};
use crate::pipeline::{self, JobEngine, JobEnv, JobFiles, JobRun, ReportSettings};
use crate::plan::{Plan, PlanError, Request};
use crate::report::{ConsoleOutput, JobInfo, Palette};
use crate::signals::{Control, Signals};
use crate::util::hostname;

pub fn run(
    collected: &Collected,
    collect: &CollectOptions,
    request: Request,
    args: &JobArgs,
    sandbox: &SandboxArgs,
) -> u8 {
    let config = &collected.config;
    let plan = match Plan::new(config, &request) {
        Ok(plan) => plan,
        Err(e @ (PlanError::UnknownTask { .. } | PlanError::UnknownImage { .. })) => {
            eprintln!("error: {e}");
            return exit_code::USAGE;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return exit_code::CONFIG_ERROR;
        }
    };
    let (workspace, results_root, own_dirs) = match own_dirs(&config.config_root, args) {
        Ok(dirs) => dirs,
        Err(e) => {
            eprintln!("error: {e}");
            return exit_code::INFRASTRUCTURE;
        }
    };
    let info = JobInfo {
        config: collect.config.clone(),
        tasks: match &request {
            Request::Tasks(tasks) => tasks.clone(),
            _ => plan.runs.iter().map(|r| r.task.clone()).collect(),
        },
        stream: None,
        trigger: None,
        origin: None,
        server_job: None,
        kept_workspace: None,
    };
    let executor = ExecutorOptions {
        job_id: new_job_id(),
        // Not the hostname an agent on this machine is named by: its sweep would take
        // this run's containers for a dead job's.
        agent: format!("cli@{}", hostname()),
        sandbox: Sandbox {
            workspace: workspace.clone(),
            allow_host_mounts: (sandbox.allow_host_mounts.iter())
                .map(|d| absolute(d))
                .collect(),
            allow_docker_socket: sandbox.allow_docker_socket,
            allow_network_modes: sandbox.allow_network_modes.clone(),
            allow_published_ports: sandbox.allow_published_ports,
            protected: own_dirs,
            widened_by: Widening::RunFlags,
        },
        cache_dir: cache_dir(&workspace),
        build_records: cache_dir(&workspace).join("builds"),
        parallel: usize::from(args.parallel),
        no_cache: args.no_cache,
        task_timeout: sandbox.timeout,
        job_timeout: None,
        env: Default::default(),
        job_network: JobNetwork::Shared,
        containers: ContainerDefaults::new(
            sandbox.memory.map(|m| m.0),
            sandbox.cpus,
            sandbox.pids_limit,
        ),
        artifacts_dir: PathBuf::new(),
    };
    let report = report_settings(results_root, info, args);
    let env = JobEnv {
        public: collect.env.clone(),
        secrets: Default::default(),
    };
    // One thread is enough: stages wait on the engine, context tars are written on
    // blocking threads, and a task's output crosses fewer threads on its way to the sinks
    // (8% faster on 200 MB of output than two workers).
    let Some(runtime) = runtime::start(Threads::One) else {
        return exit_code::INFRASTRUCTURE;
    };
    runtime.block_on(async move {
        let cancel = Cancel::new();
        let signals = match Signals::listen(Control::Stop) {
            Ok(signals) => Some(tokio::spawn(cancel_on_signal(signals, cancel.clone()))),
            Err(e) => {
                eprintln!("warning: {e}; an interrupt will not remove the job's containers");
                None
            }
        };
        let run = JobRun {
            id: executor.job_id.clone(),
            engine: JobEngine::Connect {
                host: args.docker_host.clone(),
            },
            files: JobFiles::InPlace { collected, plan },
            env,
            report,
            executor,
            network: Box::new(|| JobNetwork::Shared),
            warn: Box::new(|warning| eprintln!("warning: {warning}")),
        };
        let finished = run.run(&cancel).await;
        if let Some(signals) = signals {
            signals.abort();
            let _ = signals.await;
        }
        if let Some(dir) = &finished.results {
            eprintln!("results: {}", dir.display());
        }
        for line in finished.unrunnable.iter().flat_map(|text| text.lines()) {
            eprintln!("error: {line}");
        }
        if let Some(message) = &finished.message {
            eprintln!("error: {message}");
        }
        finished.exit_code
    })
}

/// `dockhand run` or `build` on a config that does not collect: its diagnostics (printed
/// already) become the job's record, a failed `collect` stage, as an agent job's would.
pub fn refused(collect: &CollectOptions, diagnostics: &Diagnostics, args: &JobArgs) -> u8 {
    let config_root = absolute(&collect.config)
        .parent()
        .filter(|_| collect.config.is_file())
        .map(Path::to_path_buf);
    let Some(config_root) = config_root else {
        return exit_code::CONFIG_ERROR;
    };
    let results_root = match own_dirs(&config_root, args) {
        Ok((_, results_root, _)) => results_root,
        Err(e) => {
            eprintln!("error: {e}");
            return exit_code::CONFIG_ERROR;
        }
    };
    let info = JobInfo {
        config: collect.config.clone(),
        tasks: Vec::new(),
        stream: None,
        trigger: None,
        origin: None,
        server_job: None,
        kept_workspace: None,
    };
    let report = report_settings(results_root, info, args);
    let Some(runtime) = runtime::start(Threads::One) else {
        return exit_code::INFRASTRUCTURE;
    };
    let text = diagnostics.render();
    let finished = runtime.block_on(pipeline::refused(new_job_id(), report, text));
    if let Some(dir) = &finished.results {
        eprintln!("results: {}", dir.display());
    }
    if let Some(message) = &finished.message {
        eprintln!("error: {message}");
    }
    finished.exit_code
}

/// The workspace a config at `config_root` may reach, the results root, and dockhand's own
/// directories, made without following links a repository (or an earlier task) planted;
/// they are hidden from every container.
fn own_dirs(
    config_root: &Path,
    args: &JobArgs,
) -> Result<(PathBuf, PathBuf, Vec<PathBuf>), String> {
    let workspace = workspace_root(config_root);
    let results_root = absolute(
        &args
            .results_dir
            .clone()
            .unwrap_or_else(|| config_root.join(STATE_DIR).join("results")),
    );
    let own_dirs = vec![
        workspace.join(STATE_DIR),
        config_root.join(STATE_DIR),
        results_root.clone(),
    ];
    for dir in &own_dirs {
        make_own_dir(&workspace, dir).map_err(|e| e.to_string())?;
    }
    Ok((workspace, results_root, own_dirs))
}

fn report_settings(results_root: PathBuf, info: JobInfo, args: &JobArgs) -> ReportSettings {
    ReportSettings {
        results_root,
        info,
        console: if args.json {
            ConsoleOutput::Json
        } else {
            ConsoleOutput::Lines(Palette::for_stdout(args.color))
        },
        remote: None,
        agent: Default::default(),
        keep_results: None,
    }
}

fn absolute(dir: &Path) -> PathBuf {
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// Ctrl-C or SIGTERM cancels the job; its stages clean up and the job reports as usual.
async fn cancel_on_signal(mut signals: Signals, cancel: Cancel) {
    while let Some(control) = signals.recv().await {
        if control != Control::Stop {
            continue;
        }
        if cancel.is_cancelled() {
            eprintln!("already stopping: removing containers and networks");
        } else {
            eprintln!("stopping: cancelling the job and removing its containers and networks");
            cancel.cancel(crate::cancel::CancelReason::Requested);
        }
    }
}
