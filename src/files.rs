//! Reading and writing dockhand's own files where a repository may have planted something
//! first (`dockhand run` keeps its caches and results in the checkout): never through a
//! link, never from a device or FIFO, never unbounded. And confining the paths a job names
//! to its workspace, symlinks resolved.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why a path a job named cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error("cannot resolve {}: {cause}", path.display())]
    Resolve { path: PathBuf, cause: io::Error },
    #[error("{} is outside {}{}", path.display(), root.display(), leads_to(path, resolved))]
    Outside {
        path: PathBuf,
        resolved: PathBuf,
        root: PathBuf,
    },
}

impl ConfineError {
    /// Whether the path (or a link on the way) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ConfineError::Resolve { cause, .. } if cause.kind() == io::ErrorKind::NotFound)
    }
}

fn leads_to(path: &Path, resolved: &Path) -> String {
    if path == resolved {
        String::new()
    } else {
        format!(" (it leads to {})", resolved.display())
    }
}

/// `path` with every link on the way resolved, which must lie inside `root` (also
/// resolved); `None` for `root` means anywhere. What a repository names is confined this
/// way so that no `..`, absolute path or link reads the agent's host.
pub fn resolve_inside(root: Option<&Path>, path: &Path) -> Result<PathBuf, ConfineError> {
    let canonical = |path: &Path| {
        std::fs::canonicalize(path).map_err(|cause| ConfineError::Resolve {
            path: path.to_path_buf(),
            cause,
        })
    };
    let resolved = canonical(path)?;
    if let Some(root) = root {
        let root = canonical(root)?;
        if !resolved.starts_with(&root) {
            return Err(ConfineError::Outside {
                path: path.to_path_buf(),
                resolved,
                root,
            });
        }
    }
    Ok(resolved)
}

/// Opens a regular file for reading without following a link at its last component and
/// without blocking on a FIFO; anything but a regular file is an error.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    Ok(file)
}

/// As [`open_regular`], but following no link anywhere on `path`, which must be absolute
/// and was free of links when it was resolved (see [`resolve_inside`]): a directory a task
/// swapped for a link since then fails the open instead of leading out of the workspace.
pub fn open_regular_unlinked(path: &Path) -> io::Result<File> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::path::Component;

    let not_resolved = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a resolved absolute path", path.display()),
        )
    };
    let mut components = path.components();
    if components.next() != Some(Component::RootDir) {
        return Err(not_resolved());
    }
    let names: Vec<&std::ffi::OsStr> = components
        .map(|c| match c {
            Component::Normal(name) => Ok(name),
            _ => Err(not_resolved()),
        })
        .collect::<io::Result<_>>()?;
    let mut at = OwnedFd::from(File::open("/")?);
    for (i, name) in names.iter().enumerate() {
        let name = std::ffi::CString::new(name.as_bytes()).map_err(|_| not_resolved())?;
        let kind = if i + 1 == names.len() {
            libc::O_NONBLOCK
        } else {
            libc::O_DIRECTORY
        };
        let flags = libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW | kind;
        // SAFETY: `at` is an open directory and `name` a NUL-terminated string; the
        // returned descriptor is owned by nothing else.
        let fd = unsafe { libc::openat(at.as_raw_fd(), name.as_ptr(), flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        at = unsafe { OwnedFd::from_raw_fd(fd) };
    }
    let file = File::from(at);
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    Ok(file)
}

/// The whole of a regular file of at most `limit` bytes (see [`open_regular`]).
pub fn read_limited(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    read_to_limit(open_regular(path)?, path, limit)
}

/// As [`read_limited`], through [`open_regular_unlinked`].
pub fn read_limited_unlinked(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    read_to_limit(open_regular_unlinked(path)?, path, limit)
}

fn read_to_limit(file: File, path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is larger than {limit} bytes", path.display()),
        ));
    }
    Ok(bytes)
}

