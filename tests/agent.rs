//! The agent with the real binary, real Docker and real files: watched checkouts, schedules,
//! concurrency, signals, a killed agent's leftovers, and secrets kept out of every sink.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::agent::{AgentProcess, LONG, checkout};
use support::{assert_nothing_labelled, docker};

#[test]
fn watch_runs_on_change_with_the_new_content_and_a_burst_gives_one_run() {
    let repo = checkout("cat /app/msg.txt\n");
    let agent = AgentProcess::start(repo.path(), &["watch", ".", "--debounce", "300ms"]);
    let first = &agent.wait_finished(1, LONG)[0];
    assert_eq!(first.status, "succeeded", "{}", agent.transcript());
    assert!(first.log().contains("first"));

    std::fs::write(repo.path().join("msg.txt"), "second\n").unwrap();
    let second = agent.wait_finished(2, LONG)[1].clone();
    assert!(second.log().contains("second"), "{}", second.log());
    assert_eq!(second.result()["trigger"], "change: msg.txt");

    std::fs::write(repo.path().join("ignored.tmp"), "git-ignored").unwrap();
    std::fs::create_dir_all(repo.path().join(".git")).unwrap();
    std::fs::write(repo.path().join(".git/index"), "git's own").unwrap();
    for i in 0..50 {
        std::fs::write(repo.path().join("msg.txt"), format!("burst {i}\n")).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let third = agent.wait_finished(3, LONG)[2].clone();
    assert!(third.log().contains("burst 49"), "{}", third.log());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        agent.started().len(),
        3,
        "one run at start, one per burst; ignored files, .git and the agent's own results start none\n{}",
        agent.transcript()
    );
    std::fs::create_dir_all(repo.path().join("new/deeper")).unwrap();
    std::fs::write(repo.path().join("new/deeper/file"), "1").unwrap();
    agent.wait_finished(4, LONG);
    std::fs::write(repo.path().join("new/deeper/file"), "2").unwrap();
    let fifth = agent.wait_finished(5, LONG)[4].clone();
    assert_eq!(
        fifth.result()["trigger"],
        "change: new/deeper/file",
        "directories made after the start are watched too"
    );
    let mut workspaces: Vec<String> = std::fs::read_dir(repo.path().join(".dockhand/work"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    workspaces.sort();
    assert_eq!(
        workspaces,
        [".agent.lock", ".mirrors"],
        "job workspaces are removed"
    );
    assert_nothing_labelled(&format!("dockhand.job={}", third.id));
}

#[test]
fn a_change_during_a_run_cancels_it_and_the_rerun_passes() {
    let repo =
        checkout("if grep -q slow /app/msg.txt; then echo started; sleep 60; fi\necho done\n");
    std::fs::write(repo.path().join("msg.txt"), "slow\n").unwrap();
    let agent = AgentProcess::start(repo.path(), &["watch", ".", "--debounce", "200ms"]);
    agent.wait_for_stdout("run show | started", LONG);
    std::fs::write(repo.path().join("msg.txt"), "fast\n").unwrap();
    let jobs = agent.wait_finished(2, LONG);
    assert_eq!(jobs[0].status, "cancelled", "{}", agent.transcript());
    assert_eq!(jobs[0].exit_code, 130);
    assert_eq!(jobs[1].status, "succeeded", "{}", agent.transcript());
    assert!(jobs[1].log().contains("done"));
    assert!(
        agent
            .stderr()
            .iter()
            .any(|l| l.contains("cancelling, superseded by")),
        "{}",
        agent.transcript()
    );
    assert_nothing_labelled(&format!("dockhand.job={}", jobs[0].id));
}

#[test]
fn a_broken_config_is_a_failed_job_and_the_fix_runs() {
    let repo = checkout("echo fine\n");
    let config = std::fs::read_to_string(repo.path().join("config.yml")).unwrap();
    std::fs::write(
        repo.path().join("config.yml"),
        config.replace("pipeline: [show]", "pipeline: [shwo]"),
    )
    .unwrap();
    let agent = AgentProcess::start(repo.path(), &["watch", ".", "--debounce", "200ms"]);
    let broken = agent.wait_finished(1, LONG)[0].clone();
    assert_eq!(broken.status, "failed");
    assert_eq!(broken.exit_code, 200);
    let result = broken.result();
    assert_eq!(result["stages"][0]["kind"], "collect");
    assert_eq!(result["stages"][0]["status"], "failed");
    let log = broken.log();
    assert!(log.contains("shwo"), "{log}");
    assert!(
        log.contains(&format!(
            "{}/config.yml:",
            repo.path().canonicalize().unwrap().display()
        )),
        "diagnostics name the file in the checkout, not the workspace copy:\n{log}"
    );
    std::fs::write(repo.path().join("config.yml"), config).unwrap();
    let fixed = agent.wait_finished(2, LONG)[1].clone();
    assert_eq!(fixed.status, "succeeded", "{}", agent.transcript());
    assert!(fixed.log().contains("fine"));
}

#[test]
fn a_schedule_fires_on_time_and_does_not_overlap() {
    let repo = checkout("sleep 3\n");
    std::fs::write(
        repo.path().join("agent.toml"),
        r#"
[agent]
concurrency = 4
[[source]]
kind = "schedule"
name = "every-two-seconds"
cron = "*/2 * * * * *"
path = "."
"#,
    )
    .unwrap();
    let agent = AgentProcess::start(repo.path(), &["agent"]);
    let jobs = agent.wait_finished(2, LONG);
    let mut spans = Vec::new();
    for job in &jobs {
        assert_eq!(job.status, "succeeded", "{}", agent.transcript());
        let result = job.result();
        let trigger = result["trigger"].as_str().unwrap().to_owned();
        let due = humantime::parse_rfc3339(trigger.rsplit(" at ").next().unwrap()).unwrap();
        let started = humantime::parse_rfc3339(result["started_at"].as_str().unwrap()).unwrap();
        let finished = humantime::parse_rfc3339(result["finished_at"].as_str().unwrap()).unwrap();
        let late = started.duration_since(due).unwrap_or_default();
        assert!(
            late < Duration::from_millis(1500),
            "{trigger}: started {late:?} late"
        );
        spans.push((started, finished));
    }
    assert!(
        spans[0].1 <= spans[1].0,
        "runs of one schedule overlap: {spans:?}"
    );
    assert!(
        agent
            .stderr()
            .iter()
            .any(|l| l.contains("has not finished")),
        "firings during a run are skipped\n{}",
        agent.transcript()
    );
}

#[test]
fn concurrency_two_runs_four_jobs_at_most_two_at_a_time() {
    let root = tempfile::tempdir().unwrap();
    let mut sources = String::from("[agent]\nconcurrency = 2\n");
    let repos: Vec<_> = (0..4).map(|_| checkout("sleep 2\n")).collect();
    for repo in &repos {
        sources.push_str(&format!(
            "[[source]]\nkind = \"watch\"\npath = \"{}\"\n",
            repo.path().display()
        ));
    }
    std::fs::write(root.path().join("agent.toml"), sources).unwrap();
    let agent = AgentProcess::start(root.path(), &["agent"]);
    let jobs = agent.wait_finished(4, LONG * 2);
    let mut edges = Vec::new();
    for job in &jobs {
        assert_eq!(job.status, "succeeded", "{}", agent.transcript());
        let result = job.result();
        let at = |key: &str| humantime::parse_rfc3339(result[key].as_str().unwrap()).unwrap();
        edges.push((at("started_at"), 1));
        edges.push((at("finished_at"), -1));
    }
    edges.sort();
    let mut running = 0;
    let mut most = 0;
    for (_, delta) in edges {
        running += delta;
        most = most.max(running);
    }
    assert_eq!(most, 2, "{}", agent.transcript());
}

#[test]
fn sigterm_lets_the_running_job_finish_and_report() {
    let repo = checkout("echo started; sleep 3; echo finished\n");
    let mut agent = AgentProcess::start(repo.path(), &["watch", "."]);
    agent.wait_for_stdout("run show | started", LONG);
    agent.signal("TERM");
    assert_eq!(agent.wait_exit(LONG), Some(0), "{}", agent.transcript());
    let jobs = agent.finished();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].status, "succeeded", "{}", agent.transcript());
    assert!(jobs[0].log().contains("finished"));
    assert_eq!(jobs[0].result()["status"], "succeeded");
}

