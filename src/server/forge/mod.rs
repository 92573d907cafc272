//! Telling forges what their jobs did. A reporter loop turns each state change of a job a
//! webhook made into outbox entries (in the same transaction that marks it reported, so a
//! restart neither loses nor repeats one), then sends what is due: a commit's statuses in
//! order, retried with backoff, never in the way of the jobs themselves.

mod client;
mod status;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use client::{ATTEMPT_TIMEOUT, Attempt, http_client, post_status};
use status::{CommitStatus, commit_status, same_status};

use super::settings::{Repository, ServerSettings};
use super::store::{JobStore, NewEntry, OutboxEntry, StoreError, Stored, Unreported};
use crate::notifications::{self, DeliveryError, JobSummary, redact_url};
use crate::protocol::ForgeOrigin;
use crate::util::short_hash;

/// How often the reporter looks for state changes and due entries.
const TICK: Duration = Duration::from_millis(250);
/// Entries sent at once.
const BATCH: i64 = 16;
/// How long a sender holds an entry from other replicas' senders: past any attempt.
const HOLD: Duration = Duration::from_secs(60);
/// After this many failed attempts (about an hour and a half of backoff) an entry is
/// dropped.
const MAX_ATTEMPTS: u32 = 24;
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// What an outbox entry sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outgoing {
    Status(CommitStatus),
    /// A notice for the hook whose URL hashes to `hook` (the URL is a secret: the store
    /// does not keep it).
    Notification {
        hook: String,
        body: serde_json::Value,
    },
}

pub struct Reporter<S> {
    pub store: Arc<S>,
    pub settings: Arc<ServerSettings>,
    /// Where job pages are: `target_url`s start here.
    pub base_url: String,
    pub http: reqwest::Client,
    /// (repository, HTTP status) refusals already logged: each is said once.
    warned: Mutex<HashSet<(String, u16)>>,
}

impl<S: JobStore> Reporter<S> {
    pub fn new(store: Arc<S>, settings: Arc<ServerSettings>, base_url: String) -> Self {
        Reporter {
            store,
            settings,
            base_url: base_url.trim_end_matches('/').to_owned(),
            http: http_client(),
            warned: Mutex::default(),
        }
    }

