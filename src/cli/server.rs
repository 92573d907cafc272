//! `dockhand server`: serve the job API until SIGTERM or Ctrl-C.

use super::args::ServerArgs;
use super::runtime::{self, Threads};
use crate::exit_code;
use crate::server::{ServerSettings, serve};
use crate::signals::{Control, Signals};

pub fn run(args: &ServerArgs) -> u8 {
    if args.registration_token.len() < 16 || args.admin_token.len() < 16 {
        eprintln!("error: the registration and admin tokens must be at least 16 characters");
        return exit_code::USAGE;
    }
    if args.webhook_secret.as_ref().is_some_and(|s| s.len() < 16) {
        eprintln!(
            "error: --webhook-secret (DOCKHAND_WEBHOOK_SECRET) must be at least 16 bytes: a short one is guessed, an empty one signs anything"
        );
        return exit_code::USAGE;
    }
    let settings = ServerSettings {
        listen: args.listen,
        database: args.database.clone(),
        database_pool: args.database_pool,
        registration_token: args.registration_token.clone(),
        admin_token: args.admin_token.clone(),
        offer_ttl: args.offer_ttl,
        lease: args.lease,
        claim_wait: args.claim_wait,
        log_flush: std::time::Duration::from_millis(200),
        log_chunk_max: 1 << 20,
        webhook_secret: args.webhook_secret.clone(),
        header_timeout: args.header_timeout,
        body_timeout: args.body_timeout,
        max_connections: args.max_connections,
        allow_local_sources: args.allow_local_sources,
        repositories: args.repositories.clone(),
        public_url: args.public_url.clone(),
    };
    let Some(runtime) = runtime::start(Threads::Two) else {
        return exit_code::INFRASTRUCTURE;
    };
    runtime.block_on(async move {
        let mut signals = match Signals::listen(Control::Stop) {
            Ok(signals) => signals,
            Err(e) => {
                eprintln!("error: {e}");
                return exit_code::INFRASTRUCTURE;
            }
        };
        let shutdown = tokio_util::sync::CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            signals.recv().await;
            stop.cancel();
        });
        let database = settings.database.clone();
        let served = serve(settings, shutdown, |address| {
            let text = format!("listening on http://{address} (database {database})");
            crate::logging::say("server", None, &text);
        })
        .await;
        match served {
            Ok(()) => exit_code::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                exit_code::INFRASTRUCTURE
            }
        }
    })
}
