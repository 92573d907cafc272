//! Reading agent.toml through its layers, then checking what serde cannot: ranges, cron
//! expressions, time zones, where a source's files come from.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use config::{Config, Environment, File, FileFormat};

use super::agent::{AgentConfig, SourceConfig};
use super::cron::CronTimes;

#[derive(Debug, thiserror::Error)]
pub enum AgentConfigError {
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
    #[error("{file}: [[source]] #{index}: {message}")]
    Source {
        file: String,
        index: usize,
        message: String,
    },
}

/// Where the layers come from. `env` is the process environment in production and a
/// plain map in tests.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// The file named on the command line; otherwise `DOCKHAND_AGENT_CONFIG`, then
    /// `./agent.toml` when it exists.
    pub file: Option<PathBuf>,
    pub env: HashMap<String, String>,
    /// `section.key = value` pairs from command-line flags, applied last.
    pub overrides: Vec<(String, String)>,
    /// Relative paths are resolved against the file's directory, or this one without a file.
    pub cwd: PathBuf,
    /// Never read `cwd/agent.toml` unnamed: `cwd` is a watched checkout, whose files are
    /// the repository's and must not choose their own sandbox.
    pub untrusted_cwd: bool,
}

impl LoadOptions {
    fn file(&self) -> Option<PathBuf> {
        let named = self
            .file
            .clone()
            .or_else(|| self.env.get("DOCKHAND_AGENT_CONFIG").map(PathBuf::from));
        match named {
            Some(file) => Some(self.cwd.join(file)),
            None if self.untrusted_cwd => None,
            None => Some(self.cwd.join("agent.toml")).filter(|f| f.exists()),
        }
    }
}

/// Lists that may be given as one comma-separated environment variable.
const LIST_KEYS: &[&str] = &[
    "agent.labels",
    "agent.pass_env",
    "docker.allow_host_mounts",
    "docker.allow_network_modes",
    "docker.cap_drop",
    "secrets.from_env",
];

/// Variables holding dockhand's own credentials: no job may ever see them, whatever
/// `pass_env` or `[secrets]` say (each http source's `token_env` too).
pub const TOKEN_VARIABLES: &[&str] = &[
    "DOCKHAND_TOKEN",
    "DOCKHAND_REGISTRATION_TOKEN",
    "DOCKHAND_ADMIN_TOKEN",
    "DOCKHAND_WEBHOOK_SECRET",
];

/// More jobs or stages at once than this is a typo, not a machine.
const MAX_CONCURRENCY: usize = 1024;

/// The engine refuses memory limits below 6 MiB.
const MIN_MEMORY: u64 = 6 << 20;

