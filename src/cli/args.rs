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
