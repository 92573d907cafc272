//! The job server (the real binary) on 127.0.0.1:0 for tests, and a client for its API.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const REGISTRATION: &str = "registration-token-for-tests";
pub const ADMIN: &str = "admin-token-for-the-tests";

pub struct Server {
    child: Child,
    pub url: String,
    /// Its stderr, line by line, from the listening line on.
    log: Arc<Mutex<Vec<String>>>,
    /// What `--database` said.
    database: String,
}

/// The server's `--database` for the directory `db`: a SQLite file in it, or with
/// `DOCKHAND_TEST_DATABASE=postgres` a fresh PostgreSQL database, its URL kept in `db` so
/// that a restart finds the same one.
pub fn database(db: &Path) -> String {
    match std::env::var("DOCKHAND_TEST_DATABASE").as_deref() {
        Ok("postgres") => {
            let kept = db.join("postgres-url");
            std::fs::read_to_string(&kept).unwrap_or_else(|_| {
                let url = super::postgres::fresh_database();
                std::fs::write(&kept, &url).unwrap();
                url
            })
        }
        Ok("sqlite") | Err(_) => db.join("jobs.db").display().to_string(),
        Ok(other) => panic!("DOCKHAND_TEST_DATABASE is `{other}`: say sqlite or postgres"),
    }
}

impl Server {
    pub fn start(db: &Path, extra: &[&str]) -> Server {
        Self::start_at(db, "127.0.0.1:0", extra)
    }

    /// On a fresh PostgreSQL database, whatever `DOCKHAND_TEST_DATABASE` says.
    pub fn start_postgres(extra: &[&str]) -> Server {
        Self::spawn(
            &super::postgres::fresh_database(),
            "127.0.0.1:0",
            extra,
            &[],
        )
    }

    /// Another replica of `replica`'s server: the same PostgreSQL database.
    pub fn replica(replica: &Server, extra: &[&str]) -> Server {
        Self::replica_at(replica, "127.0.0.1:0", extra)
    }

    /// As [`Server::replica`], on a given address: a replica restarted where agents expect it.
    pub fn replica_at(replica: &Server, listen: &str, extra: &[&str]) -> Server {
        Self::spawn(&replica.database, listen, extra, &[])
    }

    /// On a given address: a restart where the agents expect it.
    pub fn start_at(db: &Path, listen: &str, extra: &[&str]) -> Server {
        Self::spawn(&database(db), listen, extra, &[])
    }

    /// With more environment variables (API tokens a server.toml names).
    pub fn start_env(db: &Path, listen: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
        Self::spawn(&database(db), listen, extra, env)
    }

    fn spawn(database: &str, listen: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dockhand"))
            .args(["server", "--listen", listen, "--database"])
            .arg(database)
            .args(extra)
            .envs(env.iter().copied())
            .env("DOCKHAND_REGISTRATION_TOKEN", REGISTRATION)
            .env("DOCKHAND_ADMIN_TOKEN", ADMIN)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        let Some(url) = line.split_whitespace().find(|w| w.starts_with("http://")) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no address in {line:?}");
        };
        let url = url.to_owned();
        let log = Arc::new(Mutex::new(vec![line.trim_end().to_owned()]));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Server {
            child,
            url,
            log,
            database: database.to_owned(),
        }
    }

    /// What it wrote to stderr so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        self.url.trim_start_matches("http://").to_owned()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A directory holding the agent.toml of an agent polling `server` (local sources allowed,
/// results not kept), with `extra` settings before its source.
pub fn agent_dir(server: &Server, extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("agent.toml"),
        format!(
            "[agent]\nshutdown_grace = \"2s\"\nkeep_results = 0\n{extra}\n[[source]]\nkind = \"http\"\nurl = \"{}\"\nallow_local_sources = true\n",
            server.url
        ),
    )
    .unwrap();
    dir
}

/// SHA-256 as lowercase hex, as the protocol writes it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub struct Client {
    pub http: reqwest::Client,
    pub url: String,
}

