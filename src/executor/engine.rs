//! What the executor asks of a container engine, as a trait: the bollard-backed
//! [`Engine`] in production, a scripted fake in the executor's unit tests, so the
//! scheduler, verdicts, cancellation, timeouts and cleanup are tested without Docker.

use std::future::Future;
use std::path::PathBuf;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::collector::WaitCondition;
use crate::docker::{
    Archive, BuildRequest, BuildResult, Chunk, ContainerSpec, DockerError, Engine, ExitStatus,
    Leftovers, Owner, Pause, Readiness,
};
use crate::events::StageLog;

/// A started container's output, as the engine streams it.
pub type Output = BoxStream<'static, Chunk>;

/// The engine operations a job needs: builds, the containers and networks of run stages,
/// readiness waits, the pauses of the mount gate, and the labelled sweep that removes
/// whatever a job left. Errors are infrastructure failures ([`DockerError`]); a failing
/// build or a task's exit code is a result.
pub trait ContainerEngine: Clone + Send + Sync + 'static {
    /// Builds `request.image` (or finds it up to date), its output to `log`, until done or
    /// `cancel` fires.
    fn build(
        &self,
        request: BuildRequest<'_>,
        log: &StageLog,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<BuildResult, DockerError>> + Send;

    fn create_network(
        &self,
        name: &str,
        driver: &str,
        owner: &Owner,
    ) -> impl Future<Output = Result<(), DockerError>> + Send;

    /// Removes a network; one already gone is fine.
    fn remove_network(&self, name: &str) -> impl Future<Output = Result<(), DockerError>> + Send;

    /// The shared network of tasks without dependency containers; no job owns it.
    fn isolated_network(&self) -> impl Future<Output = Result<String, DockerError>> + Send;

    /// Creates a container labelled with `owner`; returns its id.
    fn create_container(
        &self,
        spec: &ContainerSpec,
        owner: &Owner,
    ) -> impl Future<Output = Result<String, DockerError>> + Send;

    /// Attaches to a created container's output, then starts it.
    fn attach_and_start(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Output, DockerError>> + Send;

    /// Streams a started container's output to `log` until it exits; killed on `cancel`
    /// or at `deadline`.
    fn run_attached(
        &self,
        id: &str,
        output: Output,
        log: &StageLog,
        cancel: &CancellationToken,
        deadline: Option<Instant>,
    ) -> impl Future<Output = Result<ExitStatus, DockerError>> + Send;

    /// Waits until a dependency container meets `condition`, dies, times out or `cancel`
    /// fires.
    fn wait_ready(
        &self,
        id: &str,
        network: &str,
        condition: &WaitCondition,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<Readiness, DockerError>> + Send;

    /// A tar stream of an absolute `path` in a container that may have exited; `None` when
    /// the path is missing. Links come as links, never followed.
    fn archive(
        &self,
        id: &str,
        path: &str,
    ) -> impl Future<Output = Result<Option<Archive>, DockerError>> + Send;

    /// The directory relative paths in the container start from.
    fn working_dir(&self, id: &str) -> impl Future<Output = Result<String, DockerError>> + Send;

    /// Removes a container and its anonymous volumes; one already gone is fine.
    fn remove_container(&self, id: &str) -> impl Future<Output = Result<(), DockerError>> + Send;

    /// Running or paused dockhand containers' read-write bind mounts, as (id, host path).
    fn running_writable_binds(
        &self,
    ) -> impl Future<Output = Result<Vec<(String, PathBuf)>, DockerError>> + Send;

    fn pause(&self, id: &str) -> impl Future<Output = Result<Pause, DockerError>> + Send;

    fn unpause(&self, id: &str) -> impl Future<Output = Result<(), DockerError>> + Send;

    /// Removes every container and network labelled `label=value`.
    fn remove_labelled(
        &self,
        label: &str,
        value: &str,
    ) -> impl Future<Output = Result<Leftovers, DockerError>> + Send;
}

impl ContainerEngine for Engine {
    async fn build(
        &self,
        request: BuildRequest<'_>,
        log: &StageLog,
        cancel: &CancellationToken,
    ) -> Result<BuildResult, DockerError> {
        Engine::build(self, request, log, cancel).await
    }

    async fn create_network(
        &self,
        name: &str,
        driver: &str,
        owner: &Owner,
    ) -> Result<(), DockerError> {
        Engine::create_network(self, name, driver, owner).await
    }

    async fn remove_network(&self, name: &str) -> Result<(), DockerError> {
        Engine::remove_network(self, name).await
    }

    async fn isolated_network(&self) -> Result<String, DockerError> {
        Engine::isolated_network(self).await
    }

    async fn create_container(
        &self,
        spec: &ContainerSpec,
        owner: &Owner,
    ) -> Result<String, DockerError> {
        Engine::create_container(self, spec, owner).await
    }

    async fn attach_and_start(&self, id: &str) -> Result<Output, DockerError> {
        Ok(Engine::attach_and_start(self, id).await?.boxed())
    }

    async fn run_attached(
        &self,
        id: &str,
        output: Output,
        log: &StageLog,
        cancel: &CancellationToken,
        deadline: Option<Instant>,
    ) -> Result<ExitStatus, DockerError> {
        Engine::run_attached(self, id, output, log, cancel, deadline).await
    }

    async fn wait_ready(
        &self,
        id: &str,
        network: &str,
        condition: &WaitCondition,
        cancel: &CancellationToken,
    ) -> Result<Readiness, DockerError> {
        Engine::wait_ready(self, id, network, condition, cancel).await
    }

    async fn archive(&self, id: &str, path: &str) -> Result<Option<Archive>, DockerError> {
        Engine::archive(self, id, path).await
    }

    async fn working_dir(&self, id: &str) -> Result<String, DockerError> {
        Engine::working_dir(self, id).await
    }

    async fn remove_container(&self, id: &str) -> Result<(), DockerError> {
        Engine::remove_container(self, id).await
    }

    async fn running_writable_binds(&self) -> Result<Vec<(String, PathBuf)>, DockerError> {
        Engine::running_writable_binds(self).await
    }

    async fn pause(&self, id: &str) -> Result<Pause, DockerError> {
        Engine::pause(self, id).await
    }

    async fn unpause(&self, id: &str) -> Result<(), DockerError> {
        Engine::unpause(self, id).await
    }

    async fn remove_labelled(&self, label: &str, value: &str) -> Result<Leftovers, DockerError> {
        Engine::remove_labelled(self, label, value).await
    }
}
