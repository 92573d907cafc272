//! Failure and recovery notifications: where they go (`[[notify]]`), whether a finished
//! job deserves one, what it says (a JSON summary or a Slack incoming-webhook body) and its
//! delivery, retried in the background. Shared by the agent and the job server, so both
//! say the same about a job.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// When a target hears about a finished job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyOn {
    /// Every job that did not succeed (failed, timed out, error).
    Failure,
    /// A success right after a failure of the same stream.
    Recovery,
    /// Every finished job.
    Always,
}

impl NotifyOn {
    /// `["failure", "recovery"]`: what went wrong, and when it is fixed.
    pub fn default_list() -> Vec<NotifyOn> {
        vec![NotifyOn::Failure, NotifyOn::Recovery]
    }
}

/// The body's shape.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyFormat {
    /// The job's result summary ([`Notice::json`]).
    #[default]
    Json,
    /// A Slack incoming-webhook message (Mattermost and others accept it too).
    Slack,
}

/// Where notices go and which. The URL is a secret (a Slack webhook's path is its
/// credential): `Debug` and `Serialize` show only its scheme and host.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyTarget {
    #[serde(serialize_with = "serialize_redacted")]
    pub url: String,
    #[serde(default = "NotifyOn::default_list")]
    pub on: Vec<NotifyOn>,
    #[serde(default)]
    pub format: NotifyFormat,
}

impl std::fmt::Debug for NotifyTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyTarget")
            .field("url", &redact_url(&self.url))
            .field("on", &self.on)
            .field("format", &self.format)
            .finish()
    }
}

/// `url` shown without its secrets: `https://hooks.slack.com/***`.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(parsed) => {
            let host = parsed.host_str().unwrap_or_default();
            match parsed.port() {
                Some(port) => format!("{}://{host}:{port}/***", parsed.scheme()),
                None => format!("{}://{host}/***", parsed.scheme()),
            }
        }
        Err(_) => "***".to_owned(),
    }
}

/// For settings printed by `--check`: the URL redacted.
pub fn serialize_redacted<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_url(url))
}

/// Why a notification URL cannot be used, checked when the settings load. Never shows the
/// URL itself.
pub fn check_url(url: &str) -> Result<(), String> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| format!("is not a URL ({e}); write https://…"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "must be an http:// or https:// address, not {}://",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("names no host".to_owned());
    }
    Ok(())
}

/// What a notice says about a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    Failure,
    Recovery,
    Success,
}

/// Whether a job that ended `status` counts as a success (`Some(true)`), a failure
/// (`Some(false)`) or neither: a cancelled job was stopped by someone, it says nothing
/// about the code, so it is not notified and does not change the remembered outcome.
pub fn outcome(status: &str) -> Option<bool> {
    match status {
        "succeeded" => Some(true),
        "cancelled" => None,
        _ => Some(false),
    }
}

/// Which notice (if any) a target that listens `on` gets for a job whose outcome is
/// `succeeded`, when the last finished job of the same stream `previous`ly succeeded or
/// not (none known: the stream's first job, or its first since notifications began).
/// Every failure is notified, not only the first of a run of them: a failing nightly
/// build is news every night.
pub fn decide(on: &[NotifyOn], succeeded: bool, previous: Option<bool>) -> Option<NoticeKind> {
    let always = on.contains(&NotifyOn::Always);
    match (succeeded, previous) {
        (false, _) => (always || on.contains(&NotifyOn::Failure)).then_some(NoticeKind::Failure),
        (true, Some(false)) => {
            (always || on.contains(&NotifyOn::Recovery)).then_some(NoticeKind::Recovery)
        }
        (true, _) => always.then_some(NoticeKind::Success),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("result.json is not a job's result: {0}")]
    Result(#[from] serde_json::Error),
}

/// What is known of a finished job, from either side: the agent's `result.json` or the
/// result an agent reported to the server. Its stages are result.json's `stages` values.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct JobSummary {
    #[serde(rename = "job")]
    pub job_id: String,
    /// What the job is: its stream, its schedule, `owner/repo@branch`.
    #[serde(rename = "stream", default)]
    pub title: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub stages: Vec<serde_json::Value>,
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub finished_at: Option<String>,
    /// Why the job ended in error when no stage says.
    #[serde(default)]
    pub message: Option<String>,
    #[serde(skip)]
    pub link: Option<String>,
    #[serde(skip)]
    pub commit: Option<String>,
    /// result.json's description of the workspace, which names a git job's commit.
    #[serde(default, rename = "origin")]
    workspace: Option<String>,
}

