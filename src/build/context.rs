//! Build contexts, streamed to the engine as tar while they are read: never buffered whole.
//! Entries are sorted and their headers deterministic (uid/gid 0, mtime 0, permission bits
//! kept); symlinks are stored as symlinks and never followed; no directory outside the
//! workspace boundary can be sent, no ignore file is read through a link leading out of it,
//! and a FIFO, socket or device in a context is an error.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::ignore::{PatternError, PatternSet};
use super::pack;
use crate::collector::{Build, Context};
use crate::files::{self, ConfineError};

/// The generated Dockerfile's name inside the context; no user file is called this.
pub const DOCKERFILE_NAME: &str = "__dockhand_Dockerfile";
/// dockhand's own results and work directories, never sent: a job writing its log while
/// its context is read would send a changing file.
pub const STATE_DIR: &str = ".dockhand";
const CHUNK: usize = 512 * 1024;
/// Larger `.dockerignore` (and, with `use_gitignore`, `.gitignore`) files are refused.
pub const MAX_IGNORE_FILE_BYTES: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("cannot read {path}: {cause}")]
    Read { path: PathBuf, cause: io::Error },
    #[error(
        "context directory {path} is outside {boundary}; a build context cannot leave the workspace"
    )]
    Escapes { path: PathBuf, boundary: PathBuf },
    #[error("{0}; a build context reads nothing outside it")]
    Outside(ConfineError),
    #[error("{path}: {cause}")]
    Pattern { path: PathBuf, cause: PatternError },
    #[error("{path} is {kind}; a build context holds only files, directories and links")]
    Special { path: PathBuf, kind: &'static str },
    #[error(
        "{path} is not a regular file of at most {MAX_IGNORE_FILE_BYTES} bytes, which `use_gitignore` needs"
    )]
    IgnoreFile { path: PathBuf },
    #[error("{path} changed while the build context was being read; run again")]
    Changed { path: PathBuf },
    #[error("the engine stopped reading the build context")]
    Aborted,
}

/// One thing to put in the tar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The path inside the context, `/`-separated.
    pub name: String,
    pub source: PathBuf,
    pub kind: EntryKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// `changed_ns`: the inode's ctime, which no task can set back (see
    /// [`crate::build::DigestCache`]).
    File {
        mode: u32,
        stamp: Stamp,
        changed_ns: i128,
    },
    Dir {
        mode: u32,
    },
    Symlink {
        target: PathBuf,
    },
}

/// What identifies a file's content without reading it: the build key trusts it (through
/// the digest cache), and the tar writer checks it again when it opens the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Stamp {
    pub size: u64,
    pub mtime_ns: i128,
    pub inode: u64,
}

/// When the inode last changed (content, metadata or links), in nanoseconds.
pub fn changed_ns(meta: &fs::Metadata) -> i128 {
    use std::os::unix::fs::MetadataExt;
    i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec())
}

impl Stamp {
    pub fn of(meta: &fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            size: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            inode: meta.ino(),
        }
    }
}

/// What was sent besides the Dockerfile and generated files: entries (files, directories,
/// links), the bytes of the files, and how many entries went inside packed archives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContextStats {
    pub entries: u64,
    pub bytes: u64,
    pub packed: u64,
}

impl ContextStats {
    fn count(&mut self, entry: &Entry) {
        self.entries += 1;
        if let EntryKind::File { stamp, .. } = &entry.kind {
            self.bytes += stamp.size;
        }
    }
}

