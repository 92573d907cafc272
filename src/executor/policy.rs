//! What must hold before anything starts: every `NAME` env entry has a value, every bind
//! mount stays inside the workspace or the operator's allowed directories without passing
//! through a link (and never reaches the Docker socket unless allowed), and no container
//! leaves the job's own network unless the operator allows that network mode. Mounts are
//! checked again, race-free, when each container starts (see [`super::binds`]).

use std::collections::HashMap;
use std::path::PathBuf;

use super::binds::{Missing, Reach, lexical};
use crate::collector::{EnvValue, EnvVar, Image, Mount};
use crate::plan::Plan;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error(
        "task `{task}`: environment variable `{name}` is not set: the config lists it as `{name}` with no value (under an agent, a job sees only its own env, the secrets its config names and agent.pass_env)"
    )]
    EnvUnset { task: String, name: String },
    #[error(
        "task `{task}`: mount of {host} is outside the workspace {workspace}; allowing it takes {knob}"
    )]
    MountOutside {
        task: String,
        host: PathBuf,
        workspace: PathBuf,
        knob: &'static str,
    },
    #[error(
        "task `{task}`: mount of {host} goes through the symlink {link}; bind mounts may not pass through links"
    )]
    MountThroughSymlink {
        task: String,
        host: PathBuf,
        link: PathBuf,
    },
    #[error("task `{task}`: mount of {host}: {path} is a file, not a directory")]
    MountNotADirectory {
        task: String,
        host: PathBuf,
        path: PathBuf,
    },
    #[error("task `{task}`: cannot mount {path}: it is {kind}")]
    MountSpecial {
        task: String,
        path: PathBuf,
        kind: &'static str,
    },
    #[error("task `{task}`: cannot check the mount path {path}: {message}")]
    MountUnreadable {
        task: String,
        path: PathBuf,
        message: String,
    },
    #[error(
        "task `{task}`: mount of {host} reaches {dir}, dockhand's own directory (results, caches or state), which no task may mount"
    )]
    MountProtected {
        task: String,
        host: PathBuf,
        dir: PathBuf,
    },
    #[error(
        "task `{task}`: image `{image}` mounts at `{path}`; a mount's container path must be absolute, without `..`, and not `/`, `/proc`, `/sys` or `/dev` or below them"
    )]
    MountTarget {
        task: String,
        image: String,
        path: String,
    },
    #[error(
        "task `{task}`: image `{image}` publishes ports on the host ({ports}); that needs {knob}"
    )]
    PublishedPorts {
        task: String,
        image: String,
        ports: String,
        knob: &'static str,
    },
    #[error("task `{task}`: mounting the Docker socket {host} needs {knob}")]
    DockerSocket {
        task: String,
        host: PathBuf,
        knob: &'static str,
    },
    #[error(
        "task `{task}`: image `{image}` asks for network mode `{mode}`, which leaves the job's own network; it needs {knob}"
    )]
    NetworkMode {
        task: String,
        image: String,
        mode: String,
        knob: String,
    },
}

/// How far a job's containers may reach beyond their workspace and their job's network:
/// the operator's widening (agent.toml `docker.allow_*`, `dockhand run --allow-*`).
#[derive(Clone, Debug, Default)]
pub struct Sandbox {
    /// Bind mounts may come from here, build contexts may not leave it.
    pub workspace: PathBuf,
    pub allow_host_mounts: Vec<PathBuf>,
    pub allow_docker_socket: bool,
    /// Network modes besides the job's own network and `none`: `host`, `bridge`, a network
    /// name, `container:NAME`; a trailing `*` matches any suffix (`container:*`).
    pub allow_network_modes: Vec<String>,
    /// Whether containers may publish ports on the host (`ports`, `publish_all_ports`):
    /// a published port is reachable from the host and from every other job.
    pub allow_published_ports: bool,
    /// dockhand's own directories (results, caches, state) that no mount may reach; the
    /// part of one inside a mounted directory is hidden from the container.
    pub protected: Vec<PathBuf>,
    /// Where this sandbox is widened, so a refusal names the setting its reader can change.
    pub widened_by: Widening,
}

