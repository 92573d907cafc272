//! What a job asks for, and every field of it checked: by the server before it stores a
//! submission, and again by the agent that receives it. A job that passes runs or fails on
//! its own merits, never ends `lost` because an agent could not read it, and never puts
//! options or commands into git.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use serde::{Deserialize, Serialize};

use crate::collector::valid_env_name;
use crate::workspace::{UrlKind, check_commit, check_reference, url_kind};

/// What a submitted job asks for (`POST /api/v1/jobs`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub source: JobSource,
    #[serde(default = "default_config")]
    pub config: String,
    #[serde(default)]
    pub tasks: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Labels an agent must have to be offered the job.
    #[serde(default)]
    pub labels: Vec<String>,
    /// A duration like "30m".
    #[serde(default)]
    pub timeout: Option<String>,
    /// Names of the agent's secrets the job may see; absent: every one the agent holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<Vec<String>>,
    /// The job builds code the repository's owners did not vouch for (a fork's pull
    /// request): the agent applies none of its `allow_*` widening and passes no secrets.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub untrusted: bool,
}

fn default_config() -> String {
    "config.yml".to_owned()
}

/// A git repository at a commit or reference, or a directory on the agent's machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum JobSource {
    Git {
        git: String,
        #[serde(default)]
        commit: Option<String>,
        #[serde(default, rename = "ref")]
        reference: Option<String>,
    },
    Path {
        path: String,
    },
}

/// A field of a job that is refused, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// Where the problem is, as a path into the JSON: `source.git`, `tasks[2]`, `env.X`.
    pub field: String,
    pub message: String,
}

/// Longest task name, label or config path taken.
const MAX_NAME: usize = 256;
const MAX_PATH: usize = 4096;
/// The longest timeout a job may ask for: beyond any real build, and far from the
/// overflow of a deadline computed from it.
const MAX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

fn refuse(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        message: message.into(),
    }
}

fn printable(field: &str, text: &str, max: usize) -> Result<(), SpecError> {
    if text.is_empty() {
        return Err(refuse(field, "is empty"));
    }
    if text.len() > max {
        return Err(refuse(field, format!("is longer than {max} bytes")));
    }
    if text.chars().any(char::is_control) {
        return Err(refuse(field, "holds control characters"));
    }
    Ok(())
}

impl JobSpec {
    /// Checks every field. Local sources (`path`, `file://`, absolute paths) read the
    /// agent's own disk, so they pass only with `allow_local`.
    pub fn check(&self, allow_local: bool) -> Result<(), SpecError> {
        match &self.source {
            JobSource::Git {
                git,
                commit,
                reference,
            } => {
                let kind = url_kind(git).map_err(|e| refuse("source.git", e.to_string()))?;
                if kind == UrlKind::Local && !allow_local {
                    return Err(refuse(
                        "source.git",
                        "local repositories are not allowed (the server's --allow-local-sources)",
                    ));
                }
                if let Some(commit) = commit {
                    check_commit(commit).map_err(|e| refuse("source.commit", e.to_string()))?;
                }
                if let Some(reference) = reference {
                    check_reference(reference).map_err(|e| refuse("source.ref", e.to_string()))?;
                }
            }
            JobSource::Path { path } => {
                printable("source.path", path, MAX_PATH)?;
                if !allow_local {
                    return Err(refuse(
                        "source.path",
                        "local directories are not allowed (the server's --allow-local-sources)",
                    ));
                }
                if !Path::new(path).is_absolute() {
                    return Err(refuse("source.path", "is not an absolute path"));
                }
            }
        }
        printable("config", &self.config, MAX_PATH)?;
        if !Path::new(&self.config)
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(refuse(
                "config",
                "must be a path inside the repository (relative, no `..`)",
            ));
        }
        for (i, task) in self.tasks.iter().enumerate() {
            printable(&format!("tasks[{i}]"), task, MAX_NAME)?;
        }
        for (i, label) in self.labels.iter().enumerate() {
            printable(&format!("labels[{i}]"), label, MAX_NAME)?;
        }
        for (name, value) in &self.env {
            let field = format!("env.{}", name.escape_debug());
            if !valid_env_name(name) {
                return Err(refuse(
                    field,
                    "is not a variable name ([A-Za-z_][A-Za-z0-9_]*)",
                ));
            }
            if value.contains('\0') {
                return Err(refuse(field, "holds a NUL byte"));
            }
        }
        for (i, name) in self.secrets.iter().flatten().enumerate() {
            if !valid_env_name(name) {
                return Err(refuse(
                    format!("secrets[{i}]"),
                    "is not a variable name ([A-Za-z_][A-Za-z0-9_]*)",
                ));
            }
        }
        if let Some(timeout) = &self.timeout {
            self.timeout_duration()
                .map_err(|e| refuse("timeout", format!("`{}`: {e}", timeout.escape_debug())))?;
        }
        Ok(())
    }

    /// The timeout as a duration, parsed as every duration in dockhand is.
    pub fn timeout_duration(&self) -> Result<Option<std::time::Duration>, String> {
        let Some(text) = &self.timeout else {
            return Ok(None);
        };
        match crate::util::parse_duration(text) {
            Ok(d) if d.is_zero() => Err("is zero".to_owned()),
            Ok(d) if d > MAX_TIMEOUT => Err("is longer than 30 days".to_owned()),
            Ok(d) => Ok(Some(d)),
            Err(reason) => Err(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> JobSpec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn every_field_is_checked() {
        let good = serde_json::json!({"source": {"git": "https://h/x.git", "ref": "main"},
            "tasks": ["test"], "env": {"CI": "1"}, "labels": ["linux"], "timeout": "30m"});
        assert_eq!(spec(good.clone()).check(false), Ok(()));
        for (change, field) in [
            (serde_json::json!({"timeout": "forever"}), "timeout"),
            (serde_json::json!({"timeout": "0s"}), "timeout"),
            (serde_json::json!({"timeout": "500000000000y"}), "timeout"),
            (serde_json::json!({"config": "/etc/passwd"}), "config"),
            (serde_json::json!({"config": "../x.yml"}), "config"),
            (serde_json::json!({"tasks": ["a", ""]}), "tasks[1]"),
            (serde_json::json!({"labels": ["a\u{1b}[2J"]}), "labels[0]"),
            (serde_json::json!({"env": {"A=B": "x"}}), "env.A=B"),
            (
                serde_json::json!({"source": {"git": "--upload-pack=x"}}),
                "source.git",
            ),
            (
                serde_json::json!({"source": {"git": "file:///srv/x"}}),
                "source.git",
            ),
            (
                serde_json::json!({"source": {"path": "/srv/x"}}),
                "source.path",
            ),
            (
                serde_json::json!({"source": {"git": "https://h/x", "ref": "--upload-pack=x"}}),
                "source.ref",
            ),
            (
                serde_json::json!({"source": {"git": "https://h/x", "commit": "main"}}),
                "source.commit",
            ),
        ] {
            let mut json = good.clone();
            for (k, v) in change.as_object().unwrap() {
                json[k] = v.clone();
            }
            assert_eq!(
                spec(json).check(false).unwrap_err().field,
                field,
                "{change}"
            );
        }
        let local = spec(serde_json::json!({"source": {"path": "/srv/x"}}));
        assert_eq!(local.check(true), Ok(()));
    }
}
