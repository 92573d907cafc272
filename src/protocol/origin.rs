//! Where a webhook's job comes from on its forge: what its commit statuses, pull-request
//! cancellations and notifications are about.

use serde::{Deserialize, Serialize};

/// The forges whose webhooks and status APIs the server speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForgeKind {
    #[default]
    Github,
    Gitea,
}

impl ForgeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ForgeKind::Github => "github",
            ForgeKind::Gitea => "gitea",
        }
    }
}

impl std::fmt::Display for ForgeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The webhook events that make jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForgeEvent {
    /// A push to a branch.
    Push,
    /// A pushed tag.
    Tag,
    PullRequest,
}

/// A job's place on its forge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgeOrigin {
    pub forge: ForgeKind,
    /// `owner/name` of the repository the webhook came from (a pull request's base).
    pub repository: String,
    pub event: ForgeEvent,
    /// The commit built: a push's `after`, a pull request's head.
    pub commit: String,
    /// The pushed ref (`refs/heads/main`, `refs/tags/v1`) or the pull request's head
    /// branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_request: Option<u64>,
    /// The pull request's head is another repository than its base.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fork: bool,
}

impl ForgeOrigin {
    /// What "the same thing built again" means: one pull request, or one ref. A newer job
    /// of a stream supersedes an older one, and a stream's last outcome decides whether a
    /// success is a recovery.
    pub fn stream(&self) -> String {
        match (self.pull_request, &self.reference) {
            (Some(number), _) => format!("{}:{}#{number}", self.forge, self.repository),
            (None, Some(reference)) => format!("{}:{}@{reference}", self.forge, self.repository),
            (None, None) => format!("{}:{}@{}", self.forge, self.repository, self.commit),
        }
    }

    /// The branch or tag name without its `refs/…/` prefix, for people.
    pub fn short_reference(&self) -> Option<&str> {
        let reference = self.reference.as_deref()?;
        Some(
            reference
                .strip_prefix("refs/heads/")
                .or_else(|| reference.strip_prefix("refs/tags/"))
                .unwrap_or(reference),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pull_request_is_its_own_stream_and_a_push_is_its_refs() {
        let mut origin = ForgeOrigin {
            forge: ForgeKind::Gitea,
            repository: "team/app".to_owned(),
            event: ForgeEvent::Push,
            commit: "a".repeat(40),
            reference: Some("refs/heads/main".to_owned()),
            pull_request: None,
            fork: false,
        };
        assert_eq!(origin.stream(), "gitea:team/app@refs/heads/main");
        assert_eq!(origin.short_reference(), Some("main"));
        origin.pull_request = Some(7);
        origin.event = ForgeEvent::PullRequest;
        assert_eq!(origin.stream(), "gitea:team/app#7");
    }
}