pub fn load(options: &LoadOptions) -> Result<(AgentConfig, Option<PathBuf>), AgentConfigError> {
    let file = options.file();
    let name = file
        .as_ref()
        .map(|f| f.display().to_string())
        .unwrap_or_else(|| "agent settings".to_owned());
    let invalid = |message: String| AgentConfigError::Invalid {
        file: name.clone(),
        message,
    };
    let mut builder = Config::builder();
    if let Some(file) = &file {
        if !file.is_file() {
            return Err(invalid("no such file".to_owned()));
        }
        builder = builder.add_source(File::from(file.as_path()).format(FileFormat::Toml));
    }
    let env: config::Map<String, String> = options
        .env
        .iter()
        .filter(|(k, _)| k.starts_with("DOCKHAND__"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut environment = Environment::with_prefix("DOCKHAND")
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
        .list_separator(",")
        .source(Some(env));
    for key in LIST_KEYS {
        environment = environment.with_list_parse_key(key);
    }
    builder = builder.add_source(environment);
    for (key, value) in &options.overrides {
        builder = builder
            .set_override(key.as_str(), value.as_str())
            .map_err(|e| invalid(e.to_string()))?;
    }
    let mut config: AgentConfig = builder
        .build()
        .and_then(Config::try_deserialize)
        .map_err(|e| invalid(e.to_string()))?;

    let base = file
        .as_ref()
        .and_then(|f| f.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| options.cwd.clone());
    check(&mut config, &base, &name)?;
    Ok((config, file))
}

fn check(config: &mut AgentConfig, base: &Path, file: &str) -> Result<(), AgentConfigError> {
    let invalid = |message: &str| AgentConfigError::Invalid {
        file: file.to_owned(),
        message: message.to_owned(),
    };
    let agent = &mut config.agent;
    if !(1..=MAX_CONCURRENCY).contains(&agent.concurrency) {
        return Err(invalid(&format!(
            "agent.concurrency must be between 1 and {MAX_CONCURRENCY}"
        )));
    }
    if !(1..=MAX_CONCURRENCY).contains(&agent.parallel) {
        return Err(invalid(&format!(
            "agent.parallel must be between 1 and {MAX_CONCURRENCY}"
        )));
    }
    for (key, value) in [
        ("agent.job_timeout", agent.job_timeout),
        ("agent.sweep_interval", agent.sweep_interval),
    ] {
        if value.is_zero() {
            return Err(invalid(&format!("{key} must be longer than 0s")));
        }
    }
    if config.docker.memory.is_some_and(|m| m.0 < MIN_MEMORY) {
        return Err(invalid("docker.memory must be at least 6m"));
    }
    if config
        .docker
        .allow_network_modes
        .iter()
        .any(|m| m.trim().is_empty())
    {
        return Err(invalid("docker.allow_network_modes has an empty entry"));
    }
    let token_variables: Vec<&str> = TOKEN_VARIABLES
        .iter()
        .copied()
        .chain(config.sources.iter().filter_map(|s| match s {
            SourceConfig::Http(http) => Some(http.token_env.as_str()),
            _ => None,
        }))
        .collect();
    for (key, names) in [
        ("agent.pass_env", &agent.pass_env),
        ("secrets.from_env", &config.secrets.from_env),
    ] {
        if let Some(name) = names.iter().find(|n| !crate::collector::valid_env_name(n)) {
            return Err(invalid(&format!(
                "{key}: `{name}` is not an environment variable name"
            )));
        }
        if let Some(name) = names.iter().find(|n| token_variables.contains(&n.as_str())) {
            return Err(invalid(&format!(
                "{key}: `{name}` holds one of dockhand's own tokens; no job may see it"
            )));
        }
    }
    if let Some(name) = config
        .secrets
        .values
        .keys()
        .find(|n| !crate::collector::valid_env_name(n))
    {
        return Err(invalid(&format!(
            "secrets.values: `{name}` is not an environment variable name"
        )));
    }
    if agent.name.is_empty() || agent.name.contains(['=', ',', ' ']) {
        return Err(invalid(
            "agent.name must be non-empty, without spaces, `=` or `,` (it labels Docker objects)",
        ));
    }
    if config
        .docker
        .cpus
        .is_some_and(|c| !(c > 0.0 && c <= 1024.0))
    {
        return Err(invalid("docker.cpus must be a positive number of CPUs"));
    }
    for dir in [
        &mut agent.workspace_root,
        &mut agent.results_dir,
        &mut agent.state_dir,
    ] {
        *dir = base.join(&*dir);
    }
    for dir in &mut config.docker.allow_host_mounts {
        *dir = base.join(&*dir);
    }
    for (index, source) in config.sources.iter_mut().enumerate() {
        let index = index + 1;
        let problem = |message: String| AgentConfigError::Source {
            file: file.to_owned(),
            index,
            message,
        };
        let timeout = match source {
            SourceConfig::Watch(watch) => watch.timeout,
            SourceConfig::Schedule(schedule) => schedule.timeout,
            SourceConfig::Http(_) => None,
        };
        if timeout.is_some_and(|t| t.is_zero()) {
            return Err(problem("timeout must be longer than 0s".to_owned()));
        }
        match source {
            SourceConfig::Watch(watch) => {
                watch.path = base.join(&watch.path);
                if !watch.path.is_dir() {
                    return Err(problem(format!(
                        "path {} is not a directory",
                        watch.path.display()
                    )));
                }
            }
            SourceConfig::Http(http) => {
                if !(http.url.starts_with("http://") || http.url.starts_with("https://")) {
                    return Err(problem(format!(
                        "url `{}` is not an http:// or https:// address",
                        http.url
                    )));
                }
            }
            SourceConfig::Schedule(schedule) => {
                CronTimes::parse(&schedule.cron, schedule.timezone.as_deref())
                    .map_err(|e| problem(e.to_string()))?;
                match (&mut schedule.path, &schedule.git) {
                    (Some(path), None) => *path = base.join(&*path),
                    (None, Some(_)) => {}
                    _ => {
                        return Err(problem(
                            "a schedule needs exactly one of `path` and `git`".to_owned(),
                        ));
                    }
                }
                if schedule.reference.is_some() && schedule.git.is_none() {
                    return Err(problem("`ref` goes with `git`".to_owned()));
                }
            }
        }
    }
    Ok(())
}
