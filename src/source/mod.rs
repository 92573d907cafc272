//! Where jobs come from besides the command line: a watched checkout, cron schedules and
//! the job server.
//! Each source is a task that sends [`SourceEvent`]s to the agent's dispatcher and stops
//! when its cancellation token does.

pub mod http;
mod schedule;
mod watch;

pub use schedule::{Schedule, run_schedule};
pub use watch::{WatchError, run_watch};

use crate::job::Job;

#[derive(Debug)]
pub enum SourceEvent {
    Job(Box<Job>),
    /// Something the operator must see; the source keeps going when it can.
    Problem {
        stream: String,
        message: String,
    },
}