/// Where an operator widens the sandbox: agent.toml for agents and watch, flags for
/// `dockhand run`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Widening {
    #[default]
    AgentConfig,
    RunFlags,
}

impl Widening {
    pub fn host_mounts(self) -> &'static str {
        match self {
            Widening::AgentConfig => "its directory in agent.toml's docker.allow_host_mounts",
            Widening::RunFlags => "`--allow-host-mount DIR` with its directory",
        }
    }

    pub fn docker_socket(self) -> &'static str {
        match self {
            Widening::AgentConfig => "agent.toml's docker.allow_docker_socket = true",
            Widening::RunFlags => "`--allow-docker-socket`",
        }
    }

    pub fn published_ports(self) -> &'static str {
        match self {
            Widening::AgentConfig => "agent.toml's docker.allow_published_ports = true",
            Widening::RunFlags => "`--allow-published-ports`",
        }
    }

    pub fn network_mode(self, mode: &str) -> String {
        match self {
            Widening::AgentConfig => {
                format!("agent.toml's docker.allow_network_modes = [\"{mode}\"]")
            }
            Widening::RunFlags => format!("`--allow-network-mode {mode}`"),
        }
    }
}

impl Sandbox {
    /// Whether a container may use network `mode` (`None`: the job's own network).
    pub fn network_mode_allowed(&self, mode: Option<&str>) -> bool {
        let Some(mode) = mode else { return true };
        mode == "none"
            || self
                .allow_network_modes
                .iter()
                .any(|allowed| match allowed.strip_suffix('*') {
                    Some(prefix) => mode.starts_with(prefix),
                    None => mode == allowed,
                })
    }

    /// Checks one mount now, without creating anything: a path that does not exist yet
    /// may still be made by an earlier task. Blocking (it reads the filesystem).
    pub fn check_mount(&self, task: &str, mount: &Mount) -> Result<(), PolicyError> {
        Reach::of(self)
            .resolve(&mount.host, Missing::Allow)
            .map(drop)
            .map_err(|refusal| refusal.into_error(task, mount, self))
    }
}

/// Checks every run stage of `plan`, its dependency containers included; returns every
/// problem. Blocking (mounts are looked at on disk).
pub fn check_policy(
    plan: &Plan,
    env: &HashMap<String, String>,
    sandbox: &Sandbox,
) -> Vec<PolicyError> {
    let mut problems = Vec::new();
    let mut add = |problem: PolicyError| {
        if !problems.contains(&problem) {
            problems.push(problem);
        }
    };
    for run in &plan.runs {
        let images: Vec<&Image> = std::iter::once(&run.image)
            .chain(&run.services)
            .map(|name| &run.images[name])
            .collect();
        let mut envs: Vec<&EnvVar> = run.env.iter().collect();
        for image in &images {
            envs.extend(&image.run.env);
            for mount in &image.run.mounts {
                if let Err(e) = sandbox.check_mount(&run.task, mount) {
                    add(e);
                }
                if !mountable_target(&mount.container) {
                    add(PolicyError::MountTarget {
                        task: run.task.clone(),
                        image: image.name.clone(),
                        path: mount.container.clone(),
                    });
                }
            }
            let overrides = images[0].run.dependency_options.get(&image.name);
            let all_ports: Vec<_> = (image.run.ports.iter())
                .chain(overrides.into_iter().flat_map(|o| &o.ports))
                .collect();
            let published = image.run.network.publish_all_ports || !all_ports.is_empty();
            if published && !sandbox.allow_published_ports {
                let ports: Vec<String> = (all_ports.iter())
                    .map(|p| format!("{}/{}", p.container_port, p.protocol))
                    .collect();
                add(PolicyError::PublishedPorts {
                    task: run.task.clone(),
                    image: image.name.clone(),
                    ports: if ports.is_empty() {
                        "publish_all_ports".to_owned()
                    } else {
                        ports.join(", ")
                    },
                    knob: sandbox.widened_by.published_ports(),
                });
            }
            let mode = image.run.network.mode.as_deref();
            if !sandbox.network_mode_allowed(mode) {
                add(PolicyError::NetworkMode {
                    task: run.task.clone(),
                    image: image.name.clone(),
                    mode: mode.unwrap_or_default().to_owned(),
                    knob: sandbox.widened_by.network_mode(mode.unwrap_or_default()),
                });
            }
        }
        for options in images[0].run.dependency_options.values() {
            envs.extend(&options.env);
        }
        for var in envs {
            if var.value == EnvValue::FromHost && !env.contains_key(&var.name) {
                add(PolicyError::EnvUnset {
                    task: run.task.clone(),
                    name: var.name.clone(),
                });
            }
        }
    }
    problems
}

