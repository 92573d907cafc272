//! The long-running agent: jobs from its sources (watched checkouts, schedules), each in
//! its own workspace, `concurrency` at a time, with leftovers of dead jobs swept away.
//! `state` decides, `dispatcher` carries out, `runner` runs one job, `sweep`
//! cleans up after jobs that are not running.

mod dispatcher;
mod health;
mod networks;
mod notify;
mod runner;
mod state;
mod sweep;

pub use dispatcher::{Agent, AgentError, AgentExit};
pub use networks::NetworkPool;
pub use runner::JobContext;
pub use state::{Action, AgentState};
pub use sweep::{Swept, sweep};
