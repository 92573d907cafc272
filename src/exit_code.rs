//! Every exit code dockhand gives, for a job and for the process. A failing task's own
//! exit code (1–125) is passed through, so dockhand's own codes sit outside that range.

/// Everything passed.
pub const SUCCESS: u8 = 0;
/// Bad command-line usage (clap's convention).
pub const USAGE: u8 = 2;
/// The job's (or a task's) time limit passed (as `timeout(1)`).
pub const TIMED_OUT: u8 = 124;
/// The job was cancelled (as a shell killed by SIGINT).
pub const CANCELLED: u8 = 130;
/// The configuration (or the policy it breaks) stops the job before anything runs.
pub const CONFIG_ERROR: u8 = 200;
/// An image failed to build.
pub const BUILD_FAILED: u8 = 201;
/// Infrastructure broke (Docker unreachable, disk full): the job could not be carried out.
pub const INFRASTRUCTURE: u8 = 202;
