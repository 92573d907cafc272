//! The async runtime each command starts, with the one error message for when it cannot.

use tokio::runtime::{Builder, Runtime};

/// One thread for one job (see `job.rs`), two workers for the agent and the server.
#[derive(Clone, Copy)]
pub enum Threads {
    One,
    Two,
}

/// The runtime, or `None` after saying why there is none.
pub fn start(threads: Threads) -> Option<Runtime> {
    let mut builder = match threads {
        Threads::One => Builder::new_current_thread(),
        Threads::Two => {
            let mut builder = Builder::new_multi_thread();
            builder.worker_threads(2);
            builder
        }
    };
    builder
        .enable_all()
        .build()
        .map_err(|e| eprintln!("error: cannot start the async runtime: {e}"))
        .ok()
}
