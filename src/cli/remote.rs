//! `submit`, `jobs`, `logs` and `cancel`: the job server's client commands, over the API of
//! docs/protocol.md with the admin token.

use std::collections::BTreeMap;
use std::io::Write;

use reqwest::{Method, StatusCode};
use tokio_util::sync::CancellationToken;

use super::args::{ServerAddress, SubmitArgs};
use super::output::{outln, print, table};
use super::runtime::{self, Threads};
use super::terminal;
use crate::exit_code;
use crate::protocol::client::{Answer, Body, ClientError, Retry, ServerClient};
use crate::protocol::{ErrorBody, JobSource, JobSpec, JobState, JobView, Submitted};
use crate::report::Palette;

/// Exit code when the job server cannot be reached or refuses.
const SERVER_ERROR: u8 = exit_code::INFRASTRUCTURE;

/// Calls made before a command gives up on an unreachable or overloaded server: a few
/// seconds of backoff, not an agent's patience.
const ATTEMPTS: u32 = 5;

/// The API client as the commands use it: the admin token, a person waiting.
struct Remote {
    client: ServerClient,
    token: String,
    /// Never cancelled: a command ends when its call does (or on Ctrl-C).
    cancel: CancellationToken,
}

impl Remote {
    fn new(server: &ServerAddress) -> Remote {
        Remote {
            client: ServerClient::new(&server.server).giving_up_after(ATTEMPTS),
            token: server.token.clone(),
            cancel: CancellationToken::new(),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Body,
        retry: Retry,
        what: &str,
    ) -> Result<Answer, String> {
        let ok = [StatusCode::OK, StatusCode::CREATED, StatusCode::ACCEPTED];
        self.client
            .call_until_answered(method, path, &self.token, body, &ok, retry, &self.cancel)
            .await
            .map_err(|e| explain(&e, what))
    }

    /// One job as the server sees it.
    async fn job(&self, job: &str) -> Result<JobView, String> {
        let path = format!("/api/v1/jobs/{job}");
        self.call(
            Method::GET,
            &path,
            Body::None,
            Retry::Transient,
            "reading the job",
        )
        .await?
        .json()
        .map_err(|e| e.to_string())
    }

    /// A response read as it arrives (a followed log).
    async fn open(&self, path: &str, what: &str) -> Result<reqwest::Response, String> {
        self.client
            .open(path, &self.token, &[StatusCode::OK], &self.cancel)
            .await
            .map_err(|e| explain(&e, what))
    }
}

/// A refusal or network failure as a message.
fn explain(error: &ClientError, what: &str) -> String {
    match error {
        ClientError::Network { reason, .. } => format!(
            "{what}: cannot reach the job server: {}",
            terminal::escape(reason)
        ),
        ClientError::Refused { status, body, .. } => {
            let message = serde_json::from_str::<ErrorBody>(body)
                .map(|b| b.error)
                .unwrap_or_else(|_| body.clone());
            let message = terminal::escape(&message);
            match *status {
                StatusCode::UNAUTHORIZED => {
                    format!("{what}: the server refused the token ({message})")
                }
                _ => format!("{what}: the server answered {status}: {message}"),
            }
        }
        other => format!("{what}: {}", terminal::escape(&other.to_string())),
    }
}

fn finish(result: Result<u8, String>) -> u8 {
    result.unwrap_or_else(|message| {
        eprintln!("error: {message}");
        SERVER_ERROR
    })
}

pub fn submit(args: &SubmitArgs) -> u8 {
    let source = match (&args.git, &args.path) {
        (Some(git), _) => JobSource::Git {
            git: git.clone(),
            commit: args.commit.clone(),
            reference: args.reference.clone(),
        },
        // The agent resolves paths against its own directory, not this shell's.
        (None, Some(path)) => JobSource::Path {
            path: std::path::absolute(path)
                .map(|absolute| absolute.to_string_lossy().into_owned())
                .unwrap_or_else(|_| path.clone()),
        },
        (None, None) => {
            eprintln!("error: submit needs a source: one of --git URL or --path DIR");
            return exit_code::USAGE;
        }
    };
    let spec = JobSpec {
        source,
        config: args.config_file.clone(),
        tasks: args.tasks.clone(),
        env: args.env.iter().cloned().collect::<BTreeMap<_, _>>(),
        labels: args.labels.clone(),
        timeout: args.timeout.clone(),
        secrets: None,
        untrusted: false,
    };
    let Some(runtime) = runtime::start(Threads::One) else {
        return exit_code::INFRASTRUCTURE;
    };
    finish(runtime.block_on(async {
        let remote = Remote::new(&args.server);
        let answer = remote
            .call(
                Method::POST,
                "/api/v1/jobs",
                Body::json(&spec),
                // The server does not dedupe submissions: a retry could run the job twice.
                Retry::Unsent,
                "submitting",
            )
            .await?;
        created(&remote, answer, args.wait).await
    }))
}

/// A new job with an ended job's spec, made by the server.
pub fn rerun(server: &ServerAddress, job: &str, wait: bool) -> u8 {
    let Some(runtime) = runtime::start(Threads::One) else {
        return exit_code::INFRASTRUCTURE;
    };
    finish(runtime.block_on(async {
        let remote = Remote::new(server);
        let answer = remote
            .call(
                Method::POST,
                &format!("/api/v1/jobs/{job}/rerun"),
                Body::None,
                // As a submission: a retry could make two jobs.
                Retry::Unsent,
                "re-running",
            )
            .await?;
        created(&remote, answer, wait).await
    }))
}

/// Prints a created job's id, or follows its log with the id on stderr.
async fn created(remote: &Remote, answer: Answer, wait: bool) -> Result<u8, String> {
    let submitted: Submitted = answer.json().map_err(|e| e.to_string())?;
    if wait {
        eprintln!("job {}", terminal::escape(&submitted.job_id));
        return follow_log(remote, &submitted.job_id).await;
    }
    outln!("{}", terminal::escape(&submitted.job_id));
    Ok(exit_code::SUCCESS)
}

pub fn jobs(server: &ServerAddress, limit: u32, as_json: bool, palette: Palette) -> u8 {
    let Some(runtime) = runtime::start(Threads::One) else {
        return exit_code::INFRASTRUCTURE;
    };
    finish(runtime.block_on(async {
        let remote = Remote::new(server);
        let path = format!("/api/v1/jobs?limit={limit}");
        let answer = remote
            .call(
                Method::GET,
                &path,
                Body::None,
                Retry::Transient,
                "listing jobs",
            )
            .await?;
        if as_json {
            let jobs: serde_json::Value = answer.json().map_err(|e| e.to_string())?;
            outln!(
                "{}",
                serde_json::to_string_pretty(&jobs).unwrap_or_default()
            );
            return Ok(exit_code::SUCCESS);
        }
        let jobs: Vec<JobView> = answer.json().map_err(|e| e.to_string())?;
        let header = [
            "job",
            "state",
            "exit",
            "started (UTC)",
            "took",
            "log",
            "source",
        ];
        let mut rows = vec![header.map(str::to_owned).to_vec()];
        for job in &jobs {
            let from = match &job.spec.source {
                JobSource::Git {
                    git,
                    commit,
                    reference,
                } => {
                    let at = commit.as_deref().or(reference.as_deref()).unwrap_or("HEAD");
                    format!("{git} @ {at}")
                }
                JobSource::Path { path } => path.clone(),
            };
            let exit = job
                .result
                .as_ref()
                .map(|r| r.exit_code.to_string())
                .unwrap_or_default();
            let started = job.started_at.map(utc_time).unwrap_or_default();
            let took = match (job.started_at, job.finished_at) {
                (Some(start), Some(end)) => format!("{:.1}s", (end - start) as f64 / 1000.0),
                _ => String::new(),
            };
            let waits = match (job.no_agent, job.spec.labels.is_empty()) {
                (false, _) => String::new(),
                (true, true) => "  (no agent is connected)".to_owned(),
                (true, false) => format!(
                    "  (no connected agent has labels: {})",
                    terminal::escape(&job.spec.labels.join(","))
                ),
            };
            let state = job.state.as_str();
            rows.push(vec![
                terminal::escape(&job.id).into_owned(),
                palette.state(state, &terminal::escape(state)),
                exit,
                started,
                took,
                job.log_bytes.to_string(),
                terminal::escape(&(from + &waits)).into_owned(),
            ]);
        }
        print(&table(rows));
        Ok(exit_code::SUCCESS)
    }))
}

pub fn logs(server: &ServerAddress, job: &str, follow: bool) -> u8 {
    let Some(runtime) = runtime::start(Threads::One) else {
        return exit_code::INFRASTRUCTURE;
    };
    finish(runtime.block_on(async {
        let remote = Remote::new(server);
        if follow {
            return follow_log(&remote, job).await;
        }
        let path = format!("/api/v1/jobs/{job}/log");
        let mut response = remote.open(&path, "reading the log").await?;
        let mut show = LogOutput::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
            show.write(&chunk);
        }
        Ok(exit_code::SUCCESS)
    }))
}

