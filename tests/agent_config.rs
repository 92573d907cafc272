//! agent.toml through its layers: file → DOCKHAND__SECTION__KEY → command-line overrides,
//! and the errors a bad file gives (with the file's name).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use dockhand::config::{ByteSize, KeepWorkspace, LoadOptions, Override, SourceConfig, load};
use dockhand::job::OnBusy;

fn options(dir: &tempfile::TempDir, toml: &str) -> LoadOptions {
    std::fs::write(dir.path().join("agent.toml"), toml).unwrap();
    LoadOptions {
        file: Some(PathBuf::from("agent.toml")),
        env: HashMap::new(),
        overrides: Vec::new(),
        cwd: dir.path().to_path_buf(),
        untrusted_cwd: false,
    }
}

fn error(toml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let e = load(&options(&dir, toml)).unwrap_err().to_string();
    assert!(e.contains("agent.toml"), "the error names the file: {e}");
    e
}

#[test]
fn defaults_then_file_then_env_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("repo")).unwrap();
    let mut options = options(
        &dir,
        r#"
[agent]
name = "build-01"
concurrency = 3
job_timeout = "10m"
keep_workspace = "on_failure"
workspace_root = "work"

[docker]
memory = "512m"
cpus = 1.5

[[source]]
kind = "watch"
path = "repo"
debounce = "150ms"
on_change = "queue"

[[source]]
kind = "schedule"
cron = "@daily"
timezone = "Europe/Berlin"
git = "https://example.com/x.git"
ref = "main"
"#,
    );
    options
        .env
        .insert("DOCKHAND__AGENT__CONCURRENCY".into(), "4".into());
    options
        .env
        .insert("DOCKHAND__AGENT__LABELS".into(), "linux,docker".into());
    options
        .env
        .insert("DOCKHAND__AGENT__SHUTDOWN_GRACE".into(), "5s".into());
    options
        .overrides
        .push(Override::set("agent.shutdown_grace", "7s"));
    let (config, file) = load(&options).unwrap();
    assert_eq!(file, Some(dir.path().join("agent.toml")));
    let agent = &config.agent;
    assert_eq!(agent.name, "build-01");
    assert_eq!(agent.concurrency, 4, "env beats the file");
    assert_eq!(agent.labels, ["linux", "docker"]);
    assert_eq!(
        agent.shutdown_grace,
        Duration::from_secs(7),
        "flags beat env"
    );
    assert_eq!(agent.job_timeout, Duration::from_secs(600));
    assert_eq!(agent.keep_workspace, KeepWorkspace::OnFailure);
    assert_eq!(agent.keep_results, 50, "a default");
    assert_eq!(agent.workspace_root, dir.path().join("work"));
    assert_eq!(agent.results_dir, dir.path().join(".dockhand/results"));
    assert_eq!(config.docker.memory, Some(ByteSize(512 << 20)));
    assert_eq!(config.docker.cpus, Some(1.5));
    assert_eq!(config.docker.network, "bridge");
    match &config.sources[..] {
        [SourceConfig::Watch(watch), SourceConfig::Schedule(schedule)] => {
            assert_eq!(watch.path, dir.path().join("repo"));
            assert_eq!(watch.debounce, Duration::from_millis(150));
            assert_eq!(watch.on_change, OnBusy::Queue);
            assert_eq!(schedule.reference.as_deref(), Some("main"));
            assert_eq!(
                schedule.overlap,
                OnBusy::Skip,
                "schedules do not overlap by default"
            );
            assert!(schedule.catch_up);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn no_file_is_fine_and_a_named_missing_file_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let options = LoadOptions {
        cwd: dir.path().to_path_buf(),
        ..LoadOptions::default()
    };
    let (config, file) = load(&options).unwrap();
    assert_eq!(file, None);
    assert_eq!(config.agent.concurrency, 2);
    let missing = LoadOptions {
        file: Some("nope.toml".into()),
        ..options
    };
    assert!(
        load(&missing)
            .unwrap_err()
            .to_string()
            .contains("nope.toml: no such file")
    );
}

#[test]
fn bad_files_name_the_file_and_the_problem() {
    for (toml, expected) in [
        (
            "[agent]\nconcurency = 2\n",
            "agent.toml:2:1: agent.concurency: unknown key `concurency`\n  help: did you mean `concurrency`?",
        ),
        ("[agnet]\n", "agent.toml:1:2: agnet: unknown key `agnet`"),
        ("[agent]\njob_timeout = \"soon\"\n", "not a duration"),
        (
            "[agent]\nconcurrency = 0\n",
            "agent.toml:2:1: agent.concurrency: must be between 1 and 1024",
        ),
        (
            "[agent]\nparallel = 100000000000\n",
            "agent.parallel: must be between 1 and 1024",
        ),
        (
            "[agent]\nsweep_interval = \"0s\"\n",
            "agent.sweep_interval: must be longer than 0s",
        ),
        (
            "[agent]\njob_timeout = \"0s\"\n",
            "agent.job_timeout: must be longer than 0s",
        ),
        (
            "[docker]\nmemory = \"1k\"\n",
            "docker.memory: must be at least 6m",
        ),
        (
            "[agent]\npass_env = [\"NOT-A-NAME\"]\n",
            "`NOT-A-NAME` is not an environment variable name",
        ),
        (
            "[docker]\nallow_network_modes = [\"\"]\n",
            "allow_network_modes: has an empty entry",
        ),
        (
            "[[source]]\nkind = \"watch\"\npath = \".\"\ntimeout = \"0s\"\n",
            "agent.toml:4:1: [[source]] #1 timeout: must be longer than 0s",
        ),
        ("[docker]\nmemory = \"lots\"\n", "not a size"),
        ("[agent]\nkeep_workspace = \"sometimes\"\n", "sometimes"),
        ("[[source]]\nkind = \"ftp\"\n", "ftp"),
        (
            "[[source]]\nkind = \"schedule\"\ncron = \"0 3 * *\"\npath = \".\"\n",
            "[[source]] #1 cron: cron `0 3 * *`: 4 field(s)",
        ),
        (
            "[[source]]\nkind = \"schedule\"\ncron = \"0 0 30 2 *\"\npath = \".\"\n",
            "never fires",
        ),
        (
            "[[source]]\nkind = \"schedule\"\ncron = \"@daily\"\n",
            "exactly one of `path` and `git`",
        ),
        (
            "[[source]]\nkind = \"schedule\"\ncron = \"@daily\"\npath = \".\"\ntimezone = \"Moon/Base\"\n",
            "IANA",
        ),
        (
            "[[source]]\nkind = \"watch\"\npath = \"missing\"\n",
            "is not a directory",
        ),
        (
            "[[source]]\nkind = \"watch\"\npath = \".\"\ndebounse = \"1s\"\n",
            "agent.toml:4:1: [[source]] #1 debounse: unknown key `debounse`\n  help: did you mean `debounce`?",
        ),
    ] {
        let e = error(toml);
        assert!(
            e.contains(expected),
            "{toml:?}: expected {expected:?} in {e}"
        );
    }
}

#[test]
fn the_shipped_examples_load() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for file in ["agent.toml", "deploy/agent.toml"] {
        let options = LoadOptions {
            file: Some(file.into()),
            cwd: root.clone(),
            ..LoadOptions::default()
        };
        let (config, _) = load(&options).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(!config.sources.is_empty(), "{file}");
    }
}

