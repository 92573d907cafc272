//! Command-line arguments.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The version with the commit it was built from and that commit's date (build.rs), so a
/// bug report names the exact code.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("DOCKHAND_COMMIT"),
    " ",
    env!("DOCKHAND_COMMIT_DATE"),
    ")"
);

/// A self-hosted CI agent for Docker builds described by harpoon-style config.yml files.
#[derive(Debug, Parser)]
#[command(name = "dockhand", version = VERSION, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Before the command, for those that read a config (as after it)
    #[command(flatten)]
    pub config: ConfigArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build images (all of them when none is named), dependencies first
    Build {
        /// Images by their name in the config
        images: Vec<String>,
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        job: JobArgs,
    },
    /// Build what the tasks need and run them (the pipeline when none is named)
    Run {
        /// Tasks, run one after another
        tasks: Vec<String>,
        /// Extra arguments, for `{$@}` in the config
        #[arg(last = true)]
        args: Vec<String>,
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        job: JobArgs,
        #[command(flatten)]
        sandbox: SandboxArgs,
    },
    /// Write a commented config.yml here, from ./Dockerfile when there is one
    Init {
        /// The Dockerfile to start from [default: ./Dockerfile when present]
        #[arg(long, value_name = "FILE")]
        dockerfile: Option<PathBuf>,
        /// The image's name [default: this directory's]
        #[arg(long)]
        name: Option<String>,
    },
    /// Validate the config: report every problem with file:line:column, or a summary
    Check {
        /// Print the result as JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Show images (full names, dependencies), tasks and the pipeline
    List {
        /// Print the resolved config and default plan as JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Run as an agent: jobs from the sources in agent.toml, each in its own workspace
    Agent {
        /// agent.toml [default: DOCKHAND_AGENT_CONFIG, then ./agent.toml when present]
        #[arg(long, value_name = "FILE")]
        agent_config: Option<PathBuf>,
        /// Check the settings (every layer) and print them, without running
        #[arg(long)]
        check: bool,
        #[command(flatten)]
        agent: AgentArgs,
    },
    /// Watch a checkout and run its pipeline (or TASKs) whenever files change
    Watch {
        /// The checkout to watch
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Tasks to run [default: the pipeline]
        tasks: Vec<String>,
        /// The config file in the checkout [default: config.yml]
        #[arg(short = 'c', long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Quiet time after the last change before a run, e.g. "300ms"
        #[arg(long, value_parser = crate::util::parse_duration, default_value = "300ms")]
        debounce: std::time::Duration,
        /// A change during a run cancels it and starts again, or queues a run after it
        #[arg(long, value_enum, default_value = "cancel")]
        on_change: OnChange,
        #[command(flatten)]
        agent: AgentArgs,
    },
    /// Run the job server that agents poll (docs/protocol.md)
    Server(ServerArgs),
    /// Submit a job to the job server; prints its id
    Submit(SubmitArgs),
    /// List the job server's jobs, newest first
    Jobs {
        #[command(flatten)]
        server: ServerAddress,
        /// How many (1–1000)
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        /// Print them as JSON
        #[arg(long)]
        json: bool,
        /// Colour states: `auto` on a terminal unless NO_COLOR is set
        #[arg(long, value_enum, default_value_t, value_name = "WHEN")]
        color: crate::report::ColorChoice,
    },
    /// Print a job's log from the job server
    Logs {
        #[command(flatten)]
        server: ServerAddress,
        /// The job's id, as `submit` and `jobs` print it
        job: String,
        /// Keep printing as the log grows, until the job ends
        #[arg(short, long)]
        follow: bool,
    },
    /// Cancel a job on the job server (a running one stops within a lease renewal)
    Cancel {
        #[command(flatten)]
        server: ServerAddress,
        /// The job's id, as `submit` and `jobs` print it
        job: String,
    },
    /// Run an ended job of the job server again: a new job with its spec; prints the id
    Rerun {
        #[command(flatten)]
        server: ServerAddress,
        /// The job's id, as `submit` and `jobs` print it
        job: String,
        /// Follow the new job's log until it ends and exit with its exit code (as `logs -f`);
        /// its id goes to stderr
        #[arg(long)]
        wait: bool,
    },
    /// Print a shell's completion script: `dockhand completions bash > /etc/bash_completion.d/dockhand`
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `dockhand man > /usr/local/share/man/man1/dockhand.1`
    Man,
    /// Print an image's generated Dockerfile exactly as it will be sent
    Dockerfile {
        /// The image, by its name in the config
        image: String,
        /// Show the image as this task sees it (with the task's options and overrides)
        #[arg(long)]
        task: Option<String>,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

impl Cli {
    /// Which config.yml the command reads (given before or after the command name), for
    /// those that read one; an error names a command that reads none but was given one.
    pub fn config_args(&self, command_name: &str) -> Result<Option<ConfigArgs>, String> {
        let given = self.config.config.is_some() || self.config.no_harpoonrc;
        let merged = |own: &ConfigArgs| ConfigArgs {
            config: own.config.clone().or_else(|| self.config.config.clone()),
            no_harpoonrc: own.no_harpoonrc || self.config.no_harpoonrc,
        };
        match &self.command {
            Command::Build { config, .. }
            | Command::Run { config, .. }
            | Command::Check { config, .. }
            | Command::List { config, .. }
            | Command::Dockerfile { config, .. } => Ok(Some(merged(config))),
            Command::Watch { .. } if !self.config.no_harpoonrc => Ok(None),
            _ if given => Err(format!(
                "`{command_name}` reads no config.yml: `-c` and `--no-harpoonrc` mean nothing to it"
            )),
            _ => Ok(None),
        }
    }
}

/// Which config to read: options of the commands that read one.
#[derive(Debug, Default, clap::Args)]
pub struct ConfigArgs {
    /// The config file [default: DOCKHAND_CONFIG, HARPOON_CONFIG, ./config.yml, then
    /// ./harpoon.yml]
    #[arg(short = 'c', long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Do not load ~/.harpoonrc.yml beneath the config
    #[arg(long)]
    pub no_harpoonrc: bool,
}

/// Options of `build` and `run`.
#[derive(Debug, clap::Args)]
pub struct JobArgs {
    /// Print the job's events as JSON lines instead of the console report
    #[arg(long)]
    pub json: bool,
    /// Colour statuses: `auto` on a terminal unless NO_COLOR is set
    #[arg(long, value_enum, default_value_t, value_name = "WHEN")]
    pub color: crate::report::ColorChoice,
    /// Where result.json and the logs go [default: <config dir>/.dockhand/results]
    #[arg(long, value_name = "DIR")]
    pub results_dir: Option<PathBuf>,
    /// Stages of one kind running at once
    #[arg(short = 'j', long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub parallel: u16,
    /// Build every step again, ignoring the engine's cache
    #[arg(long)]
    pub no_cache: bool,
    /// The engine's address [default: DOCKER_HOST, then the local socket]
    #[arg(long, value_name = "URL")]
    pub docker_host: Option<String>,
}

/// Options of `run` for its task containers: limits and how far the sandbox is widened.
#[derive(Debug, Default, clap::Args)]
pub struct SandboxArgs {
    /// Time limit for each task without a pipeline timeout: seconds, or e.g. "90s", "10m"
    #[arg(long, value_parser = crate::util::parse_duration, value_name = "DURATION")]
    pub timeout: Option<std::time::Duration>,
    /// A host directory tasks may mount besides the workspace (repeatable)
    #[arg(long = "allow-host-mount", value_name = "DIR")]
    pub allow_host_mounts: Vec<PathBuf>,
    /// Let tasks mount the Docker socket
    #[arg(long)]
    pub allow_docker_socket: bool,
    /// A network mode tasks may use besides the job's own network and `none`: `host`,
    /// `bridge`, a network name, `container:NAME` or `container:*` (repeatable)
    #[arg(long = "allow-network-mode", value_name = "MODE")]
    pub allow_network_modes: Vec<String>,
    /// Let tasks publish ports on the host (`ports`, `publish_all_ports`)
    #[arg(long)]
    pub allow_published_ports: bool,
    /// Memory limit of each task container, e.g. "2g" [default: half the host's memory]
    #[arg(long, value_parser = crate::config::ByteSize::parse, value_name = "SIZE")]
    pub memory: Option<crate::config::ByteSize>,
    /// CPUs of each task container, e.g. 1.5 [default: all]
    #[arg(long, value_parser = cpus, value_name = "N")]
    pub cpus: Option<f64>,
    /// Processes in each task container; 0 for no limit [default: 4096]
    #[arg(long, value_name = "N")]
    pub pids_limit: Option<u64>,
}

/// What `dockhand watch` does with a change during a run.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum OnChange {
    Cancel,
    Queue,
}

/// Options of `agent` and `watch`: each overrides the agent.toml key it names.
#[derive(Clone, Debug, clap::Args)]
pub struct AgentArgs {
    /// Print job events as JSON lines instead of the console report
    #[arg(long)]
    pub json: bool,
    /// Colour statuses: `auto` on a terminal unless NO_COLOR is set
    #[arg(long, value_enum, default_value_t, value_name = "WHEN")]
    pub color: crate::report::ColorChoice,
    /// agent.concurrency: jobs at once
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,
    /// agent.name: labels every Docker object this agent creates [default: the hostname;
    /// for watch, one name per checkout]
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Any agent.toml key, e.g. `--set docker.memory=2g` (repeatable)
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = key_value)]
    pub overrides: Vec<(String, String)>,
    /// The agent's own log lines on stderr: text, or JSON objects for log shippers
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: crate::logging::LogFormat,
}

