//! The process's log: tracing events on stderr as text (for people) or one JSON object a
//! line (for log shippers), `RUST_LOG` filtering either. Long-running commands (`server`,
//! `agent`, `watch`) log at `info` by default, the others only errors.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    /// tracing-subscriber's JSON: `timestamp`, `level`, `fields` (`message`, `job`, …),
    /// `target`.
    Json,
}

static JSON: AtomicBool = AtomicBool::new(false);

/// Installs the process's subscriber; `default` is the level when `RUST_LOG` is unset.
pub fn init(format: LogFormat, default: LevelFilter) {
    let filter = EnvFilter::builder()
        .with_default_directive(default.into())
        .from_env_lossy();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    JSON.store(format == LogFormat::Json, Ordering::Relaxed);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Whether log lines are JSON: then a process's own console lines go through the log too,
/// so every line a shipper reads parses.
pub fn json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// A line for the operator from `who` (`agent`, `server`): plain text on stderr, or an
/// `info` event (with the job's id as `job` when there is one) when the log is JSON.
pub fn say(who: &str, job: Option<&str>, text: &str) {
    match (json(), job) {
        // A closed stderr (`agent 2>&1 | head`) must not end the agent.
        (false, _) => {
            use std::io::Write;
            let _ = writeln!(std::io::stderr().lock(), "{who}: {text}");
        }
        (true, Some(job)) => tracing::info!(target: "dockhand", job, "{text}"),
        (true, None) => tracing::info!(target: "dockhand", "{text}"),
    }
}
