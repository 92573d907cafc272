//! Webhooks from GitHub (`X-Hub-Signature-256: sha256=<hex>`) and Gitea
//! (`X-Gitea-Signature: <hex>`): an HMAC-SHA256 of the body with the shared secret, checked
//! before anything is read. A push, a tag, or a pull request opened, reopened or pushed to
//! in a repository the server builds becomes a job for that commit; a closed pull request
//! cancels its jobs. A replayed delivery (the same delivery id, or the same signed body,
//! since the signature does not cover the id) answers the first one's job.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;

use super::api::{ApiError, AppState};
use super::metrics::WebhookLabels;
use super::settings::{Forks, Repository};
use super::store::JobStore;
use crate::protocol::{
    ForgeEvent, ForgeKind, ForgeOrigin, JobSource, JobSpec, SpecError, Submitted,
};

/// Whether `signature` (hex) is the HMAC-SHA256 of `body` under `secret`.
pub fn signature_valid(secret: &str, body: &[u8], signature: &str) -> bool {
    let Ok(expected) = hex::decode(signature.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// How a delivery ended, for the metrics and the log.
type Delivered = (&'static str, Result<Response, ApiError>);

pub async fn push<S: JobStore>(
    State(state): State<AppState<S>>,
    Path(forge): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let forge_label = match forge.as_str() {
        "github" => "github",
        "gitea" => "gitea",
        _ => "other",
    };
    let (outcome, answer) = deliver(&state, &forge, &headers, &body).await;
    state
        .metrics
        .webhooks
        .get_or_create(&WebhookLabels {
            forge: forge_label,
            outcome,
        })
        .inc();
    tracing::info!(forge = forge_label, outcome, "webhook delivery");
    answer
}

async fn deliver<S: JobStore>(
    state: &AppState<S>,
    forge: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Delivered {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (kind, signature, event, delivery) = match forge {
        "github" => (
            ForgeKind::Github,
            header("x-hub-signature-256").and_then(|s| s.strip_prefix("sha256=")),
            header("x-github-event"),
            header("x-github-delivery"),
        ),
        "gitea" => (
            ForgeKind::Gitea,
            header("x-gitea-signature"),
            header("x-gitea-event"),
            header("x-gitea-delivery"),
        ),
        _ => {
            let refused = ApiError::new(StatusCode::NOT_FOUND, "forges: github, gitea");
            return ("unknown_forge", Err(refused));
        }
    };
    let Some(secret) = &state.settings.webhook_secret else {
        let refused = ApiError::new(
            StatusCode::NOT_FOUND,
            "webhooks are off: the server has no webhook secret",
        );
        return ("disabled", Err(refused));
    };
    if !signature.is_some_and(|s| signature_valid(secret, body, s)) {
        let refused = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong webhook signature",
        );
        return ("bad_signature", Err(refused));
    }
    let wanted = match event {
        Some("ping") => return ("ping", answer(StatusCode::OK, json!({ "pong": true }))),
        Some("push") => payload::<PushEvent>(body).and_then(|p| p.wanted(kind, &state.settings)),
        Some("pull_request") => {
            payload::<PullRequestEvent>(body).and_then(|p| p.wanted(kind, &state.settings))
        }
        other => Ok(Wanted::Ignored(format!(
            "event {}",
            other.unwrap_or("(none)")
        ))),
    };
    match wanted {
        Err(refused) => ("invalid", Err(refused)),
        Ok(Wanted::Ignored(why)) => ("ignored", answer(StatusCode::OK, json!({ "ignored": why }))),
        Ok(Wanted::Cancel { stream, number }) => match cancel_stream(
            state,
            &stream,
            &format!("pull request #{number} closed"),
            None,
        )
        .await
        {
            Ok(cancelled) => (
                "cancelled",
                answer(StatusCode::OK, json!({ "cancelled": cancelled })),
            ),
            Err(e) => ("error", Err(e)),
        },
        Ok(Wanted::Build {
            spec,
            origin,
            repository,
        }) => {
            let mut keys = vec![format!("{forge}:body:{}", crate::util::sha256_hex(body))];
            if let Some(delivery) = delivery {
                keys.push(format!("{forge}:id:{delivery}"));
            }
            create(state, &spec, &origin, repository, &keys).await
        }
    }
}

/// Makes the delivery's job (or finds the first one's) and, on a pull request, cancels the
/// jobs it supersedes.
async fn create<S: JobStore>(
    state: &AppState<S>,
    spec: &JobSpec,
    origin: &ForgeOrigin,
    repository: &Repository,
    keys: &[String],
) -> Delivered {
    let made = state.store.create_job_once(spec, Some(origin), keys).await;
    let (job_id, created) = match made {
        Ok(made) => made,
        Err(e) => return ("error", Err(e.into())),
    };
    if !created {
        return (
            "replayed",
            answer(
                StatusCode::OK,
                json!({ "job_id": job_id, "replayed": true }),
            ),
        );
    }
    state.submitted(&job_id, "webhook");
    if origin.pull_request.is_some() && repository.cancel_superseded {
        let reason = format!("superseded by {job_id}");
        if let Err(e) = cancel_stream(state, &origin.stream(), &reason, Some(&job_id)).await {
            return ("error", Err(e));
        }
    }
    let made = Json(Submitted { job_id });
    ("created", Ok((StatusCode::CREATED, made).into_response()))
}

/// Cancels the stream's queued and running jobs but `keep`; their ids.
async fn cancel_stream<S: JobStore>(
    state: &AppState<S>,
    stream: &str,
    reason: &str,
    keep: Option<&str>,
) -> Result<Vec<String>, ApiError> {
    let mut cancelled = Vec::new();
    for job in state.store.active_in_stream(stream).await? {
        if Some(job.as_str()) != keep {
            state.store.cancel(&job, reason).await?;
            tracing::info!(job, reason, "job cancelled by its forge");
            cancelled.push(job);
        }
    }
    Ok(cancelled)
}

fn answer(status: StatusCode, body: Value) -> Result<Response, ApiError> {
    Ok((status, Json(body)).into_response())
}

/// The payload as `T`; a refusal naming the first field that does not fit.
fn payload<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    let mut json = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut json).map_err(|e| {
        ApiError::invalid(&SpecError {
            field: e.path().to_string(),
            message: e.into_inner().to_string(),
        })
    })
}

/// What a delivery asks of the server.
enum Wanted<'s> {
    Ignored(String),
    Build {
        spec: Box<JobSpec>,
        origin: ForgeOrigin,
        repository: &'s Repository,
    },
    Cancel {
        stream: String,
        number: u64,
    },
}

