//! The job server and real agents end to end, on the real engine: jobs from git
//! repositories made here, logs that reach the server byte for byte, a server restart and an
//! agent killed mid-job, and a cancel from the server.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Digest;
use support::agent::{AgentProcess, checkout, git_repository as repository};
use support::server::{ADMIN, Client, Server, agent_dir};
use support::{assert_nothing_labelled, docker};

async fn submit(api: &Client, repo: &Path) -> String {
    let (status, body) = api
        .post(
            "/api/v1/jobs",
            Some(ADMIN),
            json!({"source": {"git": format!("file://{}", repo.display()), "ref": "main"},
                   "tasks": ["show"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["job_id"].as_str().unwrap().to_owned()
}

/// The run stage's bytes in the stored log, by the range the result gives it.
fn run_section(detail: &Value, log: &[u8]) -> String {
    let stage = detail["result"]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "run")
        .unwrap_or_else(|| panic!("no run stage in {detail}"));
    let (start, end) = (
        stage["log_range"][0].as_u64().unwrap() as usize,
        stage["log_range"][1].as_u64().unwrap() as usize,
    );
    String::from_utf8(log[start..end].to_vec()).unwrap()
}

fn finished(detail: &Value) -> bool {
    !["queued", "offered", "running"].contains(&detail["state"].as_str().unwrap_or(""))
}

/// What `seq 1 N` prints.
fn numbers(n: usize) -> String {
    (1..=n).map(|i| format!("{i}\n")).collect()
}

/// `dockhand ARGS --server URL` with the admin token; its stdout.
fn client(server: &Server, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_dockhand"))
        .args(args)
        .args(["--server", &server.url])
        .env("DOCKHAND_ADMIN_TOKEN", ADMIN)
        .output()
        .unwrap();
    assert!(output.status.success(), "dockhand {args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitted_job_runs_on_an_agent_and_its_log_arrives_byte_for_byte() {
    let db = tempfile::tempdir().unwrap();
    let server = Server::start(db.path(), &["--allow-local-sources"]);
    let api = Client::new(&server);
    let repo = repository("seq 1 3000\nprintf 'ünïcode\\tand tabs\\n'\n");
    let dir = agent_dir(&server, "");
    let agent = AgentProcess::start(dir.path(), &["agent"]);
    let git = format!("file://{}", repo.path().display());
    let job = client(
        &server,
        &["submit", "--git", &git, "--ref", "main", "--task", "show"],
    )
    .trim()
    .to_owned();
    let followed = client(&server, &["logs", "-f", &job]);
    let detail = api.wait_job(&job, finished).await;
    assert_eq!(
        detail["state"],
        "succeeded",
        "{detail}\n{}",
        agent.transcript()
    );
    let log = api.read_log(&job).await;
    assert_eq!(detail["log_bytes"], log.len());
    assert_eq!(
        followed.as_bytes(),
        &log[..],
        "`logs -f` printed the whole log"
    );
    assert_eq!(client(&server, &["logs", &job]).as_bytes(), &log[..]);
    let listed = client(&server, &["jobs"]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(&job) && l.contains(" succeeded ")),
        "{listed}"
    );
    assert_eq!(
        run_section(&detail, &log),
        numbers(3000) + "ünïcode\tand tabs\n"
    );
    let local = agent.wait_finished(1, Duration::from_secs(60))[0].clone();
    assert_eq!(std::fs::read(local.results.join("log.txt")).unwrap(), log);
    assert!(
        !local.results.join("remote.json").exists(),
        "nothing is owed"
    );
    assert_eq!(
        (
            local.result()["server_job"].as_str(),
            detail["result"]["agent_job"].as_str(),
        ),
        (Some(job.as_str()), Some(local.id.as_str())),
        "each side records the other's id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restarted_mid_job_loses_no_log_byte() {
    let db = tempfile::tempdir().unwrap();
    let mut server = Server::start(db.path(), &["--allow-local-sources"]);
    let address = server.address();
    let api = Client::new(&server);
    let repo =
        repository("i=0; while [ $i -lt 60 ]; do i=$((i+1)); echo line $i; sleep 0.05; done\n");
    let dir = agent_dir(&server, "");
    let agent = AgentProcess::start(dir.path(), &["agent"]);
    let job = submit(&api, repo.path()).await;
    agent.wait_for_stdout("run show | line 5", Duration::from_secs(60));
    server.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let server = Server::start_at(db.path(), &address, &["--allow-local-sources"]);
    let api = Client::new(&server);
    let detail = api.wait_job(&job, finished).await;
    assert_eq!(
        detail["state"],
        "succeeded",
        "{detail}\n{}",
        agent.transcript()
    );
    let expected: String = (1..=60).map(|i| format!("line {i}\n")).collect();
    assert_eq!(run_section(&detail, &api.read_log(&job).await), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_lease_loses_no_job_and_no_byte() {
    let db = tempfile::tempdir().unwrap();
    let flags = ["--allow-local-sources", "--lease", "3s"];
    let mut server = Server::start(db.path(), &flags);
    let address = server.address();
    let api = Client::new(&server);
    let repo =
        repository("i=0; while [ $i -lt 300 ]; do i=$((i+1)); echo line $i; sleep 0.05; done\n");
    let dir = agent_dir(&server, "");
    let agent = AgentProcess::start(dir.path(), &["agent"]);
    let job = submit(&api, repo.path()).await;
    agent.wait_for_stdout("run show | line 5", Duration::from_secs(60));
    server.kill();
    // Twice the lease: every lease the server knows of lapsed while it was down.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let server = Server::start_at(db.path(), &address, &flags);
    let api = Client::new(&server);
    let detail = api.wait_job(&job, finished).await;
    assert_eq!(
        detail["state"],
        "succeeded",
        "{detail}\n{}",
        agent.transcript()
    );
    let log = api.read_log(&job).await;
    let local = agent.wait_finished(1, Duration::from_secs(60))[0].clone();
    let digest = |bytes: &[u8]| sha2::Sha256::digest(bytes).to_vec();
    assert_eq!(
        digest(&log),
        digest(&std::fs::read(local.results.join("log.txt")).unwrap()),
        "the server holds the agent's whole log"
    );
    let expected: String = (1..=300).map(|i| format!("line {i}\n")).collect();
    assert_eq!(run_section(&detail, &log), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_job_leaves_a_lost_job_and_its_restart_cleans_up() {
    let db = tempfile::tempdir().unwrap();
    let server = Server::start(db.path(), &["--allow-local-sources", "--lease", "3s"]);
    let api = Client::new(&server);
    let repo = repository("echo started; sleep 120\n");
    let dir = agent_dir(&server, "");
    let mut agent = AgentProcess::start(dir.path(), &["agent"]);
    let job = submit(&api, repo.path()).await;
    agent.wait_for_stdout("run show | started", Duration::from_secs(60));
    let label = format!("label=dockhand.agent={}", agent.name);
    assert!(!docker(&["ps", "-q", "--filter", &label]).trim().is_empty());
    agent.signal("KILL");
    agent.wait_exit(Duration::from_secs(10));
    let detail = api.wait_job(&job, finished).await;
    assert_eq!(detail["state"], "lost");

    let networks = || docker(&["network", "ls", "-q", "--filter", &label]);
    let left_by_the_dead = networks();
    assert!(
        !left_by_the_dead.trim().is_empty(),
        "its job and spare networks"
    );
    let restarted = AgentProcess::start_named(dir.path(), &["agent"], &agent.name);
    restarted.wait_for("the sweep", Duration::from_secs(60), |lines| {
        lines.iter().any(|l| l.contains("started:"))
    });
    assert!(docker(&["ps", "-aq", "--filter", &label]).trim().is_empty());
    let now = networks();
    for network in left_by_the_dead.lines() {
        assert!(!now.contains(network), "{network} survived the sweep");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_from_the_server_stops_the_container() {
    let db = tempfile::tempdir().unwrap();
    let server = Server::start(db.path(), &["--allow-local-sources", "--lease", "3s"]);
    let api = Client::new(&server);
    let repo = repository("echo started; sleep 120\n");
    let dir = agent_dir(&server, "");
    let agent = AgentProcess::start(dir.path(), &["agent"]);
    let job = submit(&api, repo.path()).await;
    agent.wait_for_stdout("run show | started", Duration::from_secs(60));
    assert_eq!(api.cancel(&job).await, StatusCode::ACCEPTED);
    let local = agent.wait_finished(1, Duration::from_secs(30))[0].clone();
    assert_eq!(local.status, "cancelled", "{}", agent.transcript());
    assert_nothing_labelled(&format!("dockhand.job={}", local.id));
    let detail = api.wait_job(&job, finished).await;
    assert_eq!(detail["state"], "cancelled", "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_off_by_an_agent_stop_is_finished_by_the_next_start() {
    let db = tempfile::tempdir().unwrap();
    let mut server = Server::start(db.path(), &["--allow-local-sources", "--lease", "60s"]);
    let address = server.address();
    let api = Client::new(&server);
    let repo = repository("echo started; sleep 1; seq 1 500\n");
    let dir = agent_dir(&server, "");
    let mut agent = AgentProcess::start(dir.path(), &["agent"]);
    let job = submit(&api, repo.path()).await;
    agent.wait_for_stdout("run show | started", Duration::from_secs(60));
    server.kill();
    let results = dir
        .path()
        .join(".dockhand/results")
        .join(&agent.started()[0]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !results.join("result.json").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            agent.transcript()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        agent.finished().is_empty(),
        "a job ends when its upload does"
    );
    agent.signal("TERM");
    agent.wait_exit(Duration::from_secs(60));
    assert!(
        results.join("remote.json").exists(),
        "the upload is still owed"
    );

    let server = Server::start_at(
        db.path(),
        &address,
        &["--allow-local-sources", "--lease", "60s"],
    );
    let api = Client::new(&server);
    let _restarted = AgentProcess::start_named(dir.path(), &["agent"], &agent.name);
    let detail = api.wait_job(&job, finished).await;
    assert_eq!(detail["state"], "succeeded", "{detail}");
    let log = api.read_log(&job).await;
    assert_eq!(log, std::fs::read(results.join("log.txt")).unwrap());
    assert!(run_section(&detail, &log).ends_with(&numbers(500)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_jobs_over_three_agents_each_run_exactly_once() {
    let db = tempfile::tempdir().unwrap();
    let server = Server::start(db.path(), &["--allow-local-sources"]);
    let api = Client::new(&server);
    let project = checkout("echo ran\n");
    let agents: Vec<_> = (0..3)
        .map(|_| {
            let dir = agent_dir(&server, "");
            let agent = AgentProcess::start(dir.path(), &["agent"]);
            (dir, agent)
        })
        .collect();
    let mut jobs = Vec::new();
    for _ in 0..200 {
        let (status, body) = api
            .post(
                "/api/v1/jobs",
                Some(ADMIN),
                json!({"source": {"path": project.path()}, "tasks": ["show"]}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        jobs.push(body["job_id"].as_str().unwrap().to_owned());
    }
    for job in &jobs {
        let detail = api.wait_job(job, finished).await;
        assert_eq!(detail["state"], "succeeded", "{detail}");
    }
    let mut ran: Vec<String> = Vec::new();
    for (dir, agent) in &agents {
        agent.wait_for("its last job", Duration::from_secs(60), |lines| {
            lines
                .iter()
                .filter(|l| l.contains(" succeeded (exit code 0)"))
                .count()
                == lines.iter().filter(|l| l.contains("): job job-")).count()
        });
        for entry in std::fs::read_dir(dir.path().join(".dockhand/results")).unwrap() {
            let result: Value = serde_json::from_slice(
                &std::fs::read(entry.unwrap().path().join("result.json")).unwrap(),
            )
            .unwrap();
            let trigger = result["trigger"].as_str().unwrap();
            ran.push(trigger.split(' ').nth(1).unwrap().to_owned());
        }
    }
    ran.sort();
    jobs.sort();
    assert_eq!(ran, jobs, "every job ran on exactly one agent, once");
}