/// Whether a container path may be a mount's target: absolute, normalised, and not over the
/// container's root or the kernel's views (the engine would refuse or misplace those).
fn mountable_target(path: &str) -> bool {
    let path = std::path::Path::new(path);
    let normal = path.is_absolute() && lexical(path) == path && !path.as_os_str().is_empty();
    normal
        && path != std::path::Path::new("/")
        && !["/proc", "/sys", "/dev"]
            .iter()
            .any(|kernel| path.starts_with(kernel))
}

/// `NAME=VALUE` entries for a container.
pub fn resolve_env<'v>(
    vars: impl IntoIterator<Item = &'v EnvVar>,
    env: &HashMap<String, String>,
) -> Vec<String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for var in vars {
        let value = match &var.value {
            EnvValue::Literal(v) => v.clone(),
            EnvValue::FromHost => env.get(&var.name).cloned().unwrap_or_default(),
            EnvValue::FromHostOr(default) => env
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_modes_leaving_the_job_network_need_the_operator() {
        let sandbox = Sandbox::default();
        assert!(sandbox.network_mode_allowed(None));
        assert!(sandbox.network_mode_allowed(Some("none")));
        for mode in ["host", "bridge", "container:other", "some-network"] {
            assert!(!sandbox.network_mode_allowed(Some(mode)), "{mode}");
        }
        let widened = Sandbox {
            allow_network_modes: vec!["host".into(), "container:*".into()],
            ..Sandbox::default()
        };
        assert!(widened.network_mode_allowed(Some("host")));
        assert!(widened.network_mode_allowed(Some("container:db")));
        assert!(!widened.network_mode_allowed(Some("bridge")));
    }

    #[test]
    fn symlinks_cannot_carry_a_mount_out_of_the_workspace() {
        let workspace = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), workspace.path().join("link")).unwrap();
        let sandbox = Sandbox {
            workspace: workspace.path().to_path_buf(),
            ..Sandbox::default()
        };
        let mount = |host: PathBuf| Mount {
            host,
            container: "/data".into(),
            read_only: false,
        };
        let check = |sandbox: &Sandbox, host| sandbox.check_mount("t", &mount(host));
        assert!(check(&sandbox, workspace.path().join("data/new")).is_ok());
        assert!(matches!(
            check(&sandbox, workspace.path().join("link/x")),
            Err(PolicyError::MountThroughSymlink { .. })
        ));
        assert!(matches!(
            check(&sandbox, workspace.path().join("../..")),
            Err(PolicyError::MountOutside { .. })
        ));
        let allowed = Sandbox {
            allow_host_mounts: vec![outside.path().to_path_buf()],
            ..sandbox
        };
        assert!(check(&allowed, outside.path().join("x")).is_ok());
        assert!(
            matches!(
                check(&allowed, workspace.path().join("link/x")),
                Err(PolicyError::MountThroughSymlink { .. })
            ),
            "an allowed directory is mounted by its own path, never through a link"
        );
    }
}
