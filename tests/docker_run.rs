//! Run stages against the real engine: exit codes, linked services and wait conditions,
//! env forms, mounts, timeouts, Ctrl-C, pipelines, and the results directory. Every run
//! checks afterwards that no container or network of the job is left.

mod support;

use std::time::{Duration, Instant};

use support::{JobRun, Project, docker};

#[test]
fn a_tasks_exit_code_is_the_jobs_exit_code() {
    let project = Project::new(
        "tag: t-exit3\ncontext: false\ncommands: [FROM dockhand/busybox:local]\nbash: 'echo failing; exit 3'\n",
    );
    let run = project.run(&["run"]);
    assert_eq!(run.code, Some(3), "{run}");
    let stage = run.stage("run", "t-exit3");
    assert_eq!(
        (stage["status"].as_str(), stage["exit_code"].as_i64()),
        (Some("failed"), Some(3))
    );
    assert_eq!(run.result()["status"], "failed");
    assert!(run.stdout.contains("run t-exit3 | failing"), "{run}");
}

#[test]
fn linked_services_start_first_and_answer_by_alias_once_ready() {
    let project = Project::new(
        r#"
image_name_prefix: t-links
context: false
images:
  web:
    commands:
      - FROM dockhand/busybox:local
      - [ADD, {dest: /srv/index.html, content: "hello from web\n"}]
    command: [sh, -c, "sleep 1; exec httpd -f -p 8080 -h /srv"]
    wait_condition: {port_open: [8080], timeout: 20s, wait_between_attempts: 100ms}
  client:
    commands: [FROM dockhand/busybox:local]
    links: ["{images.web}:frontend"]
    tasks:
      fetch:
        options:
          command: [sh, -c, "wget -q -O - http://frontend:8080/ && wget -q -O - http://web:8080/"]
"#,
    );
    let run = project.run(&["run", "fetch"]);
    assert_eq!(run.code, Some(0), "{run}");
    assert!(run.stdout.contains("service web is ready"), "{run}");
    assert!(
        run.stdout
            .contains("started service web, also answering to frontend"),
        "{run}"
    );
    assert_eq!(
        run.stdout.matches("run fetch | hello from web").count(),
        2,
        "{run}"
    );
}

#[test]
fn a_service_that_dies_before_it_is_ready_fails_the_task_and_shows_its_output() {
    let project = Project::new(
        r#"
image_name_prefix: t-deadsvc
context: false
images:
  db:
    commands: [FROM dockhand/busybox:local]
    command: [sh, -c, "echo 'db: config is broken'; exit 4"]
    wait_condition: {port_open: [5432], timeout: 20s}
  app:
    commands: [FROM dockhand/busybox:local]
    links: ["{images.db}"]
    command: "true"
"#,
    );
    let run = project.run(&["run", "app"]);
    assert_eq!(run.code, Some(1), "{run}");
    let stage = run.stage("run", "app");
    assert_eq!(stage["status"], "failed");
    assert!(
        stage["message"]
            .as_str()
            .unwrap()
            .contains("service db exited with code 4 before it was ready"),
        "{stage}"
    );
    assert!(run.log().contains("db: config is broken"), "{}", run.log());
}

