//! The forge loop end to end: real webhook payloads (tests/fixtures/webhooks) signed as the
//! forges sign them, the real server configured by a server.toml, real agents on the real
//! engine, and a fake GitHub/Gitea status API that checks every request as the real one
//! would (tests/support/forge.rs).

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::agent::{AgentProcess, git_repository};
use support::forge::{Failure, FakeForge, Status};
use support::server::{Client, Server, agent_dir};
use support::webhooks::fixture;

const SECRET: &str = "hook-secret-of-the-tests";
const TOKEN: &str = "forge-token-of-the-tests";
const WAIT: Duration = Duration::from_secs(120);

/// `server.toml` for one repository on `forge`, and the server started with it.
fn server_with(db: &Path, forge: &FakeForge, kind: &str, repository: &str) -> Server {
    let file = db.join("server.toml");
    let settings = format!(
        "webhook_secret = \"{SECRET}\"\nallow_local_sources = true\npublic_url = \"https://ci.example.com/\"\n\
         [[repository]]\nname = \"team/app\"\nforge = \"{kind}\"\napi_url = \"{}\"\ntoken_env = \"APP_FORGE_TOKEN\"\ntasks = [\"show\"]\n{repository}\n\
         [[notify]]\nurl = \"{}\"\nformat = \"slack\"\n",
        forge.api_url(),
        forge.hook_url("slack/team"),
    );
    std::fs::write(&file, settings).unwrap();
    let config = file.display().to_string();
    Server::start_env(
        db,
        "127.0.0.1:0",
        &["--config", &config],
        &[("APP_FORGE_TOKEN", TOKEN)],
    )
}