#[test]
fn a_second_signal_cancels_the_running_job_with_cleanup() {
    let repo = checkout("echo started; sleep 60\n");
    let mut agent = AgentProcess::start(repo.path(), &["watch", "."]);
    agent.wait_for_stdout("run show | started", LONG);
    agent.signal("TERM");
    agent.wait_for("draining", LONG, |l| {
        l.iter().any(|l| l.contains("stopping"))
    });
    agent.signal("INT");
    assert_eq!(agent.wait_exit(LONG), Some(0), "{}", agent.transcript());
    let jobs = agent.finished();
    assert_eq!(jobs[0].status, "cancelled", "{}", agent.transcript());
    assert_nothing_labelled(&format!("dockhand.agent={}", agent.name));
}

#[test]
fn a_killed_agents_leftovers_are_removed_by_the_next_start() {
    let repo = checkout("echo started; sleep 120\n");
    let mut first = AgentProcess::start(repo.path(), &["watch", "."]);
    first.wait_for_stdout("run show | started", LONG);
    let job = first.started()[0].clone();
    first.signal("KILL");
    first.wait_exit(LONG);
    let label = format!("label=dockhand.job={job}");
    assert!(
        !docker(&["ps", "-aq", "--filter", &label]).trim().is_empty(),
        "the killed agent's container is still there"
    );
    let workspace = repo.path().join(".dockhand/work").join(&job);
    assert!(workspace.is_dir());

    let mut command = Command::new(env!("CARGO_BIN_EXE_dockhand"));
    command
        .args(["watch", ".", "--name", &first.name])
        .current_dir(repo.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut second = command.spawn().unwrap();
    let stderr = BufReader::new(second.stderr.take().unwrap());
    let mut swept = None;
    for line in stderr.lines().map_while(Result::ok) {
        if line.contains("removed leftovers") {
            swept = Some(line);
            break;
        }
        if line.contains("(watch:") {
            break;
        }
    }
    let _ = second.kill();
    let _ = second.wait();
    let swept = swept.expect("the next start sweeps before it runs anything");
    assert!(swept.contains("1 container(s)"), "{swept}");
    assert!(swept.contains("1 workspace(s)"), "{swept}");
    assert!(docker(&["ps", "-aq", "--filter", &label]).trim().is_empty());
    assert!(!workspace.exists());
}

#[test]
fn secrets_appear_in_no_sink() {
    const SECRET: &str = "s3cr3t-Value-42";
    let repo = checkout(
        r#"printf 'token=s3cr3t-'; sleep 0.3; printf 'Value-42\n'
printf '%s' "$API_TOKEN" | base64
printf 'x%s' "$API_TOKEN" | base64
printf '%s\n' "$MULTI"
echo "$API_TOKEN" >&2
exit 3
"#,
    );
    let config = std::fs::read_to_string(repo.path().join("config.yml")).unwrap();
    let config = config.replace(
        "command: [/bin/sh, /app/task.sh]",
        "command: [/bin/sh, /app/task.sh]\n          env: [API_TOKEN, MULTI]",
    ) + "secrets: [API_TOKEN, MULTI]\n";
    std::fs::write(repo.path().join("config.yml"), config).unwrap();
    std::fs::write(
        repo.path().join("agent.toml"),
        format!(
            "[secrets]\nvalues = {{ API_TOKEN = \"{SECRET}\", MULTI = \"first-line-secret\\nsecond-line-secret\" }}\n[[source]]\nkind = \"watch\"\npath = \".\"\n"
        ),
    )
    .unwrap();
    let agent = AgentProcess::start(repo.path(), &["agent"]);
    let job = agent.wait_finished(1, LONG)[0].clone();
    assert_eq!(job.exit_code, 3, "{}", agent.transcript());
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(SECRET);
    let shifted = base64::engine::general_purpose::STANDARD.encode(format!("x{SECRET}"));
    let forbidden = [
        SECRET.to_owned(),
        encoded[..encoded.len() - 4].to_owned(),
        shifted[4..shifted.len() - 4].to_owned(),
        "first-line-secret".to_owned(),
        "second-line-secret".to_owned(),
    ];
    let mut sinks = vec![("console".to_owned(), agent.stdout().join("\n"))];
    for file in walk(&job.results) {
        sinks.push((
            file.display().to_string(),
            std::fs::read_to_string(&file).unwrap(),
        ));
    }
    assert!(sinks.iter().any(|(name, _)| name.ends_with("junit.xml")));
    for (name, text) in &sinks {
        for secret in &forbidden {
            assert!(
                !text.contains(secret.as_str()),
                "{secret} in {name}:\n{text}"
            );
        }
    }
    let log = job.log();
    assert!(log.contains("token=***"), "{log}");
    assert_eq!(log.matches("***").count(), 6, "{log}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        if entry.file_type().unwrap().is_dir() {
            files.extend(walk(&entry.path()));
        } else {
            files.push(entry.path());
        }
    }
    files
}