    /// Queues and sends until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(TICK) => {}
            }
            if let Err(e) = self.queue().await {
                tracing::warn!("forge reports: {e}");
            }
            let sent = tokio::select! {
                () = shutdown.cancelled() => return,
                sent = self.send_due() => sent,
            };
            if let Err(e) = sent {
                tracing::warn!("forge outbox: {e}");
            }
        }
    }

    /// Turns every unreported state change into outbox entries.
    pub async fn queue(&self) -> Stored<()> {
        for Unreported { job, reported } in self.store.unreported(100).await? {
            let Some(origin) = &job.origin else { continue };
            let repository = self.settings.repository(origin.forge, &origin.repository);
            let target = format!("{}/api/v1/jobs/{}", self.base_url, job.id);
            let mut entries = Vec::new();
            let changed = reported.is_none_or(|r| !same_status(r, job.state));
            if let Some(repository) = repository.filter(|r| r.token.is_some() && changed) {
                let status = commit_status(&job, &origin.commit, target.clone());
                entries.push(entry(
                    format!("status:{}@{}", repository.name, origin.commit),
                    &repository.name,
                    Outgoing::Status(status),
                )?);
            }
            let stream = origin.stream();
            let succeeded = (!job.state.is_active())
                .then(|| notifications::outcome(job.state.as_str()))
                .flatten();
            if let Some(succeeded) = succeeded {
                let previous = self.store.stream_outcome(&stream).await?;
                let summary = match &job.result {
                    Some(result) => JobSummary::from_job_result(&job.id, &title(origin), result),
                    None => JobSummary::without_result(&job.id, &title(origin), job.state.as_str()),
                }
                .with_link(Some(target))
                .with_commit(Some(origin.commit.clone()));
                for hook in (self.settings.notify.iter()).filter(|h| h.covers(&origin.repository)) {
                    let Some(kind) = notifications::decide(&hook.on, succeeded, previous) else {
                        continue;
                    };
                    let hook_id = short_hash(hook.url.as_bytes());
                    let body = summary.notice(kind).body(hook.format);
                    entries.push(entry(
                        format!("notify:{hook_id}:{stream}"),
                        &origin.repository,
                        Outgoing::Notification {
                            hook: hook_id,
                            body,
                        },
                    )?);
                }
            }
            let outcome = succeeded.map(|s| (stream.as_str(), s));
            self.store
                .mark_reported(&job.id, job.state, outcome, &entries)
                .await?;
        }
        Ok(())
    }

    /// Sends the entries due now, at once; each ends delivered, retried later or dropped.
    pub async fn send_due(&self) -> Stored<()> {
        let due = self.store.outbox_due(BATCH, HOLD).await?;
        let sent = futures_util::future::join_all(due.iter().map(|entry| self.send(entry))).await;
        for (entry, attempt) in due.iter().zip(sent) {
            match attempt {
                Attempt::Delivered => self.store.outbox_done(entry.id).await?,
                Attempt::Refused(code, reason) => {
                    self.refused(entry, code, &reason);
                    self.store.outbox_done(entry.id).await?;
                }
                Attempt::Retry(reason) if entry.attempts + 1 >= MAX_ATTEMPTS => {
                    tracing::warn!(
                        repository = entry.repository,
                        "dropping a forge update after {MAX_ATTEMPTS} attempts: {reason}"
                    );
                    self.store.outbox_done(entry.id).await?;
                }
                Attempt::Retry(reason) => {
                    let after = backoff(entry.attempts);
                    tracing::info!(
                        repository = entry.repository,
                        "forge update failed ({reason}); trying again in {after:?}"
                    );
                    self.store.outbox_retry(entry.id, after, &reason).await?;
                }
            }
        }
        Ok(())
    }

    async fn send(&self, entry: &OutboxEntry) -> Attempt {
        match serde_json::from_value::<Outgoing>(entry.body.clone()) {
            Ok(Outgoing::Status(status)) => match self.repository(&entry.repository) {
                Some(repository) => post_status(&self.http, repository, &status).await,
                None => {
                    Attempt::Refused(0, "the repository is no longer in the settings".to_owned())
                }
            },
            Ok(Outgoing::Notification { hook, body }) => {
                let url = (self.settings.notify.iter())
                    .map(|h| &h.url)
                    .find(|url| short_hash(url.as_bytes()) == hook);
                let Some(url) = url else {
                    return Attempt::Refused(0, "the hook is no longer in the settings".to_owned());
                };
                match notifications::post(&self.http, url, &body, ATTEMPT_TIMEOUT).await {
                    Ok(()) => Attempt::Delivered,
                    Err(e) if e.retried() => Attempt::Retry(e.to_string()),
                    Err(DeliveryError::Refused { status, .. }) => Attempt::Refused(
                        status.as_u16(),
                        format!("a notification hook ({})", redact_url(url)),
                    ),
                    Err(e) => Attempt::Refused(0, e.to_string()),
                }
            }
            Err(e) => Attempt::Refused(0, format!("an outbox entry this server cannot read: {e}")),
        }
    }

    fn repository(&self, name: &str) -> Option<&Repository> {
        (self.settings.repositories.iter()).find(|r| r.name.eq_ignore_ascii_case(name))
    }

    /// Logs a refusal the first time a repository gets it: a wrong token would otherwise
    /// fill the log.
    fn refused(&self, entry: &OutboxEntry, code: u16, reason: &str) {
        let key = (entry.repository.clone(), code);
        let first = (self.warned.lock())
            .map(|mut warned| warned.insert(key))
            .unwrap_or(true);
        if first {
            let hint = match code {
                401 => " (is the token in token_env valid?)",
                403 | 404 => " (does the token have access to the repository's statuses?)",
                _ => "",
            };
            tracing::warn!(
                repository = entry.repository,
                status = code,
                "the forge refused a commit status: {reason}{hint}; further refusals of this kind are not logged"
            );
        }
    }
}

fn entry(ordering: String, repository: &str, outgoing: Outgoing) -> Stored<NewEntry> {
    Ok(NewEntry {
        ordering,
        repository: repository.to_owned(),
        body: serde_json::to_value(outgoing).map_err(StoreError::Json)?,
    })
}

/// `team/app#7`, `team/app@main`: what a notice is about.
fn title(origin: &ForgeOrigin) -> String {
    match (origin.pull_request, origin.short_reference()) {
        (Some(number), _) => format!("{}#{number}", origin.repository),
        (None, Some(reference)) => format!("{}@{reference}", origin.repository),
        (None, None) => origin.repository.clone(),
    }
}

/// 1 s, 2 s, 4 s … up to [`MAX_BACKOFF`].
fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.min(16)).min(MAX_BACKOFF)
}