fn git(repo: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@t"])
        .args(args)
        .current_dir(repo)
        .output()
        .unwrap();
    assert!(output.status.success(), "git {args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// Commits `task.sh` anew on the checked-out branch; the commit's sha.
fn commit_task(repo: &Path, script: &str, message: &str) -> String {
    std::fs::write(repo.join("task.sh"), script).unwrap();
    git(repo, &["commit", "-qam", message]);
    git(repo, &["rev-parse", "HEAD"])
}

/// A real pull_request payload of `forge`, pointed at `head` (a repository here) at `sha`.
fn pull_request(forge: &str, action: &str, number: u64, head: (&str, &Path), sha: &str) -> Value {
    let file = match (forge, action) {
        ("gitea", "synchronize") => "synchronized".to_owned(),
        (_, action) => action.to_owned(),
    };
    let mut payload = fixture(forge, &format!("pull_request/{file}"));
    payload["number"] = json!(number);
    payload["repository"]["full_name"] = json!("team/app");
    let pull = &mut payload["pull_request"];
    pull["number"] = json!(number);
    pull["title"] = json!("A change");
    pull["base"]["ref"] = json!("main");
    pull["head"]["ref"] = json!("main");
    pull["head"]["sha"] = json!(sha);
    if !pull["head"]["repo"].is_object() {
        // Woodpecker's Gitea `synchronized` sample names the head repository by id only.
        pull["head"]["repo"] = json!({});
    }
    pull["head"]["repo"]["full_name"] = json!(head.0);
    pull["head"]["repo"]["clone_url"] = json!(format!("file://{}", head.1.display()));
    payload
}

/// A real push payload of `forge` for `sha` on `main` of `repo`.
fn push(forge: &str, repo: &Path, sha: &str, message: &str) -> Value {
    let mut payload = fixture(forge, "push/branch");
    payload["ref"] = json!("refs/heads/main");
    payload["after"] = json!(sha);
    payload["deleted"] = json!(false);
    payload["repository"]["full_name"] = json!("team/app");
    payload["repository"]["clone_url"] = json!(format!("file://{}", repo.display()));
    payload["head_commit"]["message"] = json!(message);
    payload
}

async fn deliver(api: &Client, forge: &str, event: &str, payload: &Value) -> (StatusCode, Value) {
    api.deliver(forge, event, None, &payload.to_string(), Some(SECRET))
        .await
}

async fn job_of(api: &Client, forge: &str, event: &str, payload: &Value) -> String {
    let (status, body) = deliver(api, forge, event, payload).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["job_id"].as_str().unwrap().to_owned()
}

fn finished(detail: &Value) -> bool {
    !["queued", "offered", "running"].contains(&detail["state"].as_str().unwrap_or(""))
}

/// The statuses posted for `sha`, once the last one is final.
fn final_statuses(forge: &FakeForge, sha: &str) -> Vec<Status> {
    let deadline = Instant::now() + WAIT;
    loop {
        let statuses: Vec<Status> = forge
            .statuses()
            .into_iter()
            .filter(|s| s.sha == sha)
            .collect();
        if statuses.last().is_some_and(|s| s.state != "pending") {
            return statuses;
        }
        assert!(
            Instant::now() < deadline,
            "no final status for {sha}: {statuses:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn summary(statuses: &[Status]) -> Vec<(String, String)> {
    statuses
        .iter()
        .map(|s| (s.state.clone(), s.description.clone().unwrap_or_default()))
        .collect()
}

/// A pull request on GitHub Enterprise: each commit's job runs on a real agent, its
/// statuses go pending → success or failure with the job's link, and the repository's Slack
/// hook hears of the failure and of the recovery after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_request_commits_get_statuses_and_a_failure_its_notifications() {
    let forge = FakeForge::github("/api/v3");
    forge.allow("team/app", TOKEN);
    let db = tempfile::tempdir().unwrap();
    let server = server_with(db.path(), &forge, "github", "");
    let api = Client::new(&server);
    let repo = git_repository("echo passing\n");
    let dir = agent_dir(&server, "");
    let agent = AgentProcess::start(dir.path(), &["agent"]);
    let head = ("team/app", repo.path());

    let good = git(repo.path(), &["rev-parse", "HEAD"]);
    let job = job_of(
        &api,
        "github",
        "pull_request",
        &pull_request("github", "opened", 7, head, &good),
    )
    .await;
    let detail = api.wait_job(&job, finished).await;
    assert_eq!(
        detail["state"],
        "succeeded",
        "{detail}\n{}",
        agent.transcript()
    );
    assert_eq!(detail["origin"]["pull_request"], 7);
    let statuses = final_statuses(&forge, &good);
    let states: Vec<&str> = statuses.iter().map(|s| s.state.as_str()).collect();
    assert!(
        states.len() >= 2 && states[..states.len() - 1].iter().all(|s| *s == "pending"),
        "{statuses:?}"
    );
    let done = statuses.last().unwrap();
    assert_eq!(done.state, "success");
    assert_eq!(done.repo, "team/app");
    assert_eq!(done.context.as_deref(), Some("dockhand/show"));
    assert_eq!(
        done.target_url.as_deref(),
        Some(format!("https://ci.example.com/api/v1/jobs/{job}").as_str())
    );
    assert!(
        done.description
            .as_deref()
            .unwrap()
            .starts_with("Succeeded in "),
        "{done:?}"
    );

    let bad = commit_task(repo.path(), "echo failing; exit 3\n", "break it");
    let payload = pull_request("github", "synchronize", 7, head, &bad);
    let failing = job_of(&api, "github", "pull_request", &payload).await;
    assert_eq!(api.wait_job(&failing, finished).await["state"], "failed");
    let statuses = final_statuses(&forge, &bad);
    assert_eq!(
        summary(&statuses[statuses.len() - 1..]),
        [(
            "failure".to_owned(),
            "Failed: run show (exit code 3)".to_owned()
        )]
    );
    let hooks = forge.wait_for_hooks("slack/team", 1, WAIT);
    assert!(
        hooks[0]["text"].as_str().unwrap().contains("fail"),
        "{hooks:?}"
    );

    let fixed = commit_task(repo.path(), "echo fixed\n", "fix it");
    let payload = pull_request("github", "synchronize", 7, head, &fixed);
    let fixing = job_of(&api, "github", "pull_request", &payload).await;
    assert_eq!(api.wait_job(&fixing, finished).await["state"], "succeeded");
    assert_eq!(
        final_statuses(&forge, &fixed).last().unwrap().state,
        "success"
    );
    let hooks = forge.wait_for_hooks("slack/team", 2, WAIT);
    assert!(
        hooks[1]["text"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("recover"),
        "{hooks:?}"
    );
    assert_eq!(hooks.len(), 2, "the first success is not news");
    forge.assert_nothing_refused();
}

/// On Gitea: a same-repository push sees the secret the repository may have (masked), a
/// fork's pull request does not; closing a pull request cancels its running job, and its
/// status says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forks_get_no_secrets_and_a_closed_pull_request_is_cancelled() {
    let forge = FakeForge::gitea();
    forge.allow("team/app", TOKEN);
    let db = tempfile::tempdir().unwrap();
    let server = server_with(db.path(), &forge, "gitea", "secrets = [\"DEPLOY_KEY\"]");
    let api = Client::new(&server);
    let script = "echo \"key=${DEPLOY_KEY:-none}\"\n";
    let repo = git_repository(script);
    let config = std::fs::read_to_string(repo.path().join("config.yml"))
        .unwrap()
        .replace(
            "command: [/bin/sh, /app/task.sh]",
            "command: [/bin/sh, /app/task.sh]\n          env: [DEPLOY_KEY]",
        );
    std::fs::write(
        repo.path().join("config.yml"),
        format!("{config}secrets: [DEPLOY_KEY]\n"),
    )
    .unwrap();
    let sha = commit_task(repo.path(), script, "use the key");
    let dir = agent_dir(
        &server,
        "[secrets]\nvalues = { DEPLOY_KEY = \"deploy-key-value-1234\" }",
    );
    let agent = AgentProcess::start(dir.path(), &["agent"]);

    let own = job_of(
        &api,
        "gitea",
        "push",
        &push("gitea", repo.path(), &sha, "use the key"),
    )
    .await;
    let detail = api.wait_job(&own, finished).await;
    assert_eq!(
        detail["state"],
        "succeeded",
        "{detail}\n{}",
        agent.transcript()
    );
    let log = String::from_utf8(api.read_log(&own).await).unwrap();
    assert!(
        log.contains("key=***") && !log.contains("deploy-key-value"),
        "{log}"
    );

    let fork = ("someone/app", repo.path());
    let payload = pull_request("gitea", "opened", 3, fork, &sha);
    let forked = job_of(&api, "gitea", "pull_request", &payload).await;
    let detail = api.wait_job(&forked, finished).await;
    assert_eq!(detail["untrusted"], true, "{detail}");
    let log = String::from_utf8(api.read_log(&forked).await).unwrap();
    assert!(
        !log.contains("deploy-key-value") && !log.contains("key=***"),
        "{log}"
    );
    assert_ne!(
        detail["state"], "succeeded",
        "its config names a secret it cannot have: {log}"
    );

    let own = ("team/app", repo.path());
    let slow = commit_task(repo.path(), "echo started; sleep 120\n", "slow");
    let payload = pull_request("gitea", "synchronize", 3, own, &slow);
    let superseded = job_of(&api, "gitea", "pull_request", &payload).await;
    api.wait_job(&superseded, |d| d["state"] == "running").await;
    let slower = commit_task(repo.path(), "echo started again; sleep 120\n", "slower");
    let payload = pull_request("gitea", "synchronize", 3, own, &slower);
    let running = job_of(&api, "gitea", "pull_request", &payload).await;
    let detail = api.wait_job(&superseded, finished).await;
    assert_eq!(
        (&detail["state"], detail["cancel_reason"].as_str()),
        (
            &json!("cancelled"),
            Some(format!("superseded by {running}").as_str())
        )
    );
    let last = final_statuses(&forge, &slow).pop().unwrap();
    assert_eq!(
        last.description,
        Some(format!("Cancelled: superseded by {running}"))
    );
    api.wait_job(&running, |d| d["state"] == "running").await;
    let closed = pull_request("gitea", "closed", 3, own, &slower);
    let (status, body) = deliver(&api, "gitea", "pull_request", &closed).await;
    assert_eq!(
        (status, &body["cancelled"]),
        (StatusCode::OK, &json!([running])),
        "{body}"
    );
    assert_eq!(api.wait_job(&running, finished).await["state"], "cancelled");
    let last = final_statuses(&forge, &slower).pop().unwrap();
    assert_eq!(
        (last.state.as_str(), last.description.as_deref()),
        ("error", Some("Cancelled: pull request #3 closed"))
    );
    forge.assert_nothing_refused();
}

/// The agent's `allow_*` widening is for the repository's own code: a fork's pull request
/// with the same config is refused the Docker socket the agent allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_gets_none_of_the_agents_widening() {
    let forge = FakeForge::github("");
    forge.allow("team/app", TOKEN);
    let db = tempfile::tempdir().unwrap();
    let server = server_with(db.path(), &forge, "github", "");
    let api = Client::new(&server);
    let script = "test -S /var/run/docker.sock && echo socket\n";
    let repo = git_repository(script);
    let config = std::fs::read_to_string(repo.path().join("config.yml")).unwrap().replace(
        "command: [/bin/sh, /app/task.sh]",
        "command: [/bin/sh, /app/task.sh]\n          volumes: {mount: ['/var/run/docker.sock:/var/run/docker.sock']}",
    );
    std::fs::write(repo.path().join("config.yml"), config).unwrap();
    let sha = commit_task(repo.path(), script, "use the socket");
    let dir = agent_dir(&server, "[docker]\nallow_docker_socket = true");
    let agent = AgentProcess::start(dir.path(), &["agent"]);

    let own = job_of(
        &api,
        "github",
        "push",
        &push("github", repo.path(), &sha, "socket"),
    )
    .await;
    let detail = api.wait_job(&own, finished).await;
    assert_eq!(
        detail["state"],
        "succeeded",
        "{detail}\n{}",
        agent.transcript()
    );
    let payload = pull_request("github", "opened", 9, ("someone/app", repo.path()), &sha);
    let forked = job_of(&api, "github", "pull_request", &payload).await;
    let detail = api.wait_job(&forked, finished).await;
    assert_eq!(detail["state"], "failed", "{detail}");
    let log = String::from_utf8(api.read_log(&forked).await).unwrap();
    assert!(
        log.contains("Docker socket") && !log.contains("\nsocket\n"),
        "{log}"
    );
    let failed = || forge.statuses().iter().any(|s| s.state == "failure");
    wait_until(failed, || format!("{:?}", forge.statuses()));
    let last = forge.statuses().pop().unwrap();
    assert_eq!(
        (last.state.as_str(), last.context.as_deref()),
        ("failure", Some("dockhand/show"))
    );
    forge.assert_nothing_refused();
}

/// Statuses wait out a forge that is down and a server restart, and arrive in order; a
/// forge that refuses the token is logged once, not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_survive_an_outage_and_a_restart_in_order() {
    let forge = FakeForge::github("");
    forge.allow("team/app", TOKEN);
    let db = tempfile::tempdir().unwrap();
    let mut server = server_with(db.path(), &forge, "github", "");
    let api = Client::new(&server);
    let repo = git_repository("echo hi\n");
    let sha = git(repo.path(), &["rev-parse", "HEAD"]);
    forge.set_down(true);
    let job = job_of(
        &api,
        "github",
        "push",
        &push("github", repo.path(), &sha, "change"),
    )
    .await;
    wait_log(&server, "forge update failed");
    assert!(api.cancel(&job).await.is_success());
    wait_log(&server, "job cancelled");
    assert!(forge.statuses().is_empty());
    let address = server.address();
    server.kill();
    forge.set_down(false);
    forge.fail_next(1, Failure::Status(502));
    let config = db.path().join("server.toml").display().to_string();
    let server = Server::start_env(
        db.path(),
        &address,
        &["--config", &config],
        &[("APP_FORGE_TOKEN", TOKEN)],
    );
    let statuses = final_statuses(&forge, &sha);
    assert_eq!(
        summary(&statuses),
        [
            ("pending".to_owned(), "Queued".to_owned()),
            (
                "error".to_owned(),
                "Cancelled: cancelled through the API".to_owned()
            ),
        ]
    );
    assert!(forge.failed() >= 1, "the 502 was retried");

    drop(server);

    let rejecting = FakeForge::github("");
    rejecting.allow("team/app", "another-token-entirely");
    let db = tempfile::tempdir().unwrap();
    let server = server_with(db.path(), &rejecting, "github", "");
    let api = Client::new(&server);
    for message in ["one", "two"] {
        let payload = push("github", repo.path(), &sha, message);
        let job = job_of(&api, "github", "push", &payload).await;
        assert!(api.cancel(&job).await.is_success());
    }
    let both = || rejecting.refused().len() >= 2;
    wait_until(both, || format!("{:?}", rejecting.refused()));
    std::thread::sleep(Duration::from_secs(3));
    let refused = rejecting.refused();
    assert!(
        refused.len() <= 4 && refused.iter().all(|r| r.status == 401),
        "{refused:?}"
    );
    let count = refused.len();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(rejecting.refused().len(), count, "refusals are not retried");
    let warned = server
        .log()
        .iter()
        .filter(|l| l.contains("refused a commit status"))
        .count();
    assert_eq!(warned, 1, "{:?}", server.log());
}

/// Waits for the server to log a line holding `text`.
fn wait_log(server: &Server, text: &str) {
    let logged = || server.log().iter().any(|l| l.contains(text));
    wait_until(logged, || format!("no {text:?} in {:?}", server.log()));
}

/// Polls `done` until it holds; after [`WAIT`], panics with what `got` says.
fn wait_until(done: impl Fn() -> bool, got: impl Fn() -> String) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "{}", got());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Payload details without an agent: events, branches, forks, `[skip ci]`, a closed pull
/// request with nothing running, and a field that would reach git refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_filtered_and_checked_by_the_repository_settings() {
    let forge = FakeForge::gitea();
    let db = tempfile::tempdir().unwrap();
    let server = server_with(
        db.path(),
        &forge,
        "gitea",
        "branches = [\"main\"]\nforks = \"off\"",
    );
    let api = Client::new(&server);
    let repo = git_repository("echo hi\n");
    let sha = git(repo.path(), &["rev-parse", "HEAD"]);
    let ignored = |body: &Value| body["ignored"].as_str().unwrap_or_default().to_owned();

    let (status, body) = deliver(
        &api,
        "gitea",
        "push",
        &push("gitea", repo.path(), &sha, "docs [skip ci]"),
    )
    .await;
    assert_eq!(
        (status, ignored(&body).as_str()),
        (StatusCode::OK, "[skip ci]")
    );
    let mut other = push("gitea", repo.path(), &sha, "work");
    other["ref"] = json!("refs/heads/feature");
    let (_, body) = deliver(&api, "gitea", "push", &other).await;
    assert_eq!(ignored(&body), "branch feature");
    let mut tag = push("gitea", repo.path(), &sha, "v1");
    tag["ref"] = json!("refs/tags/v1");
    let (_, body) = deliver(&api, "gitea", "push", &tag).await;
    assert_eq!(ignored(&body), "tag events");
    let fork = pull_request("gitea", "opened", 5, ("someone/app", repo.path()), &sha);
    let (_, body) = deliver(&api, "gitea", "pull_request", &fork).await;
    assert_eq!(ignored(&body), "a pull request from the fork someone/app");
    let mut bad = pull_request("gitea", "opened", 5, ("team/app", repo.path()), &sha);
    bad["pull_request"]["head"]["sha"] = json!("--upload-pack=touch /tmp/pwned");
    let (status, body) = deliver(&api, "gitea", "pull_request", &bad).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("pull_request.head.sha")
        ),
        "{body}"
    );
    let mut gone = pull_request("gitea", "opened", 5, ("team/app", repo.path()), &sha);
    gone["pull_request"]["head"]["repo"] = Value::Null;
    let (_, body) = deliver(&api, "gitea", "pull_request", &gone).await;
    assert_eq!(
        ignored(&body),
        "a pull request whose head repository is gone"
    );
    let (status, body) = deliver(&api, "gitea", "pull_request", &json!({"action": "opened"})).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("."))
    );
    let closed = pull_request("gitea", "closed", 5, ("team/app", repo.path()), &sha);
    let (status, body) = deliver(&api, "gitea", "pull_request", &closed).await;
    assert_eq!(
        (status, body["cancelled"].clone()),
        (StatusCode::OK, json!([]))
    );
    let (_, jobs) = api.get("/api/v1/jobs").await;
    assert_eq!(jobs, json!([]), "none of these made a job");
    let (status, _) = deliver(&api, "github", "ping", &fixture("github", "ping")).await;
    assert_eq!(status, StatusCode::OK);
}