fn cpus(text: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|c| *c > 0.0 && *c <= 1024.0)
        .ok_or_else(|| format!("`{text}` is not a positive number of CPUs"))
}

fn key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("`{text}` is not KEY=VALUE"))
}

/// Options of `server`. Each flag given overrides its server.toml key (the same name with
/// `_` for `-`).
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// server.toml: every setting below, the repositories webhooks build and the
    /// notification hooks [default: DOCKHAND_SERVER_CONFIG, else none]
    #[arg(long, value_name = "FILE", env = "DOCKHAND_SERVER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Check the settings (every layer) and print them, secrets hidden, without serving
    #[arg(long)]
    pub check: bool,
    /// Address to listen on (port 0 picks a free one; the address is printed)
    /// [default: 127.0.0.1:8750]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// The SQLite database file (job logs go to logs/ beside it), or a postgres:// URL
    /// that several servers share [default: .dockhand/server/jobs.db]
    #[arg(long, value_name = "FILE|URL")]
    pub database: Option<String>,
    /// Connections to PostgreSQL this server keeps open, at least 2 [default: 16]
    #[arg(long, value_name = "N")]
    pub database_pool: Option<u32>,
    /// Token agents register with
    #[arg(long, env = "DOCKHAND_REGISTRATION_TOKEN", hide_env_values = true)]
    pub registration_token: Option<String>,
    /// Token for submitting, listing, reading and cancelling jobs
    #[arg(long, env = "DOCKHAND_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// How long an offer waits to be accepted before its job is queued again [default: 15s]
    #[arg(long, value_name = "DURATION")]
    pub offer_ttl: Option<String>,
    /// A lease's length; a job whose lease lapses is lost [default: 30s]
    #[arg(long, value_name = "DURATION")]
    pub lease: Option<String>,
    /// The longest a claim waits for a job [default: 30s]
    #[arg(long, value_name = "DURATION")]
    pub claim_wait: Option<String>,
    /// Secret shared with GitHub/Gitea webhooks (webhooks are off without one)
    #[arg(long, env = "DOCKHAND_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// A repository whose pushes and pull requests build, `[gitea:]owner/name[=task,task]`
    /// (GitHub unless it says Gitea), every other setting at its default (repeatable; added
    /// to server.toml's)
    #[arg(long = "build-repo", value_name = "REPO")]
    pub repositories: Vec<crate::server::Repository>,
    /// Where people reach this server, for the links in commit statuses [default: the
    /// listening address]
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
    /// Let jobs name the agent's own disk: `path` sources, `file://` and absolute-path git
    /// URLs (agents must allow them too)
    #[arg(long)]
    pub allow_local_sources: bool,
    /// A connection that has not sent a request's headers within this is closed
    /// [default: 10s]
    #[arg(long, value_name = "DURATION")]
    pub header_timeout: Option<String>,
    /// A request whose body has not arrived whole within this is answered 408 [default: 60s]
    #[arg(long, value_name = "DURATION")]
    pub body_timeout: Option<String>,
    /// Connections served at once; further ones wait to be accepted [default: 512]
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Log lines on stderr: text, or JSON objects for log shippers
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: crate::logging::LogFormat,
}

