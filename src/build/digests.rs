//! Content digests of context files, remembered between runs: a file whose path, size,
//! mtime and inode are unchanged, and whose inode has not changed since the job started,
//! is not read again. (A task can rewrite a file in place and put its mtime back; its
//! ctime it cannot, so a later build of the same job hashes what is really there.) Files that must be read are hashed on
//! every core. Paths are kept relative to the workspace, so an agent's job directories,
//! hard-linked from one mirror, share the digests of the files they share.

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::context::{Entry, EntryKind, Stamp};

/// The on-disk digest cache of one workspace.
#[derive(Debug, Default)]
pub struct DigestCache {
    path: PathBuf,
    /// The workspace the remembered paths are relative to.
    root: PathBuf,
    known: HashMap<PathBuf, (Stamp, String)>,
    changed: bool,
    /// Remembered digests vouch only for files unchanged since this (ctime, ns): the
    /// job's start, before any of its tasks ran.
    trusted_before: i128,
}

/// A larger cache file is read this far only (it is a speed-up, and may have been planted).
const MAX_CACHE_BYTES: u64 = 256 << 20;

impl DigestCache {
    /// Loads `path` for files under `root`; a missing or unreadable cache is an empty one
    /// (it is only a speed-up).
    pub fn load(path: &Path, root: &Path, trusted_before: i128) -> DigestCache {
        let mut known = HashMap::new();
        if let Ok(file) = crate::files::open_regular(path) {
            let file = io::Read::take(file, MAX_CACHE_BYTES);
            for line in io::BufReader::new(file).lines().map_while(Result::ok) {
                let mut fields = line.splitn(5, '\t');
                let (Some(digest), Some(size), Some(mtime), Some(inode), Some(file)) = (
                    fields.next(),
                    fields.next(),
                    fields.next(),
                    fields.next(),
                    fields.next(),
                ) else {
                    continue;
                };
                let (Ok(size), Ok(mtime_ns), Ok(inode)) =
                    (size.parse(), mtime.parse(), inode.parse())
                else {
                    continue;
                };
                known.insert(
                    PathBuf::from(file),
                    (
                        Stamp {
                            size,
                            mtime_ns,
                            inode,
                        },
                        digest.to_owned(),
                    ),
                );
            }
        }
        DigestCache {
            path: path.to_path_buf(),
            root: root.to_path_buf(),
            known,
            changed: false,
            trusted_before,
        }
    }

    /// Writes the cache back if it learnt anything, forgetting files that no longer exist
    /// (atomically: a crash leaves the old one).
    pub fn save(&mut self) -> io::Result<()> {
        if !self.changed {
            return Ok(());
        }
        let root = &self.root;
        self.known.retain(|file, _| root.join(file).exists());
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir)?;
        }
        crate::files::write_replacing(&self.path, |out| {
            for (file, (stamp, digest)) in &self.known {
                let Some(file) = file.to_str().filter(|f| !f.contains(['\n', '\t'])) else {
                    continue;
                };
                writeln!(
                    out,
                    "{digest}\t{}\t{}\t{}\t{file}",
                    stamp.size, stamp.mtime_ns, stamp.inode
                )?;
            }
            Ok(())
        })?;
        self.changed = false;
        Ok(())
    }

    /// The digest of every regular file among `entries` (`None` for directories and
    /// links), reading only files the cache cannot vouch for.
    pub fn digests(&mut self, entries: &[Entry]) -> io::Result<Vec<Option<String>>> {
        let mut out = vec![None; entries.len()];
        let mut to_read: Vec<(usize, Stamp)> = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let EntryKind::File {
                stamp, changed_ns, ..
            } = entry.kind
            else {
                continue;
            };
            match self.known.get(self.relative(&entry.source)) {
                Some((known, digest)) if *known == stamp && changed_ns < self.trusted_before => {
                    out[i] = Some(digest.clone())
                }
                _ => to_read.push((i, stamp)),
            }
        }
        let workers = std::thread::available_parallelism()
            .map_or(2, usize::from)
            .min(to_read.len().max(1));
        let chunks: Vec<&[(usize, Stamp)]> = to_read
            .chunks(to_read.len().div_ceil(workers).max(1))
            .collect();
        let results: Vec<io::Result<Vec<(usize, Stamp, String)>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = chunks
                .iter()
                .map(|chunk| {
                    scope.spawn(move || {
                        chunk
                            .iter()
                            .map(|&(i, stamp)| Ok((i, stamp, hash_file(&entries[i].source)?)))
                            .collect::<io::Result<Vec<_>>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(io::Error::other("a hashing thread panicked")))
                })
                .collect()
        });
        for batch in results {
            for (i, stamp, digest) in batch? {
                let file = self.relative(&entries[i].source).to_path_buf();
                self.known.insert(file, (stamp, digest.clone()));
                self.changed = true;
                out[i] = Some(digest);
            }
        }
        Ok(out)
    }
}

