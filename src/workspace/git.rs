//! A git source: clone, fetch the job's reference and check it out detached, by running
//! `git` with a deadline. Credentials in URLs never reach a message or a log.

use std::path::Path;
use std::process::Stdio;
use std::sync::LazyLock;
use std::time::Duration;

use regex::Regex;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot run git: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("`git {command}` failed for {url}: {stderr}")]
    Failed {
        command: String,
        url: String,
        stderr: String,
    },
    #[error("`git {command}` for {url} took longer than {timeout:?}")]
    TimedOut {
        command: String,
        url: String,
        timeout: Duration,
    },
    #[error("cancelled while fetching {url}")]
    Cancelled { url: String },
}

/// `https://user:token@host/x` → `https://***@host/x`.
pub fn redact_url(text: &str) -> String {
    static USERINFO: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@").unwrap());
    USERINFO.replace_all(text, "${scheme}***@").into_owned()
}

/// Checks out `reference` (branch, tag, commit or `HEAD`) of `url` into the empty
/// directory `dir`. Returns the commit checked out.
pub async fn checkout(
    url: &str,
    reference: &str,
    dir: &Path,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<String, GitError> {
    let dir_arg = dir.display().to_string();
    git(&["init", "--quiet", &dir_arg], url, timeout, cancel).await?;
    let at = |args: &[&str]| {
        let mut all = vec!["-C", dir_arg.as_str()];
        all.extend_from_slice(args);
        all.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let fetch = at(&["fetch", "--quiet", "--depth=1", "--no-tags", url, reference]);
    let fetched = git(&refs(&fetch), url, timeout, cancel).await;
    if fetched.is_err() {
        let fetch = at(&["fetch", "--quiet", "--no-tags", url, reference]);
        git(&refs(&fetch), url, timeout, cancel).await?;
    }
    let checkout = at(&["checkout", "--quiet", "--detach", "FETCH_HEAD"]);
    git(&refs(&checkout), url, timeout, cancel).await?;
    let head = at(&["rev-parse", "HEAD"]);
    git(&refs(&head), url, timeout, cancel).await
}

fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

async fn git(
    args: &[&str],
    url: &str,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<String, GitError> {
    let command = redact_url(&args.join(" "));
    let url = redact_url(url);
    let child = Command::new("git")
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(GitError::Spawn)?;
    let output = tokio::select! {
        _ = cancel.cancelled() => return Err(GitError::Cancelled { url }),
        result = tokio::time::timeout(timeout, child.wait_with_output()) => match result {
            Err(_) => return Err(GitError::TimedOut { command, url, timeout }),
            Ok(output) => output.map_err(GitError::Spawn)?,
        },
    };
    if !output.status.success() {
        return Err(GitError::Failed {
            command,
            url,
            stderr: redact_url(String::from_utf8_lossy(&output.stderr).trim()),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn credentials_are_redacted() {
        assert_eq!(
            redact_url("fetch https://bot:s3cret@git.example.com/x.git main"),
            "fetch https://***@git.example.com/x.git main"
        );
        assert_eq!(redact_url("ssh://git@host/x"), "ssh://***@host/x");
        assert_eq!(redact_url("/srv/repo.git"), "/srv/repo.git");
    }
}