#[test]
fn a_schedule_with_a_git_source_runs_the_committed_revision() {
    let repo = checkout("cat /app/msg.txt\n");
    let git = |args: &[&str]| {
        let output = Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(repo.path())
            .output()
            .unwrap();
        assert!(output.status.success(), "git {args:?}: {output:?}");
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-qm", "first"]);
    std::fs::write(repo.path().join("msg.txt"), "not committed\n").unwrap();
    let agent_dir = tempfile::tempdir().unwrap();
    std::fs::write(
        agent_dir.path().join("agent.toml"),
        format!(
            "[[source]]\nkind = \"schedule\"\ncron = \"* * * * * *\"\ngit = \"file://{}\"\nref = \"main\"\n",
            repo.path().display()
        ),
    )
    .unwrap();
    let agent = AgentProcess::start(agent_dir.path(), &["agent"]);
    let job = agent.wait_finished(1, LONG)[0].clone();
    assert_eq!(job.status, "succeeded", "{}", agent.transcript());
    let log = job.log();
    assert!(log.contains("first"), "{log}");
    assert!(!log.contains("not committed"), "{log}");
    let origin = job.result()["origin"].as_str().unwrap().to_owned();
    assert!(origin.contains(" at main ("), "{origin}");
}

#[test]
fn jobs_get_their_own_network_and_the_configured_limits() {
    let repo = checkout(
        "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes\necho started\nsleep 3\n",
    );
    std::fs::write(
        repo.path().join("agent.toml"),
        "[docker]\nmemory = \"64m\"\ncpus = 0.5\n[[source]]\nkind = \"watch\"\npath = \".\"\n",
    )
    .unwrap();
    let agent = AgentProcess::start(repo.path(), &["agent"]);
    agent.wait_for_stdout("run show | started", LONG);
    let job = agent.started()[0].clone();
    let label = format!("label=dockhand.job={job}");
    let networks = docker(&["ps", "--filter", &label, "--format", "{{.Networks}}"]);
    let network = networks.trim().to_owned();
    assert!(
        network == format!("dockhand-{job}") || network.starts_with("dockhand-net-"),
        "the job's own network (made for it, or a fresh spare): {network}"
    );
    let id = docker(&["ps", "-q", "--filter", &label]);
    let cpus = docker(&["inspect", "--format", "{{.HostConfig.NanoCpus}}", id.trim()]);
    assert_eq!(cpus.trim(), "500000000");
    let finished = agent.wait_finished(1, LONG)[0].clone();
    assert!(finished.log().contains("67108864"), "{}", finished.log());
    assert_nothing_labelled(&format!("dockhand.job={job}"));
    let gone = Command::new("docker")
        .args(["network", "inspect", &network])
        .output()
        .unwrap();
    assert!(
        !gone.status.success(),
        "the job's network is removed with it"
    );
}

#[test]
fn an_idle_agent_sweeps_leftovers_of_jobs_that_are_not_running() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("agent.toml"),
        "[agent]\nsweep_interval = \"1s\"\n[[source]]\nkind = \"schedule\"\ncron = \"@yearly\"\npath = \".\"\n",
    )
    .unwrap();
    let agent = AgentProcess::start(dir.path(), &["agent"]);
    agent.wait_for("the agent to start", LONG, |l| {
        l.iter().any(|l| l.contains("started"))
    });
    let spares = || {
        let label = format!("label=dockhand.agent={}", agent.name);
        let mut names: Vec<String> = docker(&["network", "ls", "-q", "--filter", &label])
            .lines()
            .map(str::to_owned)
            .collect();
        names.sort();
        names
    };
    let deadline = std::time::Instant::now() + LONG;
    while spares().len() < 2 {
        assert!(std::time::Instant::now() < deadline, "no spare networks");
        std::thread::sleep(Duration::from_millis(100));
    }
    let made = spares();
    let stale = dir.path().join(".dockhand/work/20200101-000000-abcd");
    std::fs::create_dir_all(&stale).unwrap();
    docker(&[
        "create",
        "--label",
        &format!("dockhand.agent={}", agent.name),
        "--label",
        "dockhand.job=20200101-000000-abcd",
        support::BASE_IMAGE,
        "true",
    ]);
    agent.wait_for("the idle sweep", LONG, |l| {
        l.iter().any(|l| l.contains("removed leftovers"))
    });
    assert_nothing_labelled("dockhand.job=20200101-000000-abcd");
    assert!(!stale.exists());
    assert_eq!(spares(), made, "the spare job networks stay");
}

