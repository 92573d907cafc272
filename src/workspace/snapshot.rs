//! Snapshots of a checkout: what git would track (`.gitignore`s and `.git/info/exclude`
//! respected, `.git` and dockhand's own state left out), symlinks as symlinks, modes and
//! modification times kept.
//!
//! Copying every file for every job costs about 0.7 ms per file on this machine's disk, so
//! a snapshot goes in two steps. The checkout is first synchronised into a mirror only the
//! agent writes: files whose size, mtime or mode differ are copied (to a temporary name,
//! then renamed, never written in place), files gone from the checkout are deleted. The
//! job's fresh directory is then a tree of hard links into the mirror. An edit in the
//! checkout during the run reaches neither. A job that writes into its own files writes
//! into the mirror's too (they are one inode), and may put their mtime back: when the job
//! ends, [`release`] drops from the mirror every file whose inode changed after it was
//! linked (its ctime, which no process can set back), so the next synchronisation copies
//! it afresh. Jobs of one source running at the same time share those inodes while they run.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot read {path}: {cause}")]
    Read { path: PathBuf, cause: io::Error },
    #[error("cannot write {path}: {cause}")]
    Write { path: PathBuf, cause: io::Error },
}

/// What a snapshot took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Copied {
    /// Files in the snapshot.
    pub files: u64,
    pub bytes: u64,
    /// Files copied into the mirror because they were new or changed.
    pub copied: u64,
}

/// A job directory's links into a mirror, for [`release`] when the job ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Linked {
    pub mirror: PathBuf,
    /// The filesystem's clock (as ctime, seconds and nanoseconds) once every link was made.
    pub since: (i64, i64),
}

/// Snapshots `from` into the existing, empty directory `to` through the mirror `mirror`
/// (created when missing), leaving out `skip` (the agent's own directories when they live
/// inside the checkout).
pub fn snapshot(
    from: &Path,
    mirror: &Path,
    to: &Path,
    skip: &[PathBuf],
) -> Result<(Copied, Linked), SnapshotError> {
    let lock = mirror_lock(mirror);
    let _synchronising = lock.lock().unwrap_or_else(|p| p.into_inner());
    let started = std::time::Instant::now();
    let mut copied = sync_mirror(from, mirror, skip)?;
    let synced = started.elapsed();
    copied.files = link_tree(mirror, to)?;
    let linked = Linked {
        mirror: mirror.to_path_buf(),
        since: filesystem_now(mirror)?,
    };
    tracing::debug!(?synced, linked = ?(started.elapsed() - synced), "snapshot of {}", from.display());
    Ok((copied, linked))
}