/// The files of a context directory that are sent, in order: not git-ignored (when
/// `use_gitignore`) or matching `include`, not matching `exclude`, not excluded by the
/// directory's `.dockerignore`, not in [`STATE_DIR`]. `prefix` is prepended to every name.
pub fn select(
    context: &Context,
    boundary: &Path,
    prefix: &str,
) -> Result<Vec<Entry>, ContextError> {
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |cause| ContextError::Read { path, cause }
    };
    let root = fs::canonicalize(&context.parent_dir).map_err(read_err(&context.parent_dir))?;
    let boundary = fs::canonicalize(boundary).map_err(read_err(boundary))?;
    if !root.starts_with(&boundary) {
        return Err(ContextError::Escapes {
            path: root,
            boundary,
        });
    }
    let pattern_err = |path: &Path| {
        let path = path.to_path_buf();
        move |cause| ContextError::Pattern { path, cause }
    };
    let dockerignore = dockerignore(&root)?;
    if context.use_gitignore {
        for dir in root
            .ancestors()
            .take_while(|dir| dir.starts_with(&boundary))
        {
            check_ignore_files(dir)?;
        }
    }
    let include =
        PatternSet::new(context.include.iter().map(String::as_str)).map_err(pattern_err(&root))?;
    let exclude =
        PatternSet::new(context.exclude.iter().map(String::as_str)).map_err(pattern_err(&root))?;
    let ignored = Arc::new((dockerignore, exclude));

    let mut names = std::collections::BTreeMap::new();
    let mut walk = |gitignore: bool, only_included: bool| -> Result<(), ContextError> {
        let prune = ignored.clone();
        let prune_root = root.clone();
        let bad_ignore_file = Arc::new(std::sync::Mutex::new(None));
        let found_bad = bad_ignore_file.clone();
        let walker = ignore::WalkBuilder::new(&root)
            .standard_filters(false)
            .hidden(false)
            .follow_links(false)
            .git_ignore(gitignore)
            .git_exclude(gitignore)
            .require_git(false)
            .parents(gitignore)
            .filter_entry(move |e| {
                let Some(rel) = relative(&prune_root, e.path()) else {
                    return true;
                };
                if !e.file_type().is_some_and(|t| t.is_dir()) {
                    return true;
                }
                if rel == STATE_DIR || (gitignore && rel == ".git") {
                    return false;
                }
                // The walker reads a directory's ignore files as it enters it.
                if gitignore && let Err(e) = check_ignore_files(e.path()) {
                    *found_bad.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    return false;
                }
                let (dockerignore, exclude) = &*prune;
                let walk_anyway = dockerignore.has_exceptions() || exclude.has_exceptions();
                walk_anyway || !(dockerignore.matches(&rel) || exclude.matches(&rel))
            })
            .build();
        for item in walker {
            let item = item.map_err(|e| ContextError::Read {
                path: root.clone(),
                cause: e
                    .into_io_error()
                    .unwrap_or_else(|| io::Error::other("walk failed")),
            })?;
            let Some(rel) = relative(&root, item.path()) else {
                continue;
            };
            let (dockerignore, exclude) = &*ignored;
            if dockerignore.matches(&rel)
                || exclude.matches(&rel)
                || (only_included && !include.any_matches(&rel))
            {
                continue;
            }
            let meta = fs::symlink_metadata(item.path()).map_err(read_err(item.path()))?;
            let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777;
            let kind = if meta.file_type().is_symlink() {
                EntryKind::Symlink {
                    target: fs::read_link(item.path()).map_err(read_err(item.path()))?,
                }
            } else if meta.is_dir() {
                EntryKind::Dir { mode }
            } else if meta.is_file() {
                EntryKind::File {
                    mode,
                    stamp: Stamp::of(&meta),
                    changed_ns: changed_ns(&meta),
                }
            } else {
                return Err(ContextError::Special {
                    path: item.path().to_path_buf(),
                    kind: special_kind(&meta.file_type()),
                });
            };
            let name = format!("{prefix}{rel}");
            names.entry(name.clone()).or_insert(Entry {
                name,
                source: item.path().to_path_buf(),
                kind,
            });
        }
        match bad_ignore_file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    };
    walk(context.use_gitignore, false)?;
    if context.use_gitignore && !include.is_empty() {
        walk(false, true)?;
    }
    Ok(names.into_values().collect())
}

/// The patterns of `root`'s `.dockerignore`: a regular file of at most
/// [`MAX_IGNORE_FILE_BYTES`], through a link only to a file inside `root`.
fn dockerignore(root: &Path) -> Result<PatternSet, ContextError> {
    let path = root.join(".dockerignore");
    let resolved = match files::resolve_inside(Some(root), &path) {
        Ok(resolved) => resolved,
        Err(e) if e.is_not_found() => return Ok(PatternSet::default()),
        Err(ConfineError::Resolve { cause, .. }) => {
            return Err(ContextError::Read { path, cause });
        }
        Err(outside) => return Err(ContextError::Outside(outside)),
    };
    let text = files::read_limited_unlinked(&resolved, MAX_IGNORE_FILE_BYTES).and_then(|bytes| {
        String::from_utf8(bytes)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
    });
    match text {
        Ok(text) => {
            PatternSet::dockerignore(&text).map_err(|cause| ContextError::Pattern { path, cause })
        }
        Err(cause) => Err(ContextError::Read { path, cause }),
    }
}

