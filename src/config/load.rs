//! Reading agent.toml through its layers, then checking what serde cannot: ranges, cron
//! expressions, time zones, where a source's files come from.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use config::{Config, Environment, File, FileFormat};

use super::agent::{AgentConfig, SourceConfig};
use super::cron::CronTimes;
use super::layers::{AGENT_SCHEMA, Layers, Origin, Override, Problem, Schema};

/// Every problem of the settings, each blamed on the file position, environment variable
/// or flag that set the key.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.iter().map(Problem::to_string).collect::<Vec<_>>().join("\n"))]
pub struct SettingsError {
    pub problems: Vec<Problem>,
}

/// Where the layers come from. `env` is the process environment in production and a
/// plain map in tests.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// The file named on the command line; otherwise `DOCKHAND_AGENT_CONFIG`, then
    /// `./agent.toml` when it exists.
    pub file: Option<PathBuf>,
    pub env: HashMap<String, String>,
    /// Settings from command-line flags, applied last.
    pub overrides: Vec<Override>,
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

/// agent.toml is a page of settings; more is a mistake (`--agent-config /dev/zero`).
const MAX_SETTINGS_BYTES: u64 = 1 << 20;

/// The engine refuses memory limits below 6 MiB.
const MIN_MEMORY: u64 = 6 << 20;

pub fn load(options: &LoadOptions) -> Result<(AgentConfig, Option<PathBuf>), SettingsError> {
    load_with_origins(options).map(|(config, file, _)| (config, file))
}

/// [`load`], with where each setting came from (for `agent --check`).
pub fn load_with_origins(
    options: &LoadOptions,
) -> Result<(AgentConfig, Option<PathBuf>, Layers), SettingsError> {
    let file = options.file();
    let (mut config, mut layers) = merge::<AgentConfig>(
        &AGENT_SCHEMA,
        file.as_deref(),
        &options.env,
        &options.overrides,
    )?;
    let base = file
        .as_ref()
        .and_then(|f| f.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| options.cwd.clone());
    check(&mut config, &base, &mut layers);
    if layers.problems.is_empty() {
        Ok((config, file, layers))
    } else {
        Err(SettingsError {
            problems: layers.problems,
        })
    }
}