impl JobSummary {
    /// From a results directory's `result.json`.
    pub fn from_result_file(bytes: &[u8]) -> Result<JobSummary, NotifyError> {
        let mut summary: JobSummary = serde_json::from_slice(bytes)?;
        summary.commit = summary.workspace.as_deref().and_then(commit_in);
        Ok(summary)
    }

    /// From a result an agent reported to the server, for the server's job `job_id`.
    pub fn from_job_result(
        job_id: &str,
        title: &str,
        result: &crate::protocol::JobResult,
    ) -> JobSummary {
        JobSummary {
            job_id: job_id.to_owned(),
            title: title.to_owned(),
            status: result.status.clone(),
            exit_code: Some(result.exit_code),
            stages: result.stages.clone(),
            started_at: result.started_at.clone(),
            finished_at: result.finished_at.clone(),
            message: result.message.clone(),
            ..JobSummary::default()
        }
    }

    /// For a job that ended without a result (lost, cancelled before it ran): its state
    /// alone.
    pub fn without_result(job_id: &str, title: &str, status: &str) -> JobSummary {
        JobSummary {
            job_id: job_id.to_owned(),
            title: title.to_owned(),
            status: status.to_owned(),
            ..JobSummary::default()
        }
    }

    /// Where to read more: the job's page.
    pub fn with_link(mut self, link: Option<String>) -> JobSummary {
        self.link = link;
        self
    }

    pub fn with_commit(mut self, commit: Option<String>) -> JobSummary {
        self.commit = commit;
        self
    }

    /// See [`outcome`].
    pub fn outcome(&self) -> Option<bool> {
        outcome(&self.status)
    }

    pub fn notice(&self, kind: NoticeKind) -> Notice {
        let failed = FailedStage::first(&self.stages);
        let failed_stage = failed.as_ref().map(|stage| stage.label.clone());
        let message = failed
            .and_then(|stage| {
                (stage.message).or_else(|| Some(format!("exit code {}", stage.exit_code?)))
            })
            .or_else(|| self.message.clone());
        let time = |t: &Option<String>| t.as_deref().and_then(|t| humantime::parse_rfc3339(t).ok());
        let duration_s = match (time(&self.started_at), time(&self.finished_at)) {
            (Some(start), Some(end)) => end
                .duration_since(start)
                .ok()
                .map(|d| (d.as_millis() as f64) / 1000.0),
            _ => None,
        };
        Notice {
            event: kind,
            job_id: self.job_id.clone(),
            title: self.title.clone(),
            status: self.status.clone(),
            exit_code: self.exit_code,
            failed_stage: failed_stage.filter(|_| kind == NoticeKind::Failure),
            message: message.filter(|_| kind == NoticeKind::Failure),
            url: self.link.clone(),
            commit: self.commit.clone(),
            started_at: self.started_at.clone(),
            finished_at: self.finished_at.clone(),
            duration_s,
        }
    }
}

/// The first stage of a result that did not pass: what a failure's notice and commit
/// status name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedStage {
    /// `run test`, `build app`, `collect`.
    pub label: String,
    pub exit_code: Option<i64>,
    pub message: Option<String>,
}