#[test]
fn sighup_reloads_agent_toml_and_a_bad_file_keeps_the_running_settings() {
    let repo = checkout("echo reloaded\n");
    let toml = repo.path().join("agent.toml");
    std::fs::write(
        &toml,
        "[[source]]\nkind = \"schedule\"\ncron = \"@yearly\"\npath = \".\"\n",
    )
    .unwrap();
    let mut agent = AgentProcess::start(repo.path(), &["agent"]);
    agent.wait_for("the agent to start", LONG, |l| {
        l.iter().any(|l| l.contains("started"))
    });
    std::fs::write(&toml, "[[source]]\nkind = \"watch\"\npath = \".\"\n").unwrap();
    agent.signal("HUP");
    let job = agent.wait_finished(1, LONG)[0].clone();
    assert!(job.log().contains("reloaded"));
    std::fs::write(&toml, "[agent]\nconcurrency = \"many\"\n").unwrap();
    agent.signal("HUP");
    agent.wait_for("the refusal", LONG, |l| {
        l.iter().any(|l| l.contains("keeping the running settings"))
    });
    agent.signal("TERM");
    assert_eq!(agent.wait_exit(LONG), Some(0), "{}", agent.transcript());
    assert!(
        (agent.stderr().iter()).any(|l| l.contains("stopping: no job is running")),
        "an idle agent says it stops: {}",
        agent.transcript()
    );
}

