//! Health, metrics and the event log of a real job server and a real agent: the metrics
//! move as a real job goes through (and pass `promtool check metrics`), `/readyz` follows
//! the database, the JSON log lines parse and carry job ids, and a job no connected agent
//! can take is marked.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::agent::{AgentProcess, git_repository, unique};
use support::server::{ADMIN, Client, Server};

/// `promtool check metrics` on `text`; fails (never skips) without promtool.
fn promtool_check(what: &str, text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = child.unwrap_or_else(|e| {
        panic!("promtool: {e}; install it with scripts/ensure-promtool (Debian's prometheus)")
    });
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success() && output.stdout.is_empty() && output.stderr.is_empty(),
        "promtool on the {what}'s metrics: {}{}\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The value of one series (`name` or `name{labels}`, exactly as exposed); 0 when absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse::<f64>().unwrap())
        .next()
        .unwrap_or(0.0)
}

async fn get(url: &str) -> (StatusCode, String) {
    let response = reqwest::get(url).await.unwrap();
    (response.status(), response.text().await.unwrap())
}

/// Polls `url` (which may not listen yet) until `done` holds for its answer.
async fn wait_for(url: &str, what: &str, done: impl Fn(StatusCode, &str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let answer = match reqwest::get(url).await {
            Ok(response) => (response.status(), response.text().await.unwrap()),
            Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()),
        };
        if done(answer.0, &answer.1) {
            return answer.1;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {url} answered {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A free port on 127.0.0.1 for the agent's metrics_listen.
fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// Every line parses as JSON; the ones whose `fields.job` is `job`.
fn json_lines_of(lines: &[String], job: &str) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .filter(|l| l["fields"]["job"] == job)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_job_moves_the_metrics_of_server_and_agent_and_the_json_logs_name_it() {
    let db = tempfile::tempdir().unwrap();
    let server = Server::start(
        db.path(),
        &["--allow-local-sources", "--log-format", "json"],
    );
    let api = Client::new(&server);
    let metrics_at = free_address();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("agent.toml"),
        format!(
            "[agent]\nshutdown_grace = \"2s\"\nkeep_results = 0\nmetrics_listen = \"{metrics_at}\"\n\
             [[source]]\nkind = \"http\"\nurl = \"{}\"\nallow_local_sources = true\n",
            server.url
        ),
    )
    .unwrap();
    let name = format!("test-{}", unique());
    let agent = AgentProcess::start_logging(
        dir.path(),
        &["agent", "--log-format", "json"],
        &name,
        "info",
    );
    let agent_url = format!("http://{metrics_at}");
    assert_eq!(
        get(&format!("{}/healthz", server.url)).await.0,
        StatusCode::OK
    );
    assert_eq!(
        get(&format!("{}/readyz", server.url)).await.0,
        StatusCode::OK
    );
    wait_for(&format!("{agent_url}/readyz"), "the agent ready", |s, _| {
        s == StatusCode::OK
    })
    .await;
    assert_eq!(
        get(&format!("{agent_url}/healthz")).await,
        (StatusCode::OK, "ok\n".into())
    );
    let before = get(&format!("{}/metrics", server.url)).await.1;
    let finished = "dockhand_server_job_duration_seconds_count{state=\"succeeded\"}";
    let waited = "dockhand_server_queue_wait_seconds_count";
    assert_eq!(value(&before, finished), 0.0, "{before}");

    let repo = git_repository("echo hello from the job\n");
    let (status, body) = api
        .post(
            "/api/v1/jobs",
            Some(ADMIN),
            json!({"source": {"git": format!("file://{}", repo.path().display()), "ref": "main"},
                   "tasks": ["show"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let job = body["job_id"].as_str().unwrap().to_owned();
    let detail = api
        .wait_job(&job, |d| {
            !["queued", "offered", "running"].contains(&d["state"].as_str().unwrap_or(""))
        })
        .await;
    assert_eq!(
        detail["state"],
        "succeeded",
        "{detail}\n{}",
        agent.transcript()
    );

    let after = get(&format!("{}/metrics", server.url)).await.1;
    assert_eq!(
        value(&after, finished),
        value(&before, finished) + 1.0,
        "{after}"
    );
    assert_eq!(
        value(&after, waited),
        value(&before, waited) + 1.0,
        "{after}"
    );
    assert_eq!(
        value(
            &after,
            "dockhand_server_jobs{state=\"succeeded\",labels=\"\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "dockhand_server_jobs_submitted_total{source=\"api\"}"
        ),
        1.0
    );
    assert_eq!(value(&after, "dockhand_server_offers_total"), 1.0);
    assert!(value(&after, "dockhand_server_claims_total") >= 1.0);
    assert_eq!(
        value(&after, "dockhand_server_log_bytes"),
        detail["log_bytes"].as_f64().unwrap()
    );
    assert_eq!(value(&after, "dockhand_server_agents_connected"), 1.0);
    assert_eq!(value(&after, "dockhand_server_jobs_lost_total"), 0.0);
    promtool_check("server", &after);

    // The agent counts the job once its dispatcher has it back.
    let agent_metrics = wait_for(
        &format!("{agent_url}/metrics"),
        "the job counted",
        |_, t| {
            value(
                t,
                "dockhand_agent_jobs_finished_total{status=\"succeeded\"}",
            ) == 1.0
        },
    )
    .await;
    for (series, expected) in [
        ("dockhand_agent_jobs_running", 0.0),
        ("dockhand_agent_triggers_total{source=\"http\"}", 1.0),
        (
            "dockhand_agent_stage_duration_seconds_count{kind=\"build\"}",
            1.0,
        ),
        (
            "dockhand_agent_stage_duration_seconds_count{kind=\"run\"}",
            1.0,
        ),
        ("dockhand_agent_builds_total{outcome=\"built\"}", 1.0),
        ("dockhand_agent_upload_backlog_bytes", 0.0),
        ("dockhand_agent_upload_backlog_events", 0.0),
    ] {
        assert_eq!(
            value(&agent_metrics, series),
            expected,
            "{series}\n{agent_metrics}"
        );
    }
    assert!(value(&agent_metrics, "dockhand_agent_build_context_bytes_total") > 0.0);
    promtool_check("agent", &agent_metrics);

    let server_lines = json_lines_of(&server.log(), &job);
    for message in [
        "job submitted",
        "job offered",
        "job accepted",
        "job finished",
    ] {
        assert!(
            server_lines
                .iter()
                .any(|l| l["fields"]["message"] == message),
            "no {message:?} line for {job}: {:#?}",
            server.log()
        );
    }
    let agent_job = detail["result"]["agent_job"].as_str().unwrap();
    let agent_lines = json_lines_of(&agent.stderr(), agent_job);
    assert!(
        agent_lines.len() >= 2
            && agent_lines.iter().all(|l| l["level"] == "INFO")
            && agent_lines.iter().any(|l| l["fields"]["message"]
                .as_str()
                .unwrap()
                .contains("succeeded")),
        "the agent's start and end lines of {agent_job}: {:#?}",
        agent.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_another_process_holds_the_database_and_200_after() {
    use sqlx::Connection;
    let db = tempfile::tempdir().unwrap();
    let server = Server::start(db.path(), &[]);
    let readyz = format!("{}/readyz", server.url);
    assert_eq!(get(&readyz).await, (StatusCode::OK, "ready\n".into()));
    let url = format!("sqlite://{}", db.path().join("jobs.db").display());
    let mut other = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();
    let (status, reason) = get(&readyz).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(reason.contains("the database did not answer"), "{reason}");
    assert_eq!(
        get(&format!("{}/healthz", server.url)).await.0,
        StatusCode::OK,
        "the process is still up"
    );
    sqlx::raw_sql("ROLLBACK").execute(&mut other).await.unwrap();
    other.close().await.unwrap();
    assert_eq!(get(&readyz).await, (StatusCode::OK, "ready\n".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_job_no_connected_agent_covers_is_marked_and_counted() {
    let db = tempfile::tempdir().unwrap();
    let server = Server::start(db.path(), &[]);
    let api = Client::new(&server);
    let job = api.submit(&["gpu"]).await;
    let plain = api.register("plain", &["linux"]).await;
    assert_eq!(api.claim(&plain, 0).await.0, StatusCode::NO_CONTENT);

    let (_, detail) = api.get(&format!("/api/v1/jobs/{job}")).await;
    assert_eq!(detail["no_agent"], true, "{detail}");
    let metrics = get(&format!("{}/metrics", server.url)).await.1;
    assert_eq!(
        value(&metrics, "dockhand_server_jobs_no_agent"),
        1.0,
        "{metrics}"
    );
    assert_eq!(value(&metrics, "dockhand_server_agents_connected"), 1.0);
    let listed = Command::new(env!("CARGO_BIN_EXE_dockhand"))
        .args(["jobs", "--server", &server.url])
        .env("DOCKHAND_ADMIN_TOKEN", ADMIN)
        .output()
        .unwrap();
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(
        listed.lines().any(|l| l.starts_with(&job)
            && l.contains(" queued ")
            && l.ends_with("(no connected agent has labels: gpu)")),
        "{listed}"
    );

    // An agent with the label, busy (no free slot), covers it: it is not offered, but waits
    // for that agent rather than for none.
    let gpu = api.register("gpu", &["gpu", "linux"]).await;
    let (status, _) = api
        .post(
            &format!("/api/v1/agents/{}/claim?wait=0", gpu.0),
            Some(&gpu.1),
            json!({"free_slots": 0}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, detail) = api.get(&format!("/api/v1/jobs/{job}")).await;
    assert_eq!(detail["state"], "queued");
    assert!(detail.get("no_agent").is_none(), "{detail}");
    let metrics = get(&format!("{}/metrics", server.url)).await.1;
    assert_eq!(
        value(&metrics, "dockhand_server_jobs_no_agent"),
        0.0,
        "{metrics}"
    );
    assert_eq!(value(&metrics, "dockhand_server_agents_connected"), 2.0);
}

#[test]
fn an_agent_whose_metrics_address_is_taken_stops_at_start_naming_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("agent.toml"),
        format!(
            "[agent]\nmetrics_listen = \"{address}\"\n[[source]]\nkind = \"watch\"\npath = \".\"\n"
        ),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_dockhand"))
        .args(["agent", "--name", &format!("test-{}", unique())])
        .current_dir(dir.path())
        .env_remove("DOCKHAND_AGENT_CONFIG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(202), "{stderr}");
    assert!(
        stderr.contains(&format!("agent.metrics_listen: cannot listen on {address}")),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapsed_offers_lost_leases_and_webhook_deliveries_are_counted() {
    let db = tempfile::tempdir().unwrap();
    let secret = "hook-secret-of-the-tests";
    let server = Server::start(
        db.path(),
        &[
            "--offer-ttl",
            "1s",
            "--lease",
            "1s",
            "--webhook-secret",
            secret,
            "--build-repo",
            "team/app",
        ],
    );
    let api = Client::new(&server);
    let metrics = format!("{}/metrics", server.url);
    let agent = api.register("a", &[]).await;

    let job = api.submit(&[]).await;
    let (status, offer) = api.claim(&agent, 0).await;
    assert_eq!(
        (status, offer["job_id"].as_str()),
        (StatusCode::OK, Some(job.as_str()))
    );
    wait_for(&metrics, "the offer lapsed", |_, t| {
        value(t, "dockhand_server_offers_lapsed_total") == 1.0
    })
    .await;
    let (taken, _, _) = api.take(&agent).await.expect("the job is queued again");
    assert_eq!(taken, job);
    let text = wait_for(&metrics, "the lease lapsed", |_, t| {
        value(t, "dockhand_server_jobs_lost_total") == 1.0
    })
    .await;
    assert_eq!(
        value(&text, "dockhand_server_jobs{state=\"lost\",labels=\"\"}"),
        1.0
    );
    assert_eq!(value(&text, "dockhand_server_offers_total"), 2.0);

    let push = json!({"ref": "refs/heads/main", "after": "0123456789abcdef0123456789abcdef01234567",
        "repository": {"full_name": "team/app", "clone_url": "https://git.example.com/team/app.git"}})
    .to_string();
    let delivered = api
        .deliver("github", "push", Some("d-1"), &push, Some(secret))
        .await;
    assert_eq!(delivered.0, StatusCode::CREATED, "{}", delivered.1);
    let replayed = api
        .deliver("github", "push", Some("d-1"), &push, Some(secret))
        .await;
    assert_eq!(replayed.0, StatusCode::OK);
    let forged = api
        .deliver("gitea", "push", None, &push, Some("wrong"))
        .await;
    assert_eq!(forged.0, StatusCode::UNAUTHORIZED);
    let text = get(&metrics).await.1;
    for (outcome, n) in [
        ("forge=\"github\",outcome=\"created\"", 1.0),
        ("forge=\"github\",outcome=\"replayed\"", 1.0),
        ("forge=\"gitea\",outcome=\"bad_signature\"", 1.0),
    ] {
        let series = format!("dockhand_server_webhook_deliveries_total{{{outcome}}}");
        assert_eq!(value(&text, &series), n, "{series}\n{text}");
    }
    assert_eq!(
        value(
            &text,
            "dockhand_server_jobs_submitted_total{source=\"webhook\"}"
        ),
        1.0
    );
    promtool_check("server", &text);
    let log = server.log().join("\n");
    assert!(
        log.contains("the offer lapsed") && log.contains("the lease lapsed"),
        "{log}"
    );
}