/// The filesystem's own (coarse) clock, as the ctime of a file made beside the mirror,
/// once it has moved past the tick of the last link: every link is then older than the
/// answer, and every write a job makes later is not.
fn filesystem_now(mirror: &Path) -> Result<(i64, i64), SnapshotError> {
    let probe = mirror.with_extension("linked");
    let tick = || -> io::Result<(i64, i64)> {
        let made = fs::File::create(&probe)?.metadata()?;
        fs::remove_file(&probe)?;
        Ok((made.ctime(), made.ctime_nsec()))
    };
    let linked = tick().map_err(write_error(&probe))?;
    loop {
        let now = tick().map_err(write_error(&probe))?;
        if now > linked {
            return Ok(now);
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Drops from the mirror every file whose inode changed since the job's links were made:
/// a job wrote into it through its link (and may have put the mtime back, or removed or
/// renamed its link since), and a later job must not see that. Links and unlinks by other
/// jobs of the source change the ctime too; those files are merely copied again. Returns
/// how many were dropped.
pub fn release(linked: &Linked) -> Result<u64, SnapshotError> {
    let lock = mirror_lock(&linked.mirror);
    let _synchronising = lock.lock().unwrap_or_else(|p| p.into_inner());
    let mut dropped = 0;
    let mut dirs = vec![linked.mirror.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).map_err(read_error(&dir))? {
            let path = entry.map_err(read_error(&dir))?.path();
            let metadata = fs::symlink_metadata(&path).map_err(read_error(&path))?;
            if metadata.is_dir() {
                dirs.push(path);
            } else if metadata.is_file()
                && (metadata.ctime(), metadata.ctime_nsec()) >= linked.since
            {
                fs::remove_file(&path).map_err(write_error(&path))?;
                dropped += 1;
            }
        }
    }
    Ok(dropped)
}

/// One lock per mirror: two jobs of one stream may snapshot at once.
fn mirror_lock(mirror: &Path) -> Arc<Mutex<()>> {
    static LOCKS: LazyLock<Mutex<std::collections::HashMap<PathBuf, Arc<Mutex<()>>>>> =
        LazyLock::new(Default::default);
    let mut locks = LOCKS.lock().unwrap_or_else(|p| p.into_inner());
    locks.entry(mirror.to_path_buf()).or_default().clone()
}

fn read_error(path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + '_ {
    move |cause| SnapshotError::Read {
        path: path.to_path_buf(),
        cause,
    }
}

fn write_error(path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + '_ {
    move |cause| SnapshotError::Write {
        path: path.to_path_buf(),
        cause,
    }
}

fn sync_mirror(from: &Path, mirror: &Path, skip: &[PathBuf]) -> Result<Copied, SnapshotError> {
    let skip: Vec<PathBuf> = skip
        .iter()
        .map(|d| d.canonicalize().unwrap_or(d.clone()))
        .collect();
    let root = from.canonicalize().map_err(read_error(from))?;
    fs::create_dir_all(mirror).map_err(write_error(mirror))?;
    let walk_root = root.clone();
    let walker = ignore::WalkBuilder::new(&root)
        .standard_filters(false)
        .hidden(false)
        .follow_links(false)
        .git_ignore(true)
        .git_exclude(true)
        .require_git(false)
        .parents(false)
        .filter_entry(move |e| {
            let name = e.file_name();
            let top = e.path().parent() == Some(walk_root.as_path());
            !(name == ".git" || (top && name == ".dockhand") || skip.iter().any(|d| e.path() == d))
        })
        .build();
    let mut copied = Copied::default();
    let mut present: HashSet<PathBuf> = HashSet::new();
    for entry in walker {
        let entry = entry.map_err(|e| SnapshotError::Read {
            path: root.clone(),
            cause: e
                .into_io_error()
                .unwrap_or_else(|| io::Error::other("walk failed")),
        })?;
        let Ok(relative) = entry.path().strip_prefix(&root) else {
            continue;
        };
        if relative.as_os_str().is_empty() {
            continue;
        }
        let (Some(kind), source) = (entry.file_type(), entry.path()) else {
            continue;
        };
        let target = mirror.join(relative);
        let existing = fs::symlink_metadata(&target).ok();
        if kind.is_dir() {
            if !existing.as_ref().is_some_and(|m| m.is_dir()) {
                remove_any(&target)?;
                fs::create_dir(&target).map_err(write_error(&target))?;
            }
        } else if kind.is_symlink() {
            let link = fs::read_link(source).map_err(read_error(source))?;
            if fs::read_link(&target).ok().as_ref() != Some(&link) {
                remove_any(&target)?;
                std::os::unix::fs::symlink(&link, &target).map_err(write_error(&target))?;
            }
        } else if kind.is_file() {
            let wanted = fs::metadata(source).map_err(read_error(source))?;
            copied.bytes += wanted.len();
            if !existing.as_ref().is_some_and(|m| same_file(m, &wanted)) {
                copy_file(source, &target, &wanted)?;
                copied.copied += 1;
            }
        } else {
            continue;
        }
        present.insert(relative.to_path_buf());
    }
    remove_absent(mirror, mirror, &present)?;
    Ok(copied)
}

fn same_file(mirror: &fs::Metadata, source: &fs::Metadata) -> bool {
    mirror.is_file()
        && mirror.len() == source.len()
        && mirror.mtime() == source.mtime()
        && mirror.mtime_nsec() == source.mtime_nsec()
        && mirror.mode() == source.mode()
}

/// Copies to a temporary name and renames it over `to`, so a job holding a hard link to the
/// old file keeps the old contents.
fn copy_file(from: &Path, to: &Path, metadata: &fs::Metadata) -> Result<(), SnapshotError> {
    let name = to.file_name().unwrap_or_default().to_string_lossy();
    let partial = to.with_file_name(format!(".{name}.dockhand-partial"));
    fs::copy(from, &partial).map_err(|source| match fs::metadata(from) {
        Err(_) => SnapshotError::Read {
            path: from.to_path_buf(),
            cause: source,
        },
        Ok(_) => SnapshotError::Write {
            path: partial.clone(),
            cause: source,
        },
    })?;
    let modified = metadata.modified().map_err(read_error(from))?;
    fs::File::options()
        .write(true)
        .open(&partial)
        .and_then(|f| f.set_modified(modified))
        .map_err(write_error(&partial))?;
    if fs::symlink_metadata(to).is_ok_and(|m| m.is_dir()) {
        remove_any(to)?;
    }
    fs::rename(&partial, to).map_err(write_error(to))
}

fn remove_any(path: &Path) -> Result<(), SnapshotError> {
    let removed = match fs::symlink_metadata(path) {
        Err(_) => return Ok(()),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
    };
    removed.map_err(write_error(path))
}

/// Deletes what the mirror holds beyond `present` (paths relative to `root`).
fn remove_absent(root: &Path, dir: &Path, present: &HashSet<PathBuf>) -> Result<(), SnapshotError> {
    for entry in fs::read_dir(dir).map_err(read_error(dir))? {
        let entry = entry.map_err(read_error(dir))?;
        let path = entry.path();
        let relative = path.strip_prefix(root).unwrap_or(&path);
        if !present.contains(relative) {
            remove_any(&path)?;
        } else if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_absent(root, &path, present)?;
        }
    }
    Ok(())
}

/// Threads that make a job directory's hard links: `link` is a system call that mostly waits
/// on the filesystem's journal, so a few at once go faster even on two cores.
const LINK_THREADS: usize = 4;

/// Recreates the mirror's tree in `to`: directories made, files hard-linked, symlinks
/// copied. Returns the number of files.
fn link_tree(mirror: &Path, to: &Path) -> Result<u64, SnapshotError> {
    let mut files = Vec::new();
    let mut dirs = vec![PathBuf::new()];
    while let Some(dir) = dirs.pop() {
        let from = mirror.join(&dir);
        for entry in fs::read_dir(&from).map_err(read_error(&from))? {
            let entry = entry.map_err(read_error(&from))?;
            let relative = dir.join(entry.file_name());
            let (source, target) = (entry.path(), to.join(&relative));
            let kind = entry.file_type().map_err(read_error(&source))?;
            if kind.is_dir() {
                fs::create_dir(&target).map_err(write_error(&target))?;
                dirs.push(relative);
            } else if kind.is_symlink() {
                let link = fs::read_link(&source).map_err(read_error(&source))?;
                std::os::unix::fs::symlink(link, &target).map_err(write_error(&target))?;
            } else {
                files.push(relative);
            }
        }
    }
    let chunk = files.len().div_ceil(LINK_THREADS).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter().try_for_each(|file| {
                        let target = to.join(file);
                        fs::hard_link(mirror.join(file), &target).map_err(write_error(&target))
                    })
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join().unwrap_or_else(|_| {
                Err(write_error(to)(io::Error::other("a link thread panicked")))
            })
        })
    })?;
    Ok(files.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_what_git_would_track() {
        let from = tempfile::tempdir().unwrap();
        let to = tempfile::tempdir().unwrap();
        let f = from.path();
        fs::create_dir_all(f.join(".git/objects")).unwrap();
        fs::write(f.join(".git/HEAD"), "ref").unwrap();
        fs::write(f.join(".gitignore"), "*.log\n/build/\n").unwrap();
        fs::create_dir_all(f.join("src/build")).unwrap();
        fs::write(f.join("src/main.rs"), "fn main() {}").unwrap();
        fs::write(
            f.join("src/build/kept.txt"),
            "anchored pattern only at the root",
        )
        .unwrap();
        fs::write(f.join("src/debug.log"), "ignored").unwrap();
        fs::create_dir_all(f.join("build")).unwrap();
        fs::write(f.join("build/out"), "ignored").unwrap();
        fs::create_dir_all(f.join(".dockhand/results")).unwrap();
        fs::write(f.join(".dockhand/results/x"), "agent state").unwrap();
        fs::write(f.join("run.sh"), "#!/bin/sh\n").unwrap();
        let mut perms = fs::metadata(f.join("run.sh")).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        fs::set_permissions(f.join("run.sh"), perms).unwrap();
        std::os::unix::fs::symlink("../outside", f.join("link")).unwrap();

        let mirror = tempfile::tempdir().unwrap();
        let (copied, _) = snapshot(f, mirror.path(), to.path(), &[]).unwrap();

        let mut found: Vec<String> = ignore::WalkBuilder::new(to.path())
            .standard_filters(false)
            .build()
            .filter_map(Result::ok)
            .filter_map(|e| {
                let rel = e.path().strip_prefix(to.path()).ok()?.display().to_string();
                (!rel.is_empty()).then_some(rel)
            })
            .collect();
        found.sort();
        assert_eq!(
            found,
            [
                ".gitignore",
                "link",
                "run.sh",
                "src",
                "src/build",
                "src/build/kept.txt",
                "src/main.rs"
            ]
        );
        assert_eq!(copied.files, 4);
        let t = to.path();
        assert_eq!(
            fs::read_link(t.join("link")).unwrap(),
            Path::new("../outside")
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &fs::metadata(t.join("run.sh")).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            fs::metadata(t.join("src/main.rs"))
                .unwrap()
                .modified()
                .unwrap(),
            fs::metadata(f.join("src/main.rs"))
                .unwrap()
                .modified()
                .unwrap()
        );
        fs::write(f.join("src/main.rs"), "changed after the snapshot").unwrap();
        assert_eq!(
            fs::read_to_string(t.join("src/main.rs")).unwrap(),
            "fn main() {}"
        );
    }

    #[test]
    fn later_snapshots_copy_only_changes_and_never_share_a_jobs_writes() {
        let from = tempfile::tempdir().unwrap();
        let mirror = tempfile::tempdir().unwrap();
        let f = from.path();
        for name in ["a", "b", "c"] {
            fs::write(f.join(name), name).unwrap();
        }
        let first = tempfile::tempdir().unwrap();
        assert_eq!(
            snapshot(f, mirror.path(), first.path(), &[])
                .unwrap()
                .0
                .copied,
            3
        );

        std::thread::sleep(std::time::Duration::from_millis(10));
        fs::write(f.join("a"), "edited").unwrap();
        fs::remove_file(f.join("b")).unwrap();
        fs::write(first.path().join("c"), "written by the first job").unwrap();
        let second = tempfile::tempdir().unwrap();
        let (copied, _) = snapshot(f, mirror.path(), second.path(), &[]).unwrap();
        assert_eq!(
            (copied.files, copied.copied),
            (2, 2),
            "a changed; c was written by a job"
        );
        let s = second.path();
        assert_eq!(fs::read_to_string(s.join("a")).unwrap(), "edited");
        assert!(!s.join("b").exists());
        assert_eq!(fs::read_to_string(s.join("c")).unwrap(), "c");
        assert_eq!(
            fs::read_to_string(first.path().join("a")).unwrap(),
            "a",
            "a running job keeps what it started with"
        );
        let third = tempfile::tempdir().unwrap();
        assert_eq!(
            snapshot(f, mirror.path(), third.path(), &[])
                .unwrap()
                .0
                .copied,
            0
        );
    }

    /// A job writes into files in place and puts their mtime back, then removes one of its
    /// links: without the release, the mirror would hand the next job the written
    /// contents as the checkout's.
    #[test]
    fn a_job_that_writes_in_place_poisons_no_later_job() {
        let from = tempfile::tempdir().unwrap();
        let mirror = tempfile::tempdir().unwrap();
        let f = from.path();
        fs::create_dir(f.join("src")).unwrap();
        for name in ["src/build.sh", "src/run.sh"] {
            fs::write(f.join(name), "echo honest").unwrap();
        }
        fs::write(f.join("untouched"), "same").unwrap();
        let job = tempfile::tempdir().unwrap();
        let (_, linked) = snapshot(f, mirror.path(), job.path(), &[]).unwrap();

        for name in ["src/build.sh", "src/run.sh"] {
            let script = job.path().join(name);
            let mtime = fs::metadata(&script).unwrap().modified().unwrap();
            fs::write(&script, "echo hacked").unwrap();
            fs::File::options()
                .write(true)
                .open(&script)
                .unwrap()
                .set_modified(mtime)
                .unwrap();
        }
        fs::remove_file(job.path().join("src/run.sh")).unwrap();
        assert_eq!(release(&linked).unwrap(), 2, "only what the job wrote");

        let next = tempfile::tempdir().unwrap();
        snapshot(f, mirror.path(), next.path(), &[]).unwrap();
        for name in ["src/build.sh", "src/run.sh"] {
            assert_eq!(
                fs::read_to_string(next.path().join(name)).unwrap(),
                "echo honest",
                "{name}"
            );
        }
    }
}
