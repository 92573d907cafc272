//! A running agent (the real binary) for tests, its output collected line by line, and a
//! checkout for it to build.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{docker, require_engine};

/// A running `dockhand agent` or `dockhand watch`, its output collected line by line.
pub struct AgentProcess {
    child: Child,
    pub name: String,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

/// A finished job as the agent reported it.
#[derive(Debug, Clone)]
pub struct JobLine {
    pub id: String,
    pub status: String,
    pub exit_code: i32,
    pub results: PathBuf,
}

impl JobLine {
    pub fn result(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.results.join("result.json")).unwrap()).unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.results.join("log.txt")).unwrap()
    }
}

impl AgentProcess {
    pub fn start(dir: &Path, args: &[&str]) -> AgentProcess {
        Self::start_named(dir, args, &format!("test-{}", unique()))
    }

    /// As `start`, under a given agent name (a restart of an earlier agent). The agent may
    /// register with the test job server.
    pub fn start_named(dir: &Path, args: &[&str], name: &str) -> AgentProcess {
        Self::start_logging(dir, args, name, "warn")
    }

    /// As `start_named`, its log filtered by `rust_log` (`RUST_LOG`).
    pub fn start_logging(dir: &Path, args: &[&str], name: &str, rust_log: &str) -> AgentProcess {
        require_engine();
        let name = name.to_owned();
        let mut child = Command::new(env!("CARGO_BIN_EXE_dockhand"))
            .args(args)
            .args(["--name", &name])
            .current_dir(dir)
            .env_remove("DOCKHAND_AGENT_CONFIG")
            .env("RUST_LOG", rust_log)
            .env("DOCKHAND_TOKEN", super::server::REGISTRATION)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let collect = |stream: Box<dyn std::io::Read + Send>| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let sink = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
            lines
        };
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        let stderr = collect(Box::new(child.stderr.take().unwrap()));
        AgentProcess {
            child,
            name,
            stdout,
            stderr,
        }
    }

    /// The agent's peak resident memory so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status")
    }

    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    pub fn transcript(&self) -> String {
        format!(
            "--- stderr\n{}\n--- stdout\n{}",
            self.stderr().join("\n"),
            self.stdout().join("\n")
        )
    }

    /// Waits until `ready` holds for the agent's stderr lines.
    pub fn wait_for(&self, what: &str, timeout: Duration, ready: impl Fn(&[String]) -> bool) {
        let start = Instant::now();
        while !ready(&self.stderr()) {
            assert!(
                start.elapsed() < timeout,
                "timed out waiting for {what}\n{}",
                self.transcript()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait_for_stdout(&self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        while !self.stdout().iter().any(|l| l.contains(needle)) {
            assert!(
                start.elapsed() < timeout,
                "timed out waiting for {needle:?} on stdout\n{}",
                self.transcript()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Jobs the agent reported finished, in order.
    pub fn finished(&self) -> Vec<JobLine> {
        self.stderr()
            .iter()
            .filter_map(|l| parse_finished(l))
            .collect()
    }

    /// Jobs the agent started, in order.
    pub fn started(&self) -> Vec<String> {
        self.stderr()
            .iter()
            .filter_map(|l| {
                let rest = l.strip_prefix("agent: job ")?;
                let (id, rest) = rest.split_once(' ')?;
                rest.starts_with('(').then(|| id.to_owned())
            })
            .collect()
    }

    pub fn wait_finished(&self, count: usize, timeout: Duration) -> Vec<JobLine> {
        self.wait_for(&format!("{count} finished job(s)"), timeout, |lines| {
            lines.iter().filter(|l| parse_finished(l).is_some()).count() >= count
        });
        self.finished()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                return status.code();
            }
            assert!(
                start.elapsed() < timeout,
                "the agent did not exit\n{}",
                self.transcript()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let label = format!("label=dockhand.agent={}", self.name);
        // A request the killed agent had in flight (a spare network) may still complete.
        for pass in 0..2 {
            if pass > 0 {
                std::thread::sleep(Duration::from_millis(500));
            }
            for id in docker(&["ps", "-aq", "--filter", &label]).split_whitespace() {
                let _ = Command::new("docker").args(["rm", "-f", id]).output();
            }
            for id in docker(&["network", "ls", "-q", "--filter", &label]).split_whitespace() {
                let _ = Command::new("docker").args(["network", "rm", id]).output();
            }
        }
    }
}

/// `agent: job ID STATUS (exit code N), results in DIR`.
pub fn parse_finished(line: &str) -> Option<JobLine> {
    let rest = line.strip_prefix("agent: job ")?;
    let (id, rest) = rest.split_once(' ')?;
    let (status, rest) = rest.split_once(" (exit code ")?;
    let (code, rest) = rest.split_once(')')?;
    let results = rest.strip_prefix(", results in ")?;
    Some(JobLine {
        id: id.to_owned(),
        status: status.to_owned(),
        exit_code: code.parse().ok()?,
        results: PathBuf::from(results),
    })
}

pub fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{:x}{:x}", std::process::id(), nanos)
}

/// A checkout whose `app` image copies `msg.txt` and whose `show` task runs `task.sh`.
pub fn checkout(task_script: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"image_name_prefix: agent-test-{}
images:
  app:
    context:
      parent_dir: .
    commands:
      - FROM dockhand/busybox:local
      - [ADD, {{prefix: /app, get: [msg.txt, task.sh]}}]
    tasks:
      show:
        options:
          command: [/bin/sh, /app/task.sh]
pipeline: [show]
"#,
        unique()
    );
    std::fs::write(dir.path().join("config.yml"), config).unwrap();
    std::fs::write(dir.path().join("msg.txt"), "first\n").unwrap();
    std::fs::write(dir.path().join("task.sh"), task_script).unwrap();
    std::fs::write(dir.path().join(".gitignore"), "*.tmp\n").unwrap();
    dir
}

/// [`checkout`] committed on `main` of a git repository.
pub fn git_repository(task_script: &str) -> tempfile::TempDir {
    let repo = checkout(task_script);
    for args in [
        &["init", "-q", "-b", "main"][..],
        &["add", "."],
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-qm",
            "job",
        ],
    ] {
        let status = Command::new("git")
            .args(args)
            .current_dir(repo.path())
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    }
    repo
}

pub const LONG: Duration = Duration::from_secs(90);
