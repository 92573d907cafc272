//! Push webhooks from GitHub (`X-Hub-Signature-256: sha256=<hex>`) and Gitea
//! (`X-Gitea-Signature: <hex>`): an HMAC-SHA256 of the body with the shared secret, checked
//! before anything is read; a push to a repository the server is configured to build
//! becomes a job for that commit. A replayed delivery (the same delivery id, or the same
//! signed body, since the signature does not cover the id) answers the first one's job.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use super::api::{ApiError, AppState};
use super::metrics::WebhookLabels;
use super::store::JobStore;
use crate::protocol::{JobSource, JobSpec, Submitted};

/// A repository the server builds on push, and the tasks it runs (none: the pipeline).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltRepository {
    /// `owner/name` as the forge names it.
    pub full_name: String,
    pub tasks: Vec<String>,
}

impl std::str::FromStr for BuiltRepository {
    type Err = String;

    /// `owner/name` or `owner/name=task,task`.
    fn from_str(text: &str) -> Result<Self, String> {
        let (name, tasks) = text.split_once('=').unwrap_or((text, ""));
        if name.split('/').count() != 2 || name.split('/').any(str::is_empty) {
            return Err(format!("`{text}` is not owner/name[=task,task]"));
        }
        Ok(BuiltRepository {
            full_name: name.to_owned(),
            tasks: tasks
                .split(',')
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect(),
        })
    }
}

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
    let (signature, event, delivery) = match forge {
        "github" => (
            header("x-hub-signature-256").and_then(|s| s.strip_prefix("sha256=")),
            header("x-github-event"),
            header("x-github-delivery"),
        ),
        "gitea" => (
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
    let ignored =
        |what: Value| Ok((StatusCode::OK, Json(json!({ "ignored": what }))).into_response());
    if event != Some("push") {
        return ("ignored", ignored(json!(event)));
    }
    let payload: Value = match serde_json::from_slice(body) {
        Ok(payload) => payload,
        Err(e) => {
            let refused = ApiError::new(StatusCode::BAD_REQUEST, &format!("payload: {e}"));
            return ("invalid", Err(refused));
        }
    };
    let repository = &payload["repository"];
    let full_name = repository["full_name"].as_str().unwrap_or_default();
    let Some(built) = state
        .settings
        .repositories
        .iter()
        .find(|r| r.full_name.eq_ignore_ascii_case(full_name))
    else {
        return ("ignored", ignored(json!(full_name)));
    };
    let commit = payload["after"].as_str().unwrap_or_default();
    if payload["deleted"] == true || commit.chars().all(|c| c == '0') {
        return ("ignored", ignored(json!("a deleted ref")));
    }
    let spec = JobSpec {
        source: JobSource::Git {
            git: repository["clone_url"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            commit: Some(commit.to_owned()),
            reference: payload["ref"].as_str().map(str::to_owned),
        },
        config: "config.yml".to_owned(),
        tasks: built.tasks.clone(),
        env: Default::default(),
        labels: Vec::new(),
        timeout: None,
    };
    if let Err(mut e) = spec.check(state.settings.allow_local_sources) {
        e.field = match e.field.as_str() {
            "source.git" => "repository.clone_url",
            "source.commit" => "after",
            "source.ref" => "ref",
            other => other,
        }
        .to_owned();
        return ("invalid", Err(ApiError::invalid(&e)));
    }
    let mut keys = vec![format!("{forge}:body:{}", crate::util::sha256_hex(body))];
    if let Some(delivery) = delivery {
        keys.push(format!("{forge}:id:{delivery}"));
    }
    let (job_id, created) = match state.store.create_job_once(&spec, &keys).await {
        Ok(made) => made,
        Err(e) => return ("error", Err(e.into())),
    };
    if !created {
        let answer = Json(json!({ "job_id": job_id, "replayed": true }));
        return ("replayed", Ok((StatusCode::OK, answer).into_response()));
    }
    state.submitted(&job_id, "webhook");
    let answer = Json(Submitted { job_id });
    ("created", Ok((StatusCode::CREATED, answer).into_response()))
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
        let repo: BuiltRepository = "team/app=test,lint".parse().unwrap();
        assert_eq!(repo.tasks, ["test", "lint"]);
        assert!("app".parse::<BuiltRepository>().is_err());
    }
}
