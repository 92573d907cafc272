//! The one HTTP client for the job server's API, for the agent and the command line alike:
//! one call per method, and the retry rule every caller shares (exponential backoff with
//! jitter, `Retry-After` honoured; 4xx other than 408/409/416/429 are final for that call).
//! A call the server does not dedupe is retried only when the server cannot have acted on
//! it ([`Retry::Unsent`]).

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{url}: {reason}")]
    Network {
        url: String,
        reason: String,
        /// No connection was made: the server never saw the request.
        unsent: bool,
    },
    #[error("{url} answered {status}: {}", excerpt(body))]
    Refused {
        url: String,
        status: StatusCode,
        /// The whole body (up to [`REFUSAL_MAX`]): a message a caller shows, JSON it reads.
        body: String,
        /// How long the server asked callers to wait (`Retry-After`, in seconds).
        retry_after: Option<Duration>,
    },
    #[error("{url}: the answer is not understood: {reason}")]
    Answer { url: String, reason: String },
    #[error("cancelled")]
    Cancelled,
}

impl ClientError {
    /// Whether waiting and calling again may succeed, and is safe under `retry`.
    pub fn transient(&self, retry: Retry) -> bool {
        match (self, retry) {
            (ClientError::Network { .. }, Retry::Transient) => true,
            (ClientError::Network { unsent, .. }, Retry::Unsent) => *unsent,
            (ClientError::Refused { status, .. }, Retry::Transient) => {
                status.is_server_error()
                    || matches!(
                        *status,
                        StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS
                    )
            }
            (ClientError::Refused { status, .. }, Retry::Unsent) => {
                *status == StatusCode::TOO_MANY_REQUESTS
            }
            (ClientError::Answer { .. } | ClientError::Cancelled, _) => false,
        }
    }

    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The most of a refusal's body kept: enough for any answer of the API, not all of some
/// proxy's error page.
pub const REFUSAL_MAX: usize = 64 * 1024;

/// A refusal's body as a log line shows it.
fn excerpt(body: &str) -> String {
    body.chars().take(500).collect()
}

/// Which failures of a call may be retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Any transient one: the call is idempotent, or the server dedupes it (accept by
    /// offer, log by offset, events by sequence number).
    Transient,
    /// Only those the server cannot have acted on: no connection, `429`.
    Unsent,
}

/// A status the caller expected, and its body.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub url: String,
    pub body: Bytes,
}

impl Answer {
    /// The body as the protocol type `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        serde_json::from_slice(&self.body).map_err(|e| ClientError::Answer {
            url: self.url.clone(),
            reason: e.to_string(),
        })
    }
}

#[derive(Clone, Debug)]
pub enum Body {
    None,
    Json(Bytes),
    Bytes(Bytes),
}

impl Body {
    pub fn json(value: &impl Serialize) -> Body {
        Body::Json(serde_json::to_vec(value).unwrap_or_default().into())
    }
}

#[derive(Clone, Debug)]
pub struct ServerClient {
    http: reqwest::Client,
    /// The first (or only) replica: what the client is known by.
    pub url: String,
    /// Every replica, `url` first; calls go to the one at `current` and move to the next
    /// when it cannot be reached, so a dead replica is left and a restarted one comes back
    /// in turn.
    urls: Vec<String>,
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Calls made before a transient failure is given up on; `None`: until answered or
    /// cancelled (an agent), a number: a person is waiting (the command line).
    attempts: Option<u32>,
}

/// The first retry waits this long; each further one doubles it, up to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long one call of [`ServerClient::call_until_answered`] may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

impl ServerClient {
    pub fn new(url: &str) -> ServerClient {
        ServerClient::over(&[url.to_owned()])
    }

    /// A client of several replicas sharing one database.
    pub fn over(urls: &[String]) -> ServerClient {
        let urls: Vec<String> = urls
            .iter()
            .map(|u| u.trim_end_matches('/').to_owned())
            .collect();
        ServerClient {
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                // Below the server's header timeout (10 s by default), so a pooled
                // connection is not reused just as the server closes it for idling.
                .pool_idle_timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            url: urls.first().cloned().unwrap_or_default(),
            urls,
            current: Default::default(),
            attempts: None,
        }
    }

    /// The client of the server a job came from, all its replicas.
    pub fn for_job(job: &crate::job::RemoteJob) -> ServerClient {
        let mut urls = vec![job.url.clone()];
        urls.extend(job.other_urls.iter().cloned());
        ServerClient::over(&urls)
    }

    /// Gives up on a call after `attempts` transient failures.
    pub fn giving_up_after(mut self, attempts: u32) -> ServerClient {
        self.attempts = Some(attempts.max(1));
        self
    }