/// The git ignore files the walker reads in `dir` must be regular files of at most
/// [`MAX_IGNORE_FILE_BYTES`]: it would follow a link out of the workspace, wait on a FIFO
/// forever and read `/dev/zero` until memory ran out.
fn check_ignore_files(dir: &Path) -> Result<(), ContextError> {
    for path in [dir.join(".gitignore"), dir.join(".git/info/exclude")] {
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() && meta.len() <= MAX_IGNORE_FILE_BYTES => {}
            Ok(_) => return Err(ContextError::IgnoreFile { path }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => {}
            Err(cause) => return Err(ContextError::Read { path, cause }),
        }
    }
    Ok(())
}

fn special_kind(file_type: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_block_device() || file_type.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

fn relative(root: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?;
    let text = rel.to_string_lossy();
    (!text.is_empty()).then(|| text.into_owned())
}

/// Everything an image's context holds: the Dockerfile, generated files, the context
/// directory and extra directories.
pub fn entries(build: &Build, boundary: &Path) -> Result<Vec<Entry>, ContextError> {
    let mut out = Vec::new();
    if let Some(context) = &build.context {
        out.extend(select(context, boundary, "")?);
    }
    for extra in &build.extra_contexts {
        out.push(Entry {
            name: extra.name.clone(),
            source: extra.context.parent_dir.clone(),
            kind: EntryKind::Dir { mode: 0o755 },
        });
        out.extend(select(
            &extra.context,
            boundary,
            &format!("{}/", extra.name),
        )?);
    }
    Ok(out)
}

/// The Dockerfile as it is sent: the generated one, with the lines of packed directories
/// rewritten (see [`pack`]).
pub fn dockerfile_as_sent(build: &Build, boundary: &Path) -> Result<String, ContextError> {
    Ok(pack::plan(&build.dockerfile, &entries(build, boundary)?).dockerfile)
}

/// Writes the tar of `build`'s context into `tx` in chunks, with the directories
/// [`pack::plan`] chooses sent as archives of their own. Runs on a blocking thread.
pub fn write(
    build: &Build,
    entries: &[Entry],
    tx: mpsc::Sender<io::Result<Bytes>>,
) -> Result<ContextStats, ContextError> {
    let packing = pack::plan(&build.dockerfile, entries);
    let mut tar = tar::Builder::new(ChunkWriter {
        buf: Vec::with_capacity(CHUNK),
        tx,
    });
    let aborted = |_| ContextError::Aborted;
    let mut stats = ContextStats::default();
    append_bytes(
        &mut tar,
        DOCKERFILE_NAME,
        packing.dockerfile.as_bytes(),
        0o644,
    )
    .map_err(aborted)?;
    for file in &build.generated_files {
        append_bytes(&mut tar, &file.name, file.contents.as_bytes(), file.mode).map_err(aborted)?;
    }
    for entry in entries.iter().filter(|e| packing.pack_of(e).is_none()) {
        append_entry(&mut tar, &entry.name, entry, Contents::Read)?;
        stats.count(entry);
    }
    for pack in &packing.packs {
        let members = pack_members(build, entries, pack)?;
        let size = archive(io::sink(), &members, Contents::Zeros)?;
        let mut header = file_header(size, 0o644);
        header.set_path(&pack.file).map_err(aborted)?;
        header.set_cksum();
        tar.get_mut()
            .write_all(header.as_bytes())
            .map_err(aborted)?;
        if archive(tar.get_mut(), &members, Contents::Read)? != size {
            return Err(ContextError::Changed {
                path: PathBuf::from(&pack.dir),
            });
        }
        for member in &members {
            if let Member::Entry(_, entry) = member {
                stats.count(entry);
                stats.packed += 1;
            }
        }
    }
    let mut writer = tar.into_inner().map_err(aborted)?;
    writer.flush().map_err(aborted)?;
    Ok(stats)
}

/// Where file contents come from: the files, or zeros of the same length to learn an
/// archive's size before sending it.
#[derive(Clone, Copy)]
enum Contents {
    Read,
    Zeros,
}

/// One thing in a packed archive, under its name there.
enum Member<'a> {
    Entry(&'a str, &'a Entry),
    Bytes(&'a str, &'a [u8], u32),
}

