//! A scripted [`ContainerEngine`] for the executor's unit tests: each image's build and
//! each task's run does what its script says, and every call that creates or removes
//! something is recorded, so tests can check the scheduler and the cleanup without Docker.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::engine::{ContainerEngine, Output};
use crate::collector::WaitCondition;
use crate::docker::{
    Archive, BuildRequest, BuildResult, ContainerSpec, DockerError, ExitStatus, Leftovers, Owner,
    Pause, Readiness, labels,
};
use crate::events::StageLog;

/// What building one image does.
#[derive(Clone, Copy, Debug)]
pub enum Build {
    /// Built after the engine's build time.
    Succeed,
    /// A failing step, after the build time.
    Fail,
    /// Runs until cancelled.
    Hang,
    Panic,
}

/// What a task's container does once started.
#[derive(Clone, Copy, Debug)]
pub enum Task {
    /// Exits with this code after `after`.
    Exit(i64, Duration),
    /// Runs until cancelled or killed at its deadline.
    Hang,
    Panic,
    /// The engine refuses to create the container.
    Refused,
}

/// A call that changed the engine's state, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    BuildStarted(String),
    BuildEnded(String),
    CreateNetwork(String),
    RemoveNetwork(String),
    /// The container's id and name.
    CreateContainer(String, String),
    RemoveContainer(String),
    /// A sweep of the objects labelled with this job, once it has removed them.
    Sweep(String),
}

#[derive(Clone, Debug, Default)]
struct Script {
    builds: HashMap<String, Build>,
    tasks: HashMap<String, Task>,
    build_time: Duration,
    /// Tar archives of container paths, as the archive API would send them.
    archives: HashMap<String, Vec<u8>>,
}

#[derive(Debug, Default)]
pub struct Record {
    pub calls: Vec<Call>,
    building: usize,
    /// The most builds running at once.
    pub most_builds: usize,
    /// Task containers that have started running.
    pub tasks_started: usize,
    /// Containers (id → name, job) and networks (name → job) that exist now.
    containers: HashMap<String, (String, String)>,
    networks: HashMap<String, String>,
    next_id: usize,
}

#[derive(Clone, Debug, Default)]
pub struct FakeEngine {
    script: Arc<Script>,
    record: Arc<Mutex<Record>>,
}

impl FakeEngine {
    /// Every build succeeds at once and every task exits 0, unless scripted otherwise.
    pub fn new() -> FakeEngine {
        FakeEngine::default()
    }

    pub fn build(mut self, image: &str, script: Build) -> FakeEngine {
        Arc::make_mut(&mut self.script)
            .builds
            .insert(image.to_owned(), script);
        self
    }

    pub fn task(mut self, task: &str, script: Task) -> FakeEngine {
        Arc::make_mut(&mut self.script)
            .tasks
            .insert(task.to_owned(), script);
        self
    }

    /// What copying `path` out of any container gives: this tar, in small chunks.
    pub fn archive(mut self, path: &str, tar: Vec<u8>) -> FakeEngine {
        Arc::make_mut(&mut self.script)
            .archives
            .insert(path.to_owned(), tar);
        self
    }

    pub fn build_time(mut self, time: Duration) -> FakeEngine {
        Arc::make_mut(&mut self.script).build_time = time;
        self
    }

    pub fn record(&self) -> MutexGuard<'_, Record> {
        self.record.lock().unwrap()
    }

    fn call(&self, call: Call) {
        self.record().calls.push(call);
    }

    /// The script of the task whose container has this name (`dockhand-JOB-STAGE-TASK`).
    fn task_script(&self, name: &str) -> Task {
        self.script
            .tasks
            .iter()
            .find(|(task, _)| name.ends_with(&format!("-{task}")))
            .map_or(Task::Exit(0, Duration::ZERO), |(_, script)| *script)
    }
}

