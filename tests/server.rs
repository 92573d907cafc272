//! The job server's protocol (docs/protocol.md) against the real binary on 127.0.0.1:0 with a
//! real SQLite file: tokens, long-poll claims, offers, leases, logs by offset, events,
//! results checked against the log, restarts and many agents at once.

mod support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::server::{Client, Server};

#[tokio::test]
async fn a_job_from_submit_to_result() {
    let db = tempfile::tempdir().unwrap();
    let server = Server::start(db.path(), &[]);
    let api = Client::new(&server);

    let (status, _) = api
        .post(
            "/api/v1/agents",
            Some("wrong"),
            json!({"name": "a", "version": "1", "capacity": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = api
        .post("/api/v1/jobs", None, json!({"source": {"path": "/x"}}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let agent = api.register("a", &["linux"]).await;
    let other = api.register("b", &["linux"]).await;

    let waiting = {
        let (http, url, agent) = (api.http.clone(), api.url.clone(), agent.clone());
        tokio::spawn(async move {
            let asked = Instant::now();
            let offer: Value = http
                .post(format!("{url}/api/v1/agents/{}/claim?wait=20", agent.0))
                .bearer_auth(&agent.1)
                .json(&json!({"free_slots": 1}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (offer, asked.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let job = api.submit(&["linux"]).await;
    let (offer, waited) = waiting.await.unwrap();
    assert_eq!(offer["job_id"], job.as_str());
    assert!(
        waited < Duration::from_secs(10),
        "the long poll answered when the job arrived"
    );

    let accept = json!({"offer_id": offer["offer_id"]});
    let path = format!("/api/v1/jobs/{job}/accept");
    let (status, _) = api.post(&path, Some(&other.1), accept.clone()).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "another agent cannot take the offer"
    );
    let (status, first) = api.post(&path, Some(&agent.1), accept.clone()).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let (status, replay) = api.post(&path, Some(&agent.1), accept).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        first["job_token"], replay["job_token"],
        "a replayed accept is idempotent"
    );
    assert_eq!(first["lease"]["lease_id"], replay["lease"]["lease_id"]);
    assert_eq!(first["job"]["tasks"], json!(["test"]));
    let token = first["job_token"].as_str().unwrap();
    let lease = json!({"lease_id": first["lease"]["lease_id"]});

    let (status, renewed) = api
        .put(&format!("/api/v1/jobs/{job}/lease"), token, lease)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(renewed["cancel"], false);

    assert_eq!(api.log(&job, token, 0, b"hello ").await.1["committed"], 6);
    assert_eq!(
        api.log(&job, token, 0, b"hello ").await.1["committed"],
        6,
        "a replay is accepted"
    );
    let (status, gap) = api.log(&job, token, 10, b"late").await;
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(gap["committed"], 6);
    assert_eq!(
        api.log(&job, token, 3, b"lo world").await.1["committed"],
        11
    );
    let (status, _) = api.log(&job, &agent.1, 11, b"x").await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "an agent token is not a job token"
    );

    let events = format!("/api/v1/jobs/{job}/events");
    let batch = json!([{"seq": 1, "type": "job_started"}, {"seq": 2, "type": "stage_started"}]);
    let (_, acked) = api.post(&events, Some(token), batch.clone()).await;
    assert_eq!(acked["acked_seq"], 2);
    let (_, acked) = api.post(&events, Some(token), batch).await;
    assert_eq!(acked["acked_seq"], 2, "events are idempotent by seq");
    let (_, acked) = api.post(&events, Some(token), json!([{"seq": 4}])).await;
    assert_eq!(acked["acked_seq"], 2, "a gap holds the ack back");

    let (status, body) = api.finish(&job, token, b"hello").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["committed"], 11);
    let (status, _) = api.finish(&job, token, b"hello world").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api.finish(&job, token, b"hello world").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a retried result is acknowledged again"
    );

    let (_, detail) = api.get(&format!("/api/v1/jobs/{job}")).await;
    assert_eq!(detail["state"], "succeeded");
    assert_eq!(detail["log_bytes"], 11);
    assert_eq!(api.read_log(&job).await, b"hello world");

    let second = api.submit(&[]).await;
    let (taken, other_token, _) = api.take(&other).await.unwrap();
    assert_eq!(taken, second);
    let (status, _) = api.log(&job, &other_token, 0, b"x").await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a job token is good for its own job only"
    );
}

#[tokio::test]
async fn offers_lapse_leases_lapse_and_cancel_rides_on_the_lease() {
    let db = tempfile::tempdir().unwrap();
    let server = Server::start(db.path(), &["--offer-ttl", "1s", "--lease", "1s"]);
    let api = Client::new(&server);
    let agent = api.register("a", &[]).await;

    let job = api.submit(&["gpu"]).await;
    assert_eq!(
        api.claim(&agent, 0).await.0,
        StatusCode::NO_CONTENT,
        "labels must be covered"
    );
    assert_eq!(api.cancel(&job).await, StatusCode::ACCEPTED);
    assert_eq!(
        api.get(&format!("/api/v1/jobs/{job}")).await.1["state"],
        "cancelled"
    );

    let job = api.submit(&[]).await;
    let (_, stale) = api.claim(&agent, 0).await;
    assert_eq!(stale["job_id"], job.as_str());
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (_, again) = api.claim(&agent, 5).await;
    assert_eq!(
        again["job_id"],
        job.as_str(),
        "an offer never accepted is offered again"
    );
    assert_ne!(again["offer_id"], stale["offer_id"]);
    let path = format!("/api/v1/jobs/{job}/accept");
    let (status, _) = api
        .post(
            &path,
            Some(&agent.1),
            json!({"offer_id": stale["offer_id"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "the lapsed offer is gone");
    let (status, accepted) = api
        .post(
            &path,
            Some(&agent.1),
            json!({"offer_id": again["offer_id"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let token = accepted["job_token"].as_str().unwrap();
    let lease = json!({"lease_id": accepted["lease"]["lease_id"]});

    assert_eq!(api.cancel(&job).await, StatusCode::ACCEPTED);
    let (_, renewed) = api
        .put(&format!("/api/v1/jobs/{job}/lease"), token, lease.clone())
        .await;
    assert_eq!(renewed["cancel"], true, "{renewed}");

    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(
        api.get(&format!("/api/v1/jobs/{job}")).await.1["state"],
        "lost"
    );
    let (status, renewed) = api
        .put(&format!("/api/v1/jobs/{job}/lease"), token, lease.clone())
        .await;
    assert_eq!(
        (status, renewed["cancel"].clone()),
        (StatusCode::OK, json!(true)),
        "the lease holder comes back to a lost job (it was unreachable): running, still cancelled"
    );
    assert_eq!(
        api.get(&format!("/api/v1/jobs/{job}")).await.1["state"],
        "running"
    );
    assert_eq!(api.finish(&job, token, b"").await.0, StatusCode::OK);
    let (status, gone) = api
        .put(&format!("/api/v1/jobs/{job}/lease"), token, lease)
        .await;
    assert_eq!(status, StatusCode::GONE);
    assert_eq!(gone["state"], "succeeded");
}

#[tokio::test]
async fn a_restarted_server_keeps_jobs_tokens_and_logs() {
    let db = tempfile::tempdir().unwrap();
    let mut server = Server::start(db.path(), &[]);
    let api = Client::new(&server);
    let agent = api.register("a", &[]).await;
    api.submit(&[]).await;
    let (job, token, lease) = api.take(&agent).await.unwrap();
    assert_eq!(
        api.log(&job, &token, 0, b"before the crash\n").await.1["committed"],
        17
    );
    server.kill();

    let server = Server::start(db.path(), &[]);
    let api = Client::new(&server);
    let (status, _) = api
        .put(
            &format!("/api/v1/jobs/{job}/lease"),
            &token,
            json!({"lease_id": lease}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "the job token outlives the restart");
    let (status, gap) = api.log(&job, &token, 40, b"x").await;
    assert_eq!(
        (status, gap["committed"].clone()),
        (StatusCode::RANGE_NOT_SATISFIABLE, json!(17))
    );
    assert_eq!(
        api.log(&job, &token, 17, b"after\n").await.1["committed"],
        23
    );
    assert_eq!(
        api.finish(&job, &token, b"before the crash\nafter\n")
            .await
            .0,
        StatusCode::OK
    );
    let (status, _) = api
        .post(
            &format!("/api/v1/agents/{}/claim", agent.0),
            Some(&agent.1),
            json!({"free_slots": 1}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::NO_CONTENT,
        "the agent's token outlives the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_jobs_over_three_agents_each_run_exactly_once() {
    let db = tempfile::tempdir().unwrap();
    let server = Server::start(db.path(), &[]);
    let api = Client::new(&server);
    let mut submitted = Vec::new();
    for _ in 0..200 {
        submitted.push(api.submit(&[]).await);
    }
    let mut agents = Vec::new();
    for name in ["a", "b", "c"] {
        let agent = api.register(name, &[]).await;
        let api = Client::new(&server);
        agents.push(tokio::spawn(async move {
            let mut ran = Vec::new();
            while let Some((job, token, _)) = api.take(&agent).await {
                let log = format!("{job} ran on {}\n", agent.0);
                api.log(&job, &token, 0, log.as_bytes()).await;
                assert_eq!(
                    api.finish(&job, &token, log.as_bytes()).await.0,
                    StatusCode::OK
                );
                ran.push(job);
            }
            ran
        }));
    }
    let mut ran = Vec::new();
    for agent in agents {
        ran.extend(agent.await.unwrap());
    }
    ran.sort();
    submitted.sort();
    assert_eq!(ran, submitted, "every job ran, none twice");
    let (_, jobs) = api.get("/api/v1/jobs?limit=1000").await;
    assert!(
        jobs.as_array()
            .unwrap()
            .iter()
            .all(|j| j["state"] == "succeeded")
    );
}

#[tokio::test]
async fn push_webhooks_need_a_valid_signature_and_a_configured_repository() {
    let db = tempfile::tempdir().unwrap();
    let server = Server::start(
        db.path(),
        &[
            "--webhook-secret",
            "hook-secret-of-the-tests",
            "--build-repo",
            "team/app=test",
            "--build-repo",
            "gitea:team/app=test",
        ],
    );
    let api = Client::new(&server);
    let push = |name: &str| {
        json!({"ref": "refs/heads/main", "after": "0123456789abcdef0123456789abcdef01234567",
               "repository": {"full_name": name, "clone_url": format!("https://git.example.com/{name}.git")}})
        .to_string()
    };
    let secret = Some("hook-secret-of-the-tests");

    let body = push("team/app");
    let (bad, _) = api
        .deliver("github", "push", None, &body, Some("wrong"))
        .await;
    assert_eq!(bad, StatusCode::UNAUTHORIZED);
    let (unsigned, _) = api.deliver("gitea", "push", None, &body, None).await;
    assert_eq!(unsigned, StatusCode::UNAUTHORIZED);
    assert_eq!(
        api.get("/api/v1/jobs").await.1,
        json!([]),
        "refused deliveries make no job"
    );

    let (good, job) = api.deliver("github", "push", None, &body, secret).await;
    assert_eq!(good, StatusCode::CREATED);
    let (_, detail) = api
        .get(&format!("/api/v1/jobs/{}", job["job_id"].as_str().unwrap()))
        .await;
    assert_eq!(
        detail["source"]["git"],
        "https://git.example.com/team/app.git"
    );
    assert_eq!(
        detail["source"]["commit"],
        "0123456789abcdef0123456789abcdef01234567"
    );
    assert_eq!(detail["tasks"], json!(["test"]));

    let (gitea, _) = api.deliver("gitea", "push", None, &body, secret).await;
    assert_eq!(gitea, StatusCode::CREATED);
    let other = push("someone/else");
    let (ignored, _) = api.deliver("github", "push", None, &other, secret).await;
    assert_eq!(ignored, StatusCode::OK, "not a configured repository");
    let (ping, _) = api.deliver("github", "ping", None, &body, secret).await;
    assert_eq!(ping, StatusCode::OK);
    assert_eq!(api.get("/api/v1/jobs").await.1.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn jobs_no_agent_can_take_never_hide_one_it_can() {
    let db = tempfile::tempdir().unwrap();
    let server = Server::start(db.path(), &[]);
    let api = Client::new(&server);
    let agent = api.register("a", &["linux"]).await;
    for _ in 0..201 {
        api.submit(&["gpu"]).await;
    }
    api.submit(&["linux", "gpu"]).await;
    let plain = api.submit(&[]).await;
    let linux = api.submit(&["linux"]).await;
    for expected in [plain, linux] {
        let (status, offer) = api.claim(&agent, 0).await;
        assert_eq!(status, StatusCode::OK, "{offer}");
        assert_eq!(offer["job_id"], expected.as_str(), "{offer}");
    }
    assert_eq!(api.claim(&agent, 0).await.0, StatusCode::NO_CONTENT);
}

/// The command-line client: `submit --path .` sends the path as this shell sees it, not as
/// the agent would resolve it; `cancel` of a job that has ended says so and fails;
/// `jobs --limit 0` is refused.
#[tokio::test]
async fn the_client_sends_absolute_paths_and_refuses_pointless_requests() {
    let db = tempfile::tempdir().unwrap();
    let server = Server::start(db.path(), &["--allow-local-sources"]);
    let api = Client::new(&server);
    let cwd = tempfile::tempdir().unwrap();
    let dockhand = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_dockhand"))
            .args(args)
            .args(["--server", &server.url])
            .env("DOCKHAND_ADMIN_TOKEN", support::server::ADMIN)
            .current_dir(cwd.path())
            .output()
            .unwrap()
    };
    let submitted = dockhand(&["submit", "--path", "."]);
    assert!(submitted.status.success(), "{submitted:?}");
    let job = String::from_utf8(submitted.stdout)
        .unwrap()
        .trim()
        .to_owned();
    let (_, detail) = api.get(&format!("/api/v1/jobs/{job}")).await;
    let sent = std::path::PathBuf::from(detail["source"]["path"].as_str().unwrap());
    assert_eq!(sent, cwd.path().canonicalize().unwrap(), "{detail}");

    let cancelled = dockhand(&["cancel", &job]);
    assert!(cancelled.status.success(), "{cancelled:?}");
    let again = dockhand(&["cancel", &job]);
    assert_eq!(again.status.code(), Some(2), "{again:?}");
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(
        said.contains("has already ended (cancelled): nothing to cancel"),
        "{said}"
    );

    let none = dockhand(&["jobs", "--limit", "0"]);
    assert_eq!(none.status.code(), Some(2), "{none:?}");
}

/// `submit --wait` and `logs -f` follow the job to its end and exit as the job did, for
/// scripts: its own exit code, 130 for a job cancelled before it ran.
#[tokio::test]
async fn following_a_job_exits_with_its_exit_code() {
    let db = tempfile::tempdir().unwrap();
    let server = Server::start(db.path(), &[]);
    let api = Client::new(&server);
    let url = server.url.clone();
    let dockhand = move |args: &[&str]| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_dockhand"));
        command
            .args(args)
            .args(["--server", &url])
            .env("DOCKHAND_ADMIN_TOKEN", support::server::ADMIN)
            .kill_on_drop(true);
        command.output()
    };
    let git = ["--git", "https://example.com/x.git", "--ref", "main"];
    let waiting = tokio::spawn(dockhand(&[&["submit", "--wait"][..], &git[..]].concat()));
    let agent = api.register("a", &[]).await;
    let (job, token) = loop {
        if let Some((job, token, _)) = api.take(&agent).await {
            break (job, token);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    api.log(&job, &token, 0, b"hello\n").await;
    let sha = support::server::sha256_hex(b"hello\n");
    let (status, body) = api
        .put(
            &format!("/api/v1/jobs/{job}/result"),
            &token,
            json!({"status": "failed", "exit_code": 3, "stages": [], "started_at": null,
                   "finished_at": null, "log": {"bytes": 6, "sha256": sha}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let waited = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(waited.status.code(), Some(3), "{waited:?}");
    assert_eq!(waited.stdout, b"hello\n");
    assert!(String::from_utf8_lossy(&waited.stderr).contains(&job));
    let followed = dockhand(&["logs", "-f", &job]).await.unwrap();
    assert_eq!(followed.status.code(), Some(3), "{followed:?}");
    let listed = dockhand(&["jobs"]).await.unwrap();
    let listed = String::from_utf8(listed.stdout).unwrap();
    let columns: Vec<&str> = listed
        .lines()
        .find(|l| l.starts_with(&job))
        .unwrap_or_else(|| panic!("{listed}"))
        .split_whitespace()
        .collect();
    assert_eq!(columns[1..3], ["failed", "3"], "{listed}");
    assert!(
        columns[3].starts_with("20") && columns[4].len() == 8 && columns[5].ends_with('s'),
        "started (UTC) and how long it took: {listed}"
    );
    assert_eq!(columns[6], "6", "log bytes: {listed}");

    let queued = api.submit(&["nobody-has-this"]).await;
    assert_eq!(api.cancel(&queued).await, StatusCode::ACCEPTED);
    let followed = dockhand(&["logs", "-f", &queued]).await.unwrap();
    assert_eq!(followed.status.code(), Some(130), "{followed:?}");
}

/// `rerun` makes a new job with an ended job's spec (the API answers 409 for one still
/// active); `rerun --wait` follows it like `submit --wait`.
#[tokio::test]
async fn an_ended_job_can_be_run_again_with_its_spec() {
    let db = tempfile::tempdir().unwrap();
    let server = Server::start(db.path(), &[]);
    let api = Client::new(&server);
    let url = server.url.clone();
    let dockhand = |args: Vec<String>| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_dockhand"));
        command
            .args(args)
            .args(["--server", &url])
            .env("DOCKHAND_ADMIN_TOKEN", support::server::ADMIN)
            .kill_on_drop(true);
        command.output()
    };
    let first = api.submit(&["rerun-label"]).await;
    let (status, body) = api
        .post(
            &format!("/api/v1/jobs/{first}/rerun"),
            Some(support::server::ADMIN),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "a queued job: {body}");
    assert_eq!(api.cancel(&first).await, StatusCode::ACCEPTED);

    let rerun = dockhand(vec!["rerun".into(), first.clone()]).await.unwrap();
    assert_eq!(rerun.status.code(), Some(0), "{rerun:?}");
    let second = String::from_utf8(rerun.stdout).unwrap().trim().to_owned();
    assert_ne!(second, first);
    let (_, original) = api.get(&format!("/api/v1/jobs/{first}")).await;
    let (_, again) = api.get(&format!("/api/v1/jobs/{second}")).await;
    assert_eq!(again["state"], "queued");
    for field in ["source", "config", "tasks", "labels", "env"] {
        assert_eq!(again[field], original[field], "{field}");
    }

    let missing = dockhand(vec!["rerun".into(), "job-nope".into()])
        .await
        .unwrap();
    assert_ne!(missing.status.code(), Some(0));
    assert_eq!(api.cancel(&second).await, StatusCode::ACCEPTED);
    let waiting = tokio::spawn(dockhand(vec![
        "rerun".into(),
        "--wait".into(),
        second.clone(),
    ]));
    let third = loop {
        let (_, jobs) = api.get("/api/v1/jobs").await;
        let queued = jobs
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["state"] == "queued");
        if let Some(job) = queued {
            break job["id"].as_str().unwrap().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(api.cancel(&third).await, StatusCode::ACCEPTED);
    let waited = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("rerun --wait ends with its job")
        .unwrap()
        .unwrap();
    assert_eq!(waited.status.code(), Some(130), "{waited:?}");
    let stderr = String::from_utf8_lossy(&waited.stderr);
    assert!(
        stderr.contains(&format!("job {third}")),
        "the new id on stderr: {stderr}"
    );
}
