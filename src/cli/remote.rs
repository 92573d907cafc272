//! `submit`, `jobs`, `logs` and `cancel`: the job server's client commands, over the API of
//! DESIGN.md §4 with the admin token.

use std::collections::BTreeMap;
use std::io::Write;

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::args::{ServerAddress, SubmitArgs};
use super::output::outln;
use super::runtime::{self, Threads};
use super::terminal;
use crate::exit_code;

/// Exit code when the job server cannot be reached or refuses.
const SERVER_ERROR: u8 = exit_code::INFRASTRUCTURE;

fn request(
    client: &reqwest::Client,
    server: &ServerAddress,
    method: reqwest::Method,
    path: &str,
) -> reqwest::RequestBuilder {
    let url = format!("{}{path}", server.server.trim_end_matches('/'));
    client.request(method, url).bearer_auth(&server.token)
}

/// Sends, and turns a refusal or network failure into a message.
async fn send(request: reqwest::RequestBuilder, what: &str) -> Result<reqwest::Response, String> {
    let response = request.send().await.map_err(|e| {
        let e = e.to_string();
        format!(
            "{what}: cannot reach the job server: {}",
            terminal::escape(&e)
        )
    })?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or(body);
    let message = terminal::escape(&message);
    Err(match status {
        StatusCode::UNAUTHORIZED => format!("{what}: the server refused the token ({message})"),
        _ => format!("{what}: the server answered {status}: {message}"),
    })
}

fn finish(result: Result<u8, String>) -> u8 {
    result.unwrap_or_else(|message| {
        eprintln!("error: {message}");
        SERVER_ERROR
    })
}

pub fn submit(args: &SubmitArgs) -> u8 {
    let server = &args.server;
    let source = match (&args.git, &args.path) {
        (Some(git), _) => json!({"git": git, "ref": args.reference, "commit": args.commit}),
        (None, Some(path)) => json!({ "path": path }),
        (None, None) => unreachable!("clap requires --git or --path"),
    };
    let env: BTreeMap<&String, &String> = args.env.iter().map(|(k, v)| (k, v)).collect();
    let body = json!({"source": source, "config": args.config_file, "tasks": args.tasks,
                      "env": env, "labels": args.labels, "timeout": args.timeout});
    let Some(runtime) = runtime::start(Threads::One) else {
        return exit_code::INFRASTRUCTURE;
    };
    finish(runtime.block_on(async {
        let client = reqwest::Client::new();
        let request = request(&client, server, reqwest::Method::POST, "/api/v1/jobs").json(&body);
        let answer: Value = send(request, "submitting")
            .await?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        outln!(
            "{}",
            terminal::escape(answer["job_id"].as_str().unwrap_or_default())
        );
        Ok(exit_code::SUCCESS)
    }))
}

pub fn jobs(server: &ServerAddress, limit: u32, as_json: bool) -> u8 {
    let Some(runtime) = runtime::start(Threads::One) else {
        return exit_code::INFRASTRUCTURE;
    };
    finish(runtime.block_on(async {
        let client = reqwest::Client::new();
        let path = format!("/api/v1/jobs?limit={limit}");
        let request = request(&client, server, reqwest::Method::GET, &path);
        let jobs: Vec<Value> = send(request, "listing jobs")
            .await?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        if as_json {
            outln!(
                "{}",
                serde_json::to_string_pretty(&jobs).unwrap_or_default()
            );
            return Ok(exit_code::SUCCESS);
        }
        outln!("{:<26}  {:<10}  {:>9}  source", "job", "state", "log");
        for job in &jobs {
            let source = &job["source"];
            let from = source["git"]
                .as_str()
                .map(|g| {
                    let at = source["commit"]
                        .as_str()
                        .or(source["ref"].as_str())
                        .unwrap_or("HEAD");
                    format!("{g} @ {at}")
                })
                .or_else(|| source["path"].as_str().map(str::to_owned))
                .unwrap_or_default();
            outln!(
                "{:<26}  {:<10}  {:>9}  {}",
                terminal::escape(job["id"].as_str().unwrap_or_default()),
                terminal::escape(job["state"].as_str().unwrap_or_default()),
                job["log_bytes"].as_u64().unwrap_or(0),
                terminal::escape(&from)
            );
        }
        Ok(exit_code::SUCCESS)
    }))
}

pub fn logs(server: &ServerAddress, job: &str, follow: bool) -> u8 {
    let Some(runtime) = runtime::start(Threads::One) else {
        return exit_code::INFRASTRUCTURE;
    };
    finish(runtime.block_on(async {
        let client = reqwest::Client::new();
        let path = format!(
            "/api/v1/jobs/{job}/log{}",
            if follow { "?follow=1" } else { "" }
        );
        let mut response = send(
            request(&client, server, reqwest::Method::GET, &path),
            "reading the log",
        )
        .await?;
        let mut stdout = std::io::stdout();
        // Piped, the log is the job's bytes as they are; on a terminal, only lines, tabs
        // and colours pass and other control sequences are shown escaped.
        let on_terminal = std::io::IsTerminal::is_terminal(&stdout);
        let mut show = |bytes: &[u8]| {
            let _ = if on_terminal {
                stdout.write_all(terminal::output(&String::from_utf8_lossy(bytes)).as_bytes())
            } else {
                stdout.write_all(bytes)
            };
            let _ = stdout.flush();
        };
        if !follow {
            let bytes = response.bytes().await.map_err(|e| e.to_string())?;
            show(&bytes);
            return Ok(exit_code::SUCCESS);
        }
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
                        return Ok(exit_code::SUCCESS);
                    }
                    if let Ok(text) = serde_json::from_str::<String>(data) {
                        show(text.as_bytes());
                    }
                }
            }
        }
        Ok(exit_code::SUCCESS)
    }))
}

pub fn cancel(server: &ServerAddress, job: &str) -> u8 {
    let Some(runtime) = runtime::start(Threads::One) else {
        return exit_code::INFRASTRUCTURE;
    };
    finish(runtime.block_on(async {
        let client = reqwest::Client::new();
        let path = format!("/api/v1/jobs/{job}/cancel");
        send(
            request(&client, server, reqwest::Method::POST, &path),
            "cancelling",
        )
        .await?;
        eprintln!("job {}: cancel requested", terminal::escape(job));
        Ok(exit_code::SUCCESS)
    }))
}