    /// Sends one request; statuses in `expected` are answers (their body still unread),
    /// any other is an error. No `timeout`: as long as the body streams.
    async fn send(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Body,
        expected: &[StatusCode],
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, ClientError> {
        use std::sync::atomic::Ordering;
        let at = self.current.load(Ordering::Relaxed);
        let base = self
            .urls
            .get(at % self.urls.len().max(1))
            .unwrap_or(&self.url);
        let url = format!("{base}{path}");
        let mut request = self.http.request(method, &url).bearer_auth(token);
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        request = match body {
            Body::None => request,
            Body::Json(json) => request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(json),
            Body::Bytes(bytes) => request.body(bytes),
        };
        let response = request.send().await.map_err(|e| {
            if e.is_connect() && self.urls.len() > 1 {
                // Unless another call moved on already.
                let next = (at + 1) % self.urls.len();
                let _ =
                    self.current
                        .compare_exchange(at, next, Ordering::Relaxed, Ordering::Relaxed);
                tracing::warn!("{base} cannot be reached; calls go to {}", self.urls[next]);
            }
            network(&url, &e)
        })?;
        let status = response.status();
        if expected.contains(&status) {
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = response.text().await.map_err(|e| network(&url, &e))?;
        Err(ClientError::Refused {
            url,
            status,
            body: text.chars().take(REFUSAL_MAX).collect(),
            retry_after,
        })
    }

    /// One call, read whole within `timeout`.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Body,
        expected: &[StatusCode],
        timeout: Duration,
    ) -> Result<Answer, ClientError> {
        let response = self
            .send(method, path, token, body, expected, Some(timeout))
            .await?;
        let (status, url) = (response.status(), response.url().to_string());
        let body = response.bytes().await.map_err(|e| network(&url, &e))?;
        Ok(Answer { status, url, body })
    }

    /// Calls until an expected answer, a final refusal, `cancel`, or the client's attempts
    /// are used up; failures that `retry` allows wait with backoff and jitter (or as long
    /// as `Retry-After` asks).
    #[allow(clippy::too_many_arguments)]
    pub async fn call_until_answered(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Body,
        expected: &[StatusCode],
        retry: Retry,
        cancel: &CancellationToken,
    ) -> Result<Answer, ClientError> {
        self.retrying(retry, cancel, || {
            self.call(
                method.clone(),
                path,
                token,
                body.clone(),
                expected,
                CALL_TIMEOUT,
            )
        })
        .await
    }

    /// As [`ServerClient::call_until_answered`], for an answer read as it streams (a
    /// followed log): the response is returned once its status is expected.
    pub async fn open(
        &self,
        path: &str,
        token: &str,
        expected: &[StatusCode],
        cancel: &CancellationToken,
    ) -> Result<reqwest::Response, ClientError> {
        self.retrying(Retry::Transient, cancel, || {
            self.send(Method::GET, path, token, Body::None, expected, None)
        })
        .await
    }

    async fn retrying<T, F, Fut>(
        &self,
        retry: Retry,
        cancel: &CancellationToken,
        mut attempt: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let mut delay = BACKOFF_START;
        let mut failures = 0;
        loop {
            let error = tokio::select! {
                () = cancel.cancelled() => return Err(ClientError::Cancelled),
                result = attempt() => match result {
                    Ok(answer) => return Ok(answer),
                    Err(e) if e.transient(retry) => e,
                    Err(e) => return Err(e),
                },
            };
            failures += 1;
            if self.attempts.is_some_and(|n| failures >= n) {
                return Err(error);
            }
            let wait = match &error {
                ClientError::Refused {
                    retry_after: Some(wait),
                    ..
                } => (*wait).min(BACKOFF_MAX),
                _ => jittered(delay),
            };
            tracing::warn!("{error}; retrying in {wait:?}");
            tokio::select! {
                () = cancel.cancelled() => return Err(ClientError::Cancelled),
                () = tokio::time::sleep(wait) => {}
            }
            delay = (delay * 2).min(BACKOFF_MAX);
        }
    }
}

/// A failed exchange, with the causes reqwest keeps behind its own terse message.
fn network(url: &str, error: &reqwest::Error) -> ClientError {
    ClientError::Network {
        url: url.to_owned(),
        reason: crate::util::error_chain(error),
        unsent: error.is_connect(),
    }
}

/// Between half and all of `delay`, so agents that lost the server together do not come
/// back together.
pub fn jittered(delay: Duration) -> Duration {
    delay.mul_f64(0.5 + crate::util::random_fraction() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_call_not_deduped_is_retried_only_when_it_was_never_sent() {
        let refused = |status| ClientError::Refused {
            url: String::new(),
            status,
            body: String::new(),
            retry_after: None,
        };
        let dropped = |unsent| ClientError::Network {
            url: String::new(),
            reason: String::new(),
            unsent,
        };
        for (error, transient, unsent) in [
            (refused(StatusCode::SERVICE_UNAVAILABLE), true, false),
            (refused(StatusCode::TOO_MANY_REQUESTS), true, true),
            (refused(StatusCode::CONFLICT), false, false),
            (dropped(true), true, true),
            (dropped(false), true, false),
        ] {
            assert_eq!(error.transient(Retry::Transient), transient, "{error:?}");
            assert_eq!(error.transient(Retry::Unsent), unsent, "{error:?}");
        }
    }

    /// A server on loopback that answers each connection with the next of `answers` (a
    /// status line and headers, and a body); returns its URL and the requests it saw.
    async fn canned(
        answers: Vec<(&'static str, &'static str)>,
    ) -> (String, tokio::task::JoinHandle<Vec<String>>) {
        canned_at("127.0.0.1:0", answers).await
    }

    /// As [`canned`], on `address`.
    async fn canned_at(
        address: &str,
        answers: Vec<(&'static str, &'static str)>,
    ) -> (String, tokio::task::JoinHandle<Vec<String>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind(address).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            for (head, body) in answers {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    let read = stream.read(&mut buffer).await.unwrap();
                    if read == 0 {
                        break;
                    }
                    request.extend_from_slice(&buffer[..read]);
                }
                seen.push(
                    String::from_utf8_lossy(&request)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_owned(),
                );
                let answer = format!(
                    "{head}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(answer.as_bytes()).await.unwrap();
            }
            seen
        });
        (url, server)
    }

