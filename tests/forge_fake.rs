//! The test stand-ins for the forges checked on their own (no Docker): the fake GitHub/Gitea
//! API accepts what the real one accepts, refuses what it refuses with the same answers, and
//! fails on demand; the webhook fixtures load and are signed the way each forge signs them.

mod support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::forge::{Failure, FakeForge, Status};
use support::server::{Client, Server};
use support::webhooks;

const SHA: &str = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";
const WAIT: Duration = Duration::from_secs(10);

/// A status request shaped as a careful GitHub client sends it; tests strip what they test.
fn github_post(forge: &FakeForge, repo: &str, sha: &str, body: &Value) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .post(format!("{}/repos/{repo}/statuses/{sha}", forge.api_url()))
        .header("User-Agent", "dockhand-tests")
        .header("Accept", "application/vnd.github+json")
        .header("X-GitHub-Api-Version", "2022-11-28")
        .bearer_auth("gh-token")
        .json(body)
}

async fn answer(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn github_records_a_valid_status_and_answers_like_github() {
    let forge = FakeForge::github("/api/v3");
    assert!(forge.api_url().ends_with("/api/v3"));
    forge.allow("Codertocat/Hello-World", "gh-token");
    let body = json!({"state": "pending", "target_url": "http://127.0.0.1:1/jobs/7",
                      "description": "queued", "context": "dockhand/test", "unknown": [1]});
    let (status, created) = answer(github_post(&forge, "Codertocat/Hello-World", SHA, &body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["state"], "pending");
    assert_eq!(created["context"], "dockhand/test");
    assert!(
        created["id"].is_u64() && created["created_at"].is_string(),
        "{created}"
    );

    let minimal = reqwest::Client::new()
        .post(format!(
            "{}/repos/codertocat/hello-world/statuses/{SHA}",
            forge.api_url()
        ))
        .header("User-Agent", "dockhand-tests")
        .header("Authorization", "token gh-token")
        .json(&json!({"state": "success", "description": null}));
    let (status, created) = answer(minimal).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["context"], "default", "GitHub's default context");

    assert_eq!(
        forge.wait_for_statuses(2, WAIT),
        vec![
            Status {
                repo: "Codertocat/Hello-World".into(),
                sha: SHA.into(),
                state: "pending".into(),
                target_url: Some("http://127.0.0.1:1/jobs/7".into()),
                description: Some("queued".into()),
                context: Some("dockhand/test".into()),
            },
            Status {
                repo: "codertocat/hello-world".into(),
                sha: SHA.into(),
                state: "success".into(),
                target_url: None,
                description: None,
                context: None,
            },
        ]
    );
    forge.assert_nothing_refused();
}

#[tokio::test]
async fn github_refuses_what_github_refuses() {
    let forge = FakeForge::github("");
    forge.allow("team/app", "gh-token");
    forge.allow("team/other", "other-token");
    let ok = json!({"state": "success"});
    let post = |repo: &str, sha: &str, body: &Value| github_post(&forge, repo, sha, body);
    let url = format!("{}/repos/team/app/statuses/{SHA}", forge.api_url());
    let bare = || {
        reqwest::Client::new()
            .post(&url)
            .header("User-Agent", "t")
            .json(&ok)
    };

    let cases: Vec<(&str, reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (
            "no token",
            bare(),
            StatusCode::UNAUTHORIZED,
            "Requires authentication",
        ),
        (
            "unknown token",
            bare().bearer_auth("nope"),
            StatusCode::UNAUTHORIZED,
            "Bad credentials",
        ),
        (
            "basic auth",
            bare().basic_auth("u", Some("p")),
            StatusCode::UNAUTHORIZED,
            "Requires authentication",
        ),
        (
            "unknown repository",
            post("team/nope", SHA, &ok),
            StatusCode::NOT_FOUND,
            "Not Found",
        ),
        (
            "another repository's token",
            post("team/other", SHA, &ok),
            StatusCode::NOT_FOUND,
            "Not Found",
        ),
        (
            "short sha",
            post("team/app", "6113728", &ok),
            StatusCode::UNPROCESSABLE_ENTITY,
            "No commit found for SHA: 6113728",
        ),
        (
            "a branch, not a sha",
            post("team/app", "main", &ok),
            StatusCode::UNPROCESSABLE_ENTITY,
            "No commit found for SHA: main",
        ),
        (
            "no state",
            post("team/app", SHA, &json!({"context": "c"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid request.\n\n\"state\" wasn't supplied.",
        ),
        (
            "a Gitea state",
            post("team/app", SHA, &json!({"state": "warning"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "Validation Failed",
        ),
        (
            "a made-up state",
            post("team/app", SHA, &json!({"state": "cancelled"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "Validation Failed",
        ),
        (
            "a number for a description",
            post(
                "team/app",
                SHA,
                &json!({"state": "error", "description": 5}),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid request.\n\nFor 'properties/description', 5 is not a string or null.",
        ),
        (
            "a null context",
            post("team/app", SHA, &json!({"state": "error", "context": null})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid request.\n\nFor 'properties/context', null is not a string.",
        ),
        (
            "141 characters of description",
            post(
                "team/app",
                SHA,
                &json!({"state": "failure", "description": "é".repeat(141)}),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "Validation Failed",
        ),
        (
            "not JSON",
            bare().bearer_auth("gh-token").body("state=success"),
            StatusCode::BAD_REQUEST,
            "Problems parsing JSON",
        ),
        (
            "a JSON array",
            post("team/app", SHA, &json!(["success"])),
            StatusCode::BAD_REQUEST,
            "Body should be a JSON object",
        ),
        (
            "an unknown API version",
            post("team/app", SHA, &ok).header("X-GitHub-Api-Version", "2020-01-01"),
            StatusCode::BAD_REQUEST,
            "API version \"2020-01-01\" is not supported.",
        ),
        (
            "GET",
            reqwest::Client::new()
                .get(&url)
                .header("User-Agent", "t")
                .bearer_auth("gh-token"),
            StatusCode::NOT_FOUND,
            "Not Found",
        ),
        (
            "an Enterprise path on api.github.com",
            reqwest::Client::new()
                .post(format!(
                    "{}/api/v3/repos/team/app/statuses/{SHA}",
                    forge.url()
                ))
                .header("User-Agent", "t")
                .bearer_auth("gh-token")
                .json(&ok),
            StatusCode::NOT_FOUND,
            "Not Found",
        ),
    ];
    let count = cases.len();
    for (what, request, expected, message) in cases {
        let (status, body) = answer(request).await;
        assert_eq!(status, expected, "{what}: {body}");
        assert_eq!(body["message"], message, "{what}: {body}");
        assert!(body["documentation_url"].is_string(), "{what}: {body}");
    }
    let (status, body) = answer(
        reqwest::Client::new()
            .post(&url)
            .bearer_auth("gh-token")
            .json(&ok),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "no User-Agent: {body}");
    assert!(body.as_str().unwrap().contains("User-Agent"), "{body}");

    let (status, body) = answer(post("team/app", SHA, &json!({"state": "cancelled"}))).await;
    assert_eq!(
        body["errors"],
        json!([{"resource": "Status", "code": "custom", "field": "state",
                "message": "state is not included in the list"}]),
        "{status}"
    );
    let (status, body) = answer(post(
        "team/app",
        SHA,
        &json!({"state": "failure", "description": "é".repeat(140)}),
    ))
    .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "140 characters are allowed: {body}"
    );

    assert_eq!(forge.refused().len(), count + 2);
    assert_eq!(forge.statuses().len(), 1, "{:#?}", forge.statuses());
}

#[tokio::test]
async fn gitea_takes_its_own_states_and_answers_in_its_own_shape() {
    let forge = FakeForge::gitea();
    assert!(forge.api_url().ends_with("/api/v1"));
    forge.allow("org/repo", "gitea-token");
    let url = format!("{}/repos/org/repo/statuses/{SHA}", forge.api_url());
    let http = reqwest::Client::new();

    let long = "x".repeat(300);
    let body = json!({"state": "warning", "context": "dockhand/test", "description": long});
    let (status, created) = answer(
        http.post(&url)
            .header("Authorization", "token gitea-token")
            .json(&body),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(
        created["status"], "warning",
        "Gitea names the state `status`"
    );
    assert_eq!(created["target_url"], "");
    let (status, _) = answer(
        http.post(&url)
            .bearer_auth("gitea-token")
            .json(&json!({"state": "success"})),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "no User-Agent needed, Bearer accepted"
    );

    let cases: Vec<(&str, reqwest::RequestBuilder, StatusCode)> = vec![
        (
            "no token",
            http.post(&url).json(&body),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "unknown token",
            http.post(&url).bearer_auth("x").json(&body),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "a GitHub-only path",
            http.post(format!("{}/repos/org/repo/statuses/{SHA}", forge.url()))
                .bearer_auth("gitea-token")
                .json(&body),
            StatusCode::NOT_FOUND,
        ),
        (
            "unknown repository",
            http.post(url.replace("org/repo", "org/nope"))
                .bearer_auth("gitea-token")
                .json(&body),
            StatusCode::NOT_FOUND,
        ),
        (
            "a form body",
            http.post(&url)
                .bearer_auth("gitea-token")
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body("state=success"),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "a made-up state",
            http.post(&url)
                .bearer_auth("gitea-token")
                .json(&json!({"state": "cancelled"})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "PUT",
            http.put(&url).bearer_auth("gitea-token").json(&body),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ];
    let count = cases.len();
    for (what, request, expected) in cases {
        let (status, answer) = answer(request).await;
        assert_eq!(status, expected, "{what}: {answer}");
        assert!(
            answer["message"].is_string() && answer["url"].is_string(),
            "{what}: {answer}"
        );
    }
    assert_eq!(forge.refused().len(), count);
    let states: Vec<_> = forge.statuses().into_iter().map(|s| s.state).collect();
    assert_eq!(states, ["warning", "success"]);
}

#[tokio::test]
async fn injected_failures_come_first_then_the_forge_recovers() {
    let forge = FakeForge::github("");
    forge.allow("team/app", "gh-token");
    let ok = json!({"state": "success"});
    forge.fail_next(2, Failure::Status(500));
    forge.fail_next(1, Failure::Status(401));
    for expected in [500, 500, 401] {
        let (status, body) = answer(github_post(&forge, "team/app", SHA, &ok)).await;
        assert_eq!(status.as_u16(), expected, "{body}");
        assert!(body["message"].is_string(), "{body}");
    }
    let (status, body) = answer(github_post(&forge, "team/app", "bad", &ok)).await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "checks come before failures: {body}"
    );

    forge.fail_next(1, Failure::Hang);
    let started = Instant::now();
    let hung = github_post(&forge, "team/app", SHA, &ok)
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(
        hung.is_err_and(|e| e.is_timeout()),
        "a hang ends only by the client's timeout"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(forge.failed(), 4);
    assert!(forge.statuses().is_empty());

    forge.set_down(true);
    let deadline = Instant::now() + WAIT;
    loop {
        match github_post(&forge, "team/app", SHA, &ok).send().await {
            Err(e) if e.is_connect() => break,
            other => assert!(Instant::now() < deadline, "still up: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    forge.set_down(false);
    loop {
        match github_post(&forge, "team/app", SHA, &ok).send().await {
            Ok(response) => {
                assert_eq!(response.status(), StatusCode::CREATED);
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "not up again: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(forge.wait_for_statuses(1, WAIT).len(), 1);
    assert_eq!(forge.refused().len(), 1);
}

#[test]
#[should_panic(expected = "1 statuses not posted within")]
fn waiting_for_statuses_ends_at_its_deadline() {
    let forge = FakeForge::gitea();
    forge.wait_for_statuses(1, Duration::from_millis(100));
}

#[tokio::test]
async fn notification_hooks_are_recorded_and_slack_ones_checked() {
    let forge = FakeForge::github("");
    let http = reqwest::Client::new();
    let post = |name: &str, body: &Value| http.post(forge.hook_url(name)).json(body);

    let (status, _) = answer(post("team", &json!({"job": "j1", "status": "failed"}))).await;
    assert_eq!(status, StatusCode::OK);
    let slack = "slack/T000/B000/XXXX";
    let (status, body) = answer(post(slack, &json!({"text": "nightly failed"}))).await;
    assert_eq!((status, body), (StatusCode::OK, json!("ok")));
    let (status, _) = answer(post(slack, &json!({"blocks": [{"type": "section"}]}))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = answer(post(slack, &json!({"job": "j1"}))).await;
    assert_eq!((status, body), (StatusCode::BAD_REQUEST, json!("no_text")));
    let (status, body) = answer(post(slack, &json!({"text": 5}))).await;
    assert_eq!(
        (status, body),
        (StatusCode::BAD_REQUEST, json!("invalid_payload"))
    );
    let raw = http
        .post(forge.hook_url(slack))
        .header("Content-Type", "application/json")
        .body("{text: 'x'}");
    assert_eq!(
        answer(raw).await,
        (StatusCode::BAD_REQUEST, json!("invalid_payload"))
    );

    forge.fail_next_hooks(1, Failure::Status(503));
    let (status, _) = answer(post("team", &json!({"job": "j2"}))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _) = answer(post("team", &json!({"job": "j2"}))).await;
    assert_eq!(status, StatusCode::OK);

    assert_eq!(
        forge.wait_for_hooks("team", 2, WAIT),
        [
            json!({"job": "j1", "status": "failed"}),
            json!({"job": "j2"})
        ]
    );
    assert_eq!(forge.hooks(slack).len(), 2);
    assert_eq!(forge.refused().len(), 3);
}

#[test]
fn fixtures_load_and_are_signed_as_each_forge_signs() {
    for (forge, name, action) in [
        ("github", "pull_request/opened", "opened"),
        ("github", "pull_request/synchronize", "synchronize"),
        ("github", "pull_request/reopened", "reopened"),
        ("github", "pull_request/closed", "closed"),
        ("gitea", "pull_request/opened", "opened"),
        ("gitea", "pull_request/synchronized", "synchronized"),
        ("gitea", "pull_request/reopened", "reopened"),
        ("gitea", "pull_request/closed", "closed"),
    ] {
        let payload = webhooks::fixture(forge, name);
        assert_eq!(payload["action"], action, "{forge} {name}");
        let sha = payload["pull_request"]["head"]["sha"].as_str().unwrap();
        assert_eq!(sha.len(), 40, "{forge} {name}");
    }
    for (forge, name, git_ref) in [
        ("github", "push/branch", "refs/heads/master"),
        ("github", "push/tag-deleted", "refs/tags/simple-tag"),
        ("gitea", "push/branch", "refs/heads/main"),
    ] {
        assert_eq!(
            webhooks::fixture(forge, name)["ref"],
            git_ref,
            "{forge} {name}"
        );
    }
    assert!(webhooks::fixture("github", "ping")["zen"].is_string());

    // GitHub's documented example: secret "It's a Secret to Everybody", body "Hello, World!".
    let expected = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    let github = webhooks::sign(
        "github",
        "push",
        "It's a Secret to Everybody",
        b"Hello, World!",
    );
    let find = |headers: &[(String, String)], name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        find(&github, "X-Hub-Signature-256"),
        Some(format!("sha256={expected}"))
    );
    assert_eq!(find(&github, "X-GitHub-Event").as_deref(), Some("push"));
    let delivery = find(&github, "X-GitHub-Delivery").unwrap();
    assert_eq!(delivery.len(), 36, "a GUID: {delivery}");
    assert_ne!(
        find(
            &webhooks::sign("github", "push", "s", b""),
            "X-GitHub-Delivery"
        )
        .unwrap(),
        delivery
    );

    let body =
        serde_json::to_vec(&webhooks::fixture("gitea", "pull_request/synchronized")).unwrap();
    let gitea = webhooks::sign("gitea", "pull_request", "It's a Secret to Everybody", &body);
    let signature = webhooks::hmac_sha256_hex("It's a Secret to Everybody", &body);
    assert_eq!(find(&gitea, "X-Gitea-Signature"), Some(signature.clone()));
    assert_eq!(
        find(&gitea, "X-Hub-Signature-256"),
        Some(format!("sha256={signature}"))
    );
    assert_eq!(
        find(&gitea, "X-Gitea-Event").as_deref(),
        Some("pull_request")
    );
    assert_eq!(
        find(&gitea, "X-Gitea-Event-Type").as_deref(),
        Some("pull_request_sync")
    );
    assert_eq!(
        find(&gitea, "X-GitHub-Event").as_deref(),
        Some("pull_request")
    );
    assert_eq!(
        find(&gitea, "X-Gitea-Delivery"),
        find(&gitea, "X-GitHub-Delivery")
    );
    let unsigned = webhooks::headers("gitea", "push", None, None, b"{}");
    assert_eq!(find(&unsigned, "X-Gitea-Signature").as_deref(), Some(""));
    assert_eq!(find(&unsigned, "X-Gitea-Delivery"), None);
}

#[tokio::test]
async fn the_server_takes_the_real_push_payloads_signed_as_the_forges_sign_them() {
    let db = tempfile::tempdir().unwrap();
    let secret = "hook-secret-of-the-tests";
    let server = Server::start(
        db.path(),
        &[
            "--webhook-secret",
            secret,
            "--build-repo",
            "Codertocat/Hello-World=test",
            "--build-repo",
            "gitea:Test-CI/multi-line-secrets=test",
        ],
    );
    let api = Client::new(&server);
    for forge in ["github", "gitea"] {
        let mut payload = webhooks::fixture(forge, "push/branch");
        // As the end-to-end tests do: the clone URL points where the test can serve from
        // (the Gitea capture's own http://127.0.0.1:3000 is not a URL dockhand fetches).
        let full_name = payload["repository"]["full_name"]
            .as_str()
            .unwrap()
            .to_owned();
        payload["repository"]["clone_url"] =
            json!(format!("https://git.example.com/{full_name}.git"));
        let body = payload.to_string();
        let delivery = webhooks::delivery_id();
        let (status, job) = api
            .deliver(forge, "push", Some(&delivery), &body, Some(secret))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{forge}: {job}");
        let (_, detail) = api
            .get(&format!("/api/v1/jobs/{}", job["job_id"].as_str().unwrap()))
            .await;
        assert_eq!(
            detail["source"]["commit"], payload["after"],
            "{forge}: {detail}"
        );
        assert_eq!(
            detail["source"]["git"], payload["repository"]["clone_url"],
            "{forge}: {detail}"
        );
    }
}