/// Prints the job's log as it grows until the job ends; the job's exit code.
async fn follow_log(remote: &Remote, job: &str) -> Result<u8, String> {
    let path = format!("/api/v1/jobs/{job}/log?follow=1");
    let mut response = remote.open(&path, "reading the log").await?;
    let mut show = LogOutput::new();
    let mut pending = String::new();
    let mut event = String::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = pending.find('\n') {
            let line: String = pending.drain(..=end).collect();
            let line = line.trim_end_matches(['\n', '\r']);
            if let Some(name) = line.strip_prefix("event:") {
                event = name.trim().to_owned();
            } else if let Some(data) = line.strip_prefix("data:") {
                let data = data.strip_prefix(' ').unwrap_or(data);
                if event == "end" {
                    eprintln!("job {} {}", terminal::escape(job), terminal::escape(data));
                    return Ok(job_exit_code(&remote.job(job).await?));
                }
                if let Ok(text) = serde_json::from_str::<String>(data) {
                    show.write(text.as_bytes());
                }
            }
        }
    }
    Err(format!(
        "the server closed the log of {job} before the job ended"
    ))
}

/// Milliseconds since the epoch as `2026-12-02 14:40:04`.
fn utc_time(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(at)
        .to_string()
        .trim_end_matches('Z')
        .replace('T', " ")
}

