//! The job server as a source: [`claim`] takes jobs, [`upload`] sends each one's lease
//! renewals, log, events and result back, both through [`crate::protocol::client`].

pub mod claim;
pub mod upload;

pub use claim::{AgentInfo, HttpSourceError, run_http};
pub use upload::{Upload, resume_uploads};