/// A settings file shaped by `schema`, then its environment variables, then the flags
/// (`overrides`), merged into `T`; every problem blamed on the layer that set its key.
pub fn merge<T: serde::de::DeserializeOwned>(
    schema: &'static Schema,
    file: Option<&Path>,
    env: &HashMap<String, String>,
    overrides: &[Override],
) -> Result<(T, Layers), SettingsError> {
    let mut layers = Layers::new(schema);
    let mut builder = Config::builder();
    if let Some(file) = file {
        let text = crate::files::read_limited(file, MAX_SETTINGS_BYTES)
            .and_then(|bytes| {
                String::from_utf8(bytes).map_err(|e| {
                    let at = e.utf8_error().valid_up_to();
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("not UTF-8 text (byte {at})"),
                    )
                })
            })
            .map_err(|e| SettingsError {
                problems: vec![Problem {
                    at: Origin::InFile(file.display().to_string()),
                    key: None,
                    message: match e.kind() {
                        std::io::ErrorKind::NotFound => "no such file".to_owned(),
                        _ => e.to_string(),
                    },
                    help: None,
                }],
            })?;
        let known = layers.read_file(file, &text);
        builder = builder.add_source(File::from_str(&known, FileFormat::Toml));
    }
    let env: config::Map<String, String> = (env.iter())
        .filter(|(k, _)| layers.read_env(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut environment = Environment::with_prefix(schema.env_prefix)
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
        .source(Some(env));
    // Without list keys the crate would split every value at its commas.
    if !schema.list_keys.is_empty() {
        environment = environment.list_separator(",");
    }
    for key in schema.list_keys {
        environment = environment.with_list_parse_key(key);
    }
    builder = builder.add_source(environment);
    for given in overrides {
        if !layers.read_flag(given) {
            continue;
        }
        builder = match builder.set_override(given.key.as_str(), given.value.as_str()) {
            Ok(builder) => builder,
            Err(e) => {
                let origin = Origin::Flag(given.flag.clone());
                let message = e.to_string();
                layers.problems.push(Problem {
                    at: origin,
                    key: None,
                    message,
                    help: None,
                });
                return Err(SettingsError {
                    problems: layers.problems,
                });
            }
        };
    }
    let syntax_error = layers.problems.iter().any(|p| p.key.is_none());
    let merged = if syntax_error {
        None
    } else {
        match builder.build().and_then(Config::try_deserialize::<T>) {
            Ok(config) => Some(config),
            Err(e) => {
                layers.problems.push(blame(&layers, &e.to_string()));
                None
            }
        }
    };
    match merged {
        Some(config) => Ok((config, layers)),
        None => Err(SettingsError {
            problems: layers.problems,
        }),
    }
}

/// A `config` crate error ("… for key `agent.concurrency` in agent.toml") blamed on where
/// that key was set.
fn blame(layers: &Layers, message: &str) -> Problem {
    let Some((text, rest)) = message.split_once(" for key `") else {
        return Problem {
            key: None,
            ..layers.problem("", message)
        };
    };
    let key = rest.split('`').next().unwrap_or_default();
    let key = match key.find(']') {
        Some(end) if key.len() > end + 1 && !key[end + 1..].starts_with('.') => {
            format!("{}.{}", &key[..=end], &key[end + 1..])
        }
        _ => key.to_owned(),
    };
    layers.problem(&key, text)
}

/// The checks serde cannot make: every problem is added to `layers`, blamed on where its
/// key was set. Makes relative paths absolute against `base`.
fn check(config: &mut AgentConfig, base: &Path, layers: &mut Layers) {
    let mut problems = Vec::new();
    let mut add = |key: &str, message: String| problems.push(layers.problem(key, message));
    let agent = &mut config.agent;
    for (key, value) in [
        ("agent.concurrency", agent.concurrency),
        ("agent.parallel", agent.parallel),
    ] {
        if !(1..=MAX_CONCURRENCY).contains(&value) {
            add(key, format!("must be between 1 and {MAX_CONCURRENCY}"));
        }
    }
    for (key, value) in [
        ("agent.job_timeout", agent.job_timeout),
        ("agent.sweep_interval", agent.sweep_interval),
    ] {
        if value.is_zero() {
            add(key, "must be longer than 0s".to_owned());
        }
    }
    if config.docker.memory.is_some_and(|m| m.0 < MIN_MEMORY) {
        add("docker.memory", "must be at least 6m".to_owned());
    }
    if (config.docker.allow_network_modes.iter()).any(|m| m.trim().is_empty()) {
        add(
            "docker.allow_network_modes",
            "has an empty entry".to_owned(),
        );
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
        for name in names {
            if !crate::collector::valid_env_name(name) {
                add(key, format!("`{name}` is not an environment variable name"));
            } else if token_variables.contains(&name.as_str()) {
                add(
                    key,
                    format!("`{name}` holds one of dockhand's own tokens; no job may see it"),
                );
            }
        }
    }
    for name in config.secrets.values.keys() {
        if !crate::collector::valid_env_name(name) {
            add(
                &format!("secrets.values.{name}"),
                format!("`{name}` is not an environment variable name"),
            );
        }
    }
    if agent.name.is_empty() || agent.name.contains(['=', ',', ' ']) {
        add(
            "agent.name",
            "must be non-empty, without spaces, `=` or `,` (it labels Docker objects)".to_owned(),
        );
    }
    if (config.docker.cpus).is_some_and(|c| !(c > 0.0 && c <= 1024.0)) {
        add(
            "docker.cpus",
            "must be a positive number of CPUs".to_owned(),
        );
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
        let mut problem = |field: &str, message: String| {
            add(&format!("source[{index}].{field}"), message);
        };
        let timeout = match source {
            SourceConfig::Watch(watch) => watch.timeout,
            SourceConfig::Schedule(schedule) => schedule.timeout,
            SourceConfig::Http(_) => None,
        };
        if timeout.is_some_and(|t| t.is_zero()) {
            problem("timeout", "must be longer than 0s".to_owned());
        }
        match source {
            SourceConfig::Watch(watch) => {
                watch.path = base.join(&watch.path);
                if !watch.path.is_dir() {
                    let shown = watch.path.display();
                    problem("path", format!("{shown} is not a directory"));
                }
            }
            SourceConfig::Http(http) => {
                if http.url.is_empty() {
                    problem("url", "names no server".to_owned());
                }
                for url in &http.url {
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        problem(
                            "url",
                            format!("`{url}` is not an http:// or https:// address"),
                        );
                    }
                }
            }
            SourceConfig::Schedule(schedule) => {
                if let Err(e) = CronTimes::parse(&schedule.cron, schedule.timezone.as_deref()) {
                    let field = match e {
                        super::ScheduleError::Timezone(_) => "timezone",
                        _ => "cron",
                    };
                    problem(field, e.to_string());
                }
                match (&mut schedule.path, &schedule.git) {
                    (Some(path), None) => *path = base.join(&*path),
                    (None, Some(_)) => {}
                    _ => problem(
                        "",
                        "a schedule needs exactly one of `path` and `git`".to_owned(),
                    ),
                }
                if schedule.reference.is_some() && schedule.git.is_none() {
                    problem("ref", "`ref` goes with `git`".to_owned());
                }
            }
        }
    }
    check_notify(config, base, &mut add);
    layers.problems.extend(problems);
}

/// `[[notify]]` URLs, and `sources` naming this file's schedules (by name, or cron when
/// unnamed) or watched paths, which are made absolute like the watch sources' own.
fn check_notify(config: &mut AgentConfig, base: &Path, add: &mut dyn FnMut(&str, String)) {
    let mut schedules = Vec::new();
    let mut watched = Vec::new();
    for source in &config.sources {
        match source {
            SourceConfig::Schedule(s) => schedules.push(s.name.clone().unwrap_or(s.cron.clone())),
            SourceConfig::Watch(w) => watched.push(w.path.clone()),
            SourceConfig::Http(_) => {}
        }
    }
    for (index, notify) in config.notify.iter_mut().enumerate() {
        if let Err(e) = crate::notifications::check_url(&notify.url) {
            add(&format!("notify[{index}].url"), e);
        }
        if notify.on.is_empty() {
            add(
                &format!("notify[{index}].on"),
                "is empty: nothing would be sent (leave it out for [\"failure\", \"recovery\"])"
                    .to_owned(),
            );
        }
        for name in notify.sources.iter_mut().flatten() {
            if schedules.contains(name) {
                continue;
            }
            match watched.iter().find(|path| **path == base.join(&*name)) {
                Some(path) => *name = path.display().to_string(),
                None => add(
                    &format!("notify[{index}].sources"),
                    format!(
                        "`{name}` names no schedule (its `name`, or `cron` when unnamed) or watched path of this file"
                    ),
                ),
            }
        }
    }
}
