//! Two server replicas on one PostgreSQL database (a real PostgreSQL 15, see
//! tests/support/postgres.rs): a job submitted to one wakes a claim waiting on the other,
//! either replica takes the job's lease renewals, log chunks and result, and serves its log;
//! real agents listing both replicas run every job exactly once while one is SIGKILLed.

mod support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::agent::{AgentProcess, checkout};
use support::server::{ADMIN, Client, Server, sha256_hex};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_submitted_to_one_replica_runs_through_either() {
    let a = Server::start_postgres(&[]);
    let b = Server::replica(&a, &[]);
    let (on_a, on_b) = (Client::new(&a), Client::new(&b));
    let agent = on_a.register("a", &["linux"]).await;

    let waiting = {
        let (http, url, agent) = (on_b.http.clone(), on_b.url.clone(), agent.clone());
        tokio::spawn(async move {
            let asked = Instant::now();
            let offer: Value = http
                .post(format!("{url}/api/v1/agents/{}/claim?wait=30", agent.0))
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
    let job = on_a.submit(&["linux"]).await;
    let (offer, waited) = waiting.await.unwrap();
    assert_eq!(offer["job_id"], job.as_str());
    assert!(
        waited < Duration::from_secs(20),
        "the claim on B answered when the job reached A, not at the end of its wait"
    );

    let (status, accepted) = on_a
        .post(
            &format!("/api/v1/jobs/{job}/accept"),
            Some(&agent.1),
            json!({"offer_id": offer["offer_id"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{accepted}");
    let token = accepted["job_token"].as_str().unwrap();
    let lease = json!({"lease_id": accepted["lease"]["lease_id"]});
    for api in [&on_a, &on_b] {
        let (status, _) = api
            .put(&format!("/api/v1/jobs/{job}/lease"), token, lease.clone())
            .await;
        assert_eq!(status, StatusCode::OK, "a lease renewed on {}", api.url);
    }

    // A follower on B sees what is uploaded through A.
    let follower = std::process::Command::new(env!("CARGO_BIN_EXE_dockhand"))
        .args(["logs", "-f", &job, "--server", &b.url])
        .env("DOCKHAND_ADMIN_TOKEN", ADMIN)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let log = b"first on A\nthen on B\n";
    assert_eq!(
        on_a.log(&job, token, 0, &log[..11]).await.1["committed"],
        11
    );
    let (status, gap) = on_b.log(&job, token, 12, b"x").await;
    assert_eq!(
        (status, gap["committed"].clone()),
        (StatusCode::RANGE_NOT_SATISFIABLE, json!(11)),
        "B knows what A committed"
    );
    assert_eq!(
        on_b.log(&job, token, 11, &log[11..]).await.1["committed"],
        21
    );
    assert_eq!(on_a.read_log(&job).await, log);
    assert_eq!(on_b.read_log(&job).await, log);
    let (status, body) = on_a.finish(&job, token, log).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "A checks the sha256 of bytes B took: {body}"
    );
    let (_, detail) = on_b.get(&format!("/api/v1/jobs/{job}")).await;
    assert_eq!(detail["state"], "succeeded");
    let followed = tokio::task::spawn_blocking(move || follower.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(followed.status.success(), "{followed:?}");
    assert_eq!(followed.stdout, log, "`logs -f` on B printed the whole log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_lapses_through_whichever_replica_ticks() {
    let a = Server::start_postgres(&["--offer-ttl", "1s"]);
    let b = Server::replica(&a, &["--offer-ttl", "1s"]);
    let (on_a, on_b) = (Client::new(&a), Client::new(&b));
    let (first, second) = (on_a.register("a", &[]).await, on_a.register("b", &[]).await);
    let job = on_a.submit(&[]).await;
    let (_, offer) = on_a.claim(&first, 0).await;
    assert_eq!(offer["job_id"], job.as_str());
    drop(a);
    // A is gone: B returns the lapsed offer to the queue and offers the job again.
    let (status, again) = on_b.claim(&second, 10).await;
    assert_eq!(
        (status, again["job_id"].clone()),
        (StatusCode::OK, json!(job))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_jobs_run_exactly_once_through_a_replicas_death() {
    let flags = ["--allow-local-sources"];
    let mut a = Server::start_postgres(&flags);
    let b = Server::replica(&a, &flags);
    let api = Client::new(&b);
    let project = checkout("echo ran\n");
    let agents: Vec<_> = (0..3)
        .map(|i| {
            let urls = if i == 1 { [&b.url, &a.url] } else { [&a.url, &b.url] };
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(
                dir.path().join("agent.toml"),
                format!(
                    "[agent]\nshutdown_grace = \"2s\"\nkeep_results = 0\n[[source]]\nkind = \"http\"\n\
                     url = [\"{}\", \"{}\"]\nallow_local_sources = true\n",
                    urls[0], urls[1]
                ),
            )
            .unwrap();
            let agent = AgentProcess::start(dir.path(), &["agent"]);
            (dir, agent)
        })
        .collect();
    let mut jobs = Vec::new();
    for _ in 0..500 {
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
    api.wait_job(&jobs[100], |j| j["state"] == "succeeded")
        .await;
    let address = a.address();
    a.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _a = Server::replica_at(&a, &address, &flags);
    for job in &jobs {
        let detail = api
            .wait_job(job, |j| {
                j["state"] != "queued" && j["state"] != "offered" && j["state"] != "running"
            })
            .await;
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
            let results = entry.unwrap().path();
            let result: Value =
                serde_json::from_slice(&std::fs::read(results.join("result.json")).unwrap())
                    .unwrap();
            let job = result["trigger"]
                .as_str()
                .unwrap()
                .split(' ')
                .nth(1)
                .unwrap();
            let theirs = sha256_hex(&std::fs::read(results.join("log.txt")).unwrap());
            assert_eq!(
                sha256_hex(&api.read_log(job).await),
                theirs,
                "{job}'s stored log"
            );
            ran.push(job.to_owned());
        }
    }
    ran.sort();
    jobs.sort();
    assert_eq!(ran, jobs, "every job ran on exactly one agent, once");
}
