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
    Spawn(std::io::Error),
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
    #[error("refusing to fetch: {0}")]
    Refused(SourceRefusal),
}

impl From<SourceRefusal> for GitError {
    fn from(refusal: SourceRefusal) -> GitError {
        GitError::Refused(refusal)
    }
}

/// Why a git URL, reference or commit is not taken: they are data, never options or
/// commands (the README's security model), so anything git could read otherwise is
/// refused. The value is quoted with control characters escaped: it ends up in logs and
/// on terminals.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SourceRefusal {
    #[error(
        "`{}` is not a git URL dockhand fetches (https://, ssh://, user@host:path, or file:// and absolute paths when local sources are allowed)",
        .0.escape_debug()
    )]
    Url(String),
    #[error("`{}` is not a valid git reference", .0.escape_debug())]
    Reference(String),
    #[error("`{}` is not a commit (40 or 64 hex digits)", .0.escape_debug())]
    Commit(String),
}

/// What a git URL reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UrlKind {
    Https,
    Ssh,
    /// `user@host:path`, git's scp-like form of ssh.
    ScpLike,
    /// `file://` or an absolute path: the fetching machine's own disk.
    Local,
}

/// The kind of `url`, or a refusal for anything else (other schemes such as `ext::` and
/// `fd::`, relative paths, options, control characters, hosts that read as options).
pub fn url_kind(url: &str) -> Result<UrlKind, SourceRefusal> {
    let refuse = || SourceRefusal::Url(url.to_owned());
    if url.is_empty() || url.starts_with('-') || url.chars().any(|c| c.is_control() || c == ' ') {
        return Err(refuse());
    }
    let host_ok = |host: &str| !host.is_empty() && !host.starts_with('-');
    if let Some((scheme, rest)) = url.split_once("://") {
        let host = rest.split(['/', ':']).next().unwrap_or_default();
        let host = host.rsplit('@').next().unwrap_or_default();
        return match scheme.to_ascii_lowercase().as_str() {
            "https" if host_ok(host) => Ok(UrlKind::Https),
            "ssh" | "git+ssh" | "ssh+git" if host_ok(host) => Ok(UrlKind::Ssh),
            "file" if rest.starts_with('/') => Ok(UrlKind::Local),
            _ => Err(refuse()),
        };
    }
    if url.starts_with('/') {
        return Ok(UrlKind::Local);
    }
    match url.split_once(':') {
        Some((host, path))
            if !host.contains('/')
                && !path.is_empty()
                && host_ok(host.rsplit('@').next().unwrap_or_default())
                && !host.contains("::")
                && !path.starts_with(':') =>
        {
            Ok(UrlKind::ScpLike)
        }
        _ => Err(refuse()),
    }
}

/// A branch, tag or other reference as `git check-ref-format --allow-onelevel` takes it,
/// and never an option (no leading `-`).
pub fn check_reference(reference: &str) -> Result<(), SourceRefusal> {
    let bad_char = |c: char| c.is_control() || " ~^:?*[\\".contains(c);
    let valid = !reference.is_empty()
        && reference.len() <= 1024
        && !reference.starts_with('-')
        && !reference.starts_with('/')
        && !reference.ends_with('/')
        && !reference.ends_with('.')
        && reference != "@"
        && !reference.contains("..")
        && !reference.contains("//")
        && !reference.contains("@{")
        && !reference.chars().any(bad_char)
        && reference
            .split('/')
            .all(|part| !part.starts_with('.') && !part.ends_with(".lock"));
    if valid {
        Ok(())
    } else {
        Err(SourceRefusal::Reference(reference.to_owned()))
    }
}

/// A full SHA-1 or SHA-256 object name.
pub fn check_commit(commit: &str) -> Result<(), SourceRefusal> {
    if matches!(commit.len(), 40 | 64) && commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(SourceRefusal::Commit(commit.to_owned()))
    }
}

/// `https://user:token@host/x` → `https://***@host/x`.
pub fn redact_url(text: &str) -> String {
    static USERINFO: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@").unwrap());
    USERINFO.replace_all(text, "${scheme}***@").into_owned()
}

/// Options before every git command: transports that run commands or read file
/// descriptors are off whatever the URL says.
const SAFE_PROTOCOLS: [&str; 4] = [
    "-c",
    "protocol.ext.allow=never",
    "-c",
    "protocol.fd.allow=never",
];

/// Checks out `reference` (branch, tag, commit or `HEAD`) of `url` into the empty
/// directory `dir`. Returns the commit checked out. The URL and reference are checked
/// again here, whichever source the job came from, and reach git only after
/// `--end-of-options`.
pub async fn checkout(
    url: &str,
    reference: &str,
    dir: &Path,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<String, GitError> {
    url_kind(url)?;
    check_reference(reference)?;
    let dir_arg = dir.display().to_string();
    git(&["init", "--quiet", "--", &dir_arg], url, timeout, cancel).await?;
    let at = |args: &[&str]| {
        let mut all = vec!["-C", dir_arg.as_str()];
        all.extend_from_slice(args);
        all.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let fetch = at(&[
        "fetch",
        "--quiet",
        "--depth=1",
        "--no-tags",
        "--end-of-options",
        url,
        reference,
    ]);
    let fetched = git(&refs(&fetch), url, timeout, cancel).await;
    if fetched.is_err() {
        let fetch = at(&[
            "fetch",
            "--quiet",
            "--no-tags",
            "--end-of-options",
            url,
            reference,
        ]);
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
        .args(SAFE_PROTOCOLS)
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
    use super::*;

    #[test]
    fn urls_references_and_commits() {
        for (url, kind) in [
            ("https://git.example.com/team/app.git", UrlKind::Https),
            ("ssh://git@host/x.git", UrlKind::Ssh),
            ("git@github.com:team/app.git", UrlKind::ScpLike),
            ("file:///srv/repo", UrlKind::Local),
            ("/srv/repo", UrlKind::Local),
        ] {
            assert_eq!(url_kind(url), Ok(kind), "{url}");
        }
        for url in [
            "--upload-pack=touch /tmp/x; git-upload-pack",
            "ext::sh -c touch% /tmp/x",
            "fd::3",
            "http://example.com/x.git",
            "ssh://-oProxyCommand=x/y",
            "-oProxyCommand=x:y",
            "relative/path",
            "https://host/x\nother",
            "",
        ] {
            assert!(url_kind(url).is_err(), "{url}");
        }
        for reference in ["main", "refs/heads/feature/x", "HEAD", "v1.2.3"] {
            assert_eq!(check_reference(reference), Ok(()), "{reference}");
        }
        for reference in [
            "--upload-pack=x",
            "-b",
            "a..b",
            "a b",
            "x.lock",
            ".hidden",
            "a//b",
            "@",
            "a@{1}",
            "a:b",
            "end.",
            "",
        ] {
            assert!(check_reference(reference).is_err(), "{reference}");
        }
        assert!(check_commit("0123456789abcdef0123456789abcdef01234567").is_ok());
        assert!(check_commit(&"a".repeat(64)).is_ok());
        assert!(check_commit("--upload-pack=touch /tmp/x; git-upload-pack").is_err());
        assert!(check_commit("0123456").is_err());
    }

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
