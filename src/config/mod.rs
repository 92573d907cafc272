//! `agent.toml`: the agent's own settings, layered built-in defaults →
//! file → `DOCKHAND__SECTION__KEY` environment → command-line flags.

mod agent;
mod cron;
mod fields;
mod layers;
mod load;
mod server;
mod values;

pub use agent::{
    AgentConfig, AgentNotify, AgentSection, DockerSection, HttpSource, KeepWorkspace,
    ScheduleSource, SecretsSection, SourceConfig, WatchSource,
};
pub use cron::{CronTimes, ScheduleError};
pub use layers::{Layers, Origin, Override, Problem};
pub use load::{LoadOptions, SettingsError, load, load_with_origins};
pub use server::{SERVER_SCHEMA, ServerConfig, ServerNotify, load_server};
pub use values::ByteSize;
