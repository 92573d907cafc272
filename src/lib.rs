//! dockhand: a self-hosted CI agent for Docker builds described by harpoon-style
//! `config.yml` files.
//!
//! # Layout
//!
//! The modules follow the data flow of `DESIGN.md`:
//!
//! - [`collector`]: config.yml files → a validated, fully resolved `Config`, or every
//!   problem with file, line, column and key path.
//! - [`plan`]: a `Config` and a request (tasks, pipeline, images) → build and run stages
//!   with their edges and parallel layers.
//! - [`build`]: what a build needs besides the engine: contexts, build keys, caches.
//! - [`docker`]: the only module that talks to the engine: builds, containers, networks,
//!   wait conditions.
//! - [`executor`]: walks a plan, stages as their dependencies finish, every object it
//!   creates removed on every path; it asks the engine through a trait, so it is tested
//!   against a fake.
//! - [`events`]: what a job does, as events, on a bounded channel.
//! - [`report`]: the sinks for those events: console, JSON lines, results directory,
//!   junit.xml, with secrets masked before any of them.
//! - [`job`]: the `Job` every source produces.
//! - [`files`]: dockhand's own files in directories a repository can reach: no links
//!   followed, no unbounded reads.
//! - [`config`]: agent.toml, layered.
//! - [`workspace`]: per-job directories filled from a checkout or a git repository.
//! - [`source`]: where an agent's jobs come from: watched checkouts, cron schedules.
//! - [`agent`]: the long-running supervisor: one dispatcher loop, concurrency, signals,
//!   the sweep of dead jobs' leftovers.
//! - [`server`]: the job server agents poll (DESIGN.md §4).
//! - [`cli`]: the `dockhand` command line: argument parsing, output, exit codes.

pub mod agent;
pub mod build;
pub mod cancel;
pub mod cli;
pub mod collector;
pub mod config;
pub mod docker;
pub mod events;
pub mod executor;
pub mod exit_code;
pub mod files;
pub mod job;
pub mod plan;
pub mod report;
pub mod server;
pub mod source;
pub mod util;
pub mod workspace;
