//! What the collector produces: a fully resolved configuration. Every reference is
//! formatted, every image has its Dockerfile text and full name, every task knows the images
//! in effect for it. Nothing here needs the YAML any more.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use serde::{Serialize, Serializer};

use super::node::Location;

/// Images by their name in the config, in the order they were written.
pub type Images = IndexMap<String, Image>;

/// Images that need environment values the collection did not have (`{NAME:from_env}`
/// unset), each with the located problems. harpoon resolves an image only when it is
/// used, so only a job that builds or runs one of these fails.
pub type Unresolved = IndexMap<String, Vec<String>>;

#[derive(Clone, Debug, Serialize)]
pub struct Config {
    /// The main file's directory: `{config_root}` and relative paths start here.
    pub config_root: PathBuf,
    /// The main config file, the one a job names (not `~/.harpoonrc.yml` beneath it nor
    /// the files it pulls in).
    pub config_file: PathBuf,
    /// Every file that went into this configuration, in load order.
    pub files: Vec<PathBuf>,
    pub shape: Shape,
    pub images: Arc<Images>,
    #[serde(skip_serializing_if = "IndexMap::is_empty")]
    pub unresolved: Arc<Unresolved>,
    pub tasks: IndexMap<String, Task>,
    pub pipeline: Vec<PipelineStep>,
    pub secrets: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    /// Top-level `tag` and `commands`: one image, built and run.
    SingleImage,
    /// `images:` and tasks.
    Harpoon,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Image {
    pub name: String,
    /// `image_index` + `image_name_prefix-` + name + `:tag`: what the engine will call it.
    pub full_name: String,
    #[serde(serialize_with = "display")]
    pub location: Location,
    pub build: Build,
    pub run: RunOptions,
}

/// Everything needed to build an image, except reading the context's files.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Build {
    /// The Dockerfile exactly as it will be sent.
    pub dockerfile: String,
    /// Files the Dockerfile ADDs that the config wrote inline, named by content hash.
    pub generated_files: Vec<GeneratedFile>,
    /// Other directories the Dockerfile ADDs, placed in the context under `name`.
    pub extra_contexts: Vec<ExtraContext>,
    /// `None` when `context: false`: only generated files are sent.
    pub context: Option<Context>,
    /// Images of this config that must be built first (FROM, COPY --from, content from an
    /// image), in first-use order.
    pub depends_on: Vec<String>,
    /// Base images not built by this config; they must already exist in the engine.
    pub external_bases: Vec<String>,
    /// Images the engine may take cached layers from (harpoon's `cache_from`); a hint that
    /// changes no build's result, so no build key includes it.
    pub cache_from: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GeneratedFile {
    pub name: String,
    pub contents: String,
    pub mode: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExtraContext {
    pub name: String,
    pub context: Context,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Context {
    pub parent_dir: PathBuf,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub use_gitignore: bool,
}

/// How a task's container runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RunOptions {
    pub command: Option<RunCommand>,
    pub env: Vec<EnvVar>,
    pub ports: Vec<PortMapping>,
    pub mounts: Vec<Mount>,
    /// Images whose dependency containers share their volumes with this one.
    pub share_with: Vec<String>,
    pub links: Vec<Link>,
    pub wait_condition: Option<WaitCondition>,
    /// Options for this image's dependency containers, by image name.
    pub dependency_options: IndexMap<String, DependencyOptions>,
    pub user: Option<String>,
    pub cpu: Cpu,
    pub network: Network,
    /// harpoon's `container_name`: one more name the container answers to on the job's
    /// network (dockhand names containers itself, per job).
    pub container_name: Option<String>,
    pub ulimits: Vec<Ulimit>,
    pub read_only_rootfs: bool,
    /// The task's own test results, read from its container when it ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reports: Option<Reports>,
    /// Files the task makes, kept in the job's results when its container ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<Artifacts>,
}

/// `artifacts:` — container paths or globs copied out of the task's container.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Artifacts {
    pub paths: Vec<String>,
    pub when: ArtifactsWhen,
    /// The most bytes of all the task's artifacts together.
    pub max_size: u64,
    pub max_files: u64,
    /// Whether a path that matches nothing fails the stage (otherwise a warning).
    pub required: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactsWhen {
    Always,
    OnSuccess,
    OnFailure,
}

/// `reports:` — test result files the task writes, as container paths or globs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Reports {
    pub junit: Vec<String>,
    /// Whether a task that exits 0 with failing tests in its report fails its stage.
    pub fail_on_failures: bool,
}

/// A resource limit inside the container (`nofile`, `nproc`, ...).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Ulimit {
    pub name: String,
    pub soft: i64,
    pub hard: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunCommand {
    /// An argv, run without a shell.
    Exec(Vec<String>),
    /// A script run as `shell -c script`.
    Shell { shell: String, script: String },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EnvVar {
    pub name: String,
    pub value: EnvValue,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EnvValue {
    /// `NAME=VALUE`
    Literal(String),
    /// `NAME`: the host's value, which must be set when the task starts.
    FromHost,
    /// `NAME:DEFAULT`: the host's value, or the default.
    FromHostOr(String),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PortMapping {
    pub host_ip: Option<String>,
    pub host_port: Option<u16>,
    pub container_port: u16,
    pub protocol: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Mount {
    pub host: PathBuf,
    pub container: String,
    pub read_only: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Link {
    pub image: String,
    pub alias: String,
}

/// When a dependency container counts as ready. Every check runs without a shell: ports
/// are tried from the agent, commands are `docker exec` of a plain argv.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WaitCondition {
    pub port_open: Vec<u16>,
    pub command: Vec<Vec<String>>,
    pub file_exists: Vec<String>,
    pub greps: IndexMap<String, String>,
    pub file_value: IndexMap<String, String>,
    #[serde(serialize_with = "duration")]
    pub timeout: Duration,
    #[serde(serialize_with = "duration")]
    pub wait_between_attempts: Duration,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DependencyOptions {
    pub env: Vec<EnvVar>,
    pub ports: Vec<PortMapping>,
    pub wait_condition: Option<WaitCondition>,
    /// Stream the dependency's output with the task's (default: only on failure).
    pub attached: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Cpu {
    pub cpu_shares: Option<u64>,
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
    pub cpu_period: Option<u64>,
    pub cpu_quota: Option<u64>,
    /// harpoon's `cpu.mem_limit` in bytes: the container gets the lower of this and the
    /// agent's memory limit.
    pub mem_limit: Option<i64>,
    /// Capabilities to drop besides the ones agents always drop.
    pub cap_drop: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Network {
    pub mode: Option<String>,
    pub hostname: Option<String>,
    pub domainname: Option<String>,
    pub dns: Vec<String>,
    pub dns_search: Vec<String>,
    pub extra_hosts: Vec<String>,
    pub disabled: bool,
    pub publish_all_ports: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Task {
    pub name: String,
    pub image: String,
    pub action: TaskAction,
    pub description: Option<String>,
    #[serde(serialize_with = "display")]
    pub location: Location,
    /// The images in effect for this task: the config's own, or a copy resolved with the
    /// task's `options` and `overrides`.
    #[serde(skip)]
    pub images: Arc<Images>,
    /// The images that need unset environment values, as the task sees them.
    #[serde(skip)]
    pub unresolved: Arc<Unresolved>,
}

impl Task {
    /// The task's image as the task sees it; `None` when it needs unset environment
    /// values (see [`Task::unresolved`]).
    pub fn image(&self) -> Option<&Image> {
        self.images.get(&self.image)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskAction {
    /// Build the image (and its dependencies), then run a container from it.
    Run,
    /// Build the image only.
    Make,
}

#[derive(Clone, Debug, Serialize)]
pub struct PipelineStep {
    pub task: String,
    pub needs: Vec<String>,
    #[serde(serialize_with = "optional_duration")]
    pub timeout: Option<Duration>,
    pub allow_failure: bool,
    pub env: Vec<EnvVar>,
    #[serde(serialize_with = "display")]
    pub location: Location,
}

fn display<T: std::fmt::Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

fn duration<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*value))
}

pub(crate) fn optional_duration<S: Serializer>(
    value: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(d) => duration(d, s),
        None => s.serialize_none(),
    }
}
