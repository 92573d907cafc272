//! What a config names is read only inside its workspace: no `..`, absolute path or link
//! reaches a host file (the agent's identity file was read this way), no device or FIFO is
//! read, and no config, however hostile, makes dockhand allocate without bound.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::agent::{AgentProcess, LONG, unique};
use crate::support::{JobRun, Project};

/// A directory outside every workspace holding `secret.yml`, whose text holds a marker no
/// output may show: a value `{token}` would print, and a line a YAML or pattern error
/// would echo.
fn host_secret() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("host-only-{}", unique());
    std::fs::write(
        dir.path().join("secret.yml"),
        format!("token: {marker}\n[{marker}\n"),
    )
    .unwrap();
    (dir, marker)
}

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

/// Runs `dockhand ARGS` in `project` with a deadline (a hang fails, it never blocks the
/// suite) and returns what it did with its peak RSS in KiB, from `wait4`.
fn run_measured(project: &Project, args: &[&str]) -> (JobRun, i64) {
    // Reaped by `wait4` below, which also gives its rusage.
    #[allow(clippy::zombie_processes)]
    let child = project
        .command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let (mut stdout, mut stderr) = (child.stdout.unwrap(), child.stderr.unwrap());
    let out = std::thread::spawn(move || std::io::read_to_string(&mut stdout).unwrap());
    let err = std::thread::spawn(move || std::io::read_to_string(&mut stderr).unwrap());
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        let done = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        assert!(done >= 0, "wait4 failed");
        if done == pid {
            break;
        }
        if Instant::now() > deadline {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
            panic!("dockhand {args:?} did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let run = JobRun::from_output(Output {
        status: ExitStatus::from_raw(status),
        stdout: out.join().unwrap().into_bytes(),
        stderr: err.join().unwrap().into_bytes(),
    });
    run.assert_nothing_left();
    (run, usage.ru_maxrss)
}

fn assert_refused(run: &JobRun, located: &str, marker: &str) {
    assert_eq!(run.code, Some(200), "{run}");
    assert!(run.stderr.contains("is outside"), "{run}");
    assert!(
        run.stderr.contains(located),
        "not located at {located}\n{run}"
    );
    assert!(
        !run.to_string().contains(marker),
        "the host file leaked\n{run}"
    );
}

/// `extra_files: [PATH]` in a single-image config whose task would print `{token}`.
fn extra_file_config(path: &str) -> String {
    format!(
        "tag: sec-files-{}\ncontext: false\nharpoon:\n  extra_files: [\"{path}\"]\ncommands: [FROM dockhand/busybox:local]\ncommand: [echo, \"{{token}}\"]\n",
        unique()
    )
}

#[test]
fn extra_files_cannot_reach_outside_the_workspace() {
    let (host, marker) = host_secret();
    let secret = host.path().join("secret.yml").display().to_string();
    let project = Project::new("");
    symlink(&secret, project.path().join("innocent.yml")).unwrap();
    let up = format!("{{config_root}}/{}{}", "../".repeat(30), &secret[1..]);
    for path in [secret.as_str(), &up, "innocent.yml"] {
        project.write("config.yml", &extra_file_config(path));
        for command in ["check", "run"] {
            let run = project.run(&[command]);
            assert_refused(&run, "config.yml:4:17", &marker);
        }
    }
}

#[test]
fn a_config_linked_outside_the_workspace_is_not_read() {
    let (host, marker) = host_secret();
    let project = Project::new("");
    std::fs::remove_file(project.path().join("config.yml")).unwrap();
    symlink(
        host.path().join("secret.yml"),
        project.path().join("config.yml"),
    )
    .unwrap();
    let run = project.run(&["check"]);
    assert_refused(&run, "config.yml:1:1", &marker);
}

#[test]
fn images_from_cannot_list_or_read_outside_the_workspace() {
    let (host, marker) = host_secret();
    let project = Project::new(
        "context: false\nimages:\n  __images_from__: [images, ../]\n  app:\n    commands: [FROM dockhand/busybox:local]\n",
    );
    std::fs::create_dir(project.path().join("images")).unwrap();
    symlink(
        host.path().join("secret.yml"),
        project.path().join("images/evil.yml"),
    )
    .unwrap();
    let run = project.run(&["check"]);
    assert_refused(&run, "config.yml:3:21", &marker);
    assert_refused(&run, "config.yml:3:29", &marker);
}

