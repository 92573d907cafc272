//! Wait conditions: when a dependency container is ready. Nothing here needs a shell or
//! curl in the image: ports are tried from the agent, files are read through the archive
//! API, commands are `exec` of a plain argv.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{DockerError, Engine};
use crate::collector::WaitCondition;

/// How a wait ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// The container stopped first (with its exit code).
    Died(Option<i64>),
    TimedOut {
        pending: String,
    },
    Cancelled,
}

const FILE_LIMIT: usize = 1024 * 1024;

/// A timeout too long for the clock to add stands for waiting as long as the job may.
const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

impl Engine {
    /// Polls `condition` against container `id` until every check passes, the container
    /// dies, the condition's timeout passes (a check still running then, such as a
    /// `command` that never exits, is abandoned), or `cancel` fires.
    pub async fn wait_ready(
        &self,
        id: &str,
        network: &str,
        condition: &WaitCondition,
        cancel: &CancellationToken,
    ) -> Result<Readiness, DockerError> {
        let start = Instant::now();
        let deadline = start
            .checked_add(condition.timeout)
            .unwrap_or(start + NEVER);
        let mut last_pending = None;
        loop {
            let (running, exit_code) = self.state(id).await?;
            if !running {
                return Ok(Readiness::Died(exit_code));
            }
            let check = self.first_pending(id, network, condition);
            let pending = tokio::select! {
                () = cancel.cancelled() => return Ok(Readiness::Cancelled),
                checked = tokio::time::timeout_at(deadline, check) => match checked {
                    Ok(pending) => pending?,
                    Err(_) => {
                        let pending = last_pending
                            .unwrap_or_else(|| "a check was still running".to_owned());
                        return Ok(Readiness::TimedOut { pending });
                    }
                },
            };
            let Some(pending) = pending else {
                return Ok(Readiness::Ready);
            };
            last_pending = Some(pending.clone());
            let now = Instant::now();
            if now >= deadline {
                return Ok(Readiness::TimedOut { pending });
            }
            let pause = condition
                .wait_between_attempts
                .min(deadline - now)
                .max(Duration::from_millis(10));
            tokio::select! {
                () = cancel.cancelled() => return Ok(Readiness::Cancelled),
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// The first check that does not pass yet, described.
    async fn first_pending(
        &self,
        id: &str,
        network: &str,
        condition: &WaitCondition,
    ) -> Result<Option<String>, DockerError> {
        if !condition.port_open.is_empty() {
            let address = self.address(id, network).await?;
            for port in &condition.port_open {
                let open = match address {
                    Some(ip) => matches!(
                        tokio::time::timeout(
                            Duration::from_secs(1),
                            tokio::net::TcpStream::connect((ip, *port))
                        )
                        .await,
                        Ok(Ok(_))
                    ),
                    None => false,
                };
                if !open {
                    return Ok(Some(format!("port {port} is not open")));
                }
            }
        }
        for path in &condition.file_exists {
            if !self.path_exists(id, path).await? {
                return Ok(Some(format!("{path} does not exist")));
            }
        }
        for (path, want) in &condition.file_value {
            let content = self.read_file(id, path, FILE_LIMIT).await?;
            if content
                .as_deref()
                .map(|c| String::from_utf8_lossy(c).trim().to_owned())
                != Some(want.trim().to_owned())
            {
                return Ok(Some(format!("{path} does not hold {want:?}")));
            }
        }
        for (path, pattern) in &condition.greps {
            let regex = regex::Regex::new(pattern).map_err(|e| DockerError::Api {
                action: format!("wait condition greps {path}"),
                cause: bollard::errors::Error::DockerStreamError {
                    error: e.to_string(),
                },
            })?;
            let content = self.read_file(id, path, FILE_LIMIT).await?;
            if !content.is_some_and(|c| regex.is_match(&String::from_utf8_lossy(&c))) {
                return Ok(Some(format!("{path} does not match /{pattern}/")));
            }
        }
        for argv in &condition.command {
            let code = self.exec(id, argv).await?;
            if code != 0 {
                return Ok(Some(format!("{} exited with {code}", argv.join(" "))));
            }
        }
        Ok(None)
    }
}
