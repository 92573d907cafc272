//! Exit codes of `dockhand`. A failing task's own exit code (1–125) is passed through, so
//! dockhand's own codes sit above that range.

/// Everything passed.
pub const SUCCESS: u8 = 0;
/// Bad command-line usage (clap's convention).
pub const USAGE: u8 = 2;
pub use crate::executor::codes::{BUILD_FAILED, CONFIG_ERROR, INFRASTRUCTURE};