#[test]
fn a_service_that_never_gets_ready_times_out_with_what_was_pending() {
    let project = Project::new(
        r#"
image_name_prefix: t-slowsvc
context: false
images:
  db:
    commands: [FROM dockhand/busybox:local]
    command: [sleep, "60"]
    wait_condition: {port_open: [5432], file_exists: [/ready], timeout: 2s, wait_between_attempts: 200ms}
  app:
    commands: [FROM dockhand/busybox:local]
    links: ["{images.db}"]
    command: "true"
"#,
    );
    let started = Instant::now();
    let run = project.run(&["run", "app"]);
    assert_eq!(run.code, Some(1), "{run}");
    let message = run.stage("run", "app")["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("was not ready after 2s: port 5432 is not open"),
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// A wait-condition command that never exits is abandoned at the condition's timeout.
#[test]
fn a_wait_command_that_never_exits_still_times_out() {
    let project = Project::new(
        r#"
image_name_prefix: t-hungwait
context: false
images:
  db:
    commands: [FROM dockhand/busybox:local]
    command: [sleep, "600"]
    wait_condition: {command: [[sleep, "100000"]], timeout: 2s}
  app:
    commands: [FROM dockhand/busybox:local]
    links: ["{images.db}"]
    command: "true"
"#,
    );
    let started = Instant::now();
    let run = project.run(&["run", "app"]);
    assert_eq!(run.code, Some(1), "{run}");
    let message = run.stage("run", "app")["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("was not ready after 2s: a check was still running"),
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[test]
fn env_forms_are_resolved_and_a_missing_host_value_stops_the_job_before_it_starts() {
    let config = "tag: t-env\ncontext: false\ncommands: [FROM dockhand/busybox:local]\nenv: [FROM_HOST, LITERAL=one two, 'WITH_DEFAULT:fallback', 'OVERRIDDEN:unused']\nbash: 'echo \"[$FROM_HOST|$LITERAL|$WITH_DEFAULT|$OVERRIDDEN]\"'\n";
    let project = Project::new(config);
    let run = support::finish(
        project
            .command(&["run"])
            .env("FROM_HOST", "host value")
            .env("OVERRIDDEN", "from host")
            .env_remove("WITH_DEFAULT"),
    );
    assert_eq!(run.code, Some(0), "{run}");
    assert!(
        run.stdout
            .contains("[host value|one two|fallback|from host]"),
        "{run}"
    );

    let run = support::finish(project.command(&["run"]).env_remove("FROM_HOST"));
    assert_eq!(run.code, Some(200), "{run}");
    assert!(
        run.stderr
            .contains("environment variable `FROM_HOST` is not set"),
        "{run}"
    );
    let stages = run.result()["stages"].clone();
    assert_eq!(
        (stages[0]["kind"].as_str(), stages[0]["status"].as_str()),
        (Some("collect"), Some("failed")),
        "the refusal is the job's record: {run}"
    );
    assert_eq!(
        stages.as_array().map(Vec::len),
        Some(1),
        "nothing may start: {run}"
    );
}

#[test]
fn mounts_reach_the_workspace_and_nothing_else() {
    let project = Project::new(
        "tag: t-mount\ncontext: false\ncommands: [FROM dockhand/busybox:local]\nvolumes: {mount: ['./data:/data:ro']}\ncommand: [cat, /data/file.txt]\n",
    );
    project.write("data/file.txt", "from the workspace\n");
    let run = project.run(&["run"]);
    assert_eq!(run.code, Some(0), "{run}");
    assert!(run.stdout.contains("from the workspace"), "{run}");

    let outside = Project::new(
        "tag: t-mount2\ncontext: false\ncommands: [FROM dockhand/busybox:local]\nvolumes: {mount: ['/etc:/host-etc', '/var/run/docker.sock:/var/run/docker.sock']}\ncommand: 'true'\n",
    );
    let run = outside.run(&["run"]);
    assert_eq!(run.code, Some(200), "{run}");
    assert!(
        run.stderr
            .contains("mount of /etc is outside the workspace"),
        "{run}"
    );
    assert!(run.stderr.contains("`--allow-host-mount DIR`"), "{run}");
    assert!(run.stderr.contains("mounting the Docker socket"), "{run}");
    let run = outside.run(&["run", "--allow-host-mount", "/etc", "--allow-docker-socket"]);
    assert_eq!(run.code, Some(0), "{run}");
}

#[test]
fn a_task_past_its_timeout_is_killed_and_removed() {
    let project = Project::new(
        "tag: t-timeout\ncontext: false\ncommands: [FROM dockhand/busybox:local]\ncommand: [sleep, '60']\n",
    );
    let started = Instant::now();
    let run = project.run(&["run", "--timeout", "2s"]);
    assert_eq!(run.code, Some(124), "{run}");
    assert_eq!(run.stage("run", "t-timeout")["status"], "timed_out");
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn ctrl_c_cancels_the_job_and_removes_everything() {
    let project = Project::new(
        r#"
image_name_prefix: t-cancel
context: false
images:
  svc:
    commands: [FROM dockhand/busybox:local]
    command: [sleep, "300"]
  app:
    commands: [FROM dockhand/busybox:local]
    links: ["{images.svc}"]
    command: [sh, -c, "echo started; sleep 300"]
"#,
    );
    let mut child = project.spawn(&["run", "app"]);
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let seen = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("run app | started"));
    assert!(seen, "the task never started");
    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let mut run = JobRun::from_output(child.wait_with_output().unwrap());
    run.stdout = rest.join("\n");
    assert_eq!(run.code, Some(130), "{run}");
    run.assert_nothing_left();
    assert_eq!(run.result()["status"], "cancelled");
    assert_eq!(run.stage("run", "app")["status"], "cancelled");
}

#[test]
fn pipelines_respect_needs_and_allow_failure() {
    let project = Project::new(
        r#"
image_name_prefix: t-pipe
context: false
images:
  box:
    commands: [FROM dockhand/busybox:local]
    tasks:
      flaky: {options: {bash: "exit 5"}}
      after-flaky: {options: {bash: "echo ran after flaky"}}
      broken: {options: {bash: "exit 9"}}
      after-broken: {options: {bash: "echo should not run"}}
pipeline:
  - task: flaky
    allow_failure: true
  - task: after-flaky
    needs: [flaky]
  - broken
  - task: after-broken
    needs: [broken]
"#,
    );
    let run = project.run(&["run"]);
    assert_eq!(run.code, Some(9), "{run}");
    assert_eq!(run.stage("run", "flaky")["exit_code"], 5);
    assert_eq!(run.stage("run", "after-flaky")["status"], "passed");
    assert_eq!(run.stage("run", "after-broken")["status"], "skipped");
    assert!(!run.stdout.contains("should not run"));
}

#[test]
fn the_results_directory_holds_the_result_the_whole_log_and_stage_logs() {
    let project = Project::new(
        "tag: t-results\ncontext: false\ncommands: [FROM dockhand/busybox:local]\nbash: 'echo out; echo err >&2; printf partial'\n",
    );
    let run = project.run(&["run"]);
    assert_eq!(run.code, Some(0), "{run}");
    let result = run.result();
    assert_eq!(result["schema_version"], 1);
    assert_eq!(result["exit_code"], 0);
    let kinds: Vec<&str> = result["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["collect", "build", "run"]);
    let log = run.log();
    for want in [
        "==> run t-results\n",
        "out\n",
        "err\n",
        "partial\n",
        "==> build t-results\n",
        "\n<== run t-results passed in ",
        "\n<== build t-results passed in ",
    ] {
        assert!(log.contains(want), "log.txt lacks {want:?}:\n{log}");
    }
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("job ")
            && last.contains(" succeeded in ")
            && last.ends_with(" (exit code 0)"),
        "log.txt ends with the job's verdict: {log}"
    );
    let stage = run.stage("run", "t-results");
    let (start, end) = (
        stage["log_range"][0].as_u64().unwrap() as usize,
        stage["log_range"][1].as_u64().unwrap() as usize,
    );
    assert!(log[start..end].contains("partial"));
    let stage_log = std::fs::read_to_string(
        run.results
            .as_ref()
            .unwrap()
            .join(stage["log_file"].as_str().unwrap()),
    )
    .unwrap();
    assert!(
        stage_log.contains("out\n") && stage_log.contains("partial\n"),
        "{stage_log}"
    );
}

/// Arguments after `--` keep their words: `{$@}` renders them as shell words, which a
/// script and a command string split back as given. Arguments nothing reads are refused.
#[test]
fn extra_arguments_reach_the_task() {
    let project = Project::new(
        "tag: t-args\ncontext: false\ncommands: [FROM dockhand/busybox:local]\nbash: 'printf \"[%s]\" {$@}; echo'\n",
    );
    let run = project.run(&["run", "t-args", "--", "one", "two words", "it's"]);
    assert_eq!(run.code, Some(0), "{run}");
    assert!(run.stdout.contains("[one][two words][it's]"), "{run}");
    let command = Project::new(
        "tag: t-args\ncontext: false\ncommands: [FROM dockhand/busybox:local]\ncommand: 'printf [%s] {$@}'\n",
    );
    let run = command.run(&["run", "t-args", "--", "a b", "c"]);
    assert_eq!(run.code, Some(0), "{run}");
    assert!(run.stdout.contains("[a b][c]"), "{run}");
    let unused = Project::new(
        "tag: t-args\ncontext: false\ncommands: [FROM dockhand/busybox:local]\ncommand: [true]\n",
    );
    let run = unused.run(&["run", "t-args", "--", "ignored"]);
    assert_eq!(run.code, Some(2), "{run}");
    assert!(run.stderr.contains("would go nowhere"), "{run}");
    let run = project.run(&["run", "nope"]);
    assert_eq!(run.code, Some(2), "{run}");
    assert!(run.stderr.contains("no task named `nope`"), "{run}");
}

#[test]
fn no_engine_is_an_infrastructure_error_naming_the_address() {
    let project =
        Project::new("tag: t-noengine\ncontext: false\ncommands: [FROM dockhand/busybox:local]\n");
    let run = JobRun::from_output(
        project
            .command(&["run"])
            .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
            .output()
            .unwrap(),
    );
    assert_eq!(run.code, Some(202), "{run}");
    assert!(
        run.stderr
            .contains("no Docker engine answers at unix:///nonexistent/docker.sock"),
        "{run}"
    );
}

#[test]
fn wait_conditions_need_no_shell_in_the_service() {
    let project = Project::new(
        r#"
image_name_prefix: t-waits
context: false
images:
  svc:
    commands: [FROM dockhand/busybox:local]
    command: [sh, -c, "sleep 1; echo up > /state; echo 'server ready to accept' > /log; touch /ready; exec sleep 60"]
    wait_condition:
      file_exists: [/ready]
      file_value: {/state: up}
      greps: {/log: "ready to \\w+"}
      command: ["test -s /log"]
      timeout: 20s
      wait_between_attempts: 200ms
  app:
    commands: [FROM dockhand/busybox:local]
    links: ["{images.svc}"]
    bash: 'echo "running in $0"'
    shell: /bin/ash
"#,
    );
    let run = project.run(&["run", "app"]);
    assert_eq!(run.code, Some(0), "{run}");
    assert!(run.stdout.contains("service svc is ready"), "{run}");
    assert!(run.stdout.contains("running in /bin/ash"), "{run}");
}

#[test]
fn the_repository_demo_runs() {
    support::require_engine();
    let results = tempfile::tempdir().unwrap();
    let run = support::finish(
        std::process::Command::new(env!("CARGO_BIN_EXE_dockhand"))
            .args([
                "--no-harpoonrc",
                "run",
                "--results-dir",
                results.path().to_str().unwrap(),
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_remove("DOCKHAND_CONFIG"),
    );
    assert_eq!(run.code, Some(0), "{run}");
    assert!(
        run.stdout
            .contains("run test | service answered: dockhand demo service"),
        "{run}"
    );
    assert!(
        run.stdout
            .contains("run test: 1 passed, 0 failed, 0 errors, 0 skipped"),
        "{run}"
    );
    let report = run
        .results
        .as_ref()
        .unwrap()
        .join("artifacts/test/results/test.xml");
    assert!(
        std::fs::read_to_string(&report)
            .unwrap()
            .contains("answers_its_page"),
        "{run}"
    );
}

/// `dockhand run | head -3`: the console stops being written when its reader goes away;
/// the job runs to its end and keeps its records.
#[test]
fn a_closed_console_ends_neither_the_job_nor_its_records() {
    use std::io::{BufRead, BufReader, Read};
    let project = Project::new(
        "tag: t-pipe\ncontext: false\ncommands: [FROM dockhand/busybox:local]\ncommand: [seq, \"1\", \"200000\"]\n",
    );
    let mut child = project.spawn(&["run"]);
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    drop(stdout);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    let run = JobRun {
        code: status.code(),
        stdout: first,
        stderr: stderr.clone(),
        results: stderr
            .lines()
            .find_map(|l| l.strip_prefix("results: "))
            .map(std::path::PathBuf::from),
    };
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(run.result()["status"], "succeeded", "{run}");
    assert!(run.log().contains("200000\n"), "the log has every line");
    run.assert_nothing_left();
}

/// An image with no CMD or ENTRYPOINT (its own, its config parents' or its base's) run by a
/// task without `command`/`bash` is refused before anything builds, with the way out; the
/// engine would only say "No command specified" after the builds.
#[test]
fn an_image_with_nothing_to_run_is_refused_before_it_builds() {
    let prefix = format!("t-nocmd-{}", std::process::id());
    let project = Project::new(&format!(
        r#"
image_name_prefix: {prefix}
context: false
images:
  base:
    commands: [FROM dockhand/busybox:local]
  child:
    commands: [[FROM, "{{images.base}}"]]
  talks:
    commands: [[FROM, "{{images.base}}"], 'CMD ["echo", "spoke"]']
tasks:
  given:
    image: "{{images.base}}"
    options: {{command: [echo, given]}}
"#
    ));
    for image in ["base", "child"] {
        let run = project.run(&["run", image]);
        assert_eq!(run.code, Some(200), "{run}");
        assert!(
            run.stderr
                .contains(&format!("image `{image}` has nothing to run"))
                && run.stderr.contains("give the task `command:` or `bash:`"),
            "{run}"
        );
        let stages = run.result()["stages"].clone();
        assert_eq!(
            stages.as_array().map(Vec::len),
            Some(1),
            "nothing built: {run}"
        );
    }
    let talks = project.run(&["run", "talks"]);
    assert_eq!(talks.code, Some(0), "{talks}");
    assert!(talks.stdout.contains("spoke"), "{talks}");
    let given = project.run(&["run", "given"]);
    assert_eq!(given.code, Some(0), "{given}");
    assert!(given.stdout.contains("given"), "{given}");
    for image in ["base", "talks"] {
        docker(&["rmi", "-f", &format!("{prefix}-{image}")]);
    }
}

/// Statuses are coloured when asked (`--color always`, `CLICOLOR_FORCE`), never when
/// `NO_COLOR` is set or the output is a pipe, and never in the job's log.
#[test]
fn statuses_are_coloured_only_where_asked() {
    let project = Project::new(
        "tag: t-colour\ncontext: false\ncommands: [FROM dockhand/busybox:local]\ncommand: 'true'\n",
    );
    let green = "\x1b[32mpassed";
    let always = project.run(&["run", "--color", "always"]);
    assert_eq!(always.code, Some(0), "{always}");
    assert!(always.stdout.contains(green), "{always}");
    assert!(!always.log().contains('\x1b'), "log.txt stays plain");
    let piped = project.run(&["run"]);
    assert!(!piped.stdout.contains('\x1b'), "{piped}");
    let forced = support::finish(project.command(&["run"]).env("CLICOLOR_FORCE", "1"));
    assert!(forced.stdout.contains(green), "{forced}");
    let declined = support::finish(
        project
            .command(&["run"])
            .env("CLICOLOR_FORCE", "1")
            .env("NO_COLOR", "1"),
    );
    assert!(!declined.stdout.contains('\x1b'), "{declined}");
    let never = project.run(&["run", "--color", "never"]);
    assert!(!never.stdout.contains('\x1b'), "{never}");
}

/// A config `init` made from a Dockerfile runs as it is: the build sends the directory and
/// the task runs the image's own command.
#[test]
fn a_config_from_init_runs() {
    let project = Project::empty();
    project.write(
        "Dockerfile",
        "FROM dockhand/busybox:local\nCOPY . /src\nCMD [\"cat\", \"/src/greeting.txt\"]\n",
    );
    project.write("greeting.txt", "hello from init\n");
    let init = support::finish(
        std::process::Command::new(env!("CARGO_BIN_EXE_dockhand"))
            .args(["init", "--name", "t-init"])
            .current_dir(project.path()),
    );
    assert_eq!(init.code, Some(0), "{init}");
    let run = project.run(&["run"]);
    assert_eq!(run.code, Some(0), "{run}");
    assert!(run.stdout.contains("run run | hello from init"), "{run}");
    run.assert_nothing_left();
}

/// docs/config.md's tutorial, exactly as written there: every `<!-- file: NAME -->` block
/// is written out and the pipeline must pass, the test reaching the service.
#[test]
fn the_tutorial_runs() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/config.md")).unwrap();
    let project = Project::empty();
    let mut files = 0;
    for block in doc.split("<!-- file: ").skip(1) {
        let (name, rest) = block.split_once(" -->").unwrap();
        let body = rest.split_once("```").unwrap().1;
        let body = body.split_once('\n').unwrap().1;
        let body = body.split_once("```").unwrap().0;
        project.write(name, body);
        files += 1;
    }
    assert_eq!(files, 2, "config.yml and test.sh");
    let run = project.run(&["run"]);
    assert_eq!(run.code, Some(0), "{run}");
    assert!(run.stdout.contains("web said: hello from web"), "{run}");
    run.assert_nothing_left();
}