impl FailedStage {
    /// From result.json's `stages` values.
    pub fn first(stages: &[serde_json::Value]) -> Option<FailedStage> {
        let stage = stages.iter().find(|stage| {
            let status = stage.get("status").and_then(|s| s.as_str());
            status.is_some_and(|s| !matches!(s, "passed" | "cached" | "skipped"))
        })?;
        let text = |key: &str| stage.get(key).and_then(|v| v.as_str()).map(str::to_owned);
        let kind = text("kind").unwrap_or_default();
        let label = match text("name") {
            Some(name) if kind != "collect" && !name.is_empty() => format!("{kind} {name}"),
            _ => kind,
        };
        Some(FailedStage {
            label,
            exit_code: stage.get("exit_code").and_then(|c| c.as_i64()),
            message: text("message"),
        })
    }
}

/// `… at main (0123abcd…)`: the commit a git workspace was checked out at.
fn commit_in(workspace: &str) -> Option<String> {
    let inner = workspace.strip_suffix(')')?.rsplit_once(" (")?.1;
    (inner.len() >= 7 && inner.chars().all(|c| c.is_ascii_hexdigit())).then(|| inner.to_owned())
}

/// What is said about one finished job; serialized, it is the `json` format's body, whose
/// fields are always present (null when unknown).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Notice {
    pub event: NoticeKind,
    pub job_id: String,
    pub title: String,
    pub status: String,
    pub exit_code: Option<i64>,
    /// The first stage that did not pass (`run test`, `build app`, `collect`); failures only.
    pub failed_stage: Option<String>,
    /// What that stage (or the job) says went wrong; failures only.
    pub message: Option<String>,
    pub url: Option<String>,
    pub commit: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub duration_s: Option<f64>,
}

/// Slack's attachment colours.
const RED: &str = "#d00000";
const GREEN: &str = "#2eb886";

impl Notice {
    pub fn body(&self, format: NotifyFormat) -> serde_json::Value {
        match format {
            NotifyFormat::Json => self.json(),
            NotifyFormat::Slack => self.slack(),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    /// An incoming-webhook message: a plain fallback line as `text`, and an attachment with
    /// a colour and fields. Every text a job controls is escaped, so no job can mention
    /// `<!channel>` or make a link.
    pub fn slack(&self) -> serde_json::Value {
        let title = slack_escape(&self.title);
        let code = self
            .exit_code
            .map(|c| format!(", exit code {c}"))
            .unwrap_or_default();
        let line = match self.event {
            NoticeKind::Failure => format!("Failed: {title} ({}{code})", self.status),
            NoticeKind::Recovery => format!("Recovered: {title} (succeeded again)"),
            NoticeKind::Success => format!("Succeeded: {title}"),
        };
        let mut fields = vec![
            field("Job", &self.job_id, true),
            field("Status", &format!("{}{code}", self.status), true),
        ];
        if let Some(stage) = &self.failed_stage {
            fields.push(field("Stage", stage, true));
        }
        if let Some(seconds) = self.duration_s {
            fields.push(field("Duration", &format!("{seconds:.1}s"), true));
        }
        if let Some(commit) = &self.commit {
            fields.push(field("Commit", commit, true));
        }
        let mut attachment = serde_json::json!({
            "fallback": line,
            "color": if self.event == NoticeKind::Failure { RED } else { GREEN },
            "title": title,
            "text": self.message.as_deref().map(slack_escape).unwrap_or_default(),
            "fields": fields,
        });
        if let Some(url) = &self.url {
            attachment["title_link"] = url.clone().into();
        }
        serde_json::json!({ "text": line, "attachments": [attachment] })
    }
}

fn field(title: &str, value: &str, short: bool) -> serde_json::Value {
    serde_json::json!({ "title": title, "value": slack_escape(value), "short": short })
}

/// Slack's three control characters as entities: `<!channel>` and `<http://…|link>` stay
/// plain text.
pub fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// How deliveries are retried.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    pub attempts: u32,
    /// Before the second attempt; doubled before each further one, up to `max_backoff`.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// One attempt's deadline, connecting to reading the status.
    pub attempt_timeout: Duration,
    /// How long pending deliveries may go on once the process stops.
    pub shutdown_grace: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 5,
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(8),
            attempt_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(4),
        }
    }
}