/// `__images_from__` walks subfolders, but a subfolder that is a link is not followed:
/// a link to a host folder holding image files adds nothing and reads nothing.
#[test]
fn images_from_does_not_walk_into_a_linked_folder() {
    let (host, marker) = host_secret();
    std::fs::write(
        host.path().join("planted.yml"),
        format!("commands: [\"FROM {marker}\"]\n"),
    )
    .unwrap();
    let project = Project::new(
        "context: false\nimages:\n  __images_from__: images\n  app:\n    commands: [FROM dockhand/busybox:local]\n",
    );
    std::fs::create_dir_all(project.path().join("images/nested")).unwrap();
    std::fs::write(
        project.path().join("images/nested/web.yml"),
        "commands: [FROM dockhand/busybox:local]\n",
    )
    .unwrap();
    symlink(host.path(), project.path().join("images/nested/outside")).unwrap();
    let run = project.run(&["list", "--json"]);
    assert_eq!(run.code, Some(0), "{run}");
    let listed: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let mut images: Vec<&str> = listed["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|image| image["name"].as_str().unwrap())
        .collect();
    images.sort();
    assert_eq!(images, ["app", "web"], "{run}");
    assert!(!run.stdout.contains(&marker) && !run.stderr.contains(&marker));
}

#[test]
fn a_config_that_is_a_device_or_fifo_is_refused_not_read() {
    let project = Project::new("");
    let config = project.path().join("config.yml");
    std::fs::remove_file(&config).unwrap();
    symlink("/dev/zero", &config).unwrap();
    let (run, _) = run_measured(&project, &["check"]);
    assert_eq!(run.code, Some(200), "{run}");
    assert!(run.stderr.contains("is outside"), "{run}");

    std::fs::remove_file(&config).unwrap();
    mkfifo(&config);
    let (run, _) = run_measured(&project, &["check"]);
    assert_eq!(run.code, Some(200), "{run}");
    assert!(run.stderr.contains("not a regular file"), "{run}");
}

#[test]
fn dockerignore_is_read_only_inside_the_context_and_never_echoed() {
    let (host, marker) = host_secret();
    let name = format!("sec-ignore-{}", unique());
    let project = Project::new(&format!(
        "tag: {name}\ncommands: [FROM dockhand/busybox:local, COPY . /ctx]\n"
    ));
    let ignore = project.path().join(".dockerignore");
    for (target, expect) in [
        (host.path().join("secret.yml"), "is outside"),
        ("/dev/zero".into(), "is outside"),
    ] {
        symlink(&target, &ignore).unwrap();
        let run = project.run(&["build"]);
        assert_eq!(run.code, Some(201), "{run}");
        let message = run.stage("build", &name)["message"].to_string();
        assert!(message.contains(expect), "{message}");
        assert!(!run.to_string().contains(&marker) && !run.log().contains(&marker));
        std::fs::remove_file(&ignore).unwrap();
    }
    mkfifo(&ignore);
    let (run, _) = run_measured(&project, &["build"]);
    assert_eq!(run.code, Some(201), "{run}");
    assert!(run.stdout.contains("not a regular file"), "{run}");
}

#[test]
fn a_fifo_in_a_build_context_is_an_error_not_a_hang() {
    let project = Project::new(&format!(
        "tag: sec-fifo-{}\ncommands: [FROM dockhand/busybox:local, COPY . /ctx]\n",
        unique()
    ));
    mkfifo(&project.path().join("pipe"));
    let (run, _) = run_measured(&project, &["build"]);
    assert_eq!(run.code, Some(201), "{run}");
    assert!(run.stdout.contains("pipe is a FIFO"), "{run}");
}

/// The bomb: a 40,000-character string and lists of aliases to it, 41 KB of YAML
/// that expands to 40 GB.
fn alias_bomb() -> String {
    let mut text = format!("s: &s \"{}\"\n", "x".repeat(40_000));
    let mut previous = "s".to_owned();
    for name in ["a", "b", "c", "d"] {
        let items = vec![format!("*{previous}"); 100].join(", ");
        text.push_str(&format!("{name}: &{name} [{items}]\n"));
        previous = name.to_owned();
    }
    text + "tag: t\ncommands: [FROM dockhand/busybox:local]\n"
}

/// 1 MB whose one long root option is copied into each of 3,000 images (3 GB resolved).
fn defaults_bomb() -> String {
    let mut text = format!("command: \"{}\"\nimages:\n", "x".repeat(1_000_000));
    for i in 0..3000 {
        text.push_str(&format!(
            "  i{i}: {{commands: [FROM dockhand/busybox:local]}}\n"
        ));
    }
    text
}

/// Four levels of a hundred references each: 10^8 lookups, 10 GB of text.
fn reference_bomb() -> String {
    let mut text = String::new();
    for (name, next) in [("a", "b"), ("b", "c"), ("c", "d"), ("d", "e")] {
        text.push_str(&format!(
            "{name}: \"{}\"\n",
            format!("{{{next}}}").repeat(100)
        ));
    }
    text + "e: yyyyyyyyyy\ntag: t\ncommands: [FROM dockhand/busybox:local]\ncommand: \"{a}\"\n"
}

#[test]
fn hostile_configs_are_refused_within_bounded_memory() {
    let (_, idle_kib) = run_measured(
        &Project::new("tag: t\ncommands: [FROM dockhand/busybox:local]\n"),
        &["check"],
    );
    for (what, config, expect, at) in [
        (
            "alias bomb",
            alias_bomb(),
            "expands to more than",
            "config.yml:3:",
        ),
        (
            "defaults bomb",
            defaults_bomb(),
            "expands to more than",
            "config.yml:",
        ),
        (
            "reference bomb",
            reference_bomb(),
            "expands to more than",
            "config.yml:4:4",
        ),
    ] {
        let project = Project::new(&config);
        let (run, peak_kib) = run_measured(&project, &["check"]);
        assert_eq!(run.code, Some(200), "{what}: {run}");
        assert!(
            run.stderr.contains(expect) && run.stderr.contains(at),
            "{what}: {run}"
        );
        eprintln!(
            "{what} ({} bytes): dockhand check peak RSS {peak_kib} KiB, idle {idle_kib} KiB",
            config.len()
        );
        assert!(
            peak_kib - idle_kib < 64 * 1024,
            "{what}: peak RSS {peak_kib} KiB"
        );
    }
}

#[test]
fn the_agent_refuses_a_job_reaching_its_state_dir_and_survives_an_alias_bomb() {
    let repo = tempfile::tempdir().unwrap();
    let state = repo.path().join(".dockhand/state");
    std::fs::create_dir_all(&state).unwrap();
    let marker = format!("agent-only-{}", unique());
    std::fs::write(state.join("identity.yml"), format!("token: {marker}\n")).unwrap();
    std::fs::write(
        repo.path().join("config.yml"),
        extra_file_config("{config_root}/../../state/identity.yml"),
    )
    .unwrap();
    let agent = AgentProcess::start(repo.path(), &["watch", "."]);
    let job = agent.wait_finished(1, LONG)[0].clone();
    assert_eq!((job.status.as_str(), job.exit_code), ("failed", 200));
    let log = job.log();
    assert!(
        log.contains("is outside") && log.contains("config.yml:4:17"),
        "{log}"
    );
    assert!(!log.contains(&marker) && !agent.transcript().contains(&marker));

    let before_kib = agent.peak_rss_kib();
    std::fs::write(repo.path().join("config.yml"), alias_bomb()).unwrap();
    let job = agent.wait_finished(2, LONG)[1].clone();
    assert_eq!((job.status.as_str(), job.exit_code), ("failed", 200));
    assert!(job.log().contains("expands to more than"), "{}", job.log());
    let after_kib = agent.peak_rss_kib();
    eprintln!(
        "agent peak RSS: {before_kib} KiB after one job, {after_kib} KiB after the alias bomb"
    );
    assert!(
        after_kib - before_kib < 128 * 1024,
        "{before_kib} -> {after_kib} KiB"
    );

    std::fs::write(
        repo.path().join("config.yml"),
        format!(
            "tag: sec-after-{}\ncontext: false\ncommands: [FROM dockhand/busybox:local]\ncommand: [echo, still-here]\n",
            unique()
        ),
    )
    .unwrap();
    let job = agent.wait_finished(3, LONG)[2].clone();
    assert_eq!(
        (job.status.as_str(), job.exit_code),
        ("succeeded", 0),
        "{}",
        agent.transcript()
    );
}

/// A job's config path is the job's to choose (a submitted job names it): an absolute path
/// or `..` must not make the agent read its host.
#[test]
fn the_agent_reads_a_job_config_only_inside_the_job_workspace() {
    let (host, marker) = host_secret();
    let repo = tempfile::tempdir().unwrap();
    std::fs::write(
        repo.path().join("agent.toml"),
        format!(
            "[[source]]\nkind = \"watch\"\npath = \".\"\nconfig = \"{}\"\n",
            host.path().join("secret.yml").display()
        ),
    )
    .unwrap();
    let agent = AgentProcess::start(repo.path(), &["agent"]);
    let job = agent.wait_finished(1, LONG)[0].clone();
    assert_eq!((job.status.as_str(), job.exit_code), ("failed", 200));
    let log = job.log();
    assert!(log.contains("is outside"), "{log}");
    assert!(!log.contains(&marker) && !agent.transcript().contains(&marker));
}
