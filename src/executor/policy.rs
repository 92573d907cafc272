//! What must hold before anything starts: every `NAME` env entry has a host value, and
//! every bind mount stays inside the workspace or the allow-list (and never reaches the
//! Docker socket unless allowed).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::collector::{EnvValue, EnvVar, Mount};
use crate::plan::Plan;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error(
        "task `{task}`: environment variable `{name}` must be set on the host (the config lists it as `{name}` with no value)"
    )]
    EnvUnset { task: String, name: String },
    #[error(
        "task `{task}`: mount of {host} is outside the workspace {workspace} and not in allow_host_mounts"
    )]
    MountOutside {
        task: String,
        host: PathBuf,
        workspace: PathBuf,
    },
    #[error("task `{task}`: mounting the Docker socket {host} needs allow_docker_socket")]
    DockerSocket { task: String, host: PathBuf },
}

/// Where tasks may mount from.
#[derive(Clone, Debug, Default)]
pub struct MountPolicy {
    pub workspace: PathBuf,
    pub allow_host_mounts: Vec<PathBuf>,
    pub allow_docker_socket: bool,
}

/// Checks every run stage of `plan`, its dependency containers included; returns every
/// problem.
pub fn check_policy(
    plan: &Plan,
    host_env: &HashMap<String, String>,
    mounts: &MountPolicy,
) -> Vec<PolicyError> {
    let mut problems = Vec::new();
    for run in &plan.runs {
        let images = std::iter::once(&run.image).chain(&run.services);
        let task_env = run.env.iter();
        let mut envs: Vec<&EnvVar> = task_env.collect();
        for image in images {
            let spec = &run.images[image];
            envs.extend(&spec.run.env);
            for mount in &spec.run.mounts {
                if let Err(e) = check_mount(&run.task, mount, mounts) {
                    problems.push(e);
                }
            }
        }
        if let Some(task_image) = run.images.get(&run.image) {
            for options in task_image.run.dependency_options.values() {
                envs.extend(&options.env);
            }
        }
        for var in envs {
            if var.value == EnvValue::FromHost && !host_env.contains_key(&var.name) {
                let problem = PolicyError::EnvUnset {
                    task: run.task.clone(),
                    name: var.name.clone(),
                };
                if !problems.contains(&problem) {
                    problems.push(problem);
                }
            }
        }
    }
    problems
}

/// `NAME=VALUE` entries for a container.
pub fn resolve_env<'v>(
    vars: impl IntoIterator<Item = &'v EnvVar>,
    host_env: &HashMap<String, String>,
) -> Vec<String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for var in vars {
        let value = match &var.value {
            EnvValue::Literal(v) => v.clone(),
            EnvValue::FromHost => host_env.get(&var.name).cloned().unwrap_or_default(),
            EnvValue::FromHostOr(default) => host_env
                .get(&var.name)
                .cloned()
                .unwrap_or_else(|| default.clone()),
        };
        match out.iter_mut().find(|(n, _)| *n == var.name) {
            Some(existing) => existing.1 = value,
            None => out.push((var.name.clone(), value)),
        }
    }
    out.into_iter().map(|(n, v)| format!("{n}={v}")).collect()
}

fn check_mount(task: &str, mount: &Mount, policy: &MountPolicy) -> Result<(), PolicyError> {
    let host = real_path(&mount.host);
    let is_socket = ["/var/run/docker.sock", "/run/docker.sock"]
        .iter()
        .any(|s| host == real_path(Path::new(s)));
    if is_socket && !policy.allow_docker_socket {
        return Err(PolicyError::DockerSocket {
            task: task.to_owned(),
            host,
        });
    }
    let workspace = real_path(&policy.workspace);
    let allowed = host.starts_with(&workspace)
        || policy
            .allow_host_mounts
            .iter()
            .any(|a| host.starts_with(real_path(a)))
        || (is_socket && policy.allow_docker_socket);
    if allowed {
        Ok(())
    } else {
        Err(PolicyError::MountOutside {
            task: task.to_owned(),
            host,
            workspace,
        })
    }
}

/// `path` with symlinks resolved as far as it exists, so a link cannot smuggle a mount
/// out of the workspace.
fn real_path(path: &Path) -> PathBuf {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return rest
                .iter()
                .rev()
                .fold(real, |acc, part: &std::ffi::OsString| acc.join(part));
        }
        match (
            existing.file_name().map(ToOwned::to_owned),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_cannot_carry_a_mount_out_of_the_workspace() {
        let workspace = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), workspace.path().join("link")).unwrap();
        let policy = MountPolicy {
            workspace: workspace.path().to_path_buf(),
            ..MountPolicy::default()
        };
        let mount = |host: PathBuf| Mount {
            host,
            container: "/data".into(),
            read_only: false,
        };
        assert!(check_mount("t", &mount(workspace.path().join("data/new")), &policy).is_ok());
        assert!(matches!(
            check_mount("t", &mount(workspace.path().join("link/x")), &policy),
            Err(PolicyError::MountOutside { .. })
        ));
        assert!(matches!(
            check_mount("t", &mount(workspace.path().join("../..")), &policy),
            Err(PolicyError::MountOutside { .. })
        ));
        let allowed = MountPolicy {
            allow_host_mounts: vec![outside.path().to_path_buf()],
            ..policy
        };
        assert!(check_mount("t", &mount(workspace.path().join("link/x")), &allowed).is_ok());
    }
}