    #[tokio::test]
    async fn a_503_is_retried_for_an_idempotent_call_and_retry_after_is_a_typed_field() {
        let (url, server) = canned(vec![
            ("HTTP/1.1 503 Service Unavailable\r\nRetry-After: 0", ""),
            ("HTTP/1.1 200 OK", r#"{"job_id": "job-1"}"#),
        ])
        .await;
        let client = ServerClient::new(&url).giving_up_after(3);
        let cancel = CancellationToken::new();
        let answer = client
            .call_until_answered(
                Method::GET,
                "/api/v1/jobs/job-1",
                "t",
                Body::None,
                &[StatusCode::OK],
                Retry::Transient,
                &cancel,
            )
            .await
            .unwrap();
        let submitted: crate::protocol::Submitted = answer.json().unwrap();
        assert_eq!(submitted.job_id, "job-1");
        assert_eq!(server.await.unwrap().len(), 2);

        let (url, server) = canned(vec![(
            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7",
            "busy",
        )])
        .await;
        let client = ServerClient::new(&url).giving_up_after(3);
        let error = client
            .call_until_answered(
                Method::POST,
                "/api/v1/jobs",
                "t",
                Body::json(&serde_json::json!({})),
                &[StatusCode::CREATED],
                Retry::Unsent,
                &cancel,
            )
            .await
            .unwrap_err();
        let ClientError::Refused {
            status,
            body,
            retry_after,
            ..
        } = error
        else {
            panic!("{error}");
        };
        assert_eq!(
            (status, body.as_str(), retry_after),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                Some(Duration::from_secs(7))
            )
        );
        assert_eq!(
            server.await.unwrap(),
            ["POST /api/v1/jobs HTTP/1.1"],
            "a submission the server may have acted on is not sent again"
        );
    }

    #[tokio::test]
    async fn retry_after_is_honoured_and_attempts_run_out() {
        let client = ServerClient::new("http://127.0.0.1:9").giving_up_after(3);
        let mut calls = 0;
        let started = tokio::time::Instant::now();
        let error = client
            .retrying(Retry::Transient, &CancellationToken::new(), || {
                calls += 1;
                async {
                    Err::<(), _>(ClientError::Refused {
                        url: "u".into(),
                        status: StatusCode::TOO_MANY_REQUESTS,
                        body: String::new(),
                        retry_after: Some(Duration::from_millis(20)),
                    })
                }
            })
            .await
            .unwrap_err();
        assert_eq!(calls, 3);
        assert_eq!(error.status(), Some(StatusCode::TOO_MANY_REQUESTS));
        assert!(started.elapsed() >= Duration::from_millis(40));
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "not the backoff"
        );
    }

    #[tokio::test]
    async fn calls_move_to_the_next_replica_that_answers_and_come_back() {
        let ok = ("HTTP/1.1 200 OK", "{}");
        let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let gone_address = gone.local_addr().unwrap().to_string();
        drop(gone);
        let (live, served) = canned(vec![ok, ok]).await;
        let client = ServerClient::over(&[format!("http://{gone_address}/"), live.clone()]);
        let cancel = CancellationToken::new();
        let call = |path: &'static str| {
            let (client, cancel) = (client.clone(), cancel.clone());
            async move {
                client
                    .call_until_answered(
                        Method::GET,
                        path,
                        "t",
                        Body::None,
                        &[StatusCode::OK],
                        Retry::Transient,
                        &cancel,
                    )
                    .await
                    .unwrap()
                    .url
            }
        };
        assert_eq!(call("/one").await, format!("{live}/one"));
        assert_eq!(call("/two").await, format!("{live}/two"), "it stays there");
        assert_eq!(served.await.unwrap().len(), 2);
        // The second replica is gone now, and the first is back.
        let (back, _) = canned_at(&gone_address, vec![ok]).await;
        assert_eq!(call("/three").await, format!("{back}/three"));
        assert_eq!(client.url, format!("http://{gone_address}"));
    }
}
