//! One run stage: the dependency containers (links, share_with) in start order on a
//! network of the stage's own, with their wait conditions, then the task's container
//! attached before it starts. A task without dependencies joins the shared isolated
//! network instead. Everything the stage created is removed on every path.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::binds;
use super::engine::{ContainerEngine, Output};
use super::job::ExecutorOptions;
use super::policy::{PolicyError, resolve_env};
use crate::collector::{
    Artifacts, ArtifactsWhen, DependencyOptions, Image, Mount, RunCommand, TaskAction,
};
use crate::docker::{ContainerSpec, DockerError, ExitStatus, Owner, Readiness};
use crate::events::{LogStream, StageLog, StageOutcome, StageStatus, TestSummary};
use crate::plan::RunStage;

/// A dependency's last output kept to show when it dies: 64 KiB.
const SERVICE_TAIL_BYTES: usize = 64 * 1024;

pub async fn run_task<E: ContainerEngine>(
    engine: &E,
    stage: &RunStage,
    stage_index: usize,
    options: &ExecutorOptions,
    log: &StageLog,
    cancel: &CancellationToken,
    deadline: Option<Instant>,
) -> Result<StageOutcome, DockerError> {
    if stage.action == TaskAction::Make {
        log.note(format!("`{}` only builds {}", stage.task, stage.image))
            .await;
        return Ok(StageOutcome::new(StageStatus::Passed));
    }
    let owner = options.owner(&stage.task);
    let own_network = !stage.services.is_empty();
    let network = if own_network {
        let name = format!("dockhand-{}-{stage_index}", options.job_id);
        engine.create_network(&name, "bridge", &owner).await?;
        name
    } else if let Some(job_network) = options.job_network() {
        job_network
    } else {
        engine.isolated_network().await?
    };
    let mut run = TaskRun {
        engine,
        stage,
        options,
        owner: &owner,
        network: &network,
        own_network,
        log,
        containers: Vec::new(),
        pumps: JoinSet::new(),
    };
    let result = run.run(cancel, deadline).await;
    let cleanup = run.cleanup().await;
    let outcome = result?;
    cleanup?;
    Ok(outcome)
}

struct TaskRun<'a, E> {
    engine: &'a E,
    stage: &'a RunStage,
    options: &'a ExecutorOptions,
    owner: &'a Owner,
    network: &'a str,
    /// Whether `network` is this stage's to remove (it has dependency containers), or the
    /// job's network or the shared isolated one.
    own_network: bool,
    log: &'a StageLog,
    containers: Vec<String>,
    pumps: JoinSet<()>,
}

