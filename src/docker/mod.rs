//! Everything that talks to the Docker engine (the only module that uses bollard):
//! connecting, builds, containers and networks, wait conditions, cleanup. What a build
//! needs that the engine does not see (contexts, build keys, caches) is in
//! [`crate::build`].

mod build;
mod client;
mod container;
pub mod labels;
mod wait;

pub use wait::Readiness;

pub use build::{BuildRequest, BuildResult};
pub use client::Engine;
pub use container::{Archive, Chunk, ContainerSpec, ExitStatus, Leftovers, Pause};
pub use labels::Owner;

/// Infrastructure failures: the engine could not be reached or refused a request. A
/// failing build step or a task's exit code is never one of these.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error(
        "no Docker engine answers at {address}: {cause} (is dockerd running? set DOCKER_HOST to reach another engine)"
    )]
    Unreachable { address: String, cause: String },
    #[error("{action}: {cause}")]
    Api {
        action: String,
        cause: bollard::errors::Error,
    },
    #[error("a thread holding shared build state panicked")]
    Poisoned,
    #[error("a worker thread failed: {0}")]
    Thread(String),
    #[error(
        "container {0} stayed paused by another dockhand process; a bind mount it could change cannot be checked"
    )]
    PausedElsewhere(String),
    #[error("the job's network could not be created: {0}")]
    JobNetwork(String),
}

impl DockerError {
    fn api(action: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> DockerError {
        let action = action.into();
        move |cause| {
            crate::metrics::agent().docker_errors.inc();
            DockerError::Api { action, cause }
        }
    }
}

/// Whether an API error is the engine saying "no such object".
fn is_not_found(error: &bollard::errors::Error) -> bool {
    matches!(
        error,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}
