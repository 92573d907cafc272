//! Bind mounts, resolved the moment their container starts. A mount's host path is walked
//! component by component from the workspace (or an allowed host directory) without
//! following links: a symlink anywhere on the path is refused, a missing directory is
//! created by us rather than by the engine (which would follow links), and the engine is
//! handed the resolved path. Running containers of any dockhand job that could rewrite a
//! component of that path (they bind-mount one of its ancestors read-write) are paused
//! from the walk until the new container has started, so nothing can swap a directory for
//! a link between the check and the engine's mount. dockhand's own directories (results,
//! caches, state) are never mounted: a mount inside one is refused, and one a mount
//! contains is hidden under an empty read-only tmpfs.

use std::io;
use std::path::{Component, Path, PathBuf};

use super::engine::ContainerEngine;
use super::policy::{PolicyError, Sandbox};
use crate::collector::Mount;
use crate::docker::{DockerError, Pause};

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
    Protected(PathBuf),
    Io { path: PathBuf, message: String },
}

impl Refusal {
    pub fn into_error(self, task: &str, mount: &Mount, sandbox: &Sandbox) -> PolicyError {
        let (task, host) = (task.to_owned(), mount.host.clone());
        match self {
            Refusal::Outside => PolicyError::MountOutside {
                task,
                host,
                workspace: sandbox.workspace.clone(),
                knob: sandbox.widened_by.host_mounts(),
            },
            Refusal::Symlink(link) => PolicyError::MountThroughSymlink { task, host, link },
            Refusal::NotADirectory(path) => PolicyError::MountNotADirectory { task, host, path },
            Refusal::Special { path, kind } => PolicyError::MountSpecial { task, path, kind },
            Refusal::DockerSocket => PolicyError::DockerSocket {
                task,
                host,
                knob: sandbox.widened_by.docker_socket(),
            },
            Refusal::Protected(dir) => PolicyError::MountProtected { task, host, dir },
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

/// A mount's host path as the engine gets it, and dockhand's own directories inside it
/// (relative to it) to hide.
#[derive(Debug, PartialEq, Eq)]
pub struct Resolved {
    pub path: PathBuf,
    pub hidden: Vec<PathBuf>,
    /// The checkout's `.git` inside it (relative to it), mounted again read-only: a task
    /// that could write it (hooks, `core.fsmonitor`) would run code on the host at the
    /// next `git status` there.
    pub read_only: Vec<PathBuf>,
    /// The path is inside `.git` itself: mounted read-only whatever the config says.
    pub forced_read_only: bool,
}

/// Where mounts may come from, each path as written and as resolved: the workspace first,
/// then the operator's allowed host directories; and what they may not reach.
pub struct Reach {
    roots: Vec<(PathBuf, PathBuf)>,
    workspace: PathBuf,
    protected: Vec<PathBuf>,
    /// The workspace's `.git`, when there is one.
    git: Option<PathBuf>,
    allow_docker_socket: bool,
}

impl Reach {
    /// Resolves the sandbox's directories. Blocking: run it off the runtime.
    pub fn of(sandbox: &Sandbox) -> Reach {
        let both = |dir: &PathBuf| {
            let lexical = lexical(dir);
            let resolved = dir.canonicalize().unwrap_or_else(|_| lexical.clone());
            (lexical, resolved)
        };
        let roots: Vec<(PathBuf, PathBuf)> = std::iter::once(&sandbox.workspace)
            .chain(&sandbox.allow_host_mounts)
            .map(both)
            .collect();
        let resolved: Vec<PathBuf> = sandbox.protected.iter().map(|d| both(d).1).collect();
        let mut protected: Vec<PathBuf> = Vec::new();
        for (i, dir) in resolved.iter().enumerate() {
            let covered = resolved
                .iter()
                .enumerate()
                .any(|(j, other)| dir.starts_with(other) && (dir != other || j < i));
            if !covered {
                protected.push(dir.clone());
            }
        }
        let workspace = roots[0].1.clone();
        let git = Some(workspace.join(".git")).filter(|g| std::fs::symlink_metadata(g).is_ok());
        Reach {
            workspace,
            roots,
            protected,
            git,
            allow_docker_socket: sandbox.allow_docker_socket,
        }
    }

    /// The root holding `host` (resolved) and the rest of the path below it.
    fn locate<'h>(&self, host: &'h Path) -> Option<(&Path, &'h Path)> {
        self.roots.iter().find_map(|(lexical, resolved)| {
            let rest = host
                .strip_prefix(lexical)
                .or_else(|_| host.strip_prefix(resolved))
                .ok()?;
            Some((resolved.as_path(), rest))
        })
    }

    /// Where `host` will be once resolved, if nothing on the way is a link: the path the
    /// gate compares with other containers' mounts.
    pub fn as_mounted(&self, host: &Path) -> Option<PathBuf> {
        let host = lexical(host);
        let (root, rest) = self.locate(&host)?;
        Some(root.join(rest))
    }

    /// The resolved host path of `host` (absolute, as the collector made it), walked from
    /// the root that holds it without following any link. Blocking.
    pub fn resolve(&self, host: &Path, missing: Missing) -> Result<Resolved, Refusal> {
        let path = self.walk(host, missing)?;
        let inside_workspace = path.starts_with(&self.workspace);
        let mut hidden = Vec::new();
        for dir in &self.protected {
            let owns_workspace = self.workspace.starts_with(dir);
            if path.starts_with(dir) && !(inside_workspace && owns_workspace) {
                return Err(Refusal::Protected(dir.clone()));
            }
            if let Ok(below) = dir.strip_prefix(&path) {
                hidden.push(below.to_path_buf());
            }
        }
        let git = self.git.as_deref();
        let read_only = git
            .and_then(|git| git.strip_prefix(&path).ok())
            .map(Path::to_path_buf)
            .into_iter()
            .collect();
        let forced_read_only = git.is_some_and(|git| path.starts_with(git));
        Ok(Resolved {
            path,
            hidden,
            read_only,
            forced_read_only,
        })
    }

    fn walk(&self, host: &Path, missing: Missing) -> Result<PathBuf, Refusal> {
        let host = lexical(host);
        if is_docker_socket(&host) {
            return if self.allow_docker_socket {
                Ok(host.canonicalize().unwrap_or(host))
            } else {
                Err(Refusal::DockerSocket)
            };
        }
        let (root, rest) = self.locate(&host).ok_or(Refusal::Outside)?;
        let mut path = root.to_path_buf();
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
}

/// Makes `dir`, one of dockhand's own directories, as a real directory: inside
/// `workspace` (which tasks can write to) it is walked from there without following any
/// link, elsewhere made as usual.
pub fn make_own_dir(workspace: &Path, dir: &Path) -> io::Result<()> {
    let sandbox = Sandbox {
        workspace: workspace.to_path_buf(),
        ..Sandbox::default()
    };
    let reach = Reach::of(&sandbox);
    if reach.locate(&lexical(dir)).is_none() {
        return std::fs::create_dir_all(dir);
    }
    let made = reach.walk(dir, Missing::Create).map_err(|refusal| {
        let why = match refusal {
            Refusal::Symlink(link) => format!("{} is a symlink", link.display()),
            Refusal::NotADirectory(path) => format!("{} is not a directory", path.display()),
            other => format!("{other:?}"),
        };
        io::Error::other(format!(
            "dockhand's own directory {} cannot be made safely: {why}",
            dir.display()
        ))
    })?;
    if made.is_dir() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "dockhand's own directory {} is not a directory",
            dir.display()
        )))
    }
}

