//! Git URLs, references and commits from whoever holds the admin token or the webhook
//! secret are data, never options or commands (the README's security model): each of
//! these once ran `--upload-pack=<command>` on the agent. They are refused at the door (422 naming the
//! field) and again by the agent, which trusts no server to have checked.

use std::path::Path;
use std::process::Command;

use reqwest::StatusCode;
use serde_json::json;

use crate::support::agent::{AgentProcess, git_repository};
use crate::support::server::{ADMIN, Client, Server};

fn upload_pack(marker: &Path) -> String {
    format!("--upload-pack=touch {}; git-upload-pack", marker.display())
}

fn submit_cli(server: &Server, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dockhand"))
        .arg("submit")
        .args(args)
        .args(["--server", &server.url])
        .env("DOCKHAND_ADMIN_TOKEN", ADMIN)
        .output()
        .unwrap()
}

fn agent_toml(dir: &Path, server: &Server, allow_local: bool) {
    std::fs::write(
        dir.join("agent.toml"),
        format!(
            "[agent]\nshutdown_grace = \"2s\"\n[[source]]\nkind = \"http\"\nurl = \"{}\"\nallow_local_sources = {allow_local}\n",
            server.url
        ),
    )
    .unwrap();
}

fn ended(job: &serde_json::Value) -> bool {
    !["queued", "offered", "running"].contains(&job["state"].as_str().unwrap_or(""))
}

#[tokio::test]
async fn options_in_git_fields_are_refused_at_submit_and_webhook() {
    let db = tempfile::tempdir().unwrap();
    let secret = "webhook-secret-for-git-tests";
    let server = Server::start(
        db.path(),
        &["--webhook-secret", secret, "--build-repo", "team/app"],
    );
    let api = Client::new(&server);
    let marker = db.path().join("pwned");
    let attack = upload_pack(&marker);
    for (args, field) in [
        (vec![format!("--git={attack}")], "source.git"),
        (
            vec![
                "--git=https://git.example.com/x.git".to_owned(),
                format!("--ref={attack}"),
            ],
            "source.ref",
        ),
        (
            vec![
                "--git=https://git.example.com/x.git".to_owned(),
                format!("--commit={attack}"),
            ],
            "source.commit",
        ),
        (
            vec!["--git=ext::sh -c touch% /tmp/x".to_owned()],
            "source.git",
        ),
        (vec!["--git=file:///srv/repo".to_owned()], "source.git"),
        (vec!["--path=/srv/repo".to_owned()], "source.path"),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = submit_cli(&server, &args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} was accepted");
        assert!(
            stderr.contains("422") && stderr.contains(&format!("{field}:")),
            "{args:?}: {stderr}"
        );
    }
    let push = |clone_url: &str, reference: &str, after: &str| {
        json!({"ref": reference, "after": after,
               "repository": {"full_name": "team/app", "clone_url": clone_url}})
        .to_string()
    };
    let (url, commit) = (
        "https://git.example.com/team/app.git",
        "0123456789abcdef0123456789abcdef01234567",
    );
    for (body, field) in [
        (push(url, "refs/heads/main", &attack), "after"),
        (push(url, &format!("refs/heads/{attack}"), commit), "ref"),
        (
            push(&attack, "refs/heads/main", commit),
            "repository.clone_url",
        ),
    ] {
        let (status, answer) = api
            .deliver("github", "push", None, &body, Some(secret))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
        assert_eq!(answer["field"], field, "{answer}");
    }
    assert_eq!(
        api.get("/api/v1/jobs").await.1,
        json!([]),
        "no job was made"
    );
    assert!(!marker.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_checks_again_what_the_server_let_through() {
    let db = tempfile::tempdir().unwrap();
    let server = Server::start(db.path(), &["--allow-local-sources", "--claim-wait", "1s"]);
    let api = Client::new(&server);
    let repo = git_repository("echo ran\n");
    let marker = db.path().join("pwned");
    let git = format!("file://{}", repo.path().display());
    // Held back by a label no agent has while the database is changed under the server,
    // as a compromised or older server would hand it out.
    let (status, body) = api
        .post(
            "/api/v1/jobs",
            Some(ADMIN),
            json!({"source": {"git": git, "ref": "main"}, "labels": ["held"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let tampered = body["job_id"].as_str().unwrap().to_owned();
    let pool =
        sqlx::SqlitePool::connect(&format!("sqlite://{}", db.path().join("jobs.db").display()))
            .await
            .unwrap();
    sqlx::query(
        "UPDATE jobs SET labels = '[]',
             spec = json_set(spec, '$.source.ref', ?, '$.labels', json('[]'))
         WHERE id = ?",
    )
    .bind(upload_pack(&marker))
    .bind(&tampered)
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    let dir = tempfile::tempdir().unwrap();
    agent_toml(dir.path(), &server, true);
    let agent = AgentProcess::start(dir.path(), &["agent"]);
    let detail = api.wait_job(&tampered, ended).await;
    assert_eq!(detail["state"], "error", "{detail}\n{}", agent.transcript());
    let log = String::from_utf8(api.read_log(&tampered).await).unwrap();
    assert!(log.contains("source.ref:"), "{log}");
    assert!(!marker.exists(), "the agent ran the command");
    drop(agent);

    let dir = tempfile::tempdir().unwrap();
    agent_toml(dir.path(), &server, false);
    let agent = AgentProcess::start(dir.path(), &["agent"]);
    let (_, body) = api
        .post(
            "/api/v1/jobs",
            Some(ADMIN),
            json!({"source": {"path": repo.path()}}),
        )
        .await;
    let local = body["job_id"].as_str().unwrap().to_owned();
    let detail = api.wait_job(&local, ended).await;
    assert_eq!(
        detail["state"],
        "error",
        "a job the agent refuses is an error at once, never lost: {detail}\n{}",
        agent.transcript()
    );
    let log = String::from_utf8(api.read_log(&local).await).unwrap();
    assert!(log.contains("allow_local_sources"), "{log}");
    assert!(
        agent.started().is_empty(),
        "nothing ran: {}",
        agent.transcript()
    );
}