/// Why a delivery was given up. The URL is shown redacted.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("{url} answered {status}")]
    Refused {
        url: String,
        status: reqwest::StatusCode,
    },
    #[error("{url}: no answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("{url}: {cause}")]
    Transport { url: String, cause: String },
    #[error("{url}: the process is stopping")]
    Cancelled { url: String },
}

impl DeliveryError {
    pub fn retried(&self) -> bool {
        match self {
            DeliveryError::Refused { status, .. } => {
                *status == reqwest::StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
            }
            DeliveryError::Timeout { .. } | DeliveryError::Transport { .. } => true,
            DeliveryError::Cancelled { .. } => false,
        }
    }
}

/// Posts `body` to `url` until it is taken (2xx), refused for good (a 4xx other than 429),
/// the attempts run out or `cancel` fires; returns the number of attempts made.
pub async fn deliver(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
    retry: Retry,
    cancel: &CancellationToken,
) -> Result<u32, DeliveryError> {
    let shown = redact_url(url);
    let mut backoff = retry.first_backoff;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let Err(error) = post(client, url, body, retry.attempt_timeout).await else {
            return Ok(attempt);
        };
        if !error.retried() || attempt >= retry.attempts {
            return Err(error);
        }
        tracing::warn!("notification attempt {attempt} failed, retrying in {backoff:?}: {error}");
        tokio::select! {
            _ = cancel.cancelled() => return Err(DeliveryError::Cancelled { url: shown }),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(retry.max_backoff);
    }
}

/// One attempt at posting `body` to `url`, within `timeout`.
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
    timeout: Duration,
) -> Result<(), DeliveryError> {
    let shown = redact_url(url);
    match tokio::time::timeout(timeout, client.post(url).json(body).send()).await {
        Ok(Ok(response)) if response.status().is_success() => Ok(()),
        Ok(Ok(response)) => Err(DeliveryError::Refused {
            url: shown,
            status: response.status(),
        }),
        Ok(Err(e)) => Err(DeliveryError::Transport {
            url: shown,
            cause: reqwest_cause(&e),
        }),
        Err(_) => Err(DeliveryError::Timeout {
            url: shown,
            timeout,
        }),
    }
}

