//! What `dockhand server` is told: where to listen and store, its tokens, and the protocol
//! timings it hands agents.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::protocol::{ForgeEvent, ForgeKind};

#[derive(Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub database: Database,
    /// Connections to PostgreSQL per replica (the listener for other replicas' jobs is one
    /// of them).
    pub database_pool: u32,
    /// Exchanged by agents for their own token at registration.
    pub registration_token: String,
    /// For submitting, listing, reading and cancelling jobs.
    pub admin_token: String,
    /// How long an offer waits for its accept before the job returns to the queue.
    pub offer_ttl: Duration,
    /// How long a lease lasts without renewal before its job is `lost`.
    pub lease: Duration,
    /// The longest a claim may wait for a job.
    pub claim_wait: Duration,
    pub log_flush: Duration,
    pub log_chunk_max: usize,
    /// Shared with the forges; webhooks are refused without one.
    pub webhook_secret: Option<String>,
    /// A connection that has not sent a request's headers within this is closed.
    pub header_timeout: Duration,
    /// A request body that has not arrived whole within this is answered 408.
    pub body_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Whether jobs may name the agent's own disk (`path`, `file://`, absolute paths).
    pub allow_local_sources: bool,
    /// What webhooks may start jobs for, and what the server tells their forges.
    pub repositories: Vec<Repository>,
    /// Where people reach the server (behind a proxy, say): commit statuses link here.
    pub public_url: Option<String>,
    /// Hooks told of finished webhook jobs.
    pub notify: Vec<crate::config::ServerNotify>,
}

impl ServerSettings {
    /// The settings of the repository a webhook names, if the server builds it.
    pub fn repository(&self, forge: ForgeKind, full_name: &str) -> Option<&Repository> {
        (self.repositories.iter())
            .find(|r| r.forge == forge && r.name.eq_ignore_ascii_case(full_name))
    }
}

/// A repository the server builds from its forge's webhooks, and what it tells the forge.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Repository {
    /// `owner/name` as the forge names it.
    pub name: String,
    #[serde(default)]
    pub forge: ForgeKind,
    /// The forge's API: `https://api.github.com` by default for GitHub, `https://HOST/api/v3`
    /// for GitHub Enterprise, `https://HOST/api/v1` for Gitea (required there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    /// The server's environment variable holding the API token commit statuses are posted
    /// with; none: no statuses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// The token itself, read from `token_env` at start; never shown.
    #[serde(skip)]
    pub token: Option<ApiToken>,
    #[serde(default = "default_config")]
    pub config: String,
    /// Tasks each job runs; none: the config's pipeline.
    #[serde(default)]
    pub tasks: Vec<String>,
    /// Labels an agent needs to take the repository's jobs.
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// The webhook events that make jobs.
    #[serde(default = "default_events")]
    pub events: Vec<ForgeEvent>,
    /// Branches (glob patterns) whose pushes, and pull requests into them, are built;
    /// none: every branch.
    #[serde(default)]
    pub branches: Vec<String>,
    #[serde(default)]
    pub forks: Forks,
    /// Names of the agents' secrets this repository's jobs may see.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// A newer commit on a pull request cancels that pull request's older jobs.
    #[serde(default = "yes")]
    pub cancel_superseded: bool,
}

fn default_config() -> String {
    "config.yml".to_owned()
}

fn default_events() -> Vec<ForgeEvent> {
    vec![ForgeEvent::Push, ForgeEvent::PullRequest]
}

fn yes() -> bool {
    true
}

/// Pull requests whose head is another repository than the base: code nobody with write
/// access has vouched for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Forks {
    /// Built, without secrets and without the agents' `allow_*` widening.
    #[default]
    Restricted,
    /// Not built.
    Off,
    /// Built like the repository's own branches.
    Trusted,
}

/// A forge API token: shown as `***` everywhere.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(pub String);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl Repository {
    /// A repository with every setting at its default, as `--build-repo` names it.
    pub fn named(name: &str) -> Repository {
        serde_json::from_value(serde_json::json!({ "name": name }))
            .expect("a repository of defaults")
    }

    /// The forge's API base URL, without a trailing slash.
    pub fn api_url(&self) -> Option<String> {
        let url = match (&self.api_url, self.forge) {
            (Some(url), _) => url.as_str(),
            (None, ForgeKind::Github) => "https://api.github.com",
            (None, ForgeKind::Gitea) => return None,
        };
        Some(url.trim_end_matches('/').to_owned())
    }

    /// Whether `branch` (a name, not a ref) is one the repository builds.
    pub fn builds_branch(&self, branch: &str) -> bool {
        self.branches.is_empty()
            || self.branches.iter().any(|pattern| {
                globset::Glob::new(pattern)
                    .map(|glob| glob.compile_matcher().is_match(branch))
                    .unwrap_or(false)
            })
    }
}

