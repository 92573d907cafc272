//! The executor against the scripted engine: scheduling, verdicts, cancellation, timeouts
//! and cleanup, without Docker.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use tokio::sync::mpsc;

use super::fake::{Build, Call, FakeEngine, Task};
use super::job::verdict;
use super::{ContainerDefaults, ExecutorOptions, JobNetwork, JobOutcome, Sandbox, run_job};
use crate::cancel::{Cancel, CancelReason};
use crate::collector::{CollectOptions, Config, collect};
use crate::events::{Emitter, Event, JobStatus, StageOutcome, StageStatus};
use crate::exit_code;
use crate::plan::{Plan, Request};

struct TestJob {
    _dir: tempfile::TempDir,
    config: Config,
    plan: Plan,
    options: ExecutorOptions,
}

/// A job of `yaml` (after a common head that names the image prefix and turns contexts
/// off), with the default request.
fn job(yaml: &str) -> TestJob {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    std::fs::write(
        root.join("config.yml"),
        format!("image_name_prefix: t\ncontext: false\n{yaml}"),
    )
    .unwrap();
    let collected = collect(&CollectOptions {
        config: root.join("config.yml"),
        home_config: None,
        cli_args: Vec::new(),
        env: HashMap::new(),
        workspace: Some(root.clone()),
    })
    .unwrap_or_else(|d| panic!("invalid test config:\n{d}"));
    let plan = Plan::new(&collected.config, &Request::Default).unwrap();
    let options = options(&root);
    TestJob {
        _dir: dir,
        config: collected.config,
        plan,
        options,
    }
}

fn options(root: &Path) -> ExecutorOptions {
    ExecutorOptions {
        job_id: "job-1".to_owned(),
        agent: "test".to_owned(),
        sandbox: Sandbox {
            workspace: root.to_path_buf(),
            ..Sandbox::default()
        },
        cache_dir: root.join(".dockhand/cache"),
        build_records: root.join(".dockhand/records"),
        parallel: 4,
        no_cache: false,
        task_timeout: None,
        job_timeout: None,
        env: HashMap::new(),
        job_network: JobNetwork::Shared,
        containers: ContainerDefaults {
            memory_bytes: None,
            nano_cpus: None,
            pids_limit: None,
            no_new_privileges: true,
            cap_drop: Vec::new(),
        },
        artifacts_dir: root.join("results/artifacts"),
    }
}

struct Ran {
    outcome: JobOutcome,
    /// Stage names in stage order.
    names: Vec<String>,
}

impl Ran {
    fn stage(&self, name: &str) -> &StageOutcome {
        let i = self.names.iter().position(|n| n == name).unwrap();
        &self.outcome.stages[i]
    }

    fn verdict(&self) -> (JobStatus, u8) {
        (self.outcome.status, self.outcome.exit_code)
    }
}

/// Runs the job and checks what must hold on every path: each stage finished exactly once
/// (as an event and in the outcome), and every container and network the job created was
/// removed exactly once.
async fn run(engine: &FakeEngine, job: &TestJob, cancel: &Cancel) -> Ran {
    let (tx, mut rx) = mpsc::channel(16);
    let events = tokio::spawn(async move {
        let mut events = Vec::new();
        while let Some(event) = rx.recv().await {
            events.push(event);
        }
        events
    });
    let emitter = Emitter::new(tx);
    let outcome = run_job(
        engine,
        &job.config,
        &job.plan,
        &job.options,
        &emitter,
        cancel,
    )
    .await;
    drop(emitter);
    let events = events.await.unwrap();

    let names: Vec<String> = match &events[0] {
        Event::JobStarted { stages, .. } => stages.iter().map(|(n, _)| n.clone()).collect(),
        other => panic!("the first event is {other:?}"),
    };
    assert_eq!(outcome.stages.len(), names.len());
    for (i, expected) in outcome.stages.iter().enumerate() {
        let finished: Vec<&StageOutcome> = events
            .iter()
            .filter_map(|e| match e {
                Event::StageFinished { stage, outcome, .. } if *stage == i => Some(outcome),
                _ => None,
            })
            .collect();
        assert_eq!(finished, [expected], "stage {} ({})", i, names[i]);
    }
    assert!(matches!(
        events.last(),
        Some(Event::JobFinished { status, exit_code, .. })
            if (*status, *exit_code) == (outcome.status, outcome.exit_code)
    ));

    let record = engine.record();
    assert!(record.is_clean(), "left behind: {:?}", record.calls);
    for id in record.created_containers() {
        let removed = record.count(&Call::RemoveContainer(id.clone()));
        assert_eq!(removed, 1, "container {id}: {:?}", record.calls);
    }
    for name in record.created_networks() {
        let removed = record.count(&Call::RemoveNetwork(name.clone()));
        assert_eq!(removed, 1, "network {name}: {:?}", record.calls);
    }
    assert_eq!(
        record.calls.last(),
        Some(&Call::Sweep("job-1".to_owned())),
        "the job ends with the labelled sweep"
    );
    drop(record);
    Ran { outcome, names }
}