/// The Docker socket's paths, as written and resolved.
fn is_docker_socket(path: &Path) -> bool {
    DOCKER_SOCKETS.iter().any(|socket| {
        let socket = Path::new(socket);
        path == socket || socket.canonicalize().is_ok_and(|real| path == real)
    })
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
pub fn lexical(path: &Path) -> PathBuf {
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

/// What a container's mounts become: the engine's `host:container[:ro]` binds and the
/// container paths hidden under an empty read-only tmpfs.
#[derive(Debug, Default)]
pub struct ContainerMounts {
    pub binds: Vec<String>,
    pub hidden: Vec<String>,
}

/// Resolves `mounts` for a container about to start: closes the gate (see [`MountGate`]),
/// then walks each host path, creating missing directories. Returns the container's mounts
/// (or why one is refused) and the gate to open once the container has started.
pub async fn resolve_behind_gate<E: ContainerEngine>(
    engine: &E,
    sandbox: &Sandbox,
    task: &str,
    mounts: &[Mount],
) -> Result<(Result<ContainerMounts, PolicyError>, MountGate), DockerError> {
    let sandbox = sandbox.clone();
    let (reach, sandbox) = blocking(move || (Reach::of(&sandbox), sandbox)).await?;
    let as_mounted: Vec<PathBuf> = mounts
        .iter()
        .filter_map(|m| reach.as_mounted(&m.host))
        .collect();
    let gate = MountGate::close(engine, &as_mounted).await?;
    let (task, mounts) = (task.to_owned(), mounts.to_vec());
    let resolved = blocking(move || {
        let mut out = ContainerMounts::default();
        for m in &mounts {
            let resolved = reach
                .resolve(&m.host, Missing::Create)
                .map_err(|refusal| refusal.into_error(&task, m, &sandbox))?;
            let read_only = m.read_only || resolved.forced_read_only;
            let mode = if read_only { ":ro" } else { "" };
            out.binds
                .push(format!("{}:{}{mode}", resolved.path.display(), m.container));
            for below in &resolved.read_only {
                out.binds.push(format!(
                    "{}:{}:ro",
                    resolved.path.join(below).display(),
                    Path::new(&m.container).join(below).display()
                ));
            }
            for below in resolved.hidden {
                let inside = Path::new(&m.container).join(below);
                out.hidden.push(inside.display().to_string());
            }
        }
        Ok(out)
    })
    .await;
    match resolved {
        Ok(mounts) => Ok((mounts, gate)),
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

/// How long a gate waits for another process's gate to resume a container.
const OTHER_GATE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Held while a container with bind mounts is checked, created and started.
pub struct MountGate {
    _turn: tokio::sync::MutexGuard<'static, ()>,
    paused: Vec<String>,
}

impl MountGate {
    /// Pauses every running dockhand container with a read-write bind mount of a strict
    /// ancestor of one of `paths` (as resolved roots see them): those could rename a
    /// component of the path while it is being checked and mounted.
    pub async fn close<E: ContainerEngine>(
        engine: &E,
        paths: &[PathBuf],
    ) -> Result<MountGate, DockerError> {
        let turn = GATE.lock().await;
        let mut gate = MountGate {
            _turn: turn,
            paused: Vec::new(),
        };
        let writers = match engine.running_writable_binds().await {
            Ok(writers) => writers,
            Err(e) => {
                gate.open(engine).await;
                return Err(e);
            }
        };
        for (id, source) in writers {
            let covers = paths
                .iter()
                .any(|path| path != &source && path.starts_with(&source));
            if covers
                && !gate.paused.contains(&id)
                && let Err(e) = gate.pause(engine, id).await
            {
                gate.open(engine).await;
                return Err(e);
            }
        }
        Ok(gate)
    }

    /// Pauses `id` and remembers to resume it. One paused by another dockhand process is
    /// waited for until that process resumes it, then paused again here: the pause must
    /// last until this gate opens, not until the other one does.
    async fn pause<E: ContainerEngine>(
        &mut self,
        engine: &E,
        id: String,
    ) -> Result<(), DockerError> {
        let deadline = tokio::time::Instant::now() + OTHER_GATE_WAIT;
        loop {
            match engine.pause(&id).await? {
                Pause::Paused => {
                    self.paused.push(id);
                    return Ok(());
                }
                Pause::NotRunning => return Ok(()),
                Pause::AlreadyPaused if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Pause::AlreadyPaused => return Err(DockerError::PausedElsewhere(id)),
            }
        }
    }

    /// Resumes what the gate paused.
    pub async fn open<E: ContainerEngine>(self, engine: &E) {
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
        let reach = Reach::of(&sandbox);
        let check = |host: PathBuf, missing| reach.walk(&host, missing);

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

        assert!(check(allowed.path().join("cache"), Missing::Create).is_ok());
        let fifo = ws.join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.unwrap().success());
        assert!(matches!(
            check(fifo, Missing::Allow),
            Err(Refusal::Special { kind: "a FIFO", .. })
        ));
    }

    #[test]
    fn a_root_reached_through_a_link_is_gated_by_its_real_path() {
        let real = tempfile::tempdir().unwrap();
        let links = tempfile::tempdir().unwrap();
        let real_path = real.path().canonicalize().unwrap();
        let link = links.path().join("ws");
        symlink(&real_path, &link).unwrap();
        let reach = Reach::of(&Sandbox {
            workspace: link.clone(),
            ..Sandbox::default()
        });
        for written in [link.join("sub"), real_path.join("sub")] {
            assert_eq!(reach.as_mounted(&written), Some(real_path.join("sub")));
        }
    }

    #[test]
    fn dockhand_s_own_directories_are_refused_or_hidden() {
        let workspace = tempfile::tempdir().unwrap();
        let ws = workspace.path().canonicalize().unwrap();
        std::fs::create_dir_all(ws.join(".dockhand/results")).unwrap();
        let reach = Reach::of(&Sandbox {
            workspace: ws.clone(),
            protected: vec![ws.join(".dockhand")],
            ..Sandbox::default()
        });
        let whole = reach.resolve(&ws, Missing::Allow).unwrap();
        assert_eq!(whole.hidden, [PathBuf::from(".dockhand")]);
        assert_eq!(
            reach.resolve(&ws.join(".dockhand/results"), Missing::Allow),
            Err(Refusal::Protected(ws.join(".dockhand")))
        );

        let root = tempfile::tempdir().unwrap();
        let root = root.path().canonicalize().unwrap();
        let job = root.join("work/job-1");
        std::fs::create_dir_all(&job).unwrap();
        let agent = Reach::of(&Sandbox {
            workspace: job.clone(),
            allow_host_mounts: vec![root.clone()],
            protected: vec![root.join("work"), root.join("state")],
            ..Sandbox::default()
        });
        assert!(agent.resolve(&job.join("src"), Missing::Allow).is_ok());
        assert_eq!(
            agent.resolve(&root.join("state/http.json"), Missing::Allow),
            Err(Refusal::Protected(root.join("state")))
        );
        assert_eq!(
            agent.resolve(&root.join("work/job-2"), Missing::Allow),
            Err(Refusal::Protected(root.join("work"))),
            "another job's workspace"
        );
        let above = agent.resolve(&root, Missing::Allow).unwrap();
        assert_eq!(
            above.hidden,
            [PathBuf::from("work"), PathBuf::from("state")]
        );
    }
}
