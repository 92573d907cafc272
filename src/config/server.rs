//! The shape of server.toml, with its defaults, and the checks serde cannot make. Keys sit
//! at the top of the file (`DOCKHAND_SERVER__LISTEN` in the environment); repositories and
//! notification hooks are arrays of tables.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::fields::field_names;
use super::layers::{Fields, Layers, Override, Schema};
use super::load::{SettingsError, merge};
use super::values::{duration, duration_text};
use crate::notifications::{NotifyFormat, NotifyOn, NotifyTarget, check_url, serialize_redacted};
use crate::server::{Database, Repository};

/// server.toml.
pub static SERVER_SCHEMA: Schema = Schema {
    env_prefix: "DOCKHAND_SERVER",
    list_keys: &[],
    root: field_names::<ServerConfig>,
    sections: &[],
    arrays: &[
        ("repository", Fields::Fixed(field_names::<Repository>)),
        ("notify", Fields::Fixed(field_names::<ServerNotify>)),
    ],
    free_tables: &[],
};

/// server.toml (when named), then `DOCKHAND_SERVER__KEY` variables, then the flags
/// (`overrides`, and `--build-repo`'s repositories after the file's); the settings
/// checked, with where each came from.
pub fn load_server(
    file: Option<&std::path::Path>,
    env: &std::collections::HashMap<String, String>,
    overrides: &[Override],
    more_repositories: Vec<Repository>,
) -> Result<(ServerConfig, Layers), SettingsError> {
    let (mut config, mut layers) = merge::<ServerConfig>(&SERVER_SCHEMA, file, env, overrides)?;
    config.repositories.extend(more_repositories);
    let mut problems = Vec::new();
    config.check(env, &mut |key, message| {
        problems.push(layers.problem(key, message))
    });
    layers.problems.extend(problems);
    if layers.problems.is_empty() {
        Ok((config, layers))
    } else {
        Err(SettingsError {
            problems: layers.problems,
        })
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// A SQLite file, or a `postgres://` URL shared by replicas.
    pub database: String,
    pub database_pool: u32,
    /// Where people reach the server: commit statuses link here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    #[serde(serialize_with = "hidden")]
    pub registration_token: String,
    #[serde(serialize_with = "hidden")]
    pub admin_token: String,
    #[serde(serialize_with = "hidden_option")]
    pub webhook_secret: Option<String>,
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    pub offer_ttl: Duration,
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    pub lease: Duration,
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    pub claim_wait: Duration,
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    pub header_timeout: Duration,
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    pub body_timeout: Duration,
    pub max_connections: usize,
    pub allow_local_sources: bool,
    #[serde(rename = "repository")]
    pub repositories: Vec<Repository>,
    pub notify: Vec<ServerNotify>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8750)),
            database: ".dockhand/server/jobs.db".to_owned(),
            database_pool: crate::server::POOL_SIZE,
            public_url: None,
            registration_token: String::new(),
            admin_token: String::new(),
            webhook_secret: None,
            offer_ttl: Duration::from_secs(15),
            lease: Duration::from_secs(30),
            claim_wait: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            max_connections: 512,
            allow_local_sources: false,
            repositories: Vec::new(),
            notify: Vec::new(),
        }
    }
}

/// A notification hook of the server: finished jobs of the repositories it names (all,
/// when it names none).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerNotify {
    /// A secret (a webhook's path is its credential): shown as `scheme://host/***`.
    #[serde(serialize_with = "serialize_redacted")]
    pub url: String,
    #[serde(default = "NotifyOn::default_list")]
    pub on: Vec<NotifyOn>,
    #[serde(default)]
    pub format: NotifyFormat,
    #[serde(default)]
    pub repositories: Vec<String>,
}

impl ServerNotify {
    pub fn target(&self) -> NotifyTarget {
        NotifyTarget {
            url: self.url.clone(),
            on: self.on.clone(),
            format: self.format,
        }
    }

    /// Whether the hook hears of `repository`'s jobs.
    pub fn covers(&self, repository: &str) -> bool {
        self.repositories.is_empty()
            || (self.repositories.iter()).any(|r| r.eq_ignore_ascii_case(repository))
    }
}

fn hidden<S: serde::Serializer>(value: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if value.is_empty() { "" } else { "***" })
}

fn hidden_option<S: serde::Serializer>(value: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => hidden(value, s),
        None => s.serialize_none(),
    }
}

/// Tokens and secrets shorter than this are guessed.
const MIN_SECRET: usize = 16;

