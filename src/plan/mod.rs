//! A [`Config`](crate::collector::Config) and a request (tasks, the pipeline, images) →
//! the stages to run and the edges between them.

mod commands;
mod stages;

pub use commands::{CommandSource, Commandless};
pub use stages::{BuildStage, Plan, PlanError, Request, RunStage};
