//! Bind mounts, resolved the moment their container starts. A mount's host path is walked
//! component by component from the workspace (or an allowed host directory) without
//! following links: a symlink anywhere on the path is refused, a missing directory is
//! created by us rather than by the engine (which would follow links), and the engine is
//! handed the resolved path. Running containers of any dockhand job that could rewrite a
//! component of that path (they bind-mount one of its ancestors read-write) are paused
//! from the walk until the new container has started, so nothing can swap a directory for
//! a link between the check and the engine's mount.

use std::io;
use std::path::{Component, Path, PathBuf};

use super::policy::{PolicyError, Sandbox};
use crate::collector::Mount;
use crate::docker::{DockerError, Engine};

/// Where the Docker socket may live; mounting it needs `allow_docker_socket`.
const DOCKER_SOCKETS: &[&str] = &["/var/run/docker.sock", "/run/docker.sock"];

/// Why a mount's host path cannot be mounted, before the task name is added.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Outside,
    Symlink(PathBuf),
    NotADirectory(PathBuf),
    Special { path: PathBuf, kind: &'static str },
    DockerSocket,
    Io { path: PathBuf, message: String },
}

impl Refusal {
    pub fn into_error(self, task: &str, mount: &Mount, workspace: &Path) -> PolicyError {
        let (task, host) = (task.to_owned(), mount.host.clone());
        match self {
            Refusal::Outside => PolicyError::MountOutside {
                task,
                host,
                workspace: workspace.to_path_buf(),
            },
            Refusal::Symlink(link) => PolicyError::MountThroughSymlink { task, host, link },
            Refusal::NotADirectory(path) => PolicyError::MountNotADirectory { task, host, path },
            Refusal::Special { path, kind } => PolicyError::MountSpecial { task, path, kind },
            Refusal::DockerSocket => PolicyError::DockerSocket { task, host },
            Refusal::Io { path, message } => PolicyError::MountUnreadable {
                task,
                path,
                message,
            },
        }
    }
}

/// What to do with a missing component.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// Before the job: a later task may still create it.
    Allow,
    /// When the container starts: create it as a directory, as the engine would.
    Create,
}

/// The roots a mount may start from, as written and as resolved: the workspace first,
/// then the operator's allowed host directories.
pub fn roots(sandbox: &Sandbox) -> Vec<(PathBuf, PathBuf)> {
    std::iter::once(&sandbox.workspace)
        .chain(&sandbox.allow_host_mounts)
        .map(|root| {
            let lexical = lexical(root);
            let resolved = root.canonicalize().unwrap_or_else(|_| lexical.clone());
            (lexical, resolved)
        })
        .collect()
}

/// The Docker socket's paths, as written and resolved.
fn is_docker_socket(path: &Path) -> bool {
    DOCKER_SOCKETS.iter().any(|socket| {
        let socket = Path::new(socket);
        path == socket || socket.canonicalize().is_ok_and(|real| path == real)
    })
}

/// The resolved host path of `host` (absolute, as the collector made it), walked from the
/// first root that holds it without following any link. Blocking: run it off the runtime.
pub fn resolve(
    host: &Path,
    roots: &[(PathBuf, PathBuf)],
    allow_docker_socket: bool,
    missing: Missing,
) -> Result<PathBuf, Refusal> {
    let host = lexical(host);
    if is_docker_socket(&host) {
        return if allow_docker_socket {
            Ok(host.canonicalize().unwrap_or(host))
        } else {
            Err(Refusal::DockerSocket)
        };
    }
    let (resolved_root, rest) = roots
        .iter()
        .find_map(|(lexical, resolved)| {
            let rest = host
                .strip_prefix(lexical)
                .or_else(|_| host.strip_prefix(resolved))
                .ok()?;
            Some((resolved, rest))
        })
        .ok_or(Refusal::Outside)?;
    let mut path = resolved_root.clone();
    let parts: Vec<&std::ffi::OsStr> = rest.iter().collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        path.push(part);
        let io_error = |path: &Path, e: io::Error| Refusal::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => match missing {
                Missing::Allow => {
                    path.extend(&parts[i + 1..]);
                    return Ok(path);
                }
                Missing::Create => match std::fs::create_dir(&path) {
                    Ok(()) => continue,
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        std::fs::symlink_metadata(&path).map_err(|e| io_error(&path, e))?
                    }
                    Err(e) => return Err(io_error(&path, e)),
                },
            },
            Err(e) => return Err(io_error(&path, e)),
        };
        let kind = meta.file_type();
        if kind.is_symlink() {
            return Err(Refusal::Symlink(path));
        }
        if kind.is_dir() {
            continue;
        }
        if !last {
            return Err(Refusal::NotADirectory(path));
        }
        if kind.is_file() {
            break;
        }
        if is_docker_socket(&path) {
            return Err(Refusal::DockerSocket);
        }
        return Err(Refusal::Special {
            kind: special_kind(&kind),
            path,
        });
    }
    Ok(path)
}

