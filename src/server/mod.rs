//! The job server (docs/protocol.md): agents register, claim jobs by long poll, accept an
//! offer for a lease, upload logs by byte offset and events by sequence number, and report
//! results checked against the log's sha256. The only module that uses the HTTP server and
//! the database.

mod api;
mod forge;
mod metrics;
mod serve;
mod settings;
mod store;
mod webhook;

pub use serve::{ServeError, serve};
pub use settings::{ApiToken, Database, Forks, Repository, ServerSettings};
pub use store::{
    Accept, Expired, Finish, JobStore, LogAppend, POOL_SIZE, PgStore, Renew, SqliteStore,
    StoreError, StoreStats, Stored,
};
