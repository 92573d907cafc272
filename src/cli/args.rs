//! Command-line arguments.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// A self-hosted CI agent for Docker builds described by harpoon-style config.yml files.
#[derive(Debug, Parser)]
#[command(name = "dockhand", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// The config file [default: ./config.yml, then ./harpoon.yml; also HARPOON_CONFIG]
    #[arg(
        short = 'c',
        long,
        global = true,
        env = "DOCKHAND_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,

    /// Do not load ~/.harpoonrc.yml beneath the config
    #[arg(long, global = true)]
    pub no_harpoonrc: bool,

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
        job: JobArgs,
    },
    /// Validate the config: report every problem with file:line:column, or a summary
    Check {
        /// Print the result as JSON
        #[arg(long)]
        json: bool,
    },
    /// Show images (full names, dependencies), tasks and the pipeline
    List {
        /// Print the resolved config and default plan as JSON
        #[arg(long)]
        json: bool,
    },
    /// Print an image's generated Dockerfile exactly as it will be sent
    Dockerfile {
        /// The image, by its name in the config
        image: String,
        /// Show the image as this task sees it (with the task's options and overrides)
        #[arg(long)]
        task: Option<String>,
    },
}

/// Options of `build` and `run`.
#[derive(Debug, clap::Args)]
pub struct JobArgs {
    /// Print the job's events as JSON lines instead of the console report
    #[arg(long)]
    pub json: bool,
    /// Where result.json and the logs go [default: <config dir>/.dockhand/results]
    #[arg(long, value_name = "DIR")]
    pub results_dir: Option<PathBuf>,
    /// Stages of one kind running at once
    #[arg(short = 'j', long, default_value_t = 2)]
    pub parallel: usize,
    /// Build every step again, ignoring the engine's cache
    #[arg(long)]
    pub no_cache: bool,
    /// Time limit for each task without a pipeline timeout, e.g. "90s", "10m"
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub timeout: Option<std::time::Duration>,
    /// A host directory tasks may mount besides the workspace (repeatable)
    #[arg(long = "allow-host-mount", value_name = "DIR")]
    pub allow_host_mounts: Vec<PathBuf>,
    /// Let tasks mount the Docker socket
    #[arg(long)]
    pub allow_docker_socket: bool,
    /// The engine's address [default: DOCKER_HOST, then the local socket]
    #[arg(long, value_name = "URL")]
    pub docker_host: Option<String>,
}
