//! A [`Config`](crate::collector::Config) and a request (tasks, the pipeline, images) →
//! the stages to run and the edges between them.

mod stages;

pub use stages::{BuildStage, Plan, PlanError, Request, RunStage};