#[test]
fn a_job_past_its_timeout_is_cancelled_and_its_workspace_kept_on_failure() {
    let repo = checkout("echo started; sleep 60\n");
    std::fs::write(
        repo.path().join("agent.toml"),
        "[agent]\nkeep_workspace = \"on_failure\"\nsweep_interval = \"1s\"\n[[source]]\nkind = \"watch\"\npath = \".\"\ntimeout = \"4s\"\n",
    )
    .unwrap();
    let mut agent = AgentProcess::start(repo.path(), &["agent"]);
    let job = agent.wait_finished(1, LONG)[0].clone();
    assert_eq!(job.status, "timed out", "{}", agent.transcript());
    assert_eq!(job.exit_code, 124);
    let result = job.result();
    assert_eq!(result["status"], "timed_out");
    let kept = PathBuf::from(result["workspace"].as_str().expect("the result names it"));
    let expected = repo
        .path()
        .join(".dockhand/work")
        .join(format!("kept-{}", job.id));
    assert_eq!(kept, expected);
    assert!(kept.join("config.yml").is_file());
    assert_nothing_labelled(&format!("dockhand.job={}", job.id));
    std::thread::sleep(Duration::from_secs(3));
    agent.signal("TERM");
    assert_eq!(agent.wait_exit(LONG), Some(0), "{}", agent.transcript());
    assert!(
        kept.join("config.yml").is_file(),
        "neither the idle sweep nor the one at exit takes a kept workspace for a leftover\n{}",
        agent.transcript()
    );
}

