//! The `dockhand` binary's collector commands: output, `--json`, exit codes, config discovery.

use std::path::Path;
use std::process::{Command, Output, Stdio};

fn dockhand(dir: &Path, args: &[&str]) -> Output {
    dockhand_with_home(dir, dir, args)
}

fn dockhand_with_home(dir: &Path, home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dockhand"))
        .args(args)
        .current_dir(dir)
        .env("HOME", home)
        .env_remove("DOCKHAND_CONFIG")
        .env_remove("HARPOON_CONFIG")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn fixture(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

#[test]
fn check_summarises_a_valid_config() {
    let out = dockhand(&fixture("valid/single"), &["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("ok: "),
        "{}",
        text(&out.stdout)
    );
    assert!(text(&out.stdout).contains("1 image(s), 1 task(s), pipeline: hello"));
}

#[test]
fn check_reports_every_problem_with_its_position_and_exits_200() {
    let config = fixture("invalid/many-problems.yml");
    let out = dockhand(
        Path::new(env!("CARGO_MANIFEST_DIR")),
        &["-c", config.to_str().unwrap(), "check"],
    );
    assert_eq!(out.status.code(), Some(200));
    let stderr = text(&out.stderr);
    for want in [
        "many-problems.yml:7:5 (at images.app.enviroment)",
        "many-problems.yml:9:13 (at images.app.ports[0])",
        "many-problems.yml:12:22 (at images.app.tasks.ship.action)",
        "many-problems.yml:14:5 (at pipeline[0])",
        "help: did you mean `env`?",
        "error: the config has 4 problem(s)",
    ] {
        assert!(stderr.contains(want), "missing {want:?} in:\n{stderr}");
    }
    assert!(
        stderr.contains("9 |     ports: [http]\n  |             ^"),
        "no caret under the port:\n{stderr}"
    );
}

#[test]
fn check_json_is_machine_readable() {
    let config = fixture("invalid/bad-port.yml");
    let out = dockhand(
        Path::new("/"),
        &["-c", config.to_str().unwrap(), "check", "--json"],
    );
    assert_eq!(out.status.code(), Some(200));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    let first = &report["diagnostics"][0];
    assert_eq!(
        (first["line"].as_u64(), first["column"].as_u64()),
        (Some(6), Some(9))
    );
    assert_eq!(first["key_path"], "images.app.ports[0]");
}

#[test]
fn a_task_option_typo_is_located_under_the_task() {
    let config = fixture("invalid/task-option-typo.yml");
    let out = dockhand(
        Path::new("/"),
        &["-c", config.to_str().unwrap(), "check", "--json"],
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let paths: Vec<&str> = report["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["key_path"].as_str())
        .collect();
    assert_eq!(
        paths,
        [
            "images.app.tasks.test.options.comand",
            "images.app.tasks.test.options.privileged"
        ]
    );
}

#[test]
fn list_shows_images_tasks_pipeline_and_build_order() {
    let dir = fixture("valid/harpoon");
    let out = dockhand_with_home(&dir, &dir.join("home"), &["list"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for want in [
        "  builder  registry.local/demo-builder:1.4  from base\n",
        "  app      registry.local/demo-app:1.4      from builder                   links db, cache\n",
        "  test        run app      run the tests\n",
        "  lint        run builder  lint the scripts\n",
        "2. test  needs lint",
        "build order: base -> builder + db + cache -> app",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
    let json = dockhand_with_home(&dir, &dir.join("home"), &["list", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        report["images"][2]["full_name"],
        "registry.local/demo-app:1.4"
    );
    assert_eq!(
        report["plan"]["runs"][1]["services"],
        serde_json::json!(["db", "cache"])
    );
}

#[test]
fn dockerfile_prints_exactly_what_is_sent() {
    let out = dockhand(&fixture("valid/single"), &["dockerfile", "hello"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout),
        "FROM busybox:local\nRUN echo hello > /greeting\n"
    );
    let out = dockhand(&fixture("valid/single"), &["dockerfile", "helo"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no image named `helo` (did you mean `hello`?)"));
}

#[test]
fn config_is_found_by_flag_env_and_default_names() {
    let dir = tempfile::tempdir().unwrap();
    let harpoon = "images:\n  only:\n    commands: [FROM busybox:local]\n";
    std::fs::write(dir.path().join("harpoon.yml"), harpoon).unwrap();
    let out = dockhand(dir.path(), &["check"]);
    assert!(
        text(&out.stdout).contains("harpoon.yml"),
        "{}",
        text(&out.stderr)
    );

    std::fs::write(
        dir.path().join("config.yml"),
        "tag: first:1\ncommands: [FROM busybox:local]\n",
    )
    .unwrap();
    let out = dockhand(dir.path(), &["dockerfile", "first"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "config.yml is preferred: {}",
        text(&out.stderr)
    );

    let out = Command::new(env!("CARGO_BIN_EXE_dockhand"))
        .args(["dockerfile", "only"])
        .current_dir(dir.path())
        .env("HARPOON_CONFIG", dir.path().join("harpoon.yml"))
        .env_remove("DOCKHAND_CONFIG")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "HARPOON_CONFIG: {}",
        text(&out.stderr)
    );

    let missing = dockhand(dir.path(), &["-c", "nope.yml", "check"]);
    assert_eq!(missing.status.code(), Some(200));
    assert!(
        text(&missing.stderr).contains("config file `")
            && text(&missing.stderr).contains("nope.yml` does not exist")
    );
}

#[test]
fn a_closed_stdout_is_not_a_crash() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dockhand"))
        .args(["list", "--json"])
        .current_dir(fixture("valid/harpoon"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        !text(&out.stderr).contains("panicked"),
        "{}",
        text(&out.stderr)
    );
}

/// Completion scripts for each shell name every command; the bash one is valid bash.
#[test]
fn completions_cover_every_command() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = dockhand(dir.path(), &["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        for command in ["run", "build", "check", "agent", "submit", "completions"] {
            assert!(script.contains(command), "{shell} lacks {command}");
        }
    }
    let script = dir.path().join("dockhand.bash");
    std::fs::write(
        &script,
        dockhand(dir.path(), &["completions", "bash"]).stdout,
    )
    .unwrap();
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(syntax.status.success(), "{}", text(&syntax.stderr));
    let unknown = dockhand(dir.path(), &["completions", "tcsh"]);
    assert_eq!(unknown.status.code(), Some(2));
}

#[test]
fn the_man_page_and_version_name_the_build() {
    let dir = tempfile::tempdir().unwrap();
    let version = text(&dockhand(dir.path(), &["--version"]).stdout);
    let (name, stamp) = version.trim().split_once(' ').unwrap();
    assert_eq!(name, "dockhand");
    let stamp = stamp.strip_prefix(env!("CARGO_PKG_VERSION")).unwrap();
    let (commit, date) = stamp
        .trim()
        .trim_matches(|c| c == '(' || c == ')')
        .split_once(' ')
        .unwrap();
    assert!(
        commit.len() == 12 && commit.bytes().all(|b| b.is_ascii_hexdigit()),
        "{version}"
    );
    assert_eq!(date.len(), 10, "{version}");
    let man = dockhand(dir.path(), &["man"]);
    assert_eq!(man.status.code(), Some(0));
    let page = text(&man.stdout);
    assert!(page.starts_with(".ie") || page.starts_with(".TH"), "{page}");
    assert!(page.contains(".TH dockhand 1"), "{page}");
    for command in ["run", "watch", "server", "logs"] {
        assert!(page.contains(command), "the page lacks {command}");
    }
}

/// One duration rule for every flag (plain seconds too), and counts that cannot be zero.
#[test]
fn flags_take_plain_seconds_and_refuse_zero_parallelism() {
    let dir = tempfile::tempdir().unwrap();
    let zero = dockhand(dir.path(), &["run", "-j", "0"]);
    assert_eq!(zero.status.code(), Some(2), "{}", text(&zero.stderr));
    assert!(
        text(&zero.stderr).contains("1..=1024"),
        "{}",
        text(&zero.stderr)
    );
    let bad = dockhand(dir.path(), &["run", "--timeout", "soon"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        text(&bad.stderr).contains("write seconds"),
        "{}",
        text(&bad.stderr)
    );
    let seconds = dockhand(dir.path(), &["run", "--timeout", "10"]);
    assert_eq!(
        seconds.status.code(),
        Some(200),
        "accepted; then no config here: {}",
        text(&seconds.stderr)
    );
}

/// A `run` whose config does not collect still leaves the job's record: result.json with a
/// failed `collect` stage carrying the diagnostics, and junit.xml.
#[test]
fn a_config_error_under_run_is_the_jobs_record() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.yml"),
        "images:\n  app:\n    commands: [FROM busybox:local]\n    comand: x\n",
    )
    .unwrap();
    let out = dockhand(dir.path(), &["run"]);
    assert_eq!(out.status.code(), Some(200), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("did you mean `command`?"));
    let results: Vec<_> = std::fs::read_dir(dir.path().join(".dockhand/results"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(results.len(), 1);
    let result: serde_json::Value =
        serde_json::from_slice(&std::fs::read(results[0].join("result.json")).unwrap()).unwrap();
    assert_eq!(
        (result["status"].as_str(), result["exit_code"].as_i64()),
        (Some("failed"), Some(200))
    );
    let collect = &result["stages"][0];
    assert_eq!(collect["kind"], "collect");
    assert_eq!(
        collect["message"],
        "error: unknown key `comand` in image `app`"
    );
    let log = std::fs::read_to_string(results[0].join("log.txt")).unwrap();
    assert!(log.contains("config.yml:4:5"), "{log}");
    assert!(results[0].join("junit.xml").is_file());
}

/// With no config named and none of the default names present, the message says what was
/// looked for and how to name one; `check --json` stays machine-readable.
#[test]
fn no_config_here_says_what_was_looked_for() {
    let dir = tempfile::tempdir().unwrap();
    let out = dockhand(dir.path(), &["check"]);
    assert_eq!(out.status.code(), Some(200));
    let said = text(&out.stderr);
    assert!(
        said.contains("looked for config.yml and harpoon.yml in") && said.contains("-c FILE"),
        "{said}"
    );
    let json = dockhand(dir.path(), &["check", "--json"]);
    assert_eq!(json.status.code(), Some(200));
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["ok"], false);
}

/// Each command's help shows only what it uses; `-c` works before or after the command
/// name where a config is read, and is refused where none is.
#[test]
fn each_command_takes_only_the_options_it_uses() {
    let dir = tempfile::tempdir().unwrap();
    let help = |command: &str| text(&dockhand(dir.path(), &[command, "--help"]).stdout);
    for command in ["server", "submit", "jobs", "logs", "cancel", "agent"] {
        let help = help(command);
        assert!(!help.contains("--no-harpoonrc"), "{command}: {help}");
        assert!(
            !help.contains("-c, --config <FILE>  The config file ["),
            "{command}"
        );
    }
    assert!(
        help("submit").contains("-c, --config <FILE>"),
        "one spelling"
    );
    assert!(
        !help("submit").contains("--config-file"),
        "the old one hidden"
    );
    for command in ["run", "build", "check", "list", "dockerfile"] {
        assert!(help(command).contains("--no-harpoonrc"), "{command}");
    }
    assert!(
        help("logs").contains("<JOB>  The job's id"),
        "{}",
        help("logs")
    );
    assert!(help("run").contains("--allow-host-mount"));
    for run_only in [
        "--allow-host-mount",
        "--timeout",
        "--memory",
        "--pids-limit",
    ] {
        assert!(!help("build").contains(run_only), "{run_only}");
    }
    let build = dockhand(dir.path(), &["build", "--timeout", "10"]);
    assert_eq!(build.status.code(), Some(2), "{}", text(&build.stderr));

    let pointless = dockhand(dir.path(), &["-c", "x.yml", "jobs", "--token", "t"]);
    assert_eq!(pointless.status.code(), Some(2));
    assert!(
        text(&pointless.stderr).contains("`jobs` reads no config.yml"),
        "{}",
        text(&pointless.stderr)
    );

    std::fs::write(
        dir.path().join("other.yml"),
        "tag: o\ncommands: [FROM busybox:local]\n",
    )
    .unwrap();
    for args in [["-c", "other.yml", "check"], ["check", "-c", "other.yml"]] {
        let out = dockhand(dir.path(), &args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }

    let no_source = dockhand(dir.path(), &["submit", "--token", "t"]);
    assert_eq!(no_source.status.code(), Some(2));
    assert!(
        text(&no_source.stderr).contains("one of --git URL or --path DIR"),
        "{}",
        text(&no_source.stderr)
    );
}

/// `init` writes a config that passes `check`: from the Dockerfile when there is one (its
/// instructions, one per entry, sent back unchanged), a starter otherwise; it never
/// overwrites a config.
#[test]
fn init_writes_a_config_that_checks_and_never_overwrites() {
    let empty = tempfile::tempdir().unwrap();
    let dir = empty.path().join("My Service");
    std::fs::create_dir(&dir).unwrap();
    let init = dockhand(&dir, &["init"]);
    assert_eq!(init.status.code(), Some(0), "{}", text(&init.stderr));
    let check = dockhand(&dir, &["check"]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check.stderr));
    assert!(text(&check.stdout).contains("1 image(s), 1 task(s), pipeline: test"));
    let written = std::fs::read_to_string(dir.join("config.yml")).unwrap();
    assert!(written.contains("  my-service:\n"), "{written}");
    let again = dockhand(&dir, &["init"]);
    assert_eq!(again.status.code(), Some(2));
    assert!(text(&again.stderr).contains("config.yml already exists here"));
    assert_eq!(
        std::fs::read_to_string(dir.join("config.yml")).unwrap(),
        written
    );

    let with = tempfile::tempdir().unwrap();
    std::fs::write(
        with.path().join("Dockerfile"),
        "# syntax=docker/dockerfile:1\nFROM busybox:local AS base\nARG V=1\nRUN echo {not formatted} ${V} && \\\n    echo \"quoted \\\"too\\\"\"\nWORKDIR /src\nCMD [\"sh\", \"-c\", \"echo hi\"]\n",
    )
    .unwrap();
    let init = dockhand(with.path(), &["init", "--name", "svc"]);
    assert_eq!(init.status.code(), Some(0), "{}", text(&init.stderr));
    let dockerfile = dockhand(with.path(), &["dockerfile", "svc"]);
    assert_eq!(
        dockerfile.status.code(),
        Some(0),
        "{}",
        text(&dockerfile.stderr)
    );
    assert_eq!(
        text(&dockerfile.stdout),
        "FROM busybox:local AS base\nARG V=1\nRUN echo {not formatted} ${V} && echo \"quoted \\\"too\\\"\"\nWORKDIR /src\nCMD [\"sh\", \"-c\", \"echo hi\"]\n"
    );
    let list = text(&dockhand(with.path(), &["list"]).stdout);
    assert!(
        list.contains("  run  run svc  run the image's own command"),
        "{list}"
    );

    let heredoc = tempfile::tempdir().unwrap();
    std::fs::write(
        heredoc.path().join("Dockerfile"),
        "FROM x\nRUN <<EOF\necho\nEOF\n",
    )
    .unwrap();
    let refused = dockhand(heredoc.path(), &["init"]);
    assert_eq!(refused.status.code(), Some(200));
    assert!(
        text(&refused.stderr).contains("Dockerfile:2: a heredoc"),
        "{}",
        text(&refused.stderr)
    );
    assert!(!heredoc.path().join("config.yml").exists());

    // Names that would not check: a dot, the base image's own name, a stage's.
    let odd = tempfile::tempdir().unwrap();
    for (dir, dockerfile, image) in [
        ("my.app", None, "my-app"),
        ("nginx", Some("FROM nginx\nCOPY . /x\n"), "nginx-image"),
        (
            "base",
            Some("\u{feff}FROM busybox:local AS base\nFROM base\n"),
            "base-image",
        ),
    ] {
        let dir = odd.path().join(dir);
        std::fs::create_dir(&dir).unwrap();
        if let Some(text) = dockerfile {
            std::fs::write(dir.join("Dockerfile"), text).unwrap();
        }
        let init = dockhand(&dir, &["init"]);
        assert!(
            text(&init.stderr).contains(&format!("image `{image}`")),
            "{}",
            text(&init.stderr)
        );
        let check = dockhand(&dir, &["check"]);
        assert_eq!(
            check.status.code(),
            Some(0),
            "{image}: {}",
            text(&check.stderr)
        );
    }
    let endless = dockhand(odd.path(), &["init", "--dockerfile", "/dev/zero"]);
    assert_ne!(endless.status.code(), Some(0), "a device is no Dockerfile");
}

/// A config's own text reaches the terminal with control characters escaped: a
/// description cannot break `list`'s rows or colour the terminal.
#[test]
fn list_escapes_a_configs_control_characters() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.yml"),
        "images:\n  app:\n    commands: [FROM busybox:local]\n    tasks:\n      t:\n        description: \"red \\e[31mtext\\nsecond line\"\n        options: {command: \"true\"}\n",
    )
    .unwrap();
    let out = dockhand(dir.path(), &["list"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(!stdout.contains('\x1b'), "{stdout:?}");
    assert!(
        stdout.contains("red \\x1b[31mtext\\nsecond line"),
        "{stdout}"
    );
}
