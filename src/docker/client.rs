//! Connecting to the engine: `DOCKER_HOST` or the local socket, with the API version
//! negotiated (Debian's engine speaks 1.41; no version may be assumed).

use bollard::Docker;

use super::DockerError;

/// A connected engine.
#[derive(Clone, Debug)]
pub struct Engine {
    pub(super) docker: Docker,
    /// Where it was reached, for error messages.
    pub address: String,
}

impl Engine {
    /// Connects to `host` (a `unix://`, `tcp://` or `http://` address), or to `DOCKER_HOST`,
    /// or to the local socket; then negotiates the API version and pings.
    pub async fn connect(host: Option<&str>) -> Result<Engine, DockerError> {
        let address = host
            .map(str::to_owned)
            .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| "unix:///var/run/docker.sock".to_owned());
        let unreachable = |cause: String| DockerError::Unreachable {
            address: address.clone(),
            cause,
        };
        let docker = Docker::connect_with_host(&address).map_err(|e| unreachable(e.to_string()))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        docker
            .ping()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tracing::debug!(%address, api = %docker.client_version(), "connected to the Docker engine");
        Ok(Engine { docker, address })
    }

    /// Whether the engine answers now (an agent's `/readyz`).
    pub async fn ping(&self) -> Result<(), DockerError> {
        self.docker
            .ping()
            .await
            .map(drop)
            .map_err(|e| DockerError::Unreachable {
                address: self.address.clone(),
                cause: e.to_string(),
            })
    }
}