#[derive(Deserialize)]
struct PushEvent {
    #[serde(rename = "ref")]
    reference: String,
    after: String,
    #[serde(default)]
    deleted: bool,
    repository: ForgeRepository,
    head_commit: Option<HeadCommit>,
}

#[derive(Deserialize)]
struct ForgeRepository {
    full_name: String,
    clone_url: String,
}

#[derive(Deserialize)]
struct HeadCommit {
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct PullRequestEvent {
    action: String,
    number: u64,
    pull_request: PullRequest,
    repository: ForgeRepository,
}

#[derive(Deserialize)]
struct PullRequest {
    #[serde(default)]
    title: String,
    head: PullRequestEnd,
    base: PullRequestEnd,
}

#[derive(Deserialize)]
struct PullRequestEnd {
    #[serde(rename = "ref")]
    reference: String,
    sha: String,
    /// None when a fork was deleted.
    repo: Option<ForgeRepository>,
}

/// `[skip ci]` or `[ci skip]`, as GitHub, GitLab and Gitea Actions read them.
fn skips_ci(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    ["[skip ci]", "[ci skip]"].iter().any(|m| text.contains(m))
}

impl PushEvent {
    fn wanted<'s>(
        self,
        forge: ForgeKind,
        settings: &'s super::ServerSettings,
    ) -> Result<Wanted<'s>, ApiError> {
        let Some(repository) = settings.repository(forge, &self.repository.full_name) else {
            return Ok(Wanted::Ignored(format!(
                "repository {}",
                self.repository.full_name
            )));
        };
        if self.deleted || self.after.chars().all(|c| c == '0') {
            return Ok(Wanted::Ignored("a deleted ref".to_owned()));
        }
        let (event, branch) = if let Some(branch) = self.reference.strip_prefix("refs/heads/") {
            (ForgeEvent::Push, Some(branch))
        } else if self.reference.starts_with("refs/tags/") {
            (ForgeEvent::Tag, None)
        } else {
            return Ok(Wanted::Ignored(format!("ref {}", self.reference)));
        };
        if !repository.events.contains(&event) {
            return Ok(Wanted::Ignored(format!("{event:?} events").to_lowercase()));
        }
        if branch.is_some_and(|b| !repository.builds_branch(b)) {
            return Ok(Wanted::Ignored(format!(
                "branch {}",
                branch.unwrap_or_default()
            )));
        }
        if self.head_commit.is_some_and(|c| skips_ci(&c.message)) {
            return Ok(Wanted::Ignored("[skip ci]".to_owned()));
        }
        let origin = ForgeOrigin {
            forge,
            repository: repository.name.clone(),
            event,
            commit: self.after.clone(),
            reference: Some(self.reference.clone()),
            pull_request: None,
            fork: false,
        };
        let fields = ["repository.clone_url", "after", "ref"];
        let source = (self.repository.clone_url, self.after, self.reference);
        build(repository, settings, origin, source, fields)
    }
}

