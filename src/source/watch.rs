//! A watched checkout: a job at start, then one per burst of changes, once the checkout
//! has been quiet for the debounce time. `.git`, dockhand's own directories and git-ignored
//! files never count as changes, and neither does reading a file (the job's own snapshot
//! reads every file).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use notify::event::{EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::SourceEvent;
use crate::build::cache_dir;
use crate::config::WatchSource;
use crate::job::{Job, Origin, new_job_id, workspace_root};
use crate::util::off_runtime;

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(
        "cannot watch {path}: the system's inotify watch limit is reached; raise it with \
         `sudo sysctl fs.inotify.max_user_watches=524288` (and add that line to \
         /etc/sysctl.conf to keep it), or watch a smaller directory"
    )]
    WatchLimit { path: PathBuf },
    #[error(
        "cannot watch {path}: the system's inotify instance limit is reached; raise it with \
         `sudo sysctl fs.inotify.max_user_instances=1024`"
    )]
    InstanceLimit { path: PathBuf },
    #[error("cannot watch {path}: {cause}")]
    Notify { path: PathBuf, cause: notify::Error },
}

/// Paths named in a job's trigger; the rest are counted.
const TRIGGER_PATHS: usize = 3;

/// Distinct changed paths remembered per run; beyond this, changes are only counted.
const DISTINCT_PATHS: usize = 10_000;

/// Changes seen since the last job, shared with notify's thread.
#[derive(Default)]
struct Pending {
    /// Distinct changed paths in the order they first changed (one save makes several
    /// events for one file), up to [`DISTINCT_PATHS`].
    paths: Vec<PathBuf>,
    seen: std::collections::HashSet<PathBuf>,
    /// Those whose first event made them: gone again by the trigger, they were an
    /// editor's or tool's temporary file, not a change.
    created: std::collections::HashSet<PathBuf>,
    /// Changed paths beyond those remembered.
    uncounted: usize,
    /// Directories created since the watches were last added.
    new_dirs: Vec<PathBuf>,
}

impl Pending {
    fn record(&mut self, path: PathBuf, created: bool) {
        if self.seen.contains(&path) {
            return;
        }
        if self.seen.len() == DISTINCT_PATHS {
            self.uncounted += 1;
            return;
        }
        if created {
            self.created.insert(path.clone());
        }
        self.seen.insert(path.clone());
        self.paths.push(path);
    }

    /// The trigger text for the changes that are still changes (relative to `root`), or
    /// none when every one was a temporary file. Blocking: it looks at the files.
    fn trigger(self, root: &Path) -> Option<String> {
        let real: Vec<PathBuf> = (self.paths.into_iter())
            .filter(|p| !self.created.contains(p) || p.symlink_metadata().is_ok())
            .collect();
        let count = real.len() + self.uncounted;
        if count == 0 {
            return None;
        }
        let mut trigger = (real.iter().take(TRIGGER_PATHS))
            .map(|p| p.strip_prefix(root).unwrap_or(p).display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let named = real.len().min(TRIGGER_PATHS);
        if count > named {
            trigger.push_str(&format!(" and {} more", count - named));
        }
        Some(format!("change: {trigger}"))
    }
}

/// Which paths count as changes.
struct Relevance {
    root: PathBuf,
    /// Directories of the agent's own inside the checkout (workspaces, results, state).
    own_dirs: Vec<PathBuf>,
    /// Every `.gitignore` below the root with its directory, shallowest first.
    gitignores: Vec<Gitignore>,
}

impl Relevance {
    fn new(root: &Path, own_dirs: Vec<PathBuf>) -> Relevance {
        let mut relevance = Relevance {
            root: root.to_path_buf(),
            own_dirs,
            gitignores: Vec::new(),
        };
        relevance.reload_gitignores();
        relevance
    }

    fn reload_gitignores(&mut self) {
        let mut files: Vec<PathBuf> = ignore::WalkBuilder::new(&self.root)
            .hidden(false)
            .require_git(false)
            .filter_entry(|e| e.file_name() != ".git")
            .build()
            .filter_map(Result::ok)
            .filter(|e| e.file_name() == ".gitignore")
            .map(|e| e.into_path())
            .collect();
        files.sort_by_key(|f| f.components().count());
        let exclude = self.root.join(".git/info/exclude");
        if exclude.is_file() {
            files.insert(0, exclude);
        }
        self.gitignores = files
            .iter()
            .filter_map(|file| {
                let dir = if file.ends_with(".git/info/exclude") {
                    self.root.clone()
                } else {
                    file.parent()?.to_path_buf()
                };
                let mut builder = GitignoreBuilder::new(dir);
                builder.add(file);
                builder.build().ok()
            })
            .collect();
    }

