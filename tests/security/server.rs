//! The job server's door (semi-trusted callers, the README's security model): every field of a job is
//! checked at submit, webhook secrets are long enough to mean something and a delivery
//! counts once, no client can hold a connection open for free, and what the server sends
//! back is shown on a terminal with its control characters escaped.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::support::server::{ADMIN, Client, REGISTRATION, Server};

#[tokio::test]
async fn every_field_of_a_submitted_job_is_checked() {
    let db = tempfile::tempdir().unwrap();
    let server = Server::start(db.path(), &[]);
    let api = Client::new(&server);
    let git = json!({"git": "https://git.example.com/x.git"});
    for (job, field) in [
        (json!({"source": git, "timeout": "forever"}), "timeout"),
        (json!({"source": git, "config": "/etc/passwd"}), "config"),
        (json!({"source": git, "config": "../../x.yml"}), "config"),
        (json!({"source": git, "tasks": ["\u{1b}[2J"]}), "tasks[0]"),
        (json!({"source": git, "env": {"A B": "x"}}), "env.A B"),
        (json!({"source": git, "labels": [""]}), "labels[0]"),
        (json!({"source": git, "timeout": 30}), "timeout"),
        (json!({"source": git, "priority": 1}), "priority"),
        (json!({"source": {"path": "/srv/x"}}), "source.path"),
    ] {
        let (status, answer) = api.post("/api/v1/jobs", Some(ADMIN), job.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{job}: {answer}");
        assert_eq!(answer["field"], field, "{job}: {answer}");
    }
    assert_eq!(api.get("/api/v1/jobs").await.1, json!([]));
}

#[test]
fn a_webhook_secret_under_16_bytes_stops_the_server() {
    let db = tempfile::tempdir().unwrap();
    for secret in ["", "short-secret"] {
        let output = Command::new(env!("CARGO_BIN_EXE_dockhand"))
            .args(["server", "--listen", "127.0.0.1:0", "--database"])
            .arg(db.path().join("jobs.db"))
            .args(["--webhook-secret", secret])
            .env("DOCKHAND_REGISTRATION_TOKEN", REGISTRATION)
            .env("DOCKHAND_ADMIN_TOKEN", ADMIN)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(200), "{secret:?}: {stderr}");
        assert!(
            stderr.contains("--webhook-secret") && stderr.contains("16 bytes"),
            "{stderr}"
        );
    }
}

#[tokio::test]
async fn a_replayed_delivery_answers_the_first_job() {
    let db = tempfile::tempdir().unwrap();
    let secret = "webhook-secret-for-replays";
    let server = Server::start(
        db.path(),
        &["--webhook-secret", secret, "--build-repo", "team/app"],
    );
    let api = Client::new(&server);
    let body = json!({"ref": "refs/heads/main", "after": "0123456789abcdef0123456789abcdef01234567",
        "repository": {"full_name": "team/app", "clone_url": "https://git.example.com/team/app.git"}})
    .to_string();
    let (status, first) = api
        .deliver("github", "push", Some("d-1"), &body, Some(secret))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    for (forge, delivery) in [("github", "d-1"), ("github", "d-2-forged"), ("github", "")] {
        let delivery = (!delivery.is_empty()).then_some(delivery);
        let (status, again) = api
            .deliver(forge, "push", delivery, &body, Some(secret))
            .await;
        assert_eq!(status, StatusCode::OK, "{delivery:?}: {again}");
        assert_eq!(again["job_id"], first["job_id"], "{delivery:?}");
        assert_eq!(again["replayed"], true);
    }
    assert_eq!(api.get("/api/v1/jobs").await.1.as_array().unwrap().len(), 1);
}

/// Reads until the server closes the connection; what it sent.
fn read_to_close(stream: &mut TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut seen = Vec::new();
    let mut buffer = [0; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => seen.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!(
                "the server kept the connection open: {e}; it sent {:?}",
                String::from_utf8_lossy(&seen)
            ),
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[test]
fn slow_and_oversized_requests_are_cut_off() {
    let db = tempfile::tempdir().unwrap();
    let server = Server::start(
        db.path(),
        &["--header-timeout", "1s", "--body-timeout", "1s"],
    );
    let connect = || TcpStream::connect(server.address()).unwrap();

    let mut partial = connect();
    partial
        .write_all(b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    read_to_close(&mut partial);

    let mut idle = connect();
    read_to_close(&mut idle);

    let mut huge = connect();
    huge.write_all(
        format!("PUT /api/v1/jobs/x/log?offset=0 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\nContent-Length: {}\r\n\r\nx", 2u64 << 30).as_bytes(),
    )
    .unwrap();
    let answer = read_to_close(&mut huge);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    let mut trickle = connect();
    trickle
        .write_all(b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        .unwrap();
    let answer = read_to_close(&mut trickle);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}

#[test]
fn connections_beyond_the_limit_wait_for_a_free_one() {
    let db = tempfile::tempdir().unwrap();
    let server = Server::start(db.path(), &["--max-connections", "2"]);
    let connect = || TcpStream::connect(server.address()).unwrap();
    let held: Vec<TcpStream> = (0..2).map(|_| connect()).collect();
    let mut waiting = connect();
    waiting
        .write_all(b"GET /api/v1/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    waiting
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut byte = [0; 1];
    let early = waiting.read(&mut byte);
    assert!(
        matches!(&early, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "served beyond the limit: {early:?}"
    );
    drop(held);
    let answer = read_to_close(&mut waiting);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
}

#[tokio::test]
async fn job_data_reaches_the_terminal_escaped() {
    let db = tempfile::tempdir().unwrap();
    let secret = "webhook-secret-for-terminals";
    let server = Server::start(
        db.path(),
        &["--webhook-secret", secret, "--build-repo", "gitea:team/app"],
    );
    let api = Client::new(&server);
    let body =
        json!({"ref": "refs/heads/main", "after": "0123456789abcdef0123456789abcdef01234567",
        "repository": {"full_name": "team/app",
                       "clone_url": "https://git.example.com/\u{202e}txt.exe"}})
        .to_string();
    let (status, answer) = api
        .deliver("gitea", "push", Some("t-1"), &body, Some(secret))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let dockhand = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_dockhand"))
            .args(args)
            .args(["--server", &server.url])
            .env("DOCKHAND_ADMIN_TOKEN", ADMIN)
            .output()
            .unwrap()
    };
    let listed = String::from_utf8(dockhand(&["jobs"]).stdout).unwrap();
    assert!(
        listed.contains("git.example.com/\\u{202e}txt.exe") && !listed.contains('\u{202e}'),
        "{listed}"
    );
    // The server quotes what it refuses with escapes, and the client escapes whatever
    // comes back: no control character from a job reaches the terminal.
    let refused = dockhand(&[
        "submit",
        "--git",
        "https://git.example.com/x.git",
        "--timeout",
        "\u{1b}]0;owned\u{7}\u{1b}[2Jforever",
    ]);
    let stderr = String::from_utf8(refused.stderr).unwrap();
    assert!(
        stderr.contains("owned") && !stderr.contains('\u{1b}'),
        "{stderr}"
    );
}