fn special_kind(kind: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_socket() {
        "a socket"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_block_device() || kind.is_char_device() {
        "a device node"
    } else {
        "not a file or directory"
    }
}

/// `path` with `.` and `..` applied without touching the filesystem.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Resolves `mounts` for a container about to start: closes the gate (see [`MountGate`]),
/// then walks each host path, creating missing directories. Returns the engine's
/// `host:container[:ro]` binds (or why one is refused) and the gate to open once the
/// container has started.
pub async fn resolve_behind_gate(
    engine: &Engine,
    sandbox: &Sandbox,
    task: &str,
    mounts: &[Mount],
) -> Result<(Result<Vec<String>, PolicyError>, MountGate), DockerError> {
    let (sandbox, mounts) = (sandbox.clone(), mounts.to_vec());
    let roots = blocking(move || (roots(&sandbox), sandbox, mounts)).await?;
    let (roots, sandbox, mounts) = roots;
    let as_mounted: Vec<PathBuf> = mounts
        .iter()
        .filter_map(|m| {
            let host = lexical(&m.host);
            roots.iter().find_map(|(lexical, resolved)| {
                let rest = host.strip_prefix(lexical).ok()?;
                Some(resolved.join(rest))
            })
        })
        .collect();
    let gate = MountGate::close(engine, &as_mounted).await?;
    let task = task.to_owned();
    let binds = blocking(move || {
        mounts
            .iter()
            .map(|m| {
                let path = resolve(
                    &m.host,
                    &roots,
                    sandbox.allow_docker_socket,
                    Missing::Create,
                )
                .map_err(|refusal| refusal.into_error(&task, m, &sandbox.workspace))?;
                let mode = if m.read_only { ":ro" } else { "" };
                Ok(format!("{}:{}{mode}", path.display(), m.container))
            })
            .collect()
    })
    .await;
    match binds {
        Ok(binds) => Ok((binds, gate)),
        Err(e) => {
            gate.open(engine).await;
            Err(e)
        }
    }
}

/// Runs filesystem work off the runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, DockerError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| DockerError::Thread(e.to_string()))
}

/// One container start at a time per process: a gate pauses the writers of the paths it
/// checks, and two gates pausing and resuming the same container would undo each other.
static GATE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Held while a container with bind mounts is checked, created and started.
pub struct MountGate {
    _turn: tokio::sync::MutexGuard<'static, ()>,
    paused: Vec<String>,
}

impl MountGate {
    /// Pauses every running dockhand container with a read-write bind mount of a strict
    /// ancestor of one of `paths` (as resolved roots see them): those could rename a
    /// component of the path while it is being checked and mounted.
    pub async fn close(engine: &Engine, paths: &[PathBuf]) -> Result<MountGate, DockerError> {
        let turn = GATE.lock().await;
        let mut gate = MountGate {
            _turn: turn,
            paused: Vec::new(),
        };
        let writers = engine.running_writable_binds().await?;
        for (id, source) in writers {
            let covers = paths
                .iter()
                .any(|path| path != &source && path.starts_with(&source));
            if covers && !gate.paused.contains(&id) {
                match engine.pause(&id).await {
                    Ok(true) => gate.paused.push(id),
                    Ok(false) => {}
                    Err(e) => {
                        gate.open(engine).await;
                        return Err(e);
                    }
                }
            }
        }
        Ok(gate)
    }

    /// Resumes what the gate paused.
    pub async fn open(self, engine: &Engine) {
        for id in &self.paused {
            if let Err(e) = engine.unpause(id).await {
                tracing::warn!("resuming container {id} after a mount check failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn paths_are_walked_without_following_links() {
        let workspace = tempfile::tempdir().unwrap();
        let allowed = tempfile::tempdir().unwrap();
        let ws = workspace.path().canonicalize().unwrap();
        std::fs::create_dir_all(ws.join("data/sub")).unwrap();
        std::fs::write(ws.join("data/file"), "x").unwrap();
        symlink("/", ws.join("escape")).unwrap();
        symlink(ws.join("data"), ws.join("inner-link")).unwrap();
        let sandbox = Sandbox {
            workspace: ws.clone(),
            allow_host_mounts: vec![allowed.path().to_path_buf()],
            ..Sandbox::default()
        };
        let roots = roots(&sandbox);
        let check = |host: PathBuf, missing| resolve(&host, &roots, false, missing);

        assert_eq!(
            check(ws.join("data/sub"), Missing::Allow),
            Ok(ws.join("data/sub"))
        );
        assert_eq!(
            check(ws.join("data/file"), Missing::Allow),
            Ok(ws.join("data/file"))
        );
        assert_eq!(
            check(ws.join("escape/etc"), Missing::Allow),
            Err(Refusal::Symlink(ws.join("escape")))
        );
        assert_eq!(
            check(ws.join("inner-link"), Missing::Allow),
            Err(Refusal::Symlink(ws.join("inner-link"))),
            "even a link that stays inside is refused: its target can change"
        );
        assert_eq!(
            check(ws.join("data/file/x"), Missing::Allow),
            Err(Refusal::NotADirectory(ws.join("data/file")))
        );
        assert_eq!(
            check(ws.join("../.."), Missing::Allow),
            Err(Refusal::Outside)
        );
        assert_eq!(
            check(PathBuf::from("/var/run/docker.sock"), Missing::Allow),
            Err(Refusal::DockerSocket)
        );
        assert!(
            resolve(
                Path::new("/var/run/docker.sock"),
                &roots,
                true,
                Missing::Allow
            )
            .is_ok()
        );

        assert_eq!(
            check(ws.join("new/dir"), Missing::Allow),
            Ok(ws.join("new/dir"))
        );
        assert!(
            !ws.join("new").exists(),
            "checking before the job creates nothing"
        );
        assert_eq!(
            check(ws.join("new/dir"), Missing::Create),
            Ok(ws.join("new/dir"))
        );
        assert!(ws.join("new/dir").is_dir());

        let inside_allowed = allowed.path().join("cache");
        assert!(check(inside_allowed, Missing::Create).is_ok());
        let fifo = ws.join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        assert!(matches!(
            check(fifo, Missing::Allow),
            Err(Refusal::Special { kind: "a FIFO", .. })
        ));
    }
}
