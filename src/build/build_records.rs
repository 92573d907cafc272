//! Which image each build key produced, kept by dockhand in a directory of its own (one
//! small file per key) rather than as a label on the image: the classic builder turns every
//! label into one more step, and each step commits the image's whole filesystem again —
//! 3.3 s for a 20,000-file image on this engine, more than the rest of an unchanged build.
//!
//! A record is only a pointer: image ids are digests of the image itself, so an id the
//! engine still has is exactly the image that key built, and a deleted image is simply a
//! miss. Records are shared by every stream of an agent.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::util::random_hex;

/// Records kept beyond this many are the oldest and are removed as new ones are written.
const MAX_RECORDS: usize = 2000;

#[derive(Clone, Debug)]
pub struct BuildRecords {
    dir: PathBuf,
}

impl BuildRecords {
    pub fn new(dir: &Path) -> BuildRecords {
        BuildRecords {
            dir: dir.to_path_buf(),
        }
    }

    /// The image id recorded for `key`, if a well-formed record exists.
    pub fn image_for(&self, key: &str) -> Option<String> {
        let bytes = crate::files::read_limited(&self.path(key)?, 1024).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let id = text.trim();
        let hex = id.strip_prefix("sha256:")?;
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
    }

    /// Records that `key` built `image_id` (atomically: readers see the old record or the
    /// new one), then trims the oldest records beyond [`MAX_RECORDS`].
    pub fn remember(&self, key: &str, image_id: &str) -> io::Result<()> {
        let path = self
            .path(key)
            .ok_or_else(|| io::Error::other(format!("`{key}` is not a build key")))?;
        fs::create_dir_all(&self.dir)?;
        let tmp = self
            .dir
            .join(format!(".{}.tmp", random_hex().map_err(io::Error::other)?));
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        io::Write::write_all(&mut file, format!("{image_id}\n").as_bytes())?;
        fs::rename(&tmp, path)?;
        self.trim()
    }

    /// Drops the record of `key`: its image is gone.
    pub fn forget(&self, key: &str) {
        if let Some(path) = self.path(key) {
            let _ = fs::remove_file(path);
        }
    }

    fn trim(&self) -> io::Result<()> {
        let mut records: Vec<(SystemTime, PathBuf)> = fs::read_dir(&self.dir)?
            .filter_map(Result::ok)
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        if records.len() <= MAX_RECORDS {
            return Ok(());
        }
        records.sort();
        for (_, path) in &records[..records.len() - MAX_RECORDS] {
            let _ = fs::remove_file(path);
        }
        Ok(())
    }

    /// Keys are hex digests; anything else never becomes a path.
    fn path(&self, key: &str) -> Option<PathBuf> {
        (!key.is_empty() && key.bytes().all(|b| b.is_ascii_hexdigit())).then(|| self.dir.join(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn remembers_forgets_and_refuses_what_is_not_a_record() {
        let dir = tempfile::tempdir().unwrap();
        let records = BuildRecords::new(&dir.path().join("builds"));
        assert_eq!(records.image_for("abc"), None);
        records.remember("abc", ID).unwrap();
        assert_eq!(records.image_for("abc").as_deref(), Some(ID));
        records.forget("abc");
        assert_eq!(records.image_for("abc"), None);

        assert!(records.remember("../escape", ID).is_err());
        fs::write(dir.path().join("builds/bad"), "not an id\n").unwrap();
        assert_eq!(records.image_for("bad"), None);
        assert!(
            fs::read_dir(dir.path().join("builds")).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tmp")),
            "a temporary file was left behind"
        );
    }

    #[test]
    fn only_the_newest_records_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let records = BuildRecords::new(dir.path());
        let old = SystemTime::now() - std::time::Duration::from_secs(3600);
        for i in 0..MAX_RECORDS {
            let path = dir.path().join(format!("{i:x}"));
            fs::write(&path, ID).unwrap();
            fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        records.remember("ffff0", ID).unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), MAX_RECORDS);
        assert_eq!(records.image_for("ffff0").as_deref(), Some(ID));
    }
}