impl Record {
    pub fn created_containers(&self) -> Vec<String> {
        self.calls
            .iter()
            .filter_map(|c| match c {
                Call::CreateContainer(id, _) => Some(id.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn created_networks(&self) -> Vec<String> {
        self.calls
            .iter()
            .filter_map(|c| match c {
                Call::CreateNetwork(name) => Some(name.clone()),
                _ => None,
            })
            .collect()
    }

    /// How often `call` was made.
    pub fn count(&self, call: &Call) -> usize {
        self.calls.iter().filter(|c| *c == call).count()
    }

    /// Where `call` was first made.
    pub fn position(&self, call: &Call) -> Option<usize> {
        self.calls.iter().position(|c| c == call)
    }

    /// Whether nothing created is left.
    pub fn is_clean(&self) -> bool {
        self.containers.is_empty() && self.networks.is_empty()
    }
}

impl ContainerEngine for FakeEngine {
    async fn build(
        &self,
        request: BuildRequest<'_>,
        _log: &StageLog,
        cancel: &CancellationToken,
    ) -> Result<BuildResult, DockerError> {
        let name = request.image.name.clone();
        self.call(Call::BuildStarted(name.clone()));
        {
            let mut record = self.record();
            record.building += 1;
            record.most_builds = record.most_builds.max(record.building);
        }
        let script = self.script.builds.get(&name).copied();
        let result = match script.unwrap_or(Build::Succeed) {
            Build::Panic => panic!("the build of {name} blew up"),
            Build::Hang => {
                cancel.cancelled().await;
                BuildResult::Cancelled
            }
            finishing => tokio::select! {
                () = cancel.cancelled() => BuildResult::Cancelled,
                () = tokio::time::sleep(self.script.build_time) => match finishing {
                    Build::Fail => BuildResult::Failed {
                        message: "RUN false returned 1".to_owned(),
                        step: Some("Step 2/2 : RUN false".to_owned()),
                        tail: Vec::new(),
                    },
                    _ => BuildResult::Built {
                        image_id: format!("sha256:{name}"),
                        key: format!("key-{name}"),
                        reason: "no earlier build".to_owned(),
                    },
                },
            },
        };
        self.record().building -= 1;
        self.call(Call::BuildEnded(name));
        Ok(result)
    }

    async fn create_network(
        &self,
        name: &str,
        _driver: &str,
        owner: &Owner,
    ) -> Result<(), DockerError> {
        let mut record = self.record();
        record.calls.push(Call::CreateNetwork(name.to_owned()));
        record.networks.insert(name.to_owned(), owner.job.clone());
        Ok(())
    }

    async fn remove_network(&self, name: &str) -> Result<(), DockerError> {
        let mut record = self.record();
        record.networks.remove(name);
        record.calls.push(Call::RemoveNetwork(name.to_owned()));
        Ok(())
    }

    async fn isolated_network(&self) -> Result<String, DockerError> {
        Ok("isolated".to_owned())
    }

    async fn create_container(
        &self,
        spec: &ContainerSpec,
        owner: &Owner,
    ) -> Result<String, DockerError> {
        if let Task::Refused = self.task_script(&spec.name) {
            return Err(DockerError::Api {
                action: format!("creating container {}", spec.name),
                cause: bollard::errors::Error::DockerResponseServerError {
                    status_code: 500,
                    message: "no space left on device".to_owned(),
                },
            });
        }
        let mut record = self.record();
        record.next_id += 1;
        let id = format!("c{}", record.next_id);
        record
            .calls
            .push(Call::CreateContainer(id.clone(), spec.name.clone()));
        record
            .containers
            .insert(id.clone(), (spec.name.clone(), owner.job.clone()));
        Ok(id)
    }

    async fn attach_and_start(&self, _id: &str) -> Result<Output, DockerError> {
        Ok(futures_util::stream::empty().boxed())
    }

    async fn run_attached(
        &self,
        id: &str,
        _output: Output,
        _log: &StageLog,
        cancel: &CancellationToken,
        deadline: Option<Instant>,
    ) -> Result<ExitStatus, DockerError> {
        let script = {
            let mut record = self.record();
            record.tasks_started += 1;
            let name = record.containers.get(id).map(|(name, _)| name.clone());
            self.task_script(&name.unwrap_or_default())
        };
        let ends = async {
            match script {
                Task::Exit(code, after) => {
                    tokio::time::sleep(after).await;
                    code
                }
                Task::Hang => std::future::pending().await,
                Task::Panic => panic!("the task in {id} blew up"),
                Task::Refused => unreachable!("a refused container never starts"),
            }
        };
        let deadline_reached = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        Ok(tokio::select! {
            () = cancel.cancelled() => ExitStatus::Cancelled,
            () = deadline_reached => ExitStatus::TimedOut,
            code = ends => ExitStatus::Exited(code),
        })
    }

    async fn wait_ready(
        &self,
        _id: &str,
        _network: &str,
        _condition: &WaitCondition,
        _cancel: &CancellationToken,
    ) -> Result<Readiness, DockerError> {
        Ok(Readiness::Ready)
    }

    async fn archive(&self, _id: &str, path: &str) -> Result<Option<Archive>, DockerError> {
        Ok(self.script.archives.get(path).map(|tar| {
            let chunks: Vec<Result<Bytes, DockerError>> = tar
                .chunks(700)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            futures_util::stream::iter(chunks).boxed()
        }))
    }

    async fn working_dir(&self, _id: &str) -> Result<String, DockerError> {
        Ok("/work".into())
    }

    async fn remove_container(&self, id: &str) -> Result<(), DockerError> {
        let mut record = self.record();
        record.containers.remove(id);
        record.calls.push(Call::RemoveContainer(id.to_owned()));
        Ok(())
    }

    async fn running_writable_binds(&self) -> Result<Vec<(String, PathBuf)>, DockerError> {
        Ok(Vec::new())
    }

    async fn pause(&self, _id: &str) -> Result<Pause, DockerError> {
        Ok(Pause::Paused)
    }

    async fn unpause(&self, _id: &str) -> Result<(), DockerError> {
        Ok(())
    }

    async fn remove_labelled(&self, label: &str, value: &str) -> Result<Leftovers, DockerError> {
        assert_eq!(label, labels::JOB, "the fake sweeps by job only");
        let mut record = self.record();
        let containers: Vec<String> = record
            .containers
            .iter()
            .filter(|(_, (_, job))| job == value)
            .map(|(id, _)| id.clone())
            .collect();
        let networks: Vec<String> = record
            .networks
            .iter()
            .filter(|(_, job)| *job == value)
            .map(|(name, _)| name.clone())
            .collect();
        for id in &containers {
            record.containers.remove(id);
            record.calls.push(Call::RemoveContainer(id.clone()));
        }
        for name in &networks {
            record.networks.remove(name);
            record.calls.push(Call::RemoveNetwork(name.clone()));
        }
        record.calls.push(Call::Sweep(value.to_owned()));
        Ok(Leftovers {
            containers: containers.len(),
            networks: networks.len(),
        })
    }
}
