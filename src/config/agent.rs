//! The shape of agent.toml, with its defaults.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::values::{ByteSize, duration, duration_text, optional_duration, optional_duration_text};
use crate::job::OnBusy;
use crate::notifications::{NotifyFormat, NotifyOn, NotifyTarget, redact_url, serialize_redacted};

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    #[serde(default)]
    pub agent: AgentSection,
    #[serde(default)]
    pub docker: DockerSection,
    #[serde(default)]
    pub secrets: SecretsSection,
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceConfig>,
    #[serde(default, rename = "notify")]
    pub notify: Vec<AgentNotify>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSection {
    /// Labels every Docker object; the sweep only touches this agent's objects.
    pub name: String,
    /// Jobs at once.
    pub concurrency: usize,
    /// Stages of one kind at once within a job.
    pub parallel: usize,
    pub workspace_root: PathBuf,
    pub results_dir: PathBuf,
    /// Schedules remember their last run here, for the catch-up run after downtime.
    pub state_dir: PathBuf,
    pub labels: Vec<String>,
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    pub job_timeout: Duration,
    pub keep_workspace: KeepWorkspace,
    /// Results directories kept, newest first; 0 keeps all.
    pub keep_results: usize,
    /// How long a draining agent lets running jobs finish before cancelling them.
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    pub shutdown_grace: Duration,
    /// How often an idle agent sweeps leftovers of jobs that are not running.
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    pub sweep_interval: Duration,
    /// Names of the agent's environment variables every job sees (with their values);
    /// jobs see nothing else of the agent's environment.
    pub pass_env: Vec<String>,
    /// Where the agent serves `/healthz`, `/readyz` and `/metrics`; unset: nowhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl Default for AgentSection {
    fn default() -> Self {
        AgentSection {
            name: crate::util::hostname(),
            concurrency: 2,
            parallel: 2,
            workspace_root: ".dockhand/work".into(),
            results_dir: ".dockhand/results".into(),
            state_dir: ".dockhand/state".into(),
            labels: Vec::new(),
            job_timeout: Duration::from_secs(3600),
            keep_workspace: KeepWorkspace::Never,
            keep_results: 50,
            shutdown_grace: Duration::from_secs(30),
            sweep_interval: Duration::from_secs(300),
            pass_env: Vec::new(),
            metrics_listen: None,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeepWorkspace {
    #[default]
    Never,
    OnFailure,
    Always,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DockerSection {
    /// The engine's address; unset means `DOCKER_HOST`, then the local socket.
    pub host: Option<String>,
    /// The driver of each job's own network.
    pub network: String,
    /// Memory limit for every task container; unset: half the host's memory.
    pub memory: Option<ByteSize>,
    /// CPUs for every task container, e.g. 1.5; unset: all of them.
    pub cpus: Option<f64>,
    /// Processes per task container; 0: no limit.
    pub pids_limit: u64,
    /// Task containers' processes cannot gain privileges (setuid binaries).
    pub no_new_privileges: bool,
    pub allow_host_mounts: Vec<PathBuf>,
    pub allow_docker_socket: bool,
    /// Network modes tasks may use besides their job's network and `none` (`host`,
    /// `bridge`, a network name, `container:NAME`, `container:*`).
    pub allow_network_modes: Vec<String>,
    /// Let containers publish ports on the host (`ports`, `publish_all_ports`).
    pub allow_published_ports: bool,
    /// Capabilities taken from every task container (Docker's defaults keep them).
    pub cap_drop: Vec<String>,
}

impl Default for DockerSection {
    fn default() -> Self {
        DockerSection {
            host: None,
            network: "bridge".to_owned(),
            memory: None,
            cpus: None,
            pids_limit: crate::executor::ContainerDefaults::PIDS_LIMIT as u64,
            no_new_privileges: true,
            allow_host_mounts: Vec::new(),
            allow_docker_socket: false,
            allow_network_modes: Vec::new(),
            allow_published_ports: false,
            cap_drop: crate::executor::ContainerDefaults::CAP_DROP
                .iter()
                .map(|c| (*c).to_owned())
                .collect(),
        }
    }
}

/// Values no sink may show. Jobs see them as environment variables (for config.yml's
/// `env` forms); every log, result and report shows `***` instead.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsSection {
    /// Names of the agent's own environment variables whose values are secret.
    pub from_env: Vec<String>,
    /// Secret values written here, by the name jobs see them under.
    pub values: BTreeMap<String, String>,
}

/// Values hidden: `dockhand agent --check` prints the settings.
impl Serialize for SecretsSection {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let hidden: BTreeMap<&str, &str> =
            self.values.keys().map(|k| (k.as_str(), "***")).collect();
        let mut section = s.serialize_struct("SecretsSection", 2)?;
        section.serialize_field("from_env", &self.from_env)?;
        section.serialize_field("values", &hidden)?;
        section.end()
    }
}

/// Names only: logs print settings.
impl std::fmt::Debug for SecretsSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretsSection")
            .field("from_env", &self.from_env)
            .field(
                "values",
                &self
                    .values
                    .keys()
                    .map(|k| format!("{k} = ***"))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceConfig {
    Watch(WatchSource),
    Schedule(ScheduleSource),
    Http(HttpSource),
}

/// Jobs from a dockhand job server.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSource {
    /// The server, or several replicas of it sharing one database (`url = ["http://a:8750",
    /// "http://b:8750"]`): calls move to the next on connection errors.
    #[serde(deserialize_with = "one_or_many", serialize_with = "one_or_many_out")]
    pub url: Vec<String>,
    /// The environment variable holding the server's registration token (used once; the
    /// agent's own token is kept in the state directory).
    #[serde(default = "default_token_env")]
    pub token_env: String,
    /// Whether this server's jobs may read the agent's own disk (`path` sources,
    /// `file://` and absolute-path git URLs); the server must allow them too.
    #[serde(default)]
    pub allow_local_sources: bool,
}

/// A string or an array of strings.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged, expecting = "a URL or an array of URLs")]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(url) => vec![url],
        OneOrMany::Many(urls) => urls,
    })
}

