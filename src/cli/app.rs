//! Dispatch: parse arguments, set up logging, collect the config, run the subcommand.

use crate::exit_code;
use crate::logging::{self, LogFormat};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tracing_subscriber::filter::LevelFilter;

use clap::FromArgMatches;

use super::args::{Cli, Command, ConfigArgs, SandboxArgs};
use super::{check, dockerfile, job, list, remote};
use crate::collector::{self, CollectOptions, Collected, Diagnostics};
use crate::job::workspace_root;
use crate::plan::Request;
use crate::report::Palette;

pub fn main() -> ExitCode {
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let command_name = matches.subcommand_name().unwrap_or_default().to_owned();
    // The long-running commands report what they do; one-shot ones only their errors.
    let (format, level) = match &cli.command {
        Command::Server(args) => (args.log_format, LevelFilter::INFO),
        Command::Agent { agent, .. } | Command::Watch { agent, .. } => {
            (agent.log_format, LevelFilter::INFO)
        }
        _ => (LogFormat::Text, LevelFilter::ERROR),
    };
    logging::init(format, level);
    ExitCode::from(run(cli, &command_name))
}

fn run(cli: Cli, command_name: &str) -> u8 {
    let config = match cli.config_args(command_name) {
        Ok(config) => config,
        Err(problem) => {
            eprintln!("error: {problem}");
            return exit_code::USAGE;
        }
    };
    let config = config.as_ref();
    // `check --json` reports a missing config as a diagnostic, for machine readers.
    let checks_for_json = matches!(cli.command, Command::Check { json: true, .. });
    if let Some(config) = config
        && !checks_for_json
        && let Some(problem) = no_default_config(config)
    {
        eprintln!("error: {problem}");
        return exit_code::CONFIG_ERROR;
    }
    let collect = |cli_args: &[String]| {
        let options = collect_options(config.unwrap_or(&ConfigArgs::default()), cli_args.to_vec());
        tracing::debug!(config = %options.config.display(), "collecting");
        let collected = collector::collect(&options);
        (options, collected)
    };
    match &cli.command {
        Command::Check { json, .. } => check::run(collect(&[]).1, *json),
        Command::List { json, .. } => with_config(collect(&[]).1, |c| list::run(c, *json)),
        Command::Dockerfile { image, task, .. } => with_config(collect(&[]).1, |c| {
            dockerfile::run(c, image, task.as_deref())
        }),
        Command::Build {
            images, job: args, ..
        } => {
            let (options, collected) = collect(&[]);
            let request = Request::Images(images.clone());
            let sandbox = SandboxArgs::default();
            let refused = |d: &Diagnostics| job::refused(&options, d, args);
            with_config_or(collected, refused, |c| {
                job::run(c, &options, request, args, &sandbox)
            })
        }
        Command::Run {
            tasks,
            args: extra,
            job: args,
            sandbox,
            ..
        } => {
            let (options, collected) = collect(extra);
            let refused = |d: &Diagnostics| job::refused(&options, d, args);
            let request = if tasks.is_empty() {
                Request::Default
            } else {
                Request::Tasks(tasks.clone())
            };
            with_config_or(collected, refused, |c| {
                if !extra.is_empty() && !c.cli_args_read {
                    eprintln!(
                        "error: the arguments after `--` would go nowhere: no value of this config uses `{{$@}}`"
                    );
                    return exit_code::USAGE;
                }
                job::run(c, &options, request, args, sandbox)
            })
        }
        Command::Agent {
            agent_config,
            check,
            agent,
        } => super::agent::agent(agent_config.clone(), *check, agent),
        Command::Watch {
            dir,
            tasks,
            config,
            debounce,
            on_change,
            agent,
        } => {
            let config = (config.clone())
                .or_else(|| cli.config.config.clone())
                .unwrap_or_else(|| "config.yml".into());
            let change = (*debounce, *on_change);
            super::agent::watch(dir, &config, tasks.clone(), change, agent)
        }
        Command::Server(args) => super::server::run(args),
        Command::Submit(args) => remote::submit(args),
        Command::Jobs {
            server,
            limit,
            json,
            color,
        } => remote::jobs(server, *limit, *json, Palette::for_stdout(*color)),
        Command::Logs {
            server,
            job,
            follow,
        } => remote::logs(server, job, *follow),
        Command::Cancel { server, job } => remote::cancel(server, job),
        Command::Rerun { server, job, wait } => remote::rerun(server, job, *wait),
        Command::Init { dockerfile, name } => super::init::run(dockerfile.clone(), name.clone()),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut command, "dockhand", &mut script);
            print_generated(&script)
        }
        Command::Man => {
            let mut page = Vec::new();
            let man = clap_mangen::Man::new(<Cli as clap::CommandFactory>::command());
            match man.render(&mut page) {
                Ok(()) => print_generated(&page),
                Err(e) => {
                    eprintln!("error: rendering the man page: {e}");
                    exit_code::INFRASTRUCTURE
                }
            }
        }
    }
}