/// Where the job server is, and the admin token for it.
#[derive(Clone, Debug, clap::Args)]
pub struct ServerAddress {
    /// The job server
    #[arg(
        long,
        env = "DOCKHAND_SERVER",
        default_value = "http://127.0.0.1:8750",
        value_name = "URL"
    )]
    pub server: String,
    /// The server's admin token
    #[arg(long, env = "DOCKHAND_ADMIN_TOKEN", hide_env_values = true)]
    pub token: String,
}

/// Options of `submit`: one source, `--git` or `--path`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").args(["git", "path"])))]
pub struct SubmitArgs {
    #[command(flatten)]
    pub server: ServerAddress,
    /// A git repository to build
    #[arg(long, value_name = "URL")]
    pub git: Option<String>,
    /// The branch or tag (with --git)
    #[arg(long = "ref", value_name = "REF", requires = "git")]
    pub reference: Option<String>,
    /// The commit (with --git); wins over --ref
    #[arg(long, value_name = "SHA", requires = "git")]
    pub commit: Option<String>,
    /// A directory on the agent's machine to build
    #[arg(long, value_name = "DIR")]
    pub path: Option<String>,
    /// The config file in the repository
    #[arg(
        short = 'c',
        long = "config",
        alias = "config-file",
        default_value = "config.yml",
        value_name = "FILE"
    )]
    pub config_file: String,
    /// A task to run (repeatable; none runs the pipeline)
    #[arg(long = "task", value_name = "TASK")]
    pub tasks: Vec<String>,
    /// An environment variable for the job, NAME=VALUE (repeatable)
    #[arg(long = "env", value_name = "NAME=VALUE", value_parser = key_value)]
    pub env: Vec<(String, String)>,
    /// A label the agent must have (repeatable)
    #[arg(long = "label", value_name = "LABEL")]
    pub labels: Vec<String>,
    /// The job's time limit, e.g. "30m"
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// Follow the job's log until it ends and exit with its exit code (as `logs -f`);
    /// the job's id goes to stderr
    #[arg(long)]
    pub wait: bool,
}