/// What `pack` holds: its directory's entries, named relative to it; for the whole context
/// also the Dockerfile and generated files, as the engine would have had them when the
/// line ran.
fn pack_members<'a>(
    build: &'a Build,
    entries: &'a [Entry],
    pack: &pack::Pack,
) -> Result<Vec<Member<'a>>, ContextError> {
    if !pack.dir.is_empty() {
        let prefix = format!("{}/", pack.dir);
        return Ok(entries
            .iter()
            .filter_map(|e| Some(Member::Entry(e.name.strip_prefix(&prefix)?, e)))
            .collect());
    }
    let mut members = Vec::new();
    if !engine_drops_dockerfile(entries)? {
        members.push(Member::Bytes(
            DOCKERFILE_NAME,
            build.dockerfile.as_bytes(),
            0o644,
        ));
    }
    for file in &build.generated_files {
        members.push(Member::Bytes(
            &file.name,
            file.contents.as_bytes(),
            file.mode,
        ));
    }
    members.extend(entries.iter().map(|e| Member::Entry(&e.name, e)));
    Ok(members)
}

/// The engine deletes the Dockerfile from a context whose `.dockerignore` names it, after
/// reading it: a `COPY .` then does not copy it.
fn engine_drops_dockerfile(entries: &[Entry]) -> Result<bool, ContextError> {
    let Some(ignore_file) = entries
        .iter()
        .find(|e| e.name == ".dockerignore" && matches!(e.kind, EntryKind::File { .. }))
    else {
        return Ok(false);
    };
    let root = ignore_file.source.parent().unwrap_or(Path::new("/"));
    Ok(dockerignore(root)?.matches(DOCKERFILE_NAME))
}

/// Writes `members` as a tar into `out`; returns its length.
fn archive<W: Write>(
    out: W,
    members: &[Member<'_>],
    contents: Contents,
) -> Result<u64, ContextError> {
    let mut tar = tar::Builder::new(Counting {
        inner: out,
        written: 0,
    });
    for member in members {
        match member {
            Member::Entry(name, entry) => append_entry(&mut tar, name, entry, contents)?,
            Member::Bytes(name, data, mode) => {
                append_bytes(&mut tar, name, data, *mode).map_err(|_| ContextError::Aborted)?;
            }
        }
    }
    Ok(tar.into_inner().map_err(|_| ContextError::Aborted)?.written)
}

fn append_entry<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    entry: &Entry,
    contents: Contents,
) -> Result<(), ContextError> {
    let aborted = |_| ContextError::Aborted;
    match &entry.kind {
        EntryKind::File { mode, stamp, .. } => {
            let mut header = file_header(stamp.size, *mode);
            let read_err = |cause| ContextError::Read {
                path: entry.source.clone(),
                cause,
            };
            let mut reader: Box<dyn Read> = match contents {
                Contents::Zeros => Box::new(io::repeat(0).take(stamp.size)),
                Contents::Read => {
                    let file = files::open_regular_unlinked(&entry.source).map_err(read_err)?;
                    if Stamp::of(&file.metadata().map_err(read_err)?) != *stamp {
                        return Err(ContextError::Changed {
                            path: entry.source.clone(),
                        });
                    }
                    Box::new(Exact {
                        inner: file,
                        left: stamp.size,
                    })
                }
            };
            tar.append_data(&mut header, name, &mut reader)
                .map_err(|e| match e.kind() {
                    io::ErrorKind::UnexpectedEof => ContextError::Changed {
                        path: entry.source.clone(),
                    },
                    io::ErrorKind::BrokenPipe => ContextError::Aborted,
                    _ => ContextError::Read {
                        path: entry.source.clone(),
                        cause: e,
                    },
                })
        }
        EntryKind::Dir { mode } => {
            let mut header = file_header(0, *mode);
            header.set_entry_type(tar::EntryType::Directory);
            tar.append_data(&mut header, format!("{name}/"), io::empty())
                .map_err(aborted)
        }
        EntryKind::Symlink { target } => {
            let mut header = file_header(0, 0o777);
            header.set_entry_type(tar::EntryType::Symlink);
            tar.append_link(&mut header, name, target).map_err(aborted)
        }
    }
}

/// A regular file's header: owned by root, mtime 0, `mode` kept.
fn file_header(size: u64, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header
}

fn append_bytes<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    data: &[u8],
    mode: u32,
) -> io::Result<()> {
    tar.append_data(&mut file_header(data.len() as u64, mode), name, data)
}

/// Counts what passes through.
struct Counting<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads exactly `left` bytes, failing if the file ends early (it changed under us) and
/// stopping at the size the header promised if it grew.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// An `io::Write` that hands fixed-size chunks to the HTTP body.
struct ChunkWriter {
    buf: Vec<u8>,
    tx: mpsc::Sender<io::Result<Bytes>>,
}

impl ChunkWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}
