//! The job server as a source: [`claim`] takes jobs, [`upload`] sends each one's lease
//! renewals, log, events and result back, [`client`] makes the calls and retries them.

pub mod claim;
pub mod client;
pub mod upload;

pub use claim::{AgentInfo, HttpSourceError, run_http};
pub use upload::{Upload, resume_uploads};
