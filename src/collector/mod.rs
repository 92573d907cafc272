//! config.yml files → a validated [`Config`]. Synchronous, no I/O beyond reading the
//! config files, so every rule is unit-testable without Docker.
//!
//! The stages, in order: [`yaml`] parses each file into located [`node`]s, [`load`] merges
//! the files, [`format`] resolves `{...}` references lazily as [`image`], [`commands`],
//! [`context`], [`run`] and [`task`] read typed options through [`read`], and [`collect`]
//! ties them together. Every problem becomes a [`diagnostic`].

mod collect;
mod commands;
mod context;
pub mod diagnostic;
mod format;
mod image;
mod load;
pub mod model;
pub mod node;
mod read;
mod run;
mod suggest;
mod task;
mod yaml;

pub use collect::{CollectOptions, Collected, collect};
pub use diagnostic::{Diagnostic, Diagnostics, Problem, Severity};
pub use model::*;
pub use node::{KeyPath, Location};
pub use run::valid_env_name;
pub use suggest::closest;
