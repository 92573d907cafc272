//! What tasks print is hostile: however much they print, with or without newlines, the
//! agent's memory stays bounded; a results directory that cannot be written ends the job
//! `error` with the reason instead of a silent success; secrets stay masked where output
//! is cut into parts and in the forms tasks commonly encode them in.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};

use reqwest::StatusCode;
use serde_json::json;

use crate::support::agent::{AgentProcess, LONG, checkout, unique};
use crate::support::server::{ADMIN, Client, Server};
use crate::support::{JobRun, Project, assert_nothing_labelled};

/// A tmpfs of `size` mounted on a temporary directory for as long as it lives.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mounting a tmpfs failed: the disk-full tests need root (scripts/test runs as root)"
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Runs `dockhand ARGS` in `project` with its console to /dev/null; the run and the peak
/// RSS of the dockhand process in MiB (from wait4, exact to the end).
fn run_measured(project: &Project, args: &[&str], env: &[(&str, &str)]) -> (JobRun, f64) {
    let mut command = project.command(args);
    command.envs(env.iter().copied());
    #[allow(clippy::zombie_processes)] // reaped by wait4 below, which also gives its rusage
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4: {}", std::io::Error::last_os_error());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let results = stderr
        .lines()
        .find_map(|l| l.strip_prefix("results: "))
        .map(Into::into);
    let run = JobRun {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        stdout: String::new(),
        stderr,
        results,
    };
    run.assert_nothing_left();
    (run, usage.ru_maxrss as f64 / 1024.0)
}

fn project(script: &str, extra: &str) -> Project {
    let name = format!("sec-output-{}", unique());
    let config = format!(
        "tag: {name}\ncontext: false\ncommands: [FROM dockhand/busybox:local]\nbash: '{script}'\n{extra}"
    );
    Project::new(&config)
}

/// The longest line of `path`, read as it streams.
fn longest_line(path: &Path) -> usize {
    let mut reader = BufReader::with_capacity(1 << 20, std::fs::File::open(path).unwrap());
    let (mut longest, mut current) = (0, 0);
    loop {
        let buffer = reader.fill_buf().unwrap();
        if buffer.is_empty() {
            return longest.max(current);
        }
        let used = match memchr::memchr(b'\n', buffer) {
            Some(end) => {
                longest = longest.max(current + end);
                current = 0;
                end + 1
            }
            None => {
                current += buffer.len();
                buffer.len()
            }
        };
        reader.consume(used);
    }
}