impl std::str::FromStr for Repository {
    type Err = String;

    /// `[gitea:]owner/name[=task,task]` (`--build-repo`); GitHub unless it says Gitea.
    fn from_str(text: &str) -> Result<Self, String> {
        let (forge, rest) = match text.split_once(':') {
            Some(("gitea", rest)) => (ForgeKind::Gitea, rest),
            Some(("github", rest)) => (ForgeKind::Github, rest),
            _ => (ForgeKind::Github, text),
        };
        let (name, tasks) = rest.split_once('=').unwrap_or((rest, ""));
        if name.split('/').count() != 2 || name.split('/').any(str::is_empty) {
            return Err(format!("`{text}` is not [gitea:]owner/name[=task,task]"));
        }
        let mut repository = Repository::named(name);
        repository.forge = forge;
        repository.tasks = (tasks.split(','))
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect();
        Ok(repository)
    }
}

/// Tokens never appear in debug output.
impl std::fmt::Debug for ServerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSettings")
            .field("listen", &self.listen)
            .field("database", &self.database.to_string())
            .field("offer_ttl", &self.offer_ttl)
            .field("lease", &self.lease)
            .field("claim_wait", &self.claim_wait)
            .field("header_timeout", &self.header_timeout)
            .field("body_timeout", &self.body_timeout)
            .field("max_connections", &self.max_connections)
            .field("allow_local_sources", &self.allow_local_sources)
            .field("repositories", &self.repositories)
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

/// Where the jobs are kept.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file, for one server; job logs go to `logs/` beside it.
    Sqlite(PathBuf),
    /// A `postgres://` URL, for any number of replicas sharing it.
    Postgres(String),
}

impl std::str::FromStr for Database {
    type Err = std::convert::Infallible;

    /// A `postgres://` or `postgresql://` URL, else a file path.
    fn from_str(text: &str) -> Result<Database, Self::Err> {
        Ok(
            if ["postgres://", "postgresql://"]
                .iter()
                .any(|scheme| text.starts_with(scheme))
            {
                Database::Postgres(text.to_owned())
            } else {
                Database::Sqlite(PathBuf::from(text))
            },
        )
    }
}

/// The path, or the URL without its password: fit for logs.
impl std::fmt::Display for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "{}", path.display()),
            Database::Postgres(url) => match reqwest::Url::parse(url) {
                Ok(mut url) => {
                    if url.password().is_some() {
                        let _ = url.set_password(Some("***"));
                    }
                    write!(f, "{url}")
                }
                Err(_) => f.write_str("postgres://(unparsable URL)"),
            },
        }
    }
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_postgres_url_selects_postgres_and_never_shows_its_password() {
        let db: Database = "postgres://dockhand:secret@db:5432/jobs".parse().unwrap();
        assert_eq!(db.to_string(), "postgres://dockhand:***@db:5432/jobs");
        assert!(matches!(db, Database::Postgres(url) if url.contains("secret")));
        let file: Database = ".dockhand/server/jobs.db".parse().unwrap();
        assert_eq!(file, Database::Sqlite(".dockhand/server/jobs.db".into()));
    }

    #[test]
    fn a_build_repo_flag_is_a_repository_of_defaults() {
        let repo: Repository = "team/app=test,lint".parse().unwrap();
        assert_eq!(repo.tasks, ["test", "lint"]);
        assert_eq!(repo.events, [ForgeEvent::Push, ForgeEvent::PullRequest]);
        assert_eq!(repo.api_url().as_deref(), Some("https://api.github.com"));
        assert!(repo.cancel_superseded && repo.builds_branch("anything"));
        assert!("app".parse::<Repository>().is_err());
        let gitea: Repository = "gitea:team/app".parse().unwrap();
        assert_eq!(
            (gitea.forge, gitea.name.as_str()),
            (ForgeKind::Gitea, "team/app")
        );
        let mut repo = Repository::named("team/app");
        repo.branches = vec!["main".to_owned(), "release/*".to_owned()];
        assert!(repo.builds_branch("release/1.2") && !repo.builds_branch("feature"));
        repo.token = Some(ApiToken("ghp_secret".to_owned()));
        assert!(!format!("{repo:?}").contains("ghp_secret"));
    }
}