impl DigestCache {
    fn relative<'p>(&self, path: &'p Path) -> &'p Path {
        path.strip_prefix(&self.root).unwrap_or(path)
    }
}

fn hash_file(path: &Path) -> io::Result<String> {
    let file = crate::files::open_regular_unlinked(path)?;
    let mut hasher = Sha256::new();
    crate::util::sha256_feed(&mut hasher, file, &mut 0)?;
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::context::Stamp;

    fn entry(path: &Path) -> Entry {
        let meta = fs::metadata(path).unwrap();
        Entry {
            name: path.file_name().unwrap().to_string_lossy().into_owned(),
            source: path.to_path_buf(),
            kind: EntryKind::File {
                mode: 0o644,
                stamp: Stamp::of(&meta),
                changed_ns: crate::build::context::changed_ns(&meta),
            },
        }
    }

    #[test]
    fn digests_are_reused_until_a_file_changes_and_forgotten_when_it_goes() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::write(&a, "alpha").unwrap();
        fs::write(&b, "beta").unwrap();
        let cache_path = dir.path().join("cache/digests.tsv");
        let mut cache = DigestCache::load(&cache_path, dir.path(), now_ns());
        let first = cache.digests(&[entry(&a), entry(&b)]).unwrap();
        cache.save().unwrap();

        let mut reloaded = DigestCache::load(&cache_path, dir.path(), now_ns());
        assert_eq!(reloaded.digests(&[entry(&a)]).unwrap()[0], first[0]);
        assert!(!reloaded.changed, "an unchanged file is not read again");
        fs::write(&a, "a different length").unwrap();
        let changed = reloaded.digests(&[entry(&a)]).unwrap();
        assert_ne!(changed[0], first[0]);

        fs::remove_file(&b).unwrap();
        reloaded.save().unwrap();
        let text = fs::read_to_string(&cache_path).unwrap();
        assert!(!text.contains("\tb\n") && text.contains("\ta\n"), "{text}");
    }

    fn now_ns() -> i128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i128
    }

    /// A task rewrites a file in place (same size) and puts its mtime back after the job
    /// started: its remembered digest no longer vouches for it.
    #[test]
    fn a_file_rewritten_during_the_job_is_hashed_again_whatever_its_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("build.sh");
        fs::write(&script, "echo honest").unwrap();
        let cache_path = dir.path().join("digests.tsv");
        let mut before = DigestCache::load(&cache_path, dir.path(), now_ns());
        let honest = before.digests(&[entry(&script)]).unwrap();
        before.save().unwrap();

        std::thread::sleep(std::time::Duration::from_millis(20));
        let job_started = now_ns();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mtime = fs::metadata(&script).unwrap().modified().unwrap();
        fs::write(&script, "echo hacked").unwrap();
        fs::File::options()
            .write(true)
            .open(&script)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let mut during = DigestCache::load(&cache_path, dir.path(), job_started);
        let now = during.digests(&[entry(&script)]).unwrap();
        assert_ne!(
            now[0], honest[0],
            "the rewritten content is what gets hashed"
        );
    }
}