/// One URL as a string, several as an array: as written.
fn one_or_many_out<S: serde::Serializer>(urls: &[String], s: S) -> Result<S::Ok, S::Error> {
    match urls {
        [one] => s.serialize_str(one),
        many => many.serialize(s),
    }
}

fn default_token_env() -> String {
    "DOCKHAND_TOKEN".to_owned()
}

/// Runs a job whenever files in a checkout change.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WatchSource {
    pub path: PathBuf,
    #[serde(default = "default_config_file")]
    pub config: PathBuf,
    #[serde(default)]
    pub tasks: Vec<String>,
    /// Quiet time after the last change before a run starts.
    #[serde(
        default = "default_debounce",
        deserialize_with = "duration",
        serialize_with = "duration_text"
    )]
    pub debounce: Duration,
    /// A change during a run: `cancel` it and start again, or `queue` a run after it.
    #[serde(default)]
    pub on_change: OnBusy,
    #[serde(
        default,
        deserialize_with = "optional_duration",
        serialize_with = "optional_duration_text"
    )]
    pub timeout: Option<Duration>,
}

/// Runs a job on a cron schedule.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSource {
    /// Distinguishes schedules in results and state; defaults to the cron expression.
    pub name: Option<String>,
    /// Five fields (or six, with seconds first), or `@daily`-style aliases.
    pub cron: String,
    /// An IANA zone such as "Europe/Berlin"; defaults to UTC.
    pub timezone: Option<String>,
    pub path: Option<PathBuf>,
    pub git: Option<String>,
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    #[serde(default = "default_config_file")]
    pub config: PathBuf,
    #[serde(default)]
    pub tasks: Vec<String>,
    /// A random delay up to this long, so many agents do not start at the same second.
    #[serde(
        default,
        deserialize_with = "optional_duration",
        serialize_with = "optional_duration_text"
    )]
    pub jitter: Option<Duration>,
    /// A firing while the last run still runs: `skip` (default), `queue` or `parallel`.
    #[serde(default = "default_overlap")]
    pub overlap: OnBusy,
    /// One run at start when a due time passed while the agent was down.
    #[serde(default = "default_true")]
    pub catch_up: bool,
    #[serde(
        default,
        deserialize_with = "optional_duration",
        serialize_with = "optional_duration_text"
    )]
    pub timeout: Option<Duration>,
}

fn default_config_file() -> PathBuf {
    "config.yml".into()
}

fn default_debounce() -> Duration {
    Duration::from_millis(300)
}

fn default_overlap() -> OnBusy {
    OnBusy::Skip
}

fn default_true() -> bool {
    true
}

/// A `[[notify]]`: where the agent's jobs are reported when they fail or recover.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentNotify {
    /// A secret (a webhook's path is its credential): shown as `scheme://host/***`.
    #[serde(serialize_with = "serialize_redacted")]
    pub url: String,
    #[serde(default = "NotifyOn::default_list")]
    pub on: Vec<NotifyOn>,
    #[serde(default)]
    pub format: NotifyFormat,
    /// The schedules (by `name`, or `cron` when unnamed) and watched paths covered; unset:
    /// every schedule and watch source. Jobs from a job server are the server's to notify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources: Option<Vec<String>>,
}

impl AgentNotify {
    pub fn target(&self) -> NotifyTarget {
        NotifyTarget {
            url: self.url.clone(),
            on: self.on.clone(),
            format: self.format,
        }
    }

    /// Whether jobs of `stream` (`schedule:NAME`, `watch:PATH`) are reported here. After
    /// the settings are checked, a watched path in `sources` is absolute, as in the stream.
    pub fn covers(&self, stream: &str) -> bool {
        let Some((kind, name)) = stream.split_once(':') else {
            return false;
        };
        match &self.sources {
            None => matches!(kind, "schedule" | "watch"),
            Some(sources) => {
                matches!(kind, "schedule" | "watch") && sources.iter().any(|s| s == name)
            }
        }
    }
}

/// The URL redacted: logs print settings.
impl std::fmt::Debug for AgentNotify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentNotify")
            .field("url", &redact_url(&self.url))
            .field("on", &self.on)
            .field("format", &self.format)
            .field("sources", &self.sources)
            .finish()
    }
}
