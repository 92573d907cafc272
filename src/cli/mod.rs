//! The `dockhand` command line: [`args`] defines it, [`app`] dispatches, one file per
//! subcommand does the work, [`crate::exit_code`] lists the exit codes.

mod agent;
mod app;
pub mod args;
mod check;
mod dockerfile;
mod init;
mod job;
mod list;
mod output;
mod remote;
mod runtime;
mod server;
mod terminal;

pub use app::main;
