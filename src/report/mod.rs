//! Sinks: the console, JSON lines, and the results directory. The [`reporter`] receives the
//! job's events, turns output into whole lines once, keeps the [`record`] of every stage,
//! and hands both to each sink.

mod console;
mod event_file;
mod jsonl;
mod junit;
mod local;
mod mask;
mod metrics;
mod palette;
mod record;
mod reporter;
mod results;

pub use console::Console;
pub use jsonl::JsonLines;
pub use junit::JUnit;
pub use local::{ConsoleOutput, EVENTS_FILE, LocalReport};
pub use mask::{MASK, MIN_SECRET_LEN, Masker, secret_values};
pub use palette::{ColorChoice, Palette};
pub use record::{JobRecord, StageRecord};
pub use reporter::{Sink, report};
pub use results::{JobInfo, KeptWorkspace, ResultsDir, prune_results};
