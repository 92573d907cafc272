//! The agent's side of the job-server protocol: one call per method, and the retry rule
//! every caller shares (exponential backoff with jitter, `Retry-After` honoured; 4xx other
//! than 408/409/416/429 are final for that call).

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{url}: {source}")]
    Network {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered {status}: {body}")]
    Refused {
        url: String,
        status: StatusCode,
        body: String,
    },
    #[error("cancelled")]
    Cancelled,
}

impl ClientError {
    /// Whether waiting and calling again may succeed.
    pub fn transient(&self) -> bool {
        match self {
            ClientError::Network { .. } => true,
            ClientError::Refused { status, .. } => {
                status.is_server_error()
                    || matches!(
                        *status,
                        StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS
                    )
            }
            ClientError::Cancelled => false,
        }
    }

    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A status and its JSON body (`Null` when there is none).
pub type Answer = (StatusCode, Value);

#[derive(Clone, Debug)]
pub struct ServerClient {
    http: reqwest::Client,
    pub url: String,
}

/// The first retry waits this long; each further one doubles it, up to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

impl ServerClient {
    pub fn new(url: &str) -> ServerClient {
        ServerClient {
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                // Below the server's header timeout (10 s by default), so a pooled
                // connection is not reused just as the server closes it for idling.
                .pool_idle_timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            url: url.trim_end_matches('/').to_owned(),
        }
    }

    /// One call. Statuses in `expected` are answers; any other is an error.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Body,
        expected: &[StatusCode],
        timeout: Duration,
    ) -> Result<Answer, ClientError> {
        let url = format!("{}{path}", self.url);
        let mut request = self
            .http
            .request(method, &url)
            .bearer_auth(token)
            .timeout(timeout);
        request = match body {
            Body::None => request,
            Body::Json(value) => request.json(&value),
            Body::Bytes(bytes) => request.body(bytes),
        };
        let network = |source| ClientError::Network {
            url: url.clone(),
            source,
        };
        let response = request.send().await.map_err(network)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let text = response.text().await.map_err(network)?;
        if expected.contains(&status) {
            return Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)));
        }
        let mut body = text.chars().take(500).collect::<String>();
        if let Some(seconds) = retry_after {
            body = format!("retry after {seconds}s: {body}");
        }
        Err(ClientError::Refused { url, status, body })
    }

    /// Calls until an expected answer, a final refusal, or `cancel`; transient failures
    /// wait with backoff and jitter (or as long as `Retry-After` asks).
    pub async fn call_until_answered(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Body,
        expected: &[StatusCode],
        cancel: &CancellationToken,
    ) -> Result<Answer, ClientError> {
        let mut delay = BACKOFF_START;
        loop {
            let attempt = self.call(
                method.clone(),
                path,
                token,
                body.clone(),
                expected,
                Duration::from_secs(60),
            );
            let error = tokio::select! {
                () = cancel.cancelled() => return Err(ClientError::Cancelled),
                result = attempt => match result {
                    Ok(answer) => return Ok(answer),
                    Err(e) if e.transient() => e,
                    Err(e) => return Err(e),
                },
            };
            let wait = retry_after(&error).unwrap_or_else(|| jittered(delay));
            tracing::warn!("{error}; retrying in {wait:?}");
            tokio::select! {
                () = cancel.cancelled() => return Err(ClientError::Cancelled),
                () = tokio::time::sleep(wait) => {}
            }
            delay = (delay * 2).min(BACKOFF_MAX);
        }
    }
}

#[derive(Clone, Debug)]
pub enum Body {
    None,
    Json(Value),
    Bytes(Vec<u8>),
}

fn retry_after(error: &ClientError) -> Option<Duration> {
    let ClientError::Refused { body, .. } = error else {
        return None;
    };
    let seconds = body.strip_prefix("retry after ")?.split('s').next()?;
    seconds.parse().ok().map(Duration::from_secs)
}

/// Between half and all of `delay`, so agents that lost the server together do not come
/// back together.
pub fn jittered(delay: Duration) -> Duration {
    delay.mul_f64(0.5 + crate::util::random_fraction() / 2.0)
}
