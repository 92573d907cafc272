//! Exit codes of `dockhand`. A failing task's own exit code (1–125) is passed through, so
//! dockhand's own codes sit above that range.

/// Everything passed.
pub const SUCCESS: u8 = 0;
/// Bad command-line usage (clap's convention).
pub const USAGE: u8 = 2;
/// The configuration has errors; nothing was built or run.
pub const CONFIG_ERROR: u8 = 200;
/// An image failed to build.
pub const BUILD_FAILED: u8 = 201;
/// Infrastructure broke (Docker unreachable, disk full): the job could not be carried out.
pub const INFRASTRUCTURE: u8 = 202;
