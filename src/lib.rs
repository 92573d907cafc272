//! dockhand: a self-hosted CI agent for Docker builds described by harpoon-style
//! `config.yml` files.
//!
//! # Layout
//!
//! The modules follow a job's data flow; `docs/architecture.md` says what each may import
//! and how a job moves through them.
//!
//! - [`collector`]: config.yml files → a validated, fully resolved `Config`, or every
//!   problem with file, line, column and key path.
//! - [`plan`]: a `Config` and a request (tasks, pipeline, images) → build and run stages
//!   with their edges and parallel layers.
//! - [`build`]: what a build needs besides the engine: contexts, build keys, caches.
//! - [`docker`]: the only module that talks to the engine: builds, containers, networks,
//!   wait conditions.
//! - [`executor`]: walks a plan, stages as their dependencies finish, every object it
//!   creates removed on every path; the engine behind its `ContainerEngine` trait.
//! - [`pipeline`]: one job start to end (workspace, collect, plan, policy, sinks,
//!   executor, cleanup), the same for `dockhand run` and the agent.
//! - [`events`]: what a job does, as events, on a bounded channel.
//! - [`report`]: the sinks for those events: console, JSON lines, results directory,
//!   junit.xml, with secrets masked before any of them.
//! - [`job`]: the `Job` every source produces.
//! - [`files`]: dockhand's own files in directories a repository can reach: no links
//!   followed, no unbounded reads.
//! - [`config`]: agent.toml, layered.
//! - [`workspace`]: per-job directories filled from a checkout or a git repository.
//! - [`source`]: where an agent's jobs come from: watched checkouts, cron schedules, the
//!   job server.
//! - [`agent`]: the long-running supervisor: one dispatcher loop, concurrency, the stop
//!   sequence, the sweep of dead jobs' leftovers.
//! - [`protocol`]: the job server's wire types and API client, shared by both ends.
//! - [`server`]: the job server agents poll (`docs/protocol.md`).
//! - [`cli`]: the `dockhand` command line: argument parsing, one file per command.
//! - Leaves any module may use: [`util`], [`graph`] (dependency graphs), [`files`],
//!   [`exit_code`], [`cancel`] (cancellation with a reason), [`signals`].

pub mod agent;
pub mod artifacts;
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
pub mod graph;
pub mod job;
pub mod logging;
pub mod metrics;
pub mod notifications;
pub mod pipeline;
pub mod plan;
pub mod protocol;
pub mod report;
pub mod server;
pub mod signals;
pub mod source;
pub mod testreport;
pub mod util;
pub mod workspace;