#[test]
fn a_second_agent_on_the_same_workspace_root_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("agent.toml"),
        "[[source]]\nkind = \"schedule\"\ncron = \"@yearly\"\npath = \".\"\n",
    )
    .unwrap();
    let first = AgentProcess::start(dir.path(), &["agent"]);
    first.wait_for("the agent to start", LONG, |l| {
        l.iter().any(|l| l.contains("started"))
    });
    let second = Command::new(env!("CARGO_BIN_EXE_dockhand"))
        .args(["agent", "--name", "another"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(200), "{stderr}");
    assert!(
        stderr.contains("another agent uses the workspace root"),
        "{stderr}"
    );
}

/// `Agent::run` takes its signals as an input: driven in-process through a channel, a first
/// stop drains (the running job goes on), a second cancels it, and the loop returns.
#[test]
fn the_agent_loop_stops_on_injected_signals() {
    use dockhand::agent::{Agent, AgentExit};
    use dockhand::config::{LoadOptions, load};
    use dockhand::report::ConsoleOutput;
    use dockhand::signals::{Control, Signals};

    support::require_engine();
    let repo = checkout("echo started\nsleep 300\n");
    let state = tempfile::tempdir().unwrap();
    let name = format!("test-{}", support::agent::unique());
    let settings_file = state.path().join("agent.toml");
    std::fs::write(
        &settings_file,
        format!(
            "[agent]\nname = \"{name}\"\nshutdown_grace = \"60s\"\n[[source]]\nkind = \"watch\"\npath = \"{}\"\n",
            repo.path().display()
        ),
    )
    .unwrap();
    let options = LoadOptions {
        file: Some(settings_file),
        env: Default::default(),
        overrides: Vec::new(),
        cwd: state.path().to_path_buf(),
        untrusted_cwd: false,
    };
    let (settings, _) = load(&options).unwrap();
    let results = settings.agent.results_dir.clone();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let engine = dockhand::docker::Engine::connect(None).await.unwrap();
        let agent = Agent::new(
            engine,
            settings,
            None,
            Default::default(),
            ConsoleOutput::Json,
        );
        let (control, signals) = Signals::channel();
        let mut running = tokio::spawn(agent.run(signals));

        let started = async {
            loop {
                let logs = std::fs::read_dir(&results).into_iter().flatten().flatten();
                if logs
                    .map(|dir| std::fs::read_to_string(dir.path().join("log.txt")))
                    .any(|log| log.is_ok_and(|l| l.contains("started")))
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::time::timeout(LONG, started)
            .await
            .expect("the job's task starts");

        control.send(Control::Stop).await.unwrap();
        let drained = tokio::time::timeout(Duration::from_secs(2), &mut running).await;
        assert!(drained.is_err(), "a first stop lets the running job go on");

        control.send(Control::Stop).await.unwrap();
        let ended = tokio::time::timeout(LONG, running)
            .await
            .expect("a second stop cancels the job and the loop ends");
        assert_eq!(ended.unwrap().unwrap(), AgentExit::Stopped);
    });
    let job = std::fs::read_dir(&results)
        .unwrap()
        .flatten()
        .find(|e| e.path().join("result.json").exists())
        .expect("the cancelled job has a record");
    let result: serde_json::Value =
        serde_json::from_slice(&std::fs::read(job.path().join("result.json")).unwrap()).unwrap();
    assert_eq!(
        (result["status"].as_str(), result["exit_code"].as_i64()),
        (Some("cancelled"), Some(130))
    );
    assert_nothing_labelled(&format!("dockhand.agent={name}"));
}