impl ServerConfig {
    /// The checks serde cannot make, each `add`ed with its key; API tokens are read from
    /// the variables the repositories name in `env`.
    pub fn check(
        &mut self,
        env: &std::collections::HashMap<String, String>,
        add: &mut dyn FnMut(&str, String),
    ) {
        for (key, value) in [
            ("registration_token", &self.registration_token),
            ("admin_token", &self.admin_token),
        ] {
            if value.len() < MIN_SECRET {
                add(
                    key,
                    format!(
                        "must be at least {MIN_SECRET} characters (set it in the file, DOCKHAND_SERVER__{0} or DOCKHAND_{0})",
                        key.to_uppercase()
                    ),
                );
            }
        }
        if self
            .webhook_secret
            .as_ref()
            .is_some_and(|s| s.len() < MIN_SECRET)
        {
            add(
                "webhook_secret",
                format!(
                    "must be at least {MIN_SECRET} bytes: a short one is guessed, an empty one signs anything"
                ),
            );
        }
        if let Some(url) = &self.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            add(
                "public_url",
                format!("`{url}` is not an http:// or https:// address"),
            );
        }
        if self.database_pool < 2 {
            add(
                "database_pool",
                "must be at least 2 (one connection listens for other replicas' jobs)".to_owned(),
            );
        }
        if self.max_connections == 0 {
            add("max_connections", "must be at least 1".to_owned());
        }
        for (key, value) in [
            ("offer_ttl", self.offer_ttl),
            ("lease", self.lease),
            ("claim_wait", self.claim_wait),
            ("header_timeout", self.header_timeout),
            ("body_timeout", self.body_timeout),
        ] {
            if value.is_zero() {
                add(key, "must be longer than 0s".to_owned());
            }
        }
        let mut seen = Vec::new();
        for (index, repository) in self.repositories.iter_mut().enumerate() {
            let mut problem = |field: &str, message: String| {
                add(&format!("repository[{index}].{field}"), message)
            };
            check_repository(repository, env, &mut problem);
            let key = (repository.forge, repository.name.to_ascii_lowercase());
            if seen.contains(&key) {
                problem("name", format!("{} is listed twice", repository.name));
            }
            seen.push(key);
        }
        for (index, notify) in self.notify.iter().enumerate() {
            if let Err(e) = check_url(&notify.url) {
                add(&format!("notify[{index}].url"), e);
            }
            for name in &notify.repositories {
                if !self
                    .repositories
                    .iter()
                    .any(|r| r.name.eq_ignore_ascii_case(name))
                {
                    add(
                        &format!("notify[{index}].repositories"),
                        format!("{name} is not a [[repository]] of this server"),
                    );
                }
            }
        }
    }

    pub fn database(&self) -> Database {
        match self.database.parse() {
            Ok(database) => database,
            Err(never) => match never {},
        }
    }
}

/// Characters GitHub and Gitea allow in owner and repository names.
fn valid_name_part(part: &str) -> bool {
    !part.is_empty()
        && part != "."
        && part != ".."
        && part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn check_repository(
    repository: &mut Repository,
    env: &std::collections::HashMap<String, String>,
    problem: &mut dyn FnMut(&str, String),
) {
    let parts: Vec<&str> = repository.name.split('/').collect();
    if parts.len() != 2 || !parts.iter().all(|p| valid_name_part(p)) {
        problem("name", format!("`{}` is not owner/name", repository.name));
    }
    match (&repository.api_url, repository.forge) {
        (Some(url), _) if !(url.starts_with("http://") || url.starts_with("https://")) => {
            problem(
                "api_url",
                format!("`{url}` is not an http:// or https:// address"),
            );
        }
        (None, crate::protocol::ForgeKind::Gitea) if repository.token_env.is_some() => {
            problem(
                "api_url",
                "a Gitea repository's statuses need its API URL (https://HOST/api/v1)".to_owned(),
            );
        }
        _ => {}
    }
    if let Some(name) = &repository.token_env {
        match env.get(name).filter(|v| !v.is_empty()) {
            _ if !crate::collector::valid_env_name(name) => {
                problem(
                    "token_env",
                    format!("`{name}` is not an environment variable name"),
                );
            }
            Some(token) => repository.token = Some(crate::server::ApiToken(token.clone())),
            None => problem("token_env", format!("the variable {name} is not set")),
        }
    }
    for pattern in &repository.branches {
        if let Err(e) = globset::Glob::new(pattern) {
            problem("branches", format!("`{pattern}`: {}", e.kind()));
        }
    }
    for name in &repository.secrets {
        if !crate::collector::valid_env_name(name) {
            problem(
                "secrets",
                format!("`{name}` is not an environment variable name"),
            );
        }
    }
    if let Some(timeout) = &repository.timeout
        && let Err(e) = crate::util::parse_duration(timeout)
    {
        problem("timeout", e);
    }
    if repository.events.is_empty() {
        problem(
            "events",
            "names no event: the repository would never build".to_owned(),
        );
    }
}
