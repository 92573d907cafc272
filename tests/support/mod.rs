//! Helpers for tests that run the real `dockhand` binary against the real Docker engine.
//! The test command (scripts/test) makes sure an engine runs and the base image exists;
//! these helpers fail loudly when either is missing rather than skipping.

#![allow(dead_code)]

pub mod agent;
pub mod forge;
pub mod postgres;
pub mod server;
pub mod webhooks;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub const BASE_IMAGE: &str = "dockhand/busybox:local";

/// A temporary project directory holding a config.yml.
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    pub fn new(config: &str) -> Project {
        require_engine();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        Project { dir }
    }

    /// A project with no config yet (for `dockhand init`, or files written one by one).
    pub fn empty() -> Project {
        require_engine();
        Project {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, path: &str, content: &str) {
        let full = self.path().join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, content).unwrap();
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_dockhand"));
        command
            .args(["--no-harpoonrc"])
            .args(args)
            .current_dir(self.path())
            .env_remove("DOCKHAND_CONFIG")
            .env_remove("HARPOON_CONFIG");
        command
    }

    /// Runs `dockhand ARGS` to its end, then checks the job left nothing behind.
    pub fn run(&self, args: &[&str]) -> JobRun {
        finish(&mut self.command(args))
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

/// Runs a prepared `dockhand` command to its end, then checks its job left nothing behind.
pub fn finish(command: &mut Command) -> JobRun {
    let run = JobRun::from_output(command.output().unwrap());
    run.assert_nothing_left();
    run
}

/// What one `dockhand build`/`run` did.
pub struct JobRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub results: Option<PathBuf>,
}

impl JobRun {
    pub fn from_output(output: Output) -> JobRun {
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let results = stderr
            .lines()
            .find_map(|l| l.strip_prefix("results: "))
            .map(PathBuf::from);
        JobRun {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr,
            results,
        }
    }

    pub fn job_id(&self) -> String {
        self.results
            .as_ref()
            .and_then(|r| r.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// result.json.
    pub fn result(&self) -> serde_json::Value {
        let dir = self
            .results
            .as_ref()
            .unwrap_or_else(|| panic!("no results directory:\n{self}"));
        serde_json::from_slice(&std::fs::read(dir.join("result.json")).unwrap()).unwrap()
    }

    /// The result.json entry of the `kind` (build, run) stage called `name`.
    pub fn stage(&self, kind: &str, name: &str) -> serde_json::Value {
        let result = self.result();
        let stages = result["stages"].as_array().unwrap();
        stages
            .iter()
            .find(|s| s["kind"] == kind && s["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {kind} stage {name} in {result:#}"))
    }

    pub fn log(&self) -> String {
        let dir = self
            .results
            .as_ref()
            .unwrap_or_else(|| panic!("no results directory:\n{self}"));
        std::fs::read_to_string(dir.join("log.txt")).unwrap()
    }

    /// No container or network labelled with this job remains.
    pub fn assert_nothing_left(&self) {
        let job = self.job_id();
        if job.is_empty() {
            return;
        }
        assert_nothing_labelled(&format!("dockhand.job={job}"));
    }
}

impl std::fmt::Display for JobRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

pub fn assert_nothing_labelled(label: &str) {
    let containers = docker(&["ps", "-aq", "--filter", &format!("label={label}")]);
    let networks = docker(&["network", "ls", "-q", "--filter", &format!("label={label}")]);
    assert!(
        containers.trim().is_empty(),
        "containers left with {label}: {containers}"
    );
    assert!(
        networks.trim().is_empty(),
        "networks left with {label}: {networks}"
    );
}

/// Runs the docker CLI (for checking what dockhand did) and returns stdout.
pub fn docker(args: &[&str]) -> String {
    let output = Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI runs");
    assert!(
        output.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Output of a command run in a fresh container of `image`.
pub fn in_image(image: &str, argv: &[&str]) -> String {
    let mut args = vec!["run", "--rm", "--log-driver", "none", image];
    args.extend_from_slice(argv);
    let output = Command::new("docker").args(&args).output().unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn require_engine() {
    let ok = Command::new("docker")
        .args(["image", "inspect", BASE_IMAGE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "no Docker engine with {BASE_IMAGE}: run the tests through scripts/test (it starts dockerd and makes the image)"
    );
}