/// A watch and `dockhand run` in the same checkout share its build records: neither
/// rebuilds what the other just built. The watch's jobs name the checkout's files, not
/// their snapshot's.
#[test]
fn watch_and_run_in_one_checkout_share_their_builds() {
    let repo = checkout("echo ok\n");
    let run = |what: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_dockhand"))
            .args(["run", "--json"])
            .current_dir(repo.path())
            .env_remove("DOCKHAND_CONFIG")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{what}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let built = run("the first run");
    assert!(built.contains("no earlier build"), "{built}");
    let agent = AgentProcess::start(repo.path(), &["watch", ".", "--debounce", "200ms"]);
    let first = agent.wait_finished(1, LONG)[0].clone();
    assert_eq!(first.status, "succeeded", "{}", agent.transcript());
    let build = &first.result()["stages"][1];
    assert_eq!(
        (build["kind"].as_str(), build["status"].as_str()),
        (Some("build"), Some("cached")),
        "{}",
        first.log()
    );
    let checkout_config = repo.path().canonicalize().unwrap().join("config.yml");
    assert!(
        first
            .log()
            .contains(&format!("collected {}", checkout_config.display())),
        "{}",
        first.log()
    );
    std::fs::write(repo.path().join("msg.txt"), "changed\n").unwrap();
    let second = agent.wait_finished(2, LONG)[1].clone();
    assert_eq!(second.result()["stages"][1]["status"], "passed");
    let after = run("a run after the watch built");
    assert!(
        after.contains("\"status\":\"cached\""),
        "the run finds the watch's build: {after}"
    );
}

/// A nightly schedule that fails, then is fixed, then passes again: one failure notice,
/// one recovery, then silence; each phase is a restarted agent (its catch-up run), so the
/// failure is remembered across the restart.
#[test]
fn a_failing_schedule_notifies_once_then_its_recovery_then_nothing() {
    let repo = checkout("grep -q pass /app/msg.txt || { echo 'not yet <!channel>'; exit 3; }\n");
    let hooks = support::forge::FakeForge::github("");
    let hook = "slack/T0/B0/secret";
    std::fs::write(
        repo.path().join("agent.toml"),
        format!(
            r#"
[[source]]
kind = "schedule"
name = "nightly"
cron = "@yearly"
path = "."
[[notify]]
url = "{}"
format = "slack"
on = ["failure", "recovery"]
"#,
            hooks.hook_url(hook)
        ),
    )
    .unwrap();
    let schedule_state = repo.path().join(format!(
        ".dockhand/state/schedule-{}.last",
        dockhand::util::short_hash(b"schedule:nightly")
    ));
    let run_once = |expected: &str| {
        std::fs::create_dir_all(schedule_state.parent().unwrap()).unwrap();
        std::fs::write(&schedule_state, "2000-01-01T00:00:00+00:00").unwrap();
        let mut agent = AgentProcess::start(repo.path(), &["agent"]);
        let job = agent.wait_finished(1, LONG)[0].clone();
        assert_eq!(job.status, expected, "{}", agent.transcript());
        agent.signal("TERM");
        assert_eq!(agent.wait_exit(LONG), Some(0), "{}", agent.transcript());
        assert!(
            !agent.transcript().contains("secret"),
            "the webhook URL is never shown\n{}",
            agent.transcript()
        );
        job
    };

    let failed = run_once("failed");
    let received = hooks.wait_for_hooks(hook, 1, LONG);
    let failure = &received[0];
    let text = failure["text"].as_str().unwrap();
    assert_eq!(text, "Failed: schedule:nightly (failed, exit code 3)");
    let attachment = &failure["attachments"][0];
    assert_eq!(attachment["color"], "#d00000");
    let fields = attachment["fields"].to_string();
    assert!(fields.contains(&failed.id), "{fields}");
    assert!(fields.contains("run show"), "the failed stage: {fields}");

    std::fs::write(repo.path().join("msg.txt"), "pass\n").unwrap();
    let recovered = run_once("succeeded");
    let received = hooks.wait_for_hooks(hook, 2, LONG);
    let recovery = &received[1];
    assert_eq!(
        recovery["text"],
        "Recovered: schedule:nightly (succeeded again)"
    );
    assert_eq!(recovery["attachments"][0]["color"], "#2eb886");
    assert!(recovery.to_string().contains(&recovered.id));

    run_once("succeeded");
    assert_eq!(
        hooks.hooks(hook).len(),
        2,
        "a success after a success is not notified: {:#?}",
        hooks.hooks(hook)
    );
    hooks.assert_nothing_refused();
}