    fn counts(&self, path: &Path) -> bool {
        let Ok(relative) = path.strip_prefix(&self.root) else {
            return false;
        };
        // dockhand's state beside a config in a subdirectory (its build cache) is no change
        // either, nor a nested repository's `.git`.
        if (relative.components()).any(|c| c.as_os_str() == ".git" || c.as_os_str() == ".dockhand")
        {
            return false;
        }
        if self.own_dirs.iter().any(|d| path.starts_with(d)) {
            return false;
        }
        let is_dir = path.is_dir();
        let mut ignored = false;
        for gitignore in &self.gitignores {
            if !path.starts_with(gitignore.path()) {
                continue;
            }
            let matched = gitignore.matched_path_or_any_parents(path, is_dir);
            if matched.is_ignore() {
                ignored = true;
            } else if matched.is_whitelist() {
                ignored = false;
            }
        }
        !ignored
    }
}

/// Watches `source.path` until `cancel`. Fails only when the watch cannot be set up; the
/// message then says what to do.
pub async fn run_watch(
    source: WatchSource,
    own_dirs: Vec<PathBuf>,
    tx: mpsc::Sender<SourceEvent>,
    cancel: CancellationToken,
) -> Result<(), WatchError> {
    let root = source.path.canonicalize().unwrap_or(source.path.clone());
    let own_dirs = own_dirs
        .iter()
        .map(|d| d.canonicalize().unwrap_or(d.clone()))
        .collect();
    let relevance = Arc::new(Mutex::new(Relevance::new(&root, own_dirs)));
    let pending = Arc::new(Mutex::new(Pending::default()));
    let wake = Arc::new(Notify::new());
    let mut watcher = {
        let (relevance, pending, wake) = (relevance.clone(), pending.clone(), wake.clone());
        RecommendedWatcher::new(
            move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                if matches!(
                    event.kind,
                    EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(_))
                ) {
                    return;
                }
                let Ok(mut relevance) = relevance.lock() else {
                    return;
                };
                if event.paths.iter().any(|p| p.ends_with(".gitignore")) {
                    relevance.reload_gitignores();
                }
                let changed: Vec<PathBuf> = event
                    .paths
                    .into_iter()
                    .filter(|p| relevance.counts(p))
                    .collect();
                drop(relevance);
                if changed.is_empty() {
                    return;
                }
                if let Ok(mut pending) = pending.lock() {
                    if matches!(
                        event.kind,
                        EventKind::Create(_) | EventKind::Modify(ModifyKind::Name(_))
                    ) {
                        pending
                            .new_dirs
                            .extend(changed.iter().filter(|p| p.is_dir()).cloned());
                    }
                    let created = matches!(event.kind, EventKind::Create(_));
                    for path in changed {
                        pending.record(path, created);
                    }
                }
                wake.notify_one();
            },
            notify::Config::default(),
        )
        .map_err(|e| watch_error(&root, e))?
    };
    watch_tree(&mut watcher, &root, &relevance)?;

    // As `dockhand run` in this checkout finds it, so neither rebuilds what the other built.
    let config_root = root.join(&source.config);
    let config_root = config_root.parent().unwrap_or(&root);
    let build_cache = cache_dir(&workspace_root(config_root));
    let job = |trigger: String| Job {
        id: new_job_id(),
        stream: format!("watch:{}", root.display()),
        origin: Origin::Path { path: root.clone() },
        config_file: source.config.clone(),
        tasks: source.tasks.clone(),
        env: Default::default(),
        timeout: source.timeout,
        trigger,
        on_busy: source.on_change,
        remote: None,
        build_cache: Some(build_cache.clone()),
        trust: Default::default(),
    };
    if tx
        .send(SourceEvent::Job(Box::new(job("start".to_owned()))))
        .await
        .is_err()
    {
        return Ok(());
    }
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = wake.notified() => {}
        }
        if !quiet_for(source.debounce, &wake, &cancel).await {
            return Ok(());
        }
        let mut changes = std::mem::take(&mut *pending.lock().unwrap_or_else(|p| p.into_inner()));
        for dir in std::mem::take(&mut changes.new_dirs) {
            watch_tree(&mut watcher, &dir, &relevance)?;
        }
        let checkout = root.clone();
        let Some(trigger) = off_runtime(move || changes.trigger(&checkout)).await else {
            continue;
        };
        if tx
            .send(SourceEvent::Job(Box::new(job(trigger))))
            .await
            .is_err()
        {
            return Ok(());
        }
    }
}