impl PullRequestEvent {
    fn wanted<'s>(
        self,
        forge: ForgeKind,
        settings: &'s super::ServerSettings,
    ) -> Result<Wanted<'s>, ApiError> {
        let Some(repository) = settings.repository(forge, &self.repository.full_name) else {
            return Ok(Wanted::Ignored(format!(
                "repository {}",
                self.repository.full_name
            )));
        };
        if !repository.events.contains(&ForgeEvent::PullRequest) {
            return Ok(Wanted::Ignored("pull_request events".to_owned()));
        }
        let stream = |number| ForgeOrigin {
            forge,
            repository: repository.name.clone(),
            event: ForgeEvent::PullRequest,
            commit: String::new(),
            reference: None,
            pull_request: Some(number),
            fork: false,
        };
        match self.action.as_str() {
            "opened" | "reopened" | "synchronize" | "synchronized" => {}
            "closed" => {
                return Ok(Wanted::Cancel {
                    stream: stream(self.number).stream(),
                    number: self.number,
                });
            }
            other => return Ok(Wanted::Ignored(format!("action {other}"))),
        }
        let pull = self.pull_request;
        if !repository.builds_branch(&pull.base.reference) {
            return Ok(Wanted::Ignored(format!(
                "base branch {}",
                pull.base.reference
            )));
        }
        let Some(head) = pull.head.repo else {
            return Ok(Wanted::Ignored(
                "a pull request whose head repository is gone".to_owned(),
            ));
        };
        let fork = !head
            .full_name
            .eq_ignore_ascii_case(&self.repository.full_name);
        if fork && repository.forks == Forks::Off {
            return Ok(Wanted::Ignored(format!(
                "a pull request from the fork {}",
                head.full_name
            )));
        }
        if skips_ci(&pull.title) {
            return Ok(Wanted::Ignored("[skip ci]".to_owned()));
        }
        let origin = ForgeOrigin {
            commit: pull.head.sha.clone(),
            reference: Some(pull.head.reference.clone()),
            fork,
            ..stream(self.number)
        };
        let fields = [
            "pull_request.head.repo.clone_url",
            "pull_request.head.sha",
            "pull_request.head.ref",
        ];
        let source = (head.clone_url, pull.head.sha, pull.head.reference);
        build(repository, settings, origin, source, fields)
    }
}

/// The job for `origin`: cloned from `(url, commit, ref)`, each checked as any job's source
/// is, its refusal naming the payload field it came from.
fn build<'s>(
    repository: &'s Repository,
    settings: &super::ServerSettings,
    origin: ForgeOrigin,
    (git, commit, reference): (String, String, String),
    fields: [&str; 3],
) -> Result<Wanted<'s>, ApiError> {
    let restricted = origin.fork && repository.forks == Forks::Restricted;
    let spec = JobSpec {
        source: JobSource::Git {
            git,
            commit: Some(commit),
            reference: Some(reference),
        },
        config: repository.config.clone(),
        tasks: repository.tasks.clone(),
        env: Default::default(),
        labels: repository.labels.clone(),
        timeout: repository.timeout.clone(),
        secrets: Some(if restricted {
            Vec::new()
        } else {
            repository.secrets.clone()
        }),
        untrusted: restricted,
    };
    if let Err(mut e) = spec.check(settings.allow_local_sources) {
        e.field = match e.field.as_str() {
            "source.git" => fields[0],
            "source.commit" => fields[1],
            "source.ref" => fields[2],
            other => other,
        }
        .to_owned();
        return Err(ApiError::invalid(&e));
    }
    Ok(Wanted::Build {
        spec: Box::new(spec),
        origin,
        repository,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_and_repositories() {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"It's a Secret to Everybody").unwrap();
        mac.update(b"Hello, World!");
        let hex = hex::encode(mac.finalize().into_bytes());
        assert_eq!(
            hex, "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            "GitHub's documented example"
        );
        assert!(signature_valid(
            "It's a Secret to Everybody",
            b"Hello, World!",
            &hex
        ));
        assert!(!signature_valid("another secret", b"Hello, World!", &hex));
        assert!(!signature_valid(
            "It's a Secret to Everybody",
            b"Hello, World",
            &hex
        ));
        assert!(!signature_valid(
            "It's a Secret to Everybody",
            b"Hello, World!",
            "zz"
        ));
    }
}
