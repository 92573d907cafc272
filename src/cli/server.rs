//! `dockhand server`: serve the job API until SIGTERM or Ctrl-C.

use std::collections::HashMap;

use super::args::ServerArgs;
use super::output::checked_settings;
use super::runtime::{self, Threads};
use crate::config::{Override, load_server};
use crate::exit_code;
use crate::server::{ServerSettings, serve};
use crate::signals::{Control, Signals};

/// The flags given, as the server.toml keys they override.
fn overrides(args: &ServerArgs) -> Vec<Override> {
    let text = [
        ("listen", "--listen", args.listen.clone()),
        ("database", "--database", args.database.clone()),
        (
            "database_pool",
            "--database-pool",
            args.database_pool.map(|n| n.to_string()),
        ),
        (
            "registration_token",
            "--registration-token or DOCKHAND_REGISTRATION_TOKEN",
            args.registration_token.clone(),
        ),
        (
            "admin_token",
            "--admin-token or DOCKHAND_ADMIN_TOKEN",
            args.admin_token.clone(),
        ),
        (
            "webhook_secret",
            "--webhook-secret or DOCKHAND_WEBHOOK_SECRET",
            args.webhook_secret.clone(),
        ),
        ("offer_ttl", "--offer-ttl", args.offer_ttl.clone()),
        ("lease", "--lease", args.lease.clone()),
        ("claim_wait", "--claim-wait", args.claim_wait.clone()),
        ("public_url", "--public-url", args.public_url.clone()),
        (
            "header_timeout",
            "--header-timeout",
            args.header_timeout.clone(),
        ),
        ("body_timeout", "--body-timeout", args.body_timeout.clone()),
        (
            "max_connections",
            "--max-connections",
            args.max_connections.map(|n| n.to_string()),
        ),
        (
            "allow_local_sources",
            "--allow-local-sources",
            args.allow_local_sources.then(|| "true".to_owned()),
        ),
    ];
    text.into_iter()
        .filter_map(|(key, flag, value)| Some(Override::flag(key, &value?, flag)))
        .collect()
}

pub fn run(args: &ServerArgs) -> u8 {
    let env: HashMap<String, String> = std::env::vars().collect();
    let file = args.config.as_deref();
    let (config, layers) =
        match load_server(file, &env, &overrides(args), args.repositories.clone()) {
            Ok(loaded) => loaded,
            Err(e) => {
                for problem in &e.problems {
                    eprintln!("error: {problem}");
                }
                eprintln!(
                    "error: the server settings have {} problem(s)",
                    e.problems.len()
                );
                return exit_code::CONFIG_ERROR;
            }
        };
    if args.check {
        return checked_settings(&config, file, &layers);
    }
    let settings = ServerSettings {
        database: config.database(),
        listen: config.listen,
        database_pool: config.database_pool,
        registration_token: config.registration_token,
        admin_token: config.admin_token,
        offer_ttl: config.offer_ttl,
        lease: config.lease,
        claim_wait: config.claim_wait,
        log_flush: std::time::Duration::from_millis(200),
        log_chunk_max: 1 << 20,
        webhook_secret: config.webhook_secret,
        header_timeout: config.header_timeout,
        body_timeout: config.body_timeout,
        max_connections: config.max_connections,
        allow_local_sources: config.allow_local_sources,
        repositories: config.repositories,
        public_url: config.public_url,
        notify: config.notify,
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
        let silent: Vec<String> = (settings.repositories.iter())
            .filter(|r| r.token.is_none())
            .map(|r| r.name.clone())
            .collect();
        let served = serve(settings, shutdown, |address| {
            let text = format!("listening on http://{address} (database {database})");
            crate::logging::say("server", None, &text);
            for name in silent {
                let text = format!("repository {name}: no token_env, so no commit statuses");
                crate::logging::say("server", None, &text);
            }
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