const CHAIN: &str = r#"
images:
  base:
    commands: [FROM dockhand/busybox:local]
  app:
    commands: [[FROM, "{images.base}"]]
  tool:
    commands: [[FROM, "{images.app}"]]
  other:
    commands: [FROM dockhand/busybox:local]
"#;

#[tokio::test(start_paused = true)]
async fn builds_start_only_after_the_images_they_build_from() {
    let job = job(CHAIN);
    let engine = FakeEngine::new().build_time(Duration::from_secs(1));
    let ran = run(&engine, &job, &Cancel::new()).await;
    assert_eq!(ran.verdict(), (JobStatus::Succeeded, exit_code::SUCCESS));
    let record = engine.record();
    let at = |call: Call| record.position(&call).unwrap();
    let started = |image: &str| at(Call::BuildStarted(image.to_owned()));
    let ended = |image: &str| at(Call::BuildEnded(image.to_owned()));
    assert!(ended("base") < started("app"), "{:?}", record.calls);
    assert!(ended("app") < started("tool"), "{:?}", record.calls);
    assert!(
        started("other") < ended("base"),
        "an independent image builds alongside: {:?}",
        record.calls
    );
}

#[tokio::test(start_paused = true)]
async fn no_more_builds_run_at_once_than_the_parallel_limit() {
    let mut job = job(r#"
images:
  a: {commands: [FROM dockhand/busybox:local]}
  b: {commands: [FROM dockhand/busybox:local]}
  c: {commands: [FROM dockhand/busybox:local]}
  d: {commands: [FROM dockhand/busybox:local]}
  e: {commands: [FROM dockhand/busybox:local]}
"#);
    job.options.parallel = 2;
    let engine = FakeEngine::new().build_time(Duration::from_secs(1));
    let started = tokio::time::Instant::now();
    let ran = run(&engine, &job, &Cancel::new()).await;
    assert_eq!(ran.verdict(), (JobStatus::Succeeded, exit_code::SUCCESS));
    assert_eq!(engine.record().most_builds, 2);
    assert_eq!(started.elapsed().as_secs(), 3, "five builds, two at a time");
}

#[tokio::test]
async fn a_failed_build_skips_the_builds_and_tasks_that_need_it() {
    let job = job(&format!(
        r#"{CHAIN}
tasks:
  use-tool: {{image: "{{images.tool}}", options: {{command: "true"}}}}
  use-other: {{image: "{{images.other}}", options: {{command: "true"}}}}
pipeline: [use-tool, use-other]
"#
    ));
    let engine = FakeEngine::new().build("app", Build::Fail);
    let ran = run(&engine, &job, &Cancel::new()).await;
    assert_eq!(ran.stage("base").status, StageStatus::Passed);
    assert_eq!(ran.stage("app").status, StageStatus::Failed);
    assert!(
        ran.stage("app")
            .message
            .as_deref()
            .unwrap()
            .contains("Step 2/2")
    );
    assert_eq!(ran.stage("tool").status, StageStatus::Skipped);
    assert_eq!(ran.stage("use-tool").status, StageStatus::Skipped);
    assert_eq!(ran.stage("use-other").status, StageStatus::Passed);
    assert_eq!(engine.record().count(&Call::BuildStarted("tool".into())), 0);
    assert_eq!(ran.verdict(), (JobStatus::Failed, exit_code::BUILD_FAILED));
}

const PIPELINE: &str = r#"
images:
  app:
    commands: [FROM dockhand/busybox:local]
tasks:
  first: {image: "{images.app}", options: {command: "true"}}
  second: {image: "{images.app}", options: {command: "true"}}
  beside: {image: "{images.app}", options: {command: "true"}}
pipeline:
  - first
  - task: second
    needs: [first]
  - beside
"#;

/// The id of the container whose name ends with `-task`.
fn container_of(engine: &FakeEngine, task: &str) -> Option<String> {
    engine.record().calls.iter().find_map(|c| match c {
        Call::CreateContainer(id, name) if name.ends_with(&format!("-{task}")) => Some(id.clone()),
        _ => None,
    })
}

#[tokio::test(start_paused = true)]
async fn a_task_starts_after_its_needs_have_finished_and_others_alongside() {
    let job = job(PIPELINE);
    let engine = FakeEngine::new()
        .task("first", Task::Exit(0, Duration::from_secs(5)))
        .task("beside", Task::Exit(0, Duration::from_secs(1)));
    let ran = run(&engine, &job, &Cancel::new()).await;
    assert_eq!(ran.verdict(), (JobStatus::Succeeded, exit_code::SUCCESS));
    let (first, second, beside) = (
        container_of(&engine, "first").unwrap(),
        container_of(&engine, "second").unwrap(),
        container_of(&engine, "beside").unwrap(),
    );
    let record = engine.record();
    let removed = |id: &str| {
        record
            .position(&Call::RemoveContainer(id.to_owned()))
            .unwrap()
    };
    let created = |id: &str| {
        record
            .calls
            .iter()
            .position(|c| matches!(c, Call::CreateContainer(i, _) if i == id))
            .unwrap()
    };
    assert!(removed(&first) < created(&second), "{:?}", record.calls);
    assert!(created(&beside) < removed(&first), "{:?}", record.calls);
}

#[tokio::test]
async fn a_failing_task_skips_what_needs_it_and_its_exit_code_is_the_job_s() {
    let job = job(PIPELINE);
    let engine = FakeEngine::new().task("first", Task::Exit(3, Duration::ZERO));
    let ran = run(&engine, &job, &Cancel::new()).await;
    assert_eq!(ran.stage("first").status, StageStatus::Failed);
    assert_eq!(ran.stage("first").exit_code, Some(3));
    assert_eq!(ran.stage("second").status, StageStatus::Skipped);
    assert_eq!(ran.stage("beside").status, StageStatus::Passed);
    assert_eq!(container_of(&engine, "second"), None);
    assert_eq!(ran.verdict(), (JobStatus::Failed, 3));
}

#[tokio::test]
async fn a_task_allowed_to_fail_neither_blocks_nor_fails_the_job() {
    let job = job(&PIPELINE.replace("  - first\n", "  - task: first\n    allow_failure: true\n"));
    let engine = FakeEngine::new().task("first", Task::Exit(3, Duration::ZERO));
    let ran = run(&engine, &job, &Cancel::new()).await;
    assert_eq!(ran.stage("first").status, StageStatus::Failed);
    assert_eq!(ran.stage("second").status, StageStatus::Passed);
    assert_eq!(ran.verdict(), (JobStatus::Succeeded, exit_code::SUCCESS));
}

/// A cancel that arrives once every stage has passed changes nothing: the job did its work.
#[test]
fn the_verdict_puts_the_time_limit_then_errors_then_cancellation_then_tasks_then_builds() {
    let job = job(PIPELINE);
    let outcome = |status| StageOutcome::new(status);
    let exited = |code| StageOutcome {
        exit_code: Some(code),
        ..StageOutcome::new(StageStatus::Failed)
    };
    let passed = || outcome(StageStatus::Passed);
    let failed_build = [outcome(StageStatus::Failed)];
    let good_build = [passed()];
    let cases = [
        (
            &good_build,
            [passed(), passed(), passed()],
            None,
            (JobStatus::Succeeded, 0),
        ),
        (
            &failed_build,
            [outcome(StageStatus::Error), passed(), passed()],
            Some(CancelReason::TimedOut),
            (JobStatus::TimedOut, exit_code::TIMED_OUT),
        ),
        (
            &failed_build,
            [outcome(StageStatus::Error), passed(), passed()],
            Some(CancelReason::Shutdown),
            (JobStatus::Error, exit_code::INFRASTRUCTURE),
        ),
        (
            &failed_build,
            [outcome(StageStatus::Cancelled), exited(3), passed()],
            Some(CancelReason::TimedOut),
            (JobStatus::TimedOut, exit_code::TIMED_OUT),
        ),
        (
            &failed_build,
            [exited(3), outcome(StageStatus::Cancelled), passed()],
            Some(CancelReason::Shutdown),
            (JobStatus::Cancelled, exit_code::CANCELLED),
        ),
        (
            &good_build,
            [passed(), passed(), passed()],
            Some(CancelReason::Requested),
            (JobStatus::Succeeded, 0),
        ),
        (
            &failed_build,
            [passed(), exited(300), exited(4)],
            None,
            (JobStatus::Failed, 125),
        ),
        (
            &failed_build,
            [passed(), outcome(StageStatus::TimedOut), exited(4)],
            None,
            (JobStatus::TimedOut, exit_code::TIMED_OUT),
        ),
        (
            &failed_build,
            [passed(), outcome(StageStatus::Skipped), passed()],
            None,
            (JobStatus::Failed, exit_code::BUILD_FAILED),
        ),
    ];
    for (builds, runs, reason, expected) in cases {
        assert_eq!(
            verdict(builds, &runs, &job.plan, reason),
            expected,
            "{runs:?} {reason:?}"
        );
    }
}

const WITH_SERVICE: &str = r#"
images:
  db:
    commands: [FROM dockhand/busybox:local]
    command: "sleep 1000"
  app:
    commands: [FROM dockhand/busybox:local]
    links: ["{images.db}:database"]
tasks:
  test: {image: "{images.app}", options: {command: "true"}}
  lint: {image: "{images.db}", options: {command: "true"}}
pipeline: [test, lint]
"#;

#[tokio::test]
async fn cancelling_mid_run_cancels_the_stages_and_removes_everything() {
    let mut job = job(WITH_SERVICE);
    job.options.job_network = JobNetwork::Create {
        driver: "bridge".to_owned(),
    };
    let engine = FakeEngine::new()
        .task("test", Task::Hang)
        .task("lint", Task::Hang);
    let cancel = Cancel::new();
    let canceller = {
        let (cancel, engine) = (cancel.clone(), engine.clone());
        tokio::spawn(async move {
            while engine.record().tasks_started < 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            cancel.cancel(CancelReason::Requested);
        })
    };
    let ran = run(&engine, &job, &cancel).await;
    canceller.await.unwrap();
    assert_eq!(ran.stage("test").status, StageStatus::Cancelled);
    assert_eq!(ran.stage("lint").status, StageStatus::Cancelled);
    assert_eq!(ran.verdict(), (JobStatus::Cancelled, exit_code::CANCELLED));
    let record = engine.record();
    let mut networks = record.created_networks();
    networks.sort();
    assert_eq!(
        networks,
        ["dockhand-job-1", "dockhand-job-1-3"],
        "the job's network and the stage's own"
    );
    assert_eq!(record.created_containers().len(), 3, "db, test and lint");
}

#[tokio::test]
async fn a_job_cancelled_before_it_starts_creates_nothing() {
    let job = job(WITH_SERVICE);
    let engine = FakeEngine::new();
    let cancel = Cancel::new();
    cancel.cancel(CancelReason::Superseded);
    let ran = run(&engine, &job, &cancel).await;
    for name in ["db", "app", "test", "lint"] {
        let stage = ran.stage(name);
        assert_eq!(stage.status, StageStatus::Cancelled, "{name}");
        assert_eq!(
            stage.message.as_deref(),
            Some("not started: superseded by a newer job"),
            "each stage says why"
        );
    }
    assert_eq!(ran.verdict(), (JobStatus::Cancelled, exit_code::CANCELLED));
    assert_eq!(
        engine.record().calls,
        [Call::Sweep("job-1".to_owned())],
        "only the sweep"
    );
}

#[tokio::test(start_paused = true)]
async fn the_job_timeout_cancels_it_as_timed_out() {
    let mut job = job(WITH_SERVICE);
    job.options.job_timeout = Some(Duration::from_secs(60));
    job.options.job_network = JobNetwork::Create {
        driver: "bridge".to_owned(),
    };
    let engine = FakeEngine::new().task("test", Task::Hang);
    let cancel = Cancel::new();
    let started = tokio::time::Instant::now();
    let ran = run(&engine, &job, &cancel).await;
    assert_eq!(started.elapsed(), Duration::from_secs(60));
    assert_eq!(ran.stage("test").status, StageStatus::Cancelled);
    assert_eq!(ran.stage("lint").status, StageStatus::Passed);
    assert_eq!(ran.verdict(), (JobStatus::TimedOut, exit_code::TIMED_OUT));
    assert_eq!(cancel.reason(), None, "the caller's Cancel is not touched");
}

#[tokio::test(start_paused = true)]
async fn a_hanging_build_is_stopped_by_the_job_timeout() {
    let mut job = job(CHAIN);
    job.options.job_timeout = Some(Duration::from_secs(30));
    let engine = FakeEngine::new().build("app", Build::Hang);
    let ran = run(&engine, &job, &Cancel::new()).await;
    assert_eq!(ran.stage("app").status, StageStatus::Cancelled);
    assert_eq!(ran.stage("tool").status, StageStatus::Cancelled);
    assert_eq!(ran.stage("other").status, StageStatus::Passed);
    assert_eq!(ran.verdict(), (JobStatus::TimedOut, exit_code::TIMED_OUT));
}

#[tokio::test(start_paused = true)]
async fn a_task_past_its_timeout_is_killed_and_times_the_job_out() {
    let job = job(&PIPELINE.replace("  - beside\n", "  - task: beside\n    timeout: 5s\n"));
    let engine = FakeEngine::new().task("beside", Task::Hang);
    let started = tokio::time::Instant::now();
    let ran = run(&engine, &job, &Cancel::new()).await;
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    assert_eq!(ran.stage("beside").status, StageStatus::TimedOut);
    assert_eq!(ran.stage("second").status, StageStatus::Passed);
    assert_eq!(ran.verdict(), (JobStatus::TimedOut, exit_code::TIMED_OUT));
}

#[tokio::test(start_paused = true)]
async fn a_panicking_task_fails_its_own_stage_and_the_job_with_an_error() {
    let job = job(PIPELINE);
    let engine = FakeEngine::new()
        .task("first", Task::Exit(0, Duration::from_secs(5)))
        .task("beside", Task::Panic);
    let ran = run(&engine, &job, &Cancel::new()).await;
    let beside = ran.stage("beside");
    assert_eq!(beside.status, StageStatus::Error);
    assert!(
        beside
            .message
            .as_deref()
            .unwrap()
            .starts_with("the stage panicked: the task in"),
        "{beside:?}"
    );
    assert_eq!(ran.stage("first").status, StageStatus::Passed);
    assert_eq!(ran.stage("second").status, StageStatus::Passed);
    assert_eq!(ran.verdict(), (JobStatus::Error, exit_code::INFRASTRUCTURE));
}

#[tokio::test]
async fn a_panicking_build_fails_its_own_stage_and_skips_its_dependents() {
    let job = job(CHAIN);
    let engine = FakeEngine::new().build("app", Build::Panic);
    let ran = run(&engine, &job, &Cancel::new()).await;
    assert_eq!(ran.stage("base").status, StageStatus::Passed);
    assert_eq!(ran.stage("app").status, StageStatus::Error);
    assert_eq!(ran.stage("tool").status, StageStatus::Skipped);
    assert_eq!(ran.stage("other").status, StageStatus::Passed);
    assert_eq!(ran.verdict(), (JobStatus::Error, exit_code::INFRASTRUCTURE));
}

#[tokio::test]
async fn services_and_their_network_are_removed_after_a_passing_task() {
    let job = job(WITH_SERVICE);
    let engine = FakeEngine::new();
    let ran = run(&engine, &job, &Cancel::new()).await;
    assert_eq!(ran.verdict(), (JobStatus::Succeeded, exit_code::SUCCESS));
    let record = engine.record();
    assert_eq!(record.created_networks(), ["dockhand-job-1-3"]);
    let network_removed = record
        .position(&Call::RemoveNetwork("dockhand-job-1-3".into()))
        .unwrap();
    let sweep = record.position(&Call::Sweep("job-1".into())).unwrap();
    assert!(
        network_removed < sweep,
        "the stage removes its own network, the sweep finds nothing: {:?}",
        record.calls
    );
    assert_eq!(record.created_containers().len(), 3);
}

#[tokio::test]
async fn an_engine_error_is_the_job_s_error_and_what_the_stage_made_is_removed() {
    let job = job(WITH_SERVICE);
    let engine = FakeEngine::new().task("test", Task::Refused);
    let ran = run(&engine, &job, &Cancel::new()).await;
    let test = ran.stage("test");
    assert_eq!(test.status, StageStatus::Error);
    assert!(
        test.message
            .as_deref()
            .unwrap()
            .ends_with("no space left on device"),
        "{test:?}"
    );
    assert_eq!(ran.stage("lint").status, StageStatus::Passed);
    assert_eq!(ran.verdict(), (JobStatus::Error, exit_code::INFRASTRUCTURE));
    let record = engine.record();
    assert_eq!(record.created_networks(), ["dockhand-job-1-3"]);
    assert_eq!(record.created_containers().len(), 2, "db and lint");
    let sweep = record.position(&Call::Sweep("job-1".into())).unwrap();
    let network_removed = record
        .position(&Call::RemoveNetwork("dockhand-job-1-3".into()))
        .unwrap();
    assert!(
        network_removed < sweep,
        "the stage cleans up: {:?}",
        record.calls
    );
}

/// A tar of `/work/results` with a report, a link and an entry that climbs out, cut short
/// after `keep` bytes.
fn report_archive(keep: Option<usize>) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let report = br#"<testsuite><testcase name="ok"/><testcase name="bad" classname="k"><failure message="no"/></testcase></testsuite>"#;
    let mut header = tar::Header::new_gnu();
    header.set_size(report.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "results/a.xml", &report[..])
        .unwrap();
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    tar.append_link(&mut link, "results/shadow.xml", "/etc/shadow")
        .unwrap();
    let mut climb = tar::Header::new_old();
    climb.as_old_mut().name[..16].copy_from_slice(b"../results/b.xml");
    climb.set_size(report.len() as u64);
    climb.set_cksum();
    tar.append(&climb, &report[..]).unwrap();
    let mut bytes = tar.into_inner().unwrap();
    if let Some(keep) = keep {
        bytes.truncate(keep);
    }
    bytes
}