/// What `logs -f` and `submit --wait` exit with: the job's own exit code as its agent
/// reported it (as `dockhand run` would exit); without a result, 130 for a job cancelled
/// before it ran, 124 for a timeout, 202 for a lost job or an error.
fn job_exit_code(job: &JobView) -> u8 {
    if let Some(result) = &job.result {
        return u8::try_from(result.exit_code).unwrap_or(exit_code::INFRASTRUCTURE);
    }
    match job.state {
        JobState::Succeeded => exit_code::SUCCESS,
        JobState::Cancelled => exit_code::CANCELLED,
        JobState::TimedOut => exit_code::TIMED_OUT,
        _ => exit_code::INFRASTRUCTURE,
    }
}

/// A log on stdout. Piped, the job's bytes as they are; on a terminal, only lines, tabs and
/// colours pass and other control sequences are shown escaped.
struct LogOutput {
    stdout: std::io::Stdout,
    on_terminal: bool,
}

impl LogOutput {
    fn new() -> LogOutput {
        let stdout = std::io::stdout();
        let on_terminal = std::io::IsTerminal::is_terminal(&stdout);
        LogOutput {
            stdout,
            on_terminal,
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        let _ = if self.on_terminal {
            let text = String::from_utf8_lossy(bytes);
            self.stdout.write_all(terminal::output(&text).as_bytes())
        } else {
            self.stdout.write_all(bytes)
        };
        let _ = self.stdout.flush();
    }
}

pub fn cancel(server: &ServerAddress, job: &str) -> u8 {
    let Some(runtime) = runtime::start(Threads::One) else {
        return exit_code::INFRASTRUCTURE;
    };
    finish(runtime.block_on(async {
        let remote = Remote::new(server);
        let before = remote.job(job).await?;
        if !before.state.is_active() {
            eprintln!(
                "job {} has already ended ({}): nothing to cancel",
                terminal::escape(job),
                before.state
            );
            return Ok(exit_code::USAGE);
        }
        // Cancelling twice is cancelling once.
        remote
            .call(
                Method::POST,
                &format!("/api/v1/jobs/{job}/cancel"),
                Body::None,
                Retry::Transient,
                "cancelling",
            )
            .await?;
        eprintln!("job {}: cancel requested", terminal::escape(job));
        Ok(exit_code::SUCCESS)
    }))
}
