//! Posting a commit status to GitHub (`POST {api}/repos/{owner}/{repo}/statuses/{sha}`,
//! bearer token, GitHub's media type and API version) or Gitea (the same path under
//! `/api/v1`, `token` authorization), and what each answer means for the outbox.

use std::time::Duration;

use reqwest::StatusCode;

use super::status::CommitStatus;
use crate::protocol::ForgeKind;
use crate::server::settings::Repository;

/// One attempt's deadline: a forge that hangs costs this, not a stuck sender.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// How an attempt ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    Delivered,
    /// Worth another try later: the network, a timeout, 429 or a 5xx.
    Retry(String),
    /// Never going to work as it is (401, 403, 404, 422): the answer's status and reason.
    Refused(u16, String),
}

/// The client every delivery shares.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(ATTEMPT_TIMEOUT)
        .user_agent(concat!("dockhand/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

pub async fn post_status(
    http: &reqwest::Client,
    repository: &Repository,
    status: &CommitStatus,
) -> Attempt {
    let (Some(api), Some(token)) = (repository.api_url(), &repository.token) else {
        return Attempt::Refused(0, "no API URL or token".to_owned());
    };
    let url = format!("{api}/repos/{}/statuses/{}", repository.name, status.sha);
    let body = serde_json::json!({
        "state": status.state,
        "target_url": status.target_url,
        "description": status.description,
        "context": status.context,
    });
    let request = match repository.forge {
        ForgeKind::Github => http
            .post(&url)
            .bearer_auth(&token.0)
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28"),
        ForgeKind::Gitea => http
            .post(&url)
            .header("Authorization", format!("token {}", token.0))
            .header("Accept", "application/json"),
    };
    let answer = match request.json(&body).send().await {
        Ok(answer) => answer,
        Err(e) if e.is_timeout() => {
            return Attempt::Retry(format!("no answer within {ATTEMPT_TIMEOUT:?}"));
        }
        Err(e) => return Attempt::Retry(crate::util::error_chain(&e)),
    };
    let code = answer.status();
    if code.is_success() {
        return Attempt::Delivered;
    }
    let reason = answer.text().await.unwrap_or_default();
    let reason = serde_json::from_str::<serde_json::Value>(&reason)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or(reason);
    let reason: String = reason.chars().take(200).collect();
    if code == StatusCode::TOO_MANY_REQUESTS || code.is_server_error() {
        Attempt::Retry(format!("HTTP {code}: {reason}"))
    } else {
        Attempt::Refused(code.as_u16(), reason)
    }
}