/// Watches `dir` and every directory below it that counts, one directory at a time: a
/// recursive watch would also cover `.git`, the agent's own workspaces and git-ignored
/// trees such as `target/`, spending inotify watches and events on them.
fn watch_tree(
    watcher: &mut RecommendedWatcher,
    dir: &Path,
    relevance: &Mutex<Relevance>,
) -> Result<(), WatchError> {
    let relevance = relevance.lock().unwrap_or_else(|p| p.into_inner());
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        match watcher.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => {}
            Err(e)
                if matches!(&e.kind, notify::ErrorKind::Io(io) if io.kind() == std::io::ErrorKind::NotFound)
                    || matches!(e.kind, notify::ErrorKind::PathNotFound) =>
            {
                continue;
            }
            Err(e) => return Err(watch_error(&dir, e)),
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) && relevance.counts(&path) {
                stack.push(path);
            }
        }
    }
    Ok(())
}

/// Waits until no change has arrived for `debounce`; false when cancelled first.
async fn quiet_for(debounce: Duration, wake: &Notify, cancel: &CancellationToken) -> bool {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return false,
            _ = wake.notified() => continue,
            _ = tokio::time::sleep(debounce) => return true,
        }
    }
}

fn watch_error(path: &Path, error: notify::Error) -> WatchError {
    let path = path.to_path_buf();
    let limit = matches!(error.kind, notify::ErrorKind::MaxFilesWatch)
        || matches!(&error.kind, notify::ErrorKind::Io(e) if e.raw_os_error() == Some(28));
    let instances = matches!(&error.kind, notify::ErrorKind::Io(e) if e.raw_os_error() == Some(24));
    if limit {
        WatchError::WatchLimit { path }
    } else if instances {
        WatchError::InstanceLimit { path }
    } else {
        WatchError::Notify { path, cause: error }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inotify_limits_say_which_sysctl_to_raise() {
        let dir = Path::new("/src/app");
        let watches = watch_error(dir, notify::Error::new(notify::ErrorKind::MaxFilesWatch));
        assert!(
            watches.to_string().contains("fs.inotify.max_user_watches"),
            "{watches}"
        );
        let enospc = notify::Error::io(std::io::Error::from_raw_os_error(28));
        assert!(matches!(
            watch_error(dir, enospc),
            WatchError::WatchLimit { .. }
        ));
        let emfile = notify::Error::io(std::io::Error::from_raw_os_error(24));
        let instances = watch_error(dir, emfile).to_string();
        assert!(
            instances.contains("fs.inotify.max_user_instances"),
            "{instances}"
        );
    }

    #[test]
    fn what_counts_as_a_change() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path().canonicalize().unwrap();
        std::fs::write(r.join(".gitignore"), "target/\n*.log\n").unwrap();
        std::fs::create_dir_all(r.join("sub")).unwrap();
        std::fs::write(r.join("sub/.gitignore"), "local.txt\n!keep.log\n").unwrap();
        let relevance = Relevance::new(&r, vec![r.join("work")]);
        for (path, counts) in [
            ("src/main.rs", true),
            ("target/debug/x", false),
            ("a.log", false),
            ("sub/local.txt", false),
            ("sub/keep.log", true),
            ("local.txt", true),
            (".git/index", false),
            (".dockhand/results/x", false),
            ("sub/.dockhand/cache/digests.tsv", false),
            ("work/job/file", false),
        ] {
            assert_eq!(relevance.counts(&r.join(path)), counts, "{path}");
        }
    }

    #[test]
    fn a_temporary_file_gone_by_the_trigger_is_no_change() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::write(r.join("main.rs"), "x").unwrap();
        let mut changes = Pending::default();
        changes.record(r.join("sed0hvPCY"), true);
        changes.record(r.join("main.rs"), false);
        changes.record(r.join("sed0hvPCY"), false);
        changes.record(r.join("deleted.rs"), false);
        assert_eq!(
            changes.trigger(r).as_deref(),
            Some("change: main.rs, deleted.rs"),
            "a removed tracked file is a change; the editor's temporary file is not"
        );
        let mut only_temporary = Pending::default();
        only_temporary.record(r.join(".main.rs.swp"), true);
        assert_eq!(only_temporary.trigger(r), None);
        let mut many = Pending::default();
        for i in 0..5 {
            std::fs::write(r.join(format!("f{i}")), "").unwrap();
            many.record(r.join(format!("f{i}")), true);
        }
        assert_eq!(
            many.trigger(r).as_deref(),
            Some("change: f0, f1, f2 and 2 more")
        );
    }
}