#[test]
fn a_task_printing_300_mb_without_a_newline_keeps_dockhand_within_bounds() {
    let trivial = project("printf hi", "");
    let results = tempfile::tempdir().unwrap();
    let results_dir = results.path().to_str().unwrap();
    let (run, idle) = run_measured(&trivial, &["run", "--results-dir", results_dir], &[]);
    assert_eq!(run.code, Some(0), "{run}");
    let flood = project("head -c 300000000 /dev/zero | tr \"\\0\" a", "");
    let (run, peak) = run_measured(&flood, &["run", "--results-dir", results_dir], &[]);
    assert_eq!(run.code, Some(0), "{run}");
    eprintln!("peak RSS: trivial run {idle:.1} MiB, 300 MB without newline {peak:.1} MiB");
    assert!(
        peak - idle < 128.0,
        "300 MB without a newline took dockhand to {peak:.1} MiB (a trivial run: {idle:.1} MiB)"
    );
    let stage = run.result()["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "run")
        .cloned()
        .unwrap();
    let log = run
        .results
        .as_ref()
        .unwrap()
        .join(stage["log_file"].as_str().unwrap());
    let size = std::fs::metadata(&log).unwrap().len();
    assert!(
        (300_000_000..300_000_000 + 300_000_000 / 60_000).contains(&size),
        "every byte, in parts of about 64 KiB: {size}"
    );
    let longest = longest_line(&log);
    assert!(longest <= 64 * 1024, "lines of at most 64 KiB: {longest}");
}

#[test]
fn a_secret_across_a_part_boundary_or_in_wrapped_base64_stays_masked() {
    let secret = format!("sec-{}-across-the-cut", unique());
    let script = "head -c 65530 /dev/zero | tr \"\\0\" a; printf %s \"$TOKEN\"; head -c 200000 /dev/zero | tr \"\\0\" b; echo; printf \"%s%s\" xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx \"$TOKEN\" | base64";
    let project = project(script, "env: [TOKEN]\nsecrets: [TOKEN]\n");
    let run = JobRun::from_output(
        project
            .command(&["run"])
            .env("TOKEN", &secret)
            .output()
            .unwrap(),
    );
    run.assert_nothing_left();
    assert_eq!(run.code, Some(0), "{run}");
    // 45 bytes before the secret are 60 columns: the secret's base64 begins on the first
    // line (16 columns) and ends on the second.
    let encoded = base64_lines(&format!("{}{secret}", "x".repeat(45)));
    assert_eq!(encoded.len(), 2, "{encoded:?}");
    let pieces = [&encoded[0][60..], &encoded[1][..encoded[1].len() - 4]];
    assert!(
        run.log().replace('\n', "").contains("a***b"),
        "masked across the cut"
    );
    for text in [run.log(), run.stdout.clone()] {
        assert!(!text.contains(&secret[..12]), "the secret is in the output");
        for piece in pieces {
            for window in piece.as_bytes().windows(MIN_PIECE) {
                let window = std::str::from_utf8(window).unwrap();
                assert!(
                    !text.contains(window),
                    "{window} of {encoded:?} is in the output"
                );
            }
        }
    }
}

/// Pieces of wrapped base64 this short are left (see mask.rs).
const MIN_PIECE: usize = 8;

/// `text` in base64 as the `base64` tool prints it (76 columns).
fn base64_lines(text: &str) -> Vec<String> {
    let output = Command::new("base64")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(text.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_full_results_disk_ends_the_job_in_error_with_the_reason() {
    let disk = Tmpfs::mount("1m");
    let project = project("yes 0123456789abcdef | head -c 5000000", "");
    let results_dir = disk.path().to_str().unwrap();
    let run = project.run(&["run", "--results-dir", results_dir]);
    assert_eq!(run.code, Some(202), "{run}");
    assert!(
        run.stderr.contains("No space left on device"),
        "the reason is told: {run}"
    );
    let result = run.result();
    assert_eq!(result["status"], "error", "{result:#}");
    assert_eq!(result["exit_code"], 202);
    let message = result["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("No space left on device") && message.contains(results_dir),
        "{message}"
    );
    assert_nothing_labelled(&format!("dockhand.job={}", run.job_id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_results_disk_under_the_agent_ends_the_server_job_error_not_lost() {
    let disk = Tmpfs::mount("1m");
    let db = tempfile::tempdir().unwrap();
    let server = Server::start(db.path(), &["--allow-local-sources"]);
    let api = Client::new(&server);
    let repo = checkout("yes 0123456789abcdef | head -c 5000000\n");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("agent.toml"),
        format!(
            "[agent]\nshutdown_grace = \"2s\"\nkeep_results = 0\nresults_dir = \"{}\"\n[[source]]\nkind = \"http\"\nurl = \"{}\"\nallow_local_sources = true\n",
            disk.path().display(),
            server.url
        ),
    )
    .unwrap();
    let agent = AgentProcess::start(dir.path(), &["agent"]);
    let (status, body) = api
        .post(
            "/api/v1/jobs",
            Some(ADMIN),
            json!({"source": {"path": repo.path()}, "tasks": ["show"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let job = body["job_id"].as_str().unwrap().to_owned();
    let detail = api
        .wait_job(&job, |d| {
            !["queued", "offered", "running"].contains(&d["state"].as_str().unwrap_or(""))
        })
        .await;
    assert_eq!(detail["state"], "error", "{detail}\n{}", agent.transcript());
    assert_eq!(detail["result"]["exit_code"], 202, "{detail}");
    let message = detail["result"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("No space left on device"), "{detail}");
    let finished = agent.wait_finished(1, LONG);
    assert_eq!(
        (finished[0].status.as_str(), finished[0].exit_code),
        ("error", 202)
    );
    drop(agent);
}
