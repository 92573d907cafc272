//! Reading agent.toml through its layers, then checking what serde cannot: ranges, cron
//! expressions, time zones, where a source's files come from.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use config::{Config, Environment, File, FileFormat};

use super::agent::{AgentConfig, SourceConfig};
use crate::source::Schedule;

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
}

impl LoadOptions {
    fn file(&self) -> Option<PathBuf> {
        let named = self
            .file
            .clone()
            .or_else(|| self.env.get("DOCKHAND_AGENT_CONFIG").map(PathBuf::from));
        match named {
            Some(file) => Some(self.cwd.join(file)),
            None => Some(self.cwd.join("agent.toml")).filter(|f| f.exists()),
        }
    }
}

/// Lists that may be given as one comma-separated environment variable.
const LIST_KEYS: &[&str] = &[
    "agent.labels",
    "docker.allow_host_mounts",
    "secrets.from_env",
];

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
    if agent.concurrency == 0 {
        return Err(invalid("agent.concurrency must be at least 1"));
    }
    if agent.parallel == 0 {
        return Err(invalid("agent.parallel must be at least 1"));
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
                Schedule::new(schedule).map_err(|e| problem(e.to_string()))?;
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
