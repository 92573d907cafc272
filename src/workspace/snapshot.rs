//! Copies a checkout into a workspace: what git would track (`.gitignore`s and
//! `.git/info/exclude` respected, `.git` and dockhand's own state left out), symlinks as
//! symlinks, modes and modification times kept. Files are copied with `copy_file_range`,
//! which shares extents (a reflink) on filesystems that can; hard links are not used, as an
//! in-place edit of the checkout would then reach into the running job.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What a snapshot copied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Copied {
    pub files: u64,
    pub bytes: u64,
}

/// Copies `from` into the existing, empty directory `to`, leaving out `skip` (the agent's
/// own directories when they live inside the checkout).
pub fn snapshot(from: &Path, to: &Path, skip: &[PathBuf]) -> Result<Copied, SnapshotError> {
    let skip: Vec<PathBuf> = skip
        .iter()
        .map(|d| d.canonicalize().unwrap_or(d.clone()))
        .collect();
    let root = from.canonicalize().map_err(|source| SnapshotError::Read {
        path: from.to_path_buf(),
        source,
    })?;
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
    for entry in walker {
        let entry = entry.map_err(|e| SnapshotError::Read {
            path: root.clone(),
            source: e
                .into_io_error()
                .unwrap_or_else(|| io::Error::other("walk failed")),
        })?;
        let Ok(relative) = entry.path().strip_prefix(&root) else {
            continue;
        };
        if relative.as_os_str().is_empty() {
            continue;
        }
        let target = to.join(relative);
        let write = |source| SnapshotError::Write {
            path: target.clone(),
            source,
        };
        let Some(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            fs::create_dir(&target).map_err(write)?;
        } else if kind.is_symlink() {
            let link = fs::read_link(entry.path()).map_err(|source| SnapshotError::Read {
                path: entry.path().to_path_buf(),
                source,
            })?;
            std::os::unix::fs::symlink(link, &target).map_err(write)?;
        } else if kind.is_file() {
            copied.bytes += copy_file(entry.path(), &target)?;
            copied.files += 1;
        }
    }
    Ok(copied)
}

/// Copies contents and mode, then the modification time (the build key's digest cache and
/// make-style tools in the job both go by it).
fn copy_file(from: &Path, to: &Path) -> Result<u64, SnapshotError> {
    let read = |source| SnapshotError::Read {
        path: from.to_path_buf(),
        source,
    };
    let write = |source| SnapshotError::Write {
        path: to.to_path_buf(),
        source,
    };
    let modified = fs::metadata(from)
        .and_then(|m| m.modified())
        .map_err(read)?;
    let bytes = fs::copy(from, to).map_err(|source| match fs::metadata(from) {
        Err(_) => read(source),
        Ok(_) => write(source),
    })?;
    fs::File::options()
        .write(true)
        .open(to)
        .and_then(|f| f.set_modified(modified))
        .map_err(write)?;
    Ok(bytes)
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

        let copied = snapshot(f, to.path(), &[]).unwrap();

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
}