/// reqwest's error without the URL its own message names (which may hold the secret):
/// what kind of failure, then its causes.
fn reqwest_cause(error: &reqwest::Error) -> String {
    let mut text = if error.is_connect() {
        "cannot connect".to_owned()
    } else {
        "the request failed".to_owned()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Most deliveries in flight at once; more are dropped (and said so): a receiver that
/// hangs must not make the process hold ever more.
const MAX_PENDING: usize = 64;

/// Deliveries running in the background: sending never waits, never fails the job.
pub struct Outbox {
    client: reqwest::Client,
    retry: Retry,
    pending: JoinSet<()>,
    cancel: CancellationToken,
}

impl Outbox {
    pub fn new(retry: Retry) -> Outbox {
        Outbox {
            client: reqwest::Client::new(),
            retry,
            pending: JoinSet::new(),
            cancel: CancellationToken::new(),
        }
    }

    /// Starts delivering `notice` to `target`.
    pub fn send(&mut self, target: &NotifyTarget, notice: &Notice) {
        while self.pending.try_join_next().is_some() {}
        let url = target.url.clone();
        if self.pending.len() >= MAX_PENDING {
            tracing::warn!(
                "{MAX_PENDING} notifications are still being delivered; dropping the {:?} of job {} to {}",
                notice.event,
                notice.job_id,
                redact_url(&url)
            );
            return;
        }
        let body = notice.body(target.format);
        let (client, retry, cancel) = (self.client.clone(), self.retry, self.cancel.clone());
        let job = notice.job_id.clone();
        self.pending.spawn(async move {
            match deliver(&client, &url, &body, retry, &cancel).await {
                Ok(_) => tracing::debug!("notified {} of job {job}", redact_url(&url)),
                Err(e) => tracing::warn!("notification of job {job} not delivered: {e}"),
            }
        });
    }

    /// Stops retrying and gives the deliveries under way [`Retry::shutdown_grace`] to end;
    /// what is left then is dropped, said so in the log.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        let all = async { while self.pending.join_next().await.is_some() {} };
        if tokio::time::timeout(self.retry.shutdown_grace, all)
            .await
            .is_err()
        {
            tracing::warn!(
                "dropping {} notification(s) not delivered in time",
                self.pending.len()
            );
            self.pending.abort_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    const SLACK: &str = "https://hooks.slack.com/services/T000/B000/XXXXsecret?x=1";

    #[test]
    fn the_decision_table() {
        use NoticeKind::*;
        use NotifyOn::{Always, Failure as OnFailure, Recovery as OnRecovery};
        let default = NotifyOn::default_list();
        type Case<'a> = (&'a [NotifyOn], bool, Option<bool>, Option<NoticeKind>);
        let cases: &[Case] = &[
            (&default, false, None, Some(Failure)),
            (&default, false, Some(false), Some(Failure)),
            (&default, false, Some(true), Some(Failure)),
            (&default, true, Some(false), Some(Recovery)),
            (&default, true, Some(true), None),
            (&default, true, None, None),
            (&[OnFailure], true, Some(false), None),
            (&[OnRecovery], false, Some(true), None),
            (&[OnRecovery], true, Some(false), Some(Recovery)),
            (&[Always], true, None, Some(Success)),
            (&[Always], true, Some(true), Some(Success)),
            (&[Always], true, Some(false), Some(Recovery)),
            (&[Always], false, Some(true), Some(Failure)),
            (&[], false, None, None),
        ];
        for (on, succeeded, previous, expected) in cases {
            assert_eq!(
                decide(on, *succeeded, *previous),
                *expected,
                "on {on:?}, succeeded {succeeded}, previous {previous:?}"
            );
        }
        assert_eq!(outcome("succeeded"), Some(true));
        assert_eq!(outcome("timed_out"), Some(false));
        assert_eq!(outcome("error"), Some(false));
        assert_eq!(outcome("cancelled"), None);
    }

    #[test]
    fn urls_are_checked_and_shown_without_their_secrets() {
        assert_eq!(redact_url(SLACK), "https://hooks.slack.com/***");
        assert_eq!(
            redact_url("http://user:pw@127.0.0.1:8080/hook"),
            "http://127.0.0.1:8080/***"
        );
        assert_eq!(redact_url("not a url /secret"), "***");
        let target: NotifyTarget = toml::from_str(&format!("url = \"{SLACK}\"")).unwrap();
        assert_eq!(target.on, NotifyOn::default_list());
        assert_eq!(target.format, NotifyFormat::Json);
        let shown = format!("{target:?} {}", toml::to_string(&target).unwrap());
        assert!(
            !shown.contains("secret") && !shown.contains("T000"),
            "{shown}"
        );
        assert!(shown.contains("https://hooks.slack.com/***"), "{shown}");
        let unknown = toml::from_str::<NotifyTarget>("url = \"http://h/\"\nformat = \"xml\"");
        assert!(unknown.is_err());
        assert!(check_url(SLACK).is_ok());
        assert!(check_url("http://127.0.0.1:9/x").is_ok());
        let ftp = check_url("ftp://h/x/secret").unwrap_err();
        assert_eq!(ftp, "must be an http:// or https:// address, not ftp://");
        let bad = check_url("hooks.slack.com/secret").unwrap_err();
        assert!(
            bad.starts_with("is not a URL") && !bad.contains("secret"),
            "{bad}"
        );
    }

    /// A failed job's result.json whose job-controlled texts try to reach a Slack channel.
    fn hostile_result() -> serde_json::Value {
        serde_json::json!({
            "schema_version": 1,
            "job": "20261202-183000-ab12",
            "config": "config.yml",
            "tasks": [],
            "stream": "schedule:nightly <!channel>",
            "origin": "https://github.com/o/r.git at main (0123456789abcdef0123456789abcdef01234567)",
            "status": "failed",
            "exit_code": 1,
            "started_at": "2026-12-02T18:30:00.000Z",
            "finished_at": "2026-12-02T18:31:02.500Z",
            "stages": [
                {"name": "app", "kind": "build", "status": "passed",
                 "started_at": null, "finished_at": null, "log_file": "x", "log_range": null},
                {"name": "test <!channel>", "kind": "run", "status": "failed", "exit_code": 3,
                 "message": "see <https://evil.example|here> & <!here>",
                 "started_at": null, "finished_at": null, "log_file": "y", "log_range": null},
                {"name": "deploy", "kind": "run", "status": "skipped",
                 "started_at": null, "finished_at": null, "log_file": "z", "log_range": null}
            ]
        })
    }

    fn summary() -> JobSummary {
        JobSummary::from_result_file(hostile_result().to_string().as_bytes())
            .unwrap()
            .with_link(Some("https://ci.example/jobs/1".to_owned()))
    }

    #[test]
    fn the_json_body_is_the_result_summary() {
        let notice = summary().notice(NoticeKind::Failure);
        assert_eq!(notice.failed_stage.as_deref(), Some("run test <!channel>"));
        assert_eq!(
            notice.commit.as_deref(),
            Some("0123456789abcdef0123456789abcdef01234567")
        );
        insta::assert_json_snapshot!("notice_json_failure", notice.body(NotifyFormat::Json));
        let recovery = summary().notice(NoticeKind::Recovery);
        assert_eq!(recovery.failed_stage, None);
        assert_eq!(recovery.message, None);
    }

    #[test]
    fn the_slack_body_escapes_what_the_job_wrote() {
        let body = summary()
            .notice(NoticeKind::Failure)
            .body(NotifyFormat::Slack);
        insta::assert_json_snapshot!("notice_slack_failure", body);
        let text = body.to_string();
        for raw in ["<!channel>", "<!here>", "<https://evil"] {
            assert!(!text.contains(raw), "{raw} reached Slack unescaped: {text}");
        }
        assert!(text.contains("&lt;!channel&gt;") && text.contains(" &amp; "));
        assert_eq!(slack_escape("a<b>&c"), "a&lt;b&gt;&amp;c");
        let recovery = summary()
            .notice(NoticeKind::Recovery)
            .body(NotifyFormat::Slack);
        insta::assert_json_snapshot!("notice_slack_recovery", recovery);
    }

    #[test]
    fn the_server_s_result_makes_the_same_notice() {
        let file = hostile_result();
        let result = crate::protocol::JobResult {
            status: "failed".to_owned(),
            exit_code: 1,
            stages: file["stages"].as_array().unwrap().clone(),
            started_at: Some("2026-12-02T18:30:00.000Z".to_owned()),
            finished_at: Some("2026-12-02T18:31:02.500Z".to_owned()),
            message: None,
            agent_job: None,
            log: crate::protocol::LogSummary {
                bytes: 0,
                sha256: String::new(),
            },
        };
        let server = JobSummary::from_job_result(
            "20261202-183000-ab12",
            "schedule:nightly <!channel>",
            &result,
        )
        .with_link(Some("https://ci.example/jobs/1".to_owned()))
        .with_commit(Some("0123456789abcdef0123456789abcdef01234567".to_owned()));
        assert_eq!(
            server.notice(NoticeKind::Failure),
            summary().notice(NoticeKind::Failure)
        );
    }

    /// A receiver on 127.0.0.1 answering each POST with the next of `answers` (the last
    /// one from then on); `None` never answers. Counts the requests.
    async fn receiver(answers: Vec<Option<u16>>) -> (String, Arc<AtomicUsize>) {
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        let app = axum::Router::new().route(
            "/hook/secret",
            axum::routing::post(move || {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let answer = answers[n.min(answers.len() - 1)];
                async move {
                    match answer {
                        Some(code) => axum::http::StatusCode::from_u16(code).unwrap(),
                        None => std::future::pending().await,
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{address}/hook/secret"), count)
    }

    fn quick() -> Retry {
        Retry {
            attempts: 4,
            first_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
            attempt_timeout: Duration::from_millis(300),
            shutdown_grace: Duration::from_millis(200),
        }
    }

    async fn post(url: &str, retry: Retry) -> Result<u32, DeliveryError> {
        let body = serde_json::json!({"text": "x"});
        let cancel = CancellationToken::new();
        let client = reqwest::Client::new();
        let delivery = deliver(&client, url, &body, retry, &cancel);
        tokio::time::timeout(Duration::from_secs(20), delivery)
            .await
            .expect("the delivery ends within its attempts")
    }

    #[tokio::test]
    async fn server_errors_are_retried_until_taken() {
        let (url, count) = receiver(vec![Some(500), Some(500), Some(200)]).await;
        assert_eq!(post(&url, quick()).await.unwrap(), 3);
        assert_eq!(count.load(Ordering::SeqCst), 3);
        let (url, count) = receiver(vec![Some(429), Some(204)]).await;
        assert_eq!(post(&url, quick()).await.unwrap(), 2);
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_refusal_is_not_retried_and_attempts_run_out() {
        let (url, count) = receiver(vec![Some(400)]).await;
        let refused = post(&url, quick()).await.unwrap_err();
        assert_eq!(count.load(Ordering::SeqCst), 1);
        assert!(matches!(refused, DeliveryError::Refused { status, .. } if status == 400));
        assert!(!refused.to_string().contains("secret"), "{refused}");
        let (url, count) = receiver(vec![Some(503)]).await;
        post(&url, quick()).await.unwrap_err();
        assert_eq!(count.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_receiver_that_never_answers_times_out_each_attempt() {
        let (url, count) = receiver(vec![None]).await;
        let retry = Retry {
            attempts: 2,
            ..quick()
        };
        let error = post(&url, retry).await.unwrap_err();
        assert!(matches!(error, DeliveryError::Timeout { .. }), "{error}");
        assert_eq!(count.load(Ordering::SeqCst), 2);
        assert!(!error.to_string().contains("secret"), "{error}");
    }

    #[tokio::test]
    async fn nothing_listening_is_a_transport_error_without_the_url() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook/secret", listener.local_addr().unwrap());
        drop(listener);
        let retry = Retry {
            attempts: 2,
            ..quick()
        };
        let error = post(&url, retry).await.unwrap_err();
        assert!(matches!(error, DeliveryError::Transport { .. }), "{error}");
        assert!(!error.to_string().contains("secret"), "{error}");
    }

    #[tokio::test]
    async fn a_stopping_outbox_drops_what_is_not_delivered_within_its_grace() {
        let (url, count) = receiver(vec![None]).await;
        let mut outbox = Outbox::new(Retry {
            attempt_timeout: Duration::from_secs(30),
            ..quick()
        });
        let target = NotifyTarget {
            url,
            on: NotifyOn::default_list(),
            format: NotifyFormat::Slack,
        };
        outbox.send(&target, &summary().notice(NoticeKind::Failure));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while count.load(Ordering::SeqCst) == 0 {
            assert!(tokio::time::Instant::now() < deadline, "no attempt arrived");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let started = tokio::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(5), outbox.shutdown())
            .await
            .expect("shutdown ends after its grace");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }
}