/// Replaces `path` atomically with what `write` writes: into a fresh `<path>.tmp` (one
/// already there, a link included, is removed first, never written through), then renamed
/// over `path` (which replaces a link rather than following it).
pub fn write_replacing(
    path: &Path,
    write: impl FnOnce(&mut io::BufWriter<File>) -> io::Result<()>,
) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
    let mut out = io::BufWriter::new(file);
    write(&mut out)?;
    out.flush()?;
    out.into_inner()
        .map_err(io::IntoInnerError::into_error)?
        .sync_all()?;
    std::fs::rename(tmp, path)
}

/// Removes a directory tree a job could shape (any depth, any names) without recursion
/// in this process: coreutils' `rm` walks arbitrarily deep trees with a bounded number of
/// open files, where a recursive walk would overflow the stack or run out of descriptors.
/// A missing tree is fine.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    let output = std::process::Command::new("rm")
        .args(["-rf", "--one-file-system", "--"])
        .arg(path)
        .stdin(std::process::Stdio::null())
        .output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "rm -rf {}: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// A job can nest directories deeper than any path may be long (it renames as it goes);
    /// removing its workspace must neither overflow a stack nor give up.
    #[test]
    fn trees_deeper_than_a_path_can_name_are_removed() {
        let root = tempfile::tempdir().unwrap();
        let tree = root.path().join("tree");
        std::fs::create_dir(&tree).unwrap();
        std::fs::create_dir(tree.join("x")).unwrap();
        for _ in 0..3000 {
            std::fs::create_dir(tree.join("t")).unwrap();
            std::fs::rename(tree.join("x"), tree.join("t/x")).unwrap();
            std::fs::rename(tree.join("t"), tree.join("x")).unwrap();
        }
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        remove_tree(&tree).unwrap();
    }

    #[test]
    fn links_devices_and_oversized_files_are_never_read_or_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, "precious").unwrap();
        let target = dir.path().join("cache");
        symlink(&outside, &target).unwrap();
        symlink(&outside, dir.path().join("cache.tmp")).unwrap();
        assert!(read_limited(&target, 100).is_err());
        assert!(read_limited(Path::new("/dev/zero"), 100).is_err());
        write_replacing(&target, |out| out.write_all(b"new")).unwrap();
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "precious");
        assert_eq!(read_limited(&target, 100).unwrap(), b"new");
        assert!(
            read_limited(&target, 2).is_err(),
            "3 bytes is over a 2-byte limit"
        );
    }

    #[test]
    fn paths_are_confined_with_links_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ws");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(dir.path().join("secret"), "x").unwrap();
        std::fs::write(root.join("sub/inside"), "x").unwrap();
        symlink(dir.path().join("secret"), root.join("out")).unwrap();
        symlink("sub/inside", root.join("in")).unwrap();
        let inside = resolve_inside(Some(&root), &root.join("in")).unwrap();
        assert!(inside.ends_with("ws/sub/inside"));
        for escape in [root.join("out"), root.join("sub/../../secret")] {
            let err = resolve_inside(Some(&root), &escape).unwrap_err();
            assert!(matches!(err, ConfineError::Outside { .. }), "{err}");
        }
        assert!(resolve_inside(None, &root.join("out")).is_ok());
        assert!(
            resolve_inside(Some(&root), &root.join("missing"))
                .unwrap_err()
                .is_not_found()
        );

        let resolved = root.canonicalize().unwrap().join("sub/inside");
        assert_eq!(read_limited_unlinked(&resolved, 10).unwrap(), b"x");
        std::fs::rename(root.join("sub"), root.join("real")).unwrap();
        symlink(dir.path(), root.join("sub")).unwrap();
        std::fs::write(dir.path().join("inside"), "outside").unwrap();
        assert!(
            read_limited(&resolved, 10).is_ok(),
            "open_regular follows the swap"
        );
        assert!(read_limited_unlinked(&resolved, 10).is_err());
        assert!(read_limited_unlinked(Path::new("/dev/zero"), 10).is_err());
        assert!(read_limited_unlinked(Path::new("relative"), 10).is_err());
    }
}
