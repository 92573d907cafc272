//! A task's artifacts: the entries of a tar stream of its container that a pattern picks,
//! written under `<results>/<job>/artifacts/<task>/`. The archive is the repository's, so
//! nothing in it is trusted: an entry's name never leaves the destination (no `..`, no
//! absolute path, never written through a link — not even one the archive made first),
//! links are stored as links and never followed, modes keep only their permission bits,
//! and the size and file caps stop the copy with a message that says so.

use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::events::ArtifactSummary;
use crate::testreport::{Pattern, push_warning};

/// What is left of a task's caps as its patterns are copied.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub bytes: u64,
    pub files: u64,
    /// The caps as configured, for messages.
    pub max_bytes: u64,
    pub max_files: u64,
}

/// Copies what `pattern` picks from `archive` (a tar of `pattern.base`) into `dest`,
/// counting in `summary`; returns how many entries matched. Stops at a cap (said in
/// `summary.warnings` and `summary.capped`) or when the archive breaks off.
pub fn extract(
    archive: impl Read,
    pattern: &Pattern,
    workdir: &str,
    dest: &Path,
    limits: &mut Limits,
    summary: &mut ArtifactSummary,
) -> u64 {
    let mut archive = tar::Archive::new(archive);
    let mut matched = 0;
    let entries = match archive.entries() {
        Ok(entries) => entries,
        Err(e) => {
            push_warning(&mut summary.warnings, format!("{}: {e}", pattern.text));
            return 0;
        }
    };
    for entry in entries {
        let mut entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                push_warning(
                    &mut summary.warnings,
                    format!("{}: the copy broke off: {e}", pattern.text),
                );
                break;
            }
        };
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some(parts) = clean(&name) else {
            push_warning(
                &mut summary.warnings,
                format!("{name}: a name that leaves its directory; skipped"),
            );
            continue;
        };
        let path = format!("{}/{}", pattern.archive_root(), parts.join("/"));
        if !pattern.picks(&path) {
            continue;
        }
        matched += 1;
        let relative = path
            .strip_prefix(&format!("{}/", workdir.trim_end_matches('/')))
            .unwrap_or(path.trim_start_matches('/'));
        let relative: Vec<&str> = relative.split('/').collect();
        match write_entry(&mut entry, &relative, dest, limits) {
            Ok(Written::File(bytes)) => {
                summary.files += 1;
                summary.bytes += bytes;
            }
            Ok(Written::Nothing) => {}
            Ok(Written::Skipped(why)) => {
                push_warning(&mut summary.warnings, format!("{path}: {why}"))
            }
            Err(Stop::Cap(why)) => {
                // Said even past the warnings kept: it is why the copy is incomplete.
                summary.warnings.push(why);
                summary.capped = true;
                return matched;
            }
            Err(Stop::Io(e)) => {
                push_warning(&mut summary.warnings, format!("{path}: not written: {e}"))
            }
        }
    }
    matched
}

enum Written {
    File(u64),
    Nothing,
    Skipped(String),
}

enum Stop {
    Cap(String),
    Io(io::Error),
}

impl From<io::Error> for Stop {
    fn from(e: io::Error) -> Stop {
        Stop::Io(e)
    }
}

fn write_entry(
    entry: &mut tar::Entry<'_, impl Read>,
    relative: &[&str],
    dest: &Path,
    limits: &mut Limits,
) -> Result<Written, Stop> {
    let kind = entry.header().entry_type();
    let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
    if kind.is_dir() {
        let dir = directories(dest, relative)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode | 0o700))?;
        return Ok(Written::Nothing);
    }
    if !(kind.is_file() || kind.is_symlink()) {
        return Ok(Written::Skipped(
            "not a file, directory or symbolic link; skipped".into(),
        ));
    }
    if limits.files == 0 {
        return Err(Stop::Cap(format!(
            "more than max_files ({}) artifacts: the rest were not copied",
            limits.max_files
        )));
    }
    let size = entry.size();
    if size > limits.bytes {
        return Err(Stop::Cap(format!(
            "the artifacts are over max_size ({} bytes): the copy stopped before {} ({size} bytes)",
            limits.max_bytes,
            relative.join("/")
        )));
    }
    let (last, parents) = relative.split_last().expect("a cleaned name has a part");
    let parent = directories(dest, parents)?;
    let target = parent.join(last);
    if kind.is_symlink() {
        let Some(link) = entry.link_name_bytes() else {
            return Ok(Written::Skipped("a link without a target; skipped".into()));
        };
        let link = PathBuf::from(String::from_utf8_lossy(&link).into_owned());
        match std::os::unix::fs::symlink(link, &target) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(Written::Nothing),
            other => other?,
        }
        limits.files -= 1;
        return Ok(Written::File(0));
    }
    let mut file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(&target)
    {
        Ok(file) => file,
        // Two patterns picked the same file: it is copied once.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(Written::Nothing),
        Err(e) => return Err(e.into()),
    };
    let copied = io::copy(&mut entry.take(size), &mut file)?;
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    limits.files -= 1;
    limits.bytes -= copied;
    Ok(Written::File(copied))
}