#[test]
fn printed_settings_hide_secret_values() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = load(&options(
        &dir,
        "[secrets]\nvalues = { TOKEN = \"hunter2-secret\" }\n",
    ))
    .unwrap();
    assert_eq!(config.secrets.values["TOKEN"], "hunter2-secret");
    let printed = format!("{config:?}");
    assert!(
        printed.contains("TOKEN = ***") && !printed.contains("hunter2"),
        "{printed}"
    );
}

/// Every problem at once, each blamed on the layer that set the key: the file with its
/// line and column, the environment variable, the flag.
#[test]
fn all_problems_are_reported_each_where_its_key_was_set() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = options(
        &dir,
        "[agent]\nconcurency = 2\nparallel = 0\n\n[[source]]\nkind = \"schedule\"\npath = \".\"\ncron = \"0 61 * * *\"\n",
    );
    options
        .env
        .insert("DOCKHAND__DOCKER__MEMORY".into(), "1k".into());
    options.overrides.push(Override::set("docker.cpu", "2"));
    let e = load(&options).unwrap_err();
    let shown: Vec<String> = e.problems.iter().map(|p| p.to_string()).collect();
    let file = dir.path().join("agent.toml").display().to_string();
    assert_eq!(
        shown,
        [
            format!("{file}:2:1: agent.concurency: unknown key `concurency`\n  help: did you mean `concurrency`?"),
            "flag `--set docker.cpu=…`: docker.cpu: unknown key `cpu`\n  help: did you mean `cpus`?".to_owned(),
            format!("{file}:3:1: agent.parallel: must be between 1 and 1024"),
            "environment variable DOCKHAND__DOCKER__MEMORY: docker.memory: must be at least 6m".to_owned(),
            format!("{file}:8:1: [[source]] #1 cron: cron `0 61 * * *`: the hour field `61` has 61, outside 0–23"),
        ]
    );
}

