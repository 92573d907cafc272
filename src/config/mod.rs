//! `agent.toml`: the agent's own settings, layered built-in defaults →
//! file → `DOCKHAND__SECTION__KEY` environment → command-line flags.

mod agent;
mod cron;
mod fields;
mod layers;
mod load;
mod values;

pub use agent::{
    AgentConfig, AgentNotify, AgentSection, DockerSection, HttpSource, KeepWorkspace,
    ScheduleSource, SecretsSection, SourceConfig, WatchSource,
};
pub use cron::{CronTimes, ScheduleError};
pub use layers::{Layers, Origin, Problem};
pub use load::{AgentConfigError, LoadOptions, load, load_with_origins};
pub use values::ByteSize;