#[tokio::test]
async fn a_task_that_exits_0_with_failing_tests_fails_its_stage_and_a_cut_report_is_a_warning() {
    let job = job(
        "tag: t-app\ncommands: [FROM x]\ncommand: 'true'\nreports: {junit: ['results/*.xml', 'gone/*.xml']}\n",
    );
    let engine = FakeEngine::new().archive("/work/results", report_archive(None));
    let ran = run(&engine, &job, &Cancel::new()).await;
    let stage = ran.outcome.stages.last().unwrap();
    assert_eq!(stage.status, StageStatus::Failed, "{stage:?}");
    let tests = stage.tests.as_ref().unwrap();
    assert_eq!((tests.passed, tests.failed), (1, 1), "{tests:?}");
    assert_eq!(tests.failures[0].label(), "k :: bad");
    assert_eq!(
        tests.warnings,
        [
            "/work/results/shadow.xml: not a regular file (a link is not followed); skipped",
            "gone/*.xml: not found in the container"
        ]
    );

    let engine = FakeEngine::new().archive("/work/results", report_archive(Some(1200)));
    let ran = run(&engine, &job, &Cancel::new()).await;
    let tests = ran.outcome.stages.last().unwrap().tests.as_ref().unwrap();
    assert_eq!((tests.passed, tests.failed), (1, 1), "{tests:?}");
    assert!(
        tests.warnings.iter().any(|w| w.contains("broke off")),
        "{tests:?}"
    );
}
