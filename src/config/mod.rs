//! `agent.toml`: the agent's own settings (DESIGN.md §3), layered built-in defaults →
//! file → `DOCKHAND__SECTION__KEY` environment → command-line flags.

mod agent;
mod load;
mod values;

pub use agent::{
    AgentConfig, AgentSection, DockerSection, HttpSource, KeepWorkspace, ScheduleSource,
    SecretsSection, SourceConfig, WatchSource,
};
pub use load::{AgentConfigError, LoadOptions, load};
pub use values::{ByteSize, parse_duration};