impl Client {
    pub fn new(server: &Server) -> Client {
        Client {
            http: reqwest::Client::new(),
            url: server.url.clone(),
        }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, token, Some(body))
            .await
    }

    pub async fn put(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::PUT, path, Some(token), Some(body))
            .await
    }

    /// Polls the job until `done` holds for it; returns it.
    pub async fn wait_job(&self, job: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let (_, detail) = self.get(&format!("/api/v1/jobs/{job}")).await;
            if done(&detail) {
                return detail;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "job {job} stuck: {detail}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, Some(ADMIN), None)
            .await
    }

    pub async fn log(
        &self,
        job: &str,
        token: &str,
        offset: u64,
        bytes: &[u8],
    ) -> (StatusCode, Value) {
        let response = self
            .http
            .put(format!(
                "{}/api/v1/jobs/{job}/log?offset={offset}",
                self.url
            ))
            .bearer_auth(token)
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The job's stored log.
    pub async fn read_log(&self, job: &str) -> Vec<u8> {
        self.http
            .get(format!("{}/api/v1/jobs/{job}/log", self.url))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec()
    }

    /// Delivers a webhook `event` with the headers `forge` (github, gitea) sends (see
    /// [`super::webhooks::headers`]), signed under `secret` (no secret when `None`), with an
    /// optional delivery id.
    pub async fn deliver(
        &self,
        forge: &str,
        event: &str,
        delivery: Option<&str>,
        body: &str,
        secret: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .post(format!("{}/api/v1/webhooks/{forge}", self.url))
            .body(body.to_owned());
        for (name, value) in
            super::webhooks::headers(forge, event, delivery, secret, body.as_bytes())
        {
            request = request.header(name, value);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn cancel(&self, job: &str) -> StatusCode {
        let path = format!("/api/v1/jobs/{job}/cancel");
        self.post(&path, Some(ADMIN), json!({})).await.0
    }

    /// Registers an agent; returns (id, token).
    pub async fn register(&self, name: &str, labels: &[&str]) -> (String, String) {
        let (status, body) = self
            .post(
                "/api/v1/agents",
                Some(REGISTRATION),
                json!({"name": name, "version": "test", "labels": labels, "capacity": 2}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        (
            body["agent_id"].as_str().unwrap().to_owned(),
            body["agent_token"].as_str().unwrap().to_owned(),
        )
    }

    pub async fn submit(&self, labels: &[&str]) -> String {
        let (status, body) = self
            .post(
                "/api/v1/jobs",
                Some(ADMIN),
                json!({"source": {"git": "https://example.com/x.git", "ref": "main"}, "tasks": ["test"], "labels": labels}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["job_id"].as_str().unwrap().to_owned()
    }

    pub async fn claim(&self, agent: &(String, String), wait: u64) -> (StatusCode, Value) {
        self.post(
            &format!("/api/v1/agents/{}/claim?wait={wait}", agent.0),
            Some(&agent.1),
            json!({"free_slots": 1}),
        )
        .await
    }

    /// Claims and accepts one job; returns (job id, job token, lease id).
    pub async fn take(&self, agent: &(String, String)) -> Option<(String, String, String)> {
        let (status, offer) = self.claim(agent, 0).await;
        if status == StatusCode::NO_CONTENT {
            return None;
        }
        let job = offer["job_id"].as_str().unwrap().to_owned();
        let (status, accepted) = self
            .post(
                &format!("/api/v1/jobs/{job}/accept"),
                Some(&agent.1),
                json!({"offer_id": offer["offer_id"]}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{accepted}");
        Some((
            job,
            accepted["job_token"].as_str().unwrap().to_owned(),
            accepted["lease"]["lease_id"].as_str().unwrap().to_owned(),
        ))
    }

    pub async fn finish(&self, job: &str, token: &str, log: &[u8]) -> (StatusCode, Value) {
        let sha = sha256_hex(log);
        self.put(
            &format!("/api/v1/jobs/{job}/result"),
            token,
            json!({"status": "succeeded", "exit_code": 0, "stages": [], "started_at": null,
                   "finished_at": null, "log": {"bytes": log.len(), "sha256": sha}}),
        )
        .await
    }
}