impl<E: ContainerEngine> TaskRun<'_, E> {
    async fn run(
        &mut self,
        cancel: &CancellationToken,
        deadline: Option<Instant>,
    ) -> Result<StageOutcome, DockerError> {
        let images = &self.stage.images;
        let task_image = &images[&self.stage.image];
        for service in &self.stage.services {
            if let Some(outcome) = self
                .start_service(&images[service], task_image, cancel)
                .await?
            {
                return Ok(outcome);
            }
        }
        let mut env: Vec<&crate::collector::EnvVar> = task_image.run.env.iter().collect();
        env.extend(&self.stage.env);
        let spec = self.spec(task_image, &self.stage.task, env, Vec::new());
        let (id, output) = match self.start(spec, &task_image.run.mounts).await? {
            Ok(started) => started,
            Err(refused) => return Ok(self.refused(refused).await),
        };
        let status = self
            .engine
            .run_attached(&id, output, self.log, cancel, deadline)
            .await?;
        let outcome = match status {
            ExitStatus::Exited(0) => StageOutcome {
                exit_code: Some(0),
                ..StageOutcome::new(StageStatus::Passed)
            },
            ExitStatus::Exited(code) => {
                let failure = StageOutcome {
                    exit_code: Some(code),
                    ..StageOutcome::new(StageStatus::Failed)
                };
                failure.with_message(format!("exited with code {code}"))
            }
            ExitStatus::TimedOut => StageOutcome::new(StageStatus::TimedOut)
                .with_message("the task ran past its timeout and was killed"),
            ExitStatus::Cancelled => {
                StageOutcome::new(StageStatus::Cancelled).with_message("cancelled")
            }
        };
        let outcome = match (&task_image.run.reports, status) {
            (Some(reports), ExitStatus::Exited(_)) if !reports.junit.is_empty() => {
                let summary = super::copy_out::reports(self.engine, &id, reports, cancel).await?;
                self.with_tests(outcome, summary, reports.fail_on_failures)
                    .await
            }
            _ => outcome,
        };
        match &task_image.run.artifacts {
            Some(artifacts) if wanted(artifacts.when, outcome.status) => {
                self.with_artifacts(outcome, &id, artifacts, cancel).await
            }
            _ => Ok(outcome),
        }
    }

    /// Copies the task's artifacts into the job's results; a path that matched nothing is
    /// a warning, or fails the stage when `required`.
    async fn with_artifacts(
        &self,
        mut outcome: StageOutcome,
        id: &str,
        artifacts: &Artifacts,
        cancel: &CancellationToken,
    ) -> Result<StageOutcome, DockerError> {
        let dest = self.options.artifacts_dir.join(&self.stage.task);
        let (mut summary, missing) =
            super::copy_out::artifacts(self.engine, id, artifacts, &dest, cancel).await?;
        for path in &missing {
            crate::testreport::push_warning(
                &mut summary.warnings,
                format!("{path}: nothing matched"),
            );
        }
        for warning in &summary.warnings {
            self.log.note(format!("artifacts: {warning}")).await;
        }
        self.log
            .note(format!(
                "artifacts: {} files, {} bytes in artifacts/{}",
                summary.files, summary.bytes, self.stage.task
            ))
            .await;
        if artifacts.required && !missing.is_empty() && outcome.status.passed() {
            let message = format!("required artifacts missing: {}", missing.join(", "));
            outcome = StageOutcome {
                status: StageStatus::Failed,
                ..outcome
            }
            .with_message(message);
        }
        outcome.artifacts = Some(Box::new(summary));
        Ok(outcome)
    }

    /// Puts the task's test results in its outcome, its warnings and failed tests in the
    /// stage's log; a task that exited 0 with failing tests fails when `fail` says so.
    async fn with_tests(
        &self,
        mut outcome: StageOutcome,
        summary: TestSummary,
        fail: bool,
    ) -> StageOutcome {
        for warning in &summary.warnings {
            self.log.note(format!("test report: {warning}")).await;
        }
        let failing = summary.failing();
        let mut line = format!(
            "tests: {} passed, {} failed, {} errors, {} skipped",
            summary.passed, summary.failed, summary.errors, summary.skipped
        );
        for case in &summary.failures {
            line.push_str(&format!("\n  failed: {}", case.label()));
        }
        self.log.note(line).await;
        if failing > 0 && outcome.status == StageStatus::Passed {
            let message = format!("exited 0 but its test report has {failing} failing tests");
            outcome = if fail {
                StageOutcome {
                    status: StageStatus::Failed,
                    ..outcome
                }
                .with_message(message)
            } else {
                outcome.with_message(format!("{message} (reports.fail_on_failures is off)"))
            };
        }
        outcome.tests = Some(Box::new(summary));
        outcome
    }

    /// Starts one dependency container and waits until it is ready. `Some(outcome)` ends
    /// the stage (the service died, never got ready, or the job was cancelled).
    async fn start_service(
        &mut self,
        image: &Image,
        task_image: &Image,
        cancel: &CancellationToken,
    ) -> Result<Option<StageOutcome>, DockerError> {
        let overrides = task_image
            .run
            .dependency_options
            .get(&image.name)
            .cloned()
            .unwrap_or_default();
        let aliases = self.aliases(&image.name);
        let mut env: Vec<&crate::collector::EnvVar> = image.run.env.iter().collect();
        env.extend(&overrides.env);
        let mut spec = self.spec(image, &image.name, env, aliases.clone());
        spec.ports.extend(overrides.ports.iter().cloned());
        let (id, output) = match self.start(spec, &image.run.mounts).await? {
            Ok(started) => started,
            Err(refused) => return Ok(Some(self.refused(refused).await)),
        };
        let tail = Arc::new(Mutex::new(VecDeque::<u8>::new()));
        self.pumps.spawn(pump(
            output,
            tail.clone(),
            overrides.attached.then(|| self.log.clone()),
            image.name.clone(),
        ));
        let others: Vec<&str> = aliases
            .iter()
            .map(String::as_str)
            .filter(|alias| *alias != image.name)
            .collect();
        let also = if others.is_empty() {
            String::new()
        } else {
            format!(", also answering to {}", others.join(", "))
        };
        self.log
            .note(format!("started service {}{also}", image.name))
            .await;

        let Some(condition) = wait_condition(image, &overrides) else {
            return Ok(None);
        };
        let readiness = self
            .engine
            .wait_ready(&id, self.network, condition, cancel)
            .await?;
        let failure = match readiness {
            Readiness::Ready => {
                self.log
                    .note(format!("service {} is ready", image.name))
                    .await;
                return Ok(None);
            }
            Readiness::Cancelled => {
                return Ok(Some(
                    StageOutcome::new(StageStatus::Cancelled).with_message("cancelled"),
                ));
            }
            Readiness::Died(code) => format!(
                "service {} exited with code {} before it was ready",
                image.name,
                code.map_or("?".into(), |c| c.to_string())
            ),
            Readiness::TimedOut { pending } => format!(
                "service {} was not ready after {:?}: {pending}",
                image.name, condition.timeout
            ),
        };
        let tail = tail
            .lock()
            .map(|mut t| String::from_utf8_lossy(t.make_contiguous()).into_owned())
            .unwrap_or_default();
        self.log
            .note(format!("{failure}; its last output:\n{tail}"))
            .await;
        Ok(Some(
            StageOutcome::new(StageStatus::Failed).with_message(failure),
        ))
    }

    /// Creates and starts a container with its output attached first. One with bind mounts
    /// starts behind the mount gate, its host paths resolved there; a refused path is
    /// `Ok(Err)`, for the stage's result.
    async fn start(
        &mut self,
        mut spec: ContainerSpec,
        mounts: &[Mount],
    ) -> Result<Result<(String, Output), PolicyError>, DockerError> {
        let gate = if mounts.is_empty() {
            None
        } else {
            let sandbox = &self.options.sandbox;
            let (binds, gate) =
                binds::resolve_behind_gate(self.engine, sandbox, &self.stage.task, mounts).await?;
            match binds {
                Ok(mounts) => {
                    spec.binds = mounts.binds;
                    spec.hidden = mounts.hidden;
                }
                Err(refused) => {
                    gate.open(self.engine).await;
                    return Ok(Err(refused));
                }
            }
            Some(gate)
        };
        let started = self.create_and_start(&spec).await;
        if let Some(gate) = gate {
            gate.open(self.engine).await;
        }
        started.map(Ok)
    }

    async fn create_and_start(
        &mut self,
        spec: &ContainerSpec,
    ) -> Result<(String, Output), DockerError> {
        let id = self.engine.create_container(spec, self.owner).await?;
        self.containers.push(id.clone());
        let output = self.engine.attach_and_start(&id).await?;
        Ok((id, output))
    }

    /// A container the sandbox refused fails the stage, with the reason in its log.
    async fn refused(&self, refused: PolicyError) -> StageOutcome {
        let message = format!("refused: {refused}");
        self.log.note(message.clone()).await;
        StageOutcome::new(StageStatus::Failed).with_message(message)
    }

    /// The names a dependency answers to: its image name and every alias a link to it gives.
    fn aliases(&self, service: &str) -> Vec<String> {
        let mut aliases = vec![service.to_owned()];
        for image in std::iter::once(&self.stage.image).chain(&self.stage.services) {
            for link in &self.stage.images[image].run.links {
                if link.image == service && !aliases.contains(&link.alias) {
                    aliases.push(link.alias.clone());
                }
            }
        }
        aliases
    }

    fn spec(
        &self,
        image: &Image,
        role: &str,
        env: Vec<&crate::collector::EnvVar>,
        aliases: Vec<String>,
    ) -> ContainerSpec {
        let run = &image.run;
        let defaults = &self.options.containers;
        let mut aliases = aliases;
        if let Some(name) = &run.container_name
            && !aliases.contains(name)
        {
            aliases.push(name.clone());
        }
        let mut cap_drop = defaults.cap_drop.clone();
        for cap in &run.cpu.cap_drop {
            if !cap_drop.contains(cap) {
                cap_drop.push(cap.clone());
            }
        }
        ContainerSpec {
            name: format!("dockhand-{}-{}-{role}", self.options.job_id, self.log.stage),
            image: image.full_name.clone(),
            cmd: run.command.as_ref().map(|c| match c {
                RunCommand::Exec(argv) => argv.clone(),
                RunCommand::Shell { shell, script } => {
                    vec![shell.clone(), "-c".into(), script.clone()]
                }
            }),
            env: resolve_env(env, &self.options.env),
            user: run.user.clone(),
            binds: Vec::new(),
            ports: run.ports.clone(),
            network: self.network.to_owned(),
            aliases,
            cpu: run.cpu.clone(),
            network_options: run.network.clone(),
            memory_bytes: match (defaults.memory_bytes, run.cpu.mem_limit) {
                (Some(agent), Some(own)) => Some(agent.min(own)),
                (agent, own) => agent.or(own),
            },
            nano_cpus: defaults.nano_cpus,
            pids_limit: defaults.pids_limit,
            no_new_privileges: defaults.no_new_privileges,
            cap_drop,
            ulimits: run.ulimits.clone(),
            read_only_rootfs: run.read_only_rootfs,
            hidden: Vec::new(),
        }
    }

    /// Removes the stage's containers (newest first) and network, and reaps the output
    /// pumps. Runs on every path.
    async fn cleanup(&mut self) -> Result<(), DockerError> {
        let mut first_error = None;
        for id in self.containers.drain(..).rev() {
            if let Err(e) = self.engine.remove_container(&id).await {
                first_error.get_or_insert(e);
            }
        }
        self.pumps.abort_all();
        while self.pumps.join_next().await.is_some() {}
        if self.own_network
            && let Err(e) = self.engine.remove_network(self.network).await
        {
            first_error.get_or_insert(e);
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Whether artifacts are copied after a stage that ended so (never after a cancel).
fn wanted(when: ArtifactsWhen, status: StageStatus) -> bool {
    match when {
        _ if status == StageStatus::Cancelled => false,
        ArtifactsWhen::Always => true,
        ArtifactsWhen::OnSuccess => status.passed(),
        ArtifactsWhen::OnFailure => !status.passed(),
    }
}

fn wait_condition<'i>(
    image: &'i Image,
    overrides: &'i DependencyOptions,
) -> Option<&'i crate::collector::WaitCondition> {
    overrides
        .wait_condition
        .as_ref()
        .or(image.run.wait_condition.as_ref())
}

/// Reads a dependency's output: keeps its tail, and streams it to the task's log when the
/// dependency is `attached`.
async fn pump(
    mut output: impl futures_util::Stream<Item = Result<(LogStream, Bytes), DockerError>> + Unpin,
    tail: Arc<Mutex<VecDeque<u8>>>,
    attached: Option<StageLog>,
    name: String,
) {
    while let Some(Ok((_, bytes))) = output.next().await {
        if let Ok(mut tail) = tail.lock() {
            tail.extend(bytes.iter());
            let excess = tail.len().saturating_sub(SERVICE_TAIL_BYTES);
            tail.drain(..excess);
        }
        if let Some(log) = &attached {
            let text = String::from_utf8_lossy(&bytes);
            let prefixed: String = text.lines().map(|l| format!("[{name}] {l}\n")).collect();
            log.output(LogStream::System, Bytes::from(prefixed)).await;
        }
    }
}