/// `dest/parts...` as real directories, made as needed; a part that exists as anything
/// else (a link the archive planted first, a file) refuses the entry.
fn directories(dest: &Path, parts: &[&str]) -> io::Result<PathBuf> {
    let mut dir = dest.to_path_buf();
    for part in parts {
        dir.push(part);
        match fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(io::Error::other(format!(
                    "{} is not a directory (a link is never written through)",
                    dir.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir(&dir)?,
            Err(e) => return Err(e),
        }
    }
    Ok(dir)
}

/// An entry's name as parts, or `None` when it would leave its directory (`..`, an
/// absolute path, NUL).
fn clean(name: &str) -> Option<Vec<&str>> {
    if name.starts_with('/') || name.contains('\0') {
        return None;
    }
    let parts: Vec<&str> = name
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.is_empty() || parts.contains(&"..") {
        return None;
    }
    Some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(bytes: u64, files: u64) -> Limits {
        Limits {
            bytes,
            files,
            max_bytes: bytes,
            max_files: files,
        }
    }

    fn raw_entry(tar: &mut Vec<u8>, name: &[u8], kind: tar::EntryType, link: &[u8], data: &[u8]) {
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o755);
        header.set_cksum();
        tar.extend_from_slice(header.as_bytes());
        tar.extend_from_slice(data);
        tar.resize(tar.len().div_ceil(512) * 512, 0);
    }

    #[test]
    fn a_hostile_archive_never_writes_outside_its_destination() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("artifacts/task");
        fs::create_dir_all(&dest).unwrap();
        let mut tar = Vec::new();
        use tar::EntryType::{Directory, Regular, Symlink};
        raw_entry(&mut tar, b"dist/", Directory, b"", b"");
        raw_entry(&mut tar, b"dist/app", Regular, b"", b"binary");
        raw_entry(&mut tar, b"dist/../../../escaped", Regular, b"", b"x");
        raw_entry(&mut tar, b"/etc/abs", Regular, b"", b"x");
        raw_entry(&mut tar, b"dist/up", Symlink, b"../../..", b"");
        raw_entry(&mut tar, b"dist/up/through-link", Regular, b"", b"x");
        raw_entry(&mut tar, b"dist/shadow", Symlink, b"/etc/shadow", b"");
        tar.extend_from_slice(&[0; 1024]);
        let pattern = Pattern::new("dist/", "/work").unwrap();
        let mut summary = ArtifactSummary::default();
        let mut caps = limits(1 << 20, 100);
        extract(&tar[..], &pattern, "/work", &dest, &mut caps, &mut summary);

        assert_eq!(fs::read(dest.join("dist/app")).unwrap(), b"binary");
        let mode = fs::metadata(dest.join("dist/app"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            fs::read_link(dest.join("dist/shadow")).unwrap(),
            Path::new("/etc/shadow")
        );
        assert_eq!(summary.files, 3, "{summary:?}");
        assert_eq!(summary.warnings.len(), 3, "{summary:?}");
        let mut everything: Vec<PathBuf> = Vec::new();
        let mut stack = vec![root.path().to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if fs::symlink_metadata(&path).unwrap().is_dir() {
                    stack.push(path.clone());
                }
                everything.push(path);
            }
        }
        assert!(
            everything
                .iter()
                .all(|p| p.starts_with(&dest) || dest.starts_with(p)),
            "{everything:?}"
        );
        assert!(!everything.iter().any(|p| p.ends_with("through-link")));
    }

    #[test]
    fn the_caps_stop_the_copy_with_a_message() {
        let dest = tempfile::tempdir().unwrap();
        let mut tar = Vec::new();
        for i in 0..5 {
            let name = format!("out/f{i}");
            raw_entry(
                &mut tar,
                name.as_bytes(),
                tar::EntryType::Regular,
                b"",
                &[b'x'; 100],
            );
        }
        tar.extend_from_slice(&[0; 1024]);
        let pattern = Pattern::new("/out", "/").unwrap();

        let mut summary = ArtifactSummary::default();
        extract(
            &tar[..],
            &pattern,
            "/",
            dest.path(),
            &mut limits(250, 100),
            &mut summary,
        );
        assert_eq!(
            (summary.files, summary.bytes, summary.capped),
            (2, 200, true)
        );
        assert!(
            summary.warnings[0].contains("over max_size (250 bytes)"),
            "{summary:?}"
        );

        let dest = tempfile::tempdir().unwrap();
        let mut summary = ArtifactSummary::default();
        extract(
            &tar[..],
            &pattern,
            "/",
            dest.path(),
            &mut limits(1 << 20, 3),
            &mut summary,
        );
        assert_eq!((summary.files, summary.capped), (3, true));
        assert!(
            summary.warnings[0].contains("more than max_files (3)"),
            "{summary:?}"
        );
    }
}