/// Writes generated text to stdout; a reader that stops early (`| head`) is not an error.
fn print_generated(text: &[u8]) -> u8 {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("error: writing to stdout: {e}");
            exit_code::INFRASTRUCTURE
        }
        _ => exit_code::SUCCESS,
    }
}

/// Runs `f` on a valid config; prints the diagnostics and exits with the config error code
/// otherwise.
fn with_config(collected: Result<Collected, Diagnostics>, f: impl FnOnce(&Collected) -> u8) -> u8 {
    with_config_or(collected, |_| exit_code::CONFIG_ERROR, f)
}

/// [`with_config`] whose invalid config is also handed to `refused` (a job records it),
/// whose exit code is the command's.
fn with_config_or(
    collected: Result<Collected, Diagnostics>,
    refused: impl FnOnce(&Diagnostics) -> u8,
    f: impl FnOnce(&Collected) -> u8,
) -> u8 {
    match collected {
        Ok(collected) => {
            eprint!("{}", collected.warnings);
            f(&collected)
        }
        Err(diagnostics) => {
            eprint!("{diagnostics}");
            eprintln!(
                "error: the config has {} problem(s)",
                diagnostics.error_count()
            );
            refused(&diagnostics)
        }
    }
}

/// The config named by the environment: DOCKHAND_CONFIG, then harpoon's HARPOON_CONFIG.
fn named_by_env() -> Option<PathBuf> {
    ["DOCKHAND_CONFIG", "HARPOON_CONFIG"]
        .into_iter()
        .find_map(|name| std::env::var_os(name).filter(|v| !v.is_empty()))
        .map(PathBuf::from)
}

/// The config files looked for when none is named.
pub(super) const DEFAULT_CONFIGS: [&str; 2] = ["config.yml", "harpoon.yml"];

/// When no config is named and none of the default names is here: which names were looked
/// for, where, and how to name one.
fn no_default_config(cli: &ConfigArgs) -> Option<String> {
    if cli.config.is_some() || named_by_env().is_some() {
        return None;
    }
    // Anything by one of the names (a FIFO, a link out of the checkout) is the collector's
    // to refuse with its reason.
    if DEFAULT_CONFIGS
        .iter()
        .any(|name| Path::new(name).symlink_metadata().is_ok())
    {
        return None;
    }
    let here = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    Some(format!(
        "no config here: looked for {} in {}; name one with `-c FILE` (or DOCKHAND_CONFIG)",
        DEFAULT_CONFIGS.join(" and "),
        here.display()
    ))
}

fn collect_options(cli: &ConfigArgs, cli_args: Vec<String>) -> CollectOptions {
    let config = cli.config.clone().or_else(named_by_env).unwrap_or_else(|| {
        DEFAULT_CONFIGS
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("config.yml"))
    });
    let home_config = (!cli.no_harpoonrc)
        .then(|| std::env::var_os("HOME"))
        .flatten()
        .map(|home| PathBuf::from(home).join(".harpoonrc.yml"));
    // The repository holding the config (or its directory) is what a job may read, as for
    // its mounts and build contexts.
    let workspace = std::path::absolute(&config)
        .ok()
        .and_then(|config| config.parent().map(workspace_root));
    CollectOptions {
        config,
        home_config,
        cli_args,
        env: std::env::vars().collect::<HashMap<_, _>>(),
        workspace,
    }
}
