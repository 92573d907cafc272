//! Walking a [`Plan`](crate::plan::Plan): build stages as their dependencies finish (up to a
//! parallel limit), then run stages as their `needs` finish, each task with its dependency
//! containers on its own network. Every stage's end is an event; the job's result is data.
//! The engine is reached through [`ContainerEngine`]: [`crate::docker::Engine`] in
//! production, a scripted fake in this module's tests.

mod binds;
mod copy_out;
mod engine;
#[cfg(test)]
mod fake;
mod job;
mod policy;
mod task;
#[cfg(test)]
mod tests;

pub use binds::make_own_dir;
pub use engine::{ContainerEngine, Output};
pub use job::{
    ContainerDefaults, ExecutorOptions, JobNetwork, JobOutcome, report_unrunnable, run_job,
};
pub use policy::{PolicyError, Sandbox, Widening, check_policy};