/// `agent --check` prints the merged settings as agent.toml text, each value with where it
/// was set.
#[test]
fn check_prints_each_values_origin() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("agent.toml"), "[agent]\nname = \"ci-1\"\n").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_dockhand"))
        .args(["agent", "--check", "--set", "agent.parallel=3"])
        .args(["--set", "secrets.values.API_KEY=hunter2-in-a-flag"])
        .current_dir(dir.path())
        .env_remove("DOCKHAND_AGENT_CONFIG")
        .env("DOCKHAND__AGENT__CONCURRENCY", "4")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    let file = dir.path().join("agent.toml").display().to_string();
    for line in [
        format!("name = \"ci-1\"  # {file}:2:1"),
        "concurrency = 4  # environment variable DOCKHAND__AGENT__CONCURRENCY".to_owned(),
        "parallel = 3  # flag `--set agent.parallel=…`".to_owned(),
        "keep_results = 50  # default".to_owned(),
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line:?} in\n{stdout}");
    }
    assert!(
        !stdout.contains("hunter2"),
        "a secret from a flag stays hidden: {stdout}"
    );
}

#[test]
fn an_http_source_takes_one_url_or_several_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let urls = |toml: &str| {
        let (config, _) = load(&options(&dir, toml)).unwrap();
        match &config.sources[0] {
            SourceConfig::Http(http) => http.url.clone(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        urls("[[source]]\nkind = \"http\"\nurl = \"http://a:8750\"\n"),
        ["http://a:8750"]
    );
    assert_eq!(
        urls("[[source]]\nkind = \"http\"\nurl = [\"http://a:8750\", \"http://b:8750\"]\n"),
        ["http://a:8750", "http://b:8750"]
    );
    let e = error("[[source]]\nkind = \"http\"\nurl = [\"http://a:8750\", \"b:8750\"]\n");
    assert!(
        e.contains("`b:8750` is not an http:// or https:// address"),
        "{e}"
    );
    let e = error("[[source]]\nkind = \"http\"\nurl = []\n");
    assert!(e.contains("names no server"), "{e}");
}

#[test]
fn notify_targets_are_checked_and_their_urls_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("app")).unwrap();
    let toml = r#"
[[source]]
kind = "schedule"
name = "nightly"
cron = "@daily"
path = "."
[[source]]
kind = "watch"
path = "app"
[[notify]]
url = "https://hooks.slack.com/services/T0/B0/hunter2"
format = "slack"
sources = ["nightly", "app"]
[[notify]]
url = "http://127.0.0.1:9/hook"
on = ["always"]
"#;
    let (config, _) = load(&options(&dir, toml)).unwrap();
    let [slack, json] = &config.notify[..] else {
        panic!("two targets: {:?}", config.notify)
    };
    assert!(slack.covers("schedule:nightly"));
    assert!(slack.covers(&format!("watch:{}", dir.path().join("app").display())));
    assert!(!slack.covers("schedule:other"));
    assert!(json.covers("schedule:other") && json.covers("watch:/x"));
    assert!(
        !json.covers("http:job"),
        "the server's jobs are the server's to notify"
    );
    let printed = format!("{config:?} {}", toml::to_string(&config).unwrap());
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(printed.contains("https://hooks.slack.com/***"), "{printed}");

    let e = error(
        "[[notify]]\nurl = \"ftp://h/hunter2\"\n\n[[notify]]\nurl = \"http://h/\"\nsources = [\"nightly\"]\non = []\n",
    );
    assert!(!e.contains("hunter2"), "{e}");
    for expected in [
        "agent.toml:2:1: [[notify]] #1 url: must be an http:// or https:// address, not ftp://",
        "agent.toml:7:1: [[notify]] #2 on: is empty: nothing would be sent (leave it out for [\"failure\", \"recovery\"])",
        "agent.toml:6:1: [[notify]] #2 sources: `nightly` names no schedule (its `name`, or `cron` when unnamed) or watched path of this file",
    ] {
        assert!(e.contains(expected), "{expected}\nnot in\n{e}");
    }
    let e = error("[[notify]]\nurl = \"http://h/\"\nsource = [\"x\"]\n");
    assert!(e.contains("agent.toml:3:1: [[notify]] #1 source: unknown key `source`\n  help: did you mean `sources`?"), "{e}");
}
