//! `dockhand agent` and `dockhand watch`: read the agent settings, connect, sweep, and run
//! the dispatcher until a signal drains it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::args::{AgentArgs, OnChange};
use super::output::checked_settings;
use super::runtime::{self, Threads};
use crate::agent::{Agent, AgentExit};
use crate::config::{
    AgentConfig, LoadOptions, Override, SettingsError, SourceConfig, WatchSource, load,
    load_with_origins,
};
use crate::docker::Engine;
use crate::exit_code;
use crate::job::OnBusy;
use crate::report::{ConsoleOutput, Palette};
use crate::signals::{Control, Signals};

pub fn agent(file: Option<PathBuf>, check: bool, args: &AgentArgs) -> u8 {
    let options = load_options(file, args, current_dir());
    match load_with_origins(&options) {
        Ok((settings, file, layers)) if check => {
            checked_settings(&settings, file.as_deref(), &layers)
        }
        Ok((settings, _, _)) => serve(settings, Some(options), args),
        Err(e) => settings_refused(&e),
    }
}

/// Prints every problem of the settings; the settings error's exit code.
fn settings_refused(error: &SettingsError) -> u8 {
    for problem in &error.problems {
        eprintln!("error: {problem}");
    }
    eprintln!(
        "error: the agent settings have {} problem(s)",
        error.problems.len()
    );
    exit_code::CONFIG_ERROR
}

pub fn watch(
    dir: &Path,
    config: &Path,
    tasks: Vec<String>,
    (debounce, on_change): (std::time::Duration, OnChange),
    args: &AgentArgs,
) -> u8 {
    let dir = match current_dir().join(dir).canonicalize() {
        Ok(dir) if dir.is_dir() => dir,
        _ => {
            eprintln!("error: {} is not a directory", dir.display());
            return exit_code::USAGE;
        }
    };
    let mut args_named = args.clone();
    if args_named.name.is_none() {
        // One watcher per checkout may run at once; each sweeps only its own objects.
        let checkout = crate::util::short_hash(dir.as_os_str().as_encoded_bytes());
        args_named.name = Some(format!(
            "watch-{}@{}",
            &checkout[..8],
            crate::util::hostname()
        ));
    }
    let args = &args_named;
    let options = LoadOptions {
        untrusted_cwd: true,
        ..load_options(None, args, dir.clone())
    };
    let mut settings = match load(&options) {
        Ok((settings, _)) => settings,
        Err(e) => return settings_refused(&e),
    };
    let agent = &settings.agent;
    for own in [&agent.workspace_root, &agent.results_dir, &agent.state_dir] {
        if let Err(e) = crate::executor::make_own_dir(&dir, own) {
            eprintln!("error: {e}");
            return exit_code::CONFIG_ERROR;
        }
    }
    settings.sources = vec![SourceConfig::Watch(WatchSource {
        path: dir,
        config: config.to_path_buf(),
        tasks,
        debounce,
        on_change: match on_change {
            OnChange::Cancel => OnBusy::Cancel,
            OnChange::Queue => OnBusy::Queue,
        },
        timeout: None,
    })];
    serve(settings, None, args)
}

fn serve(settings: AgentConfig, reload: Option<LoadOptions>, args: &AgentArgs) -> u8 {
    let Some(runtime) = runtime::start(Threads::Two) else {
        return exit_code::INFRASTRUCTURE;
    };
    let console = if args.json {
        ConsoleOutput::Json
    } else {
        ConsoleOutput::Lines(Palette::for_stdout(args.color))
    };
    runtime.block_on(async move {
        let engine = match Engine::connect(settings.docker.host.as_deref()).await {
            Ok(engine) => engine,
            Err(e) => {
                eprintln!("error: {e}");
                return exit_code::INFRASTRUCTURE;
            }
        };
        let signals = match Signals::listen(Control::Reload) {
            Ok(signals) => signals,
            Err(e) => {
                eprintln!("error: {e}");
                return exit_code::INFRASTRUCTURE;
            }
        };
        let host_env: HashMap<String, String> = std::env::vars().collect();
        match Agent::new(engine, settings, reload, host_env, console)
            .run(signals)
            .await
        {
            Ok(AgentExit::Stopped) => exit_code::SUCCESS,
            Ok(AgentExit::SourcesFailed) => exit_code::INFRASTRUCTURE,
            Err(e) => {
                eprintln!("error: {e}");
                e.exit_code()
            }
        }
    })
}

fn load_options(file: Option<PathBuf>, args: &AgentArgs, cwd: PathBuf) -> LoadOptions {
    let mut overrides: Vec<Override> = (args.overrides.iter())
        .map(|(key, value)| Override::set(key, value))
        .collect();
    if let Some(n) = args.concurrency {
        let given = Override::flag("agent.concurrency", &n.to_string(), "--concurrency");
        overrides.push(given);
    }
    if let Some(name) = &args.name {
        overrides.push(Override::flag("agent.name", name, "--name"));
    }
    LoadOptions {
        file,
        env: std::env::vars().collect(),
        overrides,
        cwd,
        untrusted_cwd: false,
    }
}

fn current_dir() -> PathBuf {
    std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))
}
