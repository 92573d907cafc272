//! The build key: a digest of everything that decides what an image build produces — the
//! Dockerfile, the generated files, the context's files (names, modes, contents, link
//! targets), the keys of the images it builds from, and the ids of its external base
//! images as the engine has them now. The image a key built is found through
//! [`super::build_records::BuildRecords`].
//!
//! Each part's digest and the context's file list are kept in a manifest beside the digest
//! cache, so a rebuild can say what changed since the last build of that image.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::context::{Entry, EntryKind};

use crate::collector::Build;

/// Bumped whenever what goes into a key changes, so old images are never taken for new.
const KEY_VERSION: &str = "dockhand-build-key-v1";

/// Starts the manifest line that holds the key and its parts.
const SUMMARY_PREFIX: &str = "#key ";
const PART_NAMES: [&str; 4] = [
    "the Dockerfile or a generated file",
    "a file in the context",
    "an image it builds from",
    "an external base image",
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildKey {
    pub key: String,
    parts: [String; 4],
}

impl BuildKey {
    /// `digests[i]` is the content digest of `entries[i]` when it is a file.
    pub fn new(
        build: &Build,
        entries: &[Entry],
        digests: &[Option<String>],
        dependency_keys: &[String],
        base_ids: &[String],
    ) -> BuildKey {
        let mut dockerfile = Sha256::new();
        dockerfile.update(build.dockerfile.as_bytes());
        for file in &build.generated_files {
            dockerfile.update(
                format!(
                    "\0{}\0{:o}\0{}\0",
                    file.name,
                    file.mode,
                    file.contents.len()
                )
                .as_bytes(),
            );
            dockerfile.update(file.contents.as_bytes());
        }
        let mut files = Sha256::new();
        for (entry, digest) in entries.iter().zip(digests) {
            files.update(manifest_line(entry, digest.as_deref()).as_bytes());
        }
        let list = |items: &[String]| crate::util::sha256_hex(items.join("\n").as_bytes());
        let parts = [
            hex::encode(dockerfile.finalize()),
            hex::encode(files.finalize()),
            list(dependency_keys),
            list(base_ids),
        ];
        let mut total = Sha256::new();
        total.update(KEY_VERSION.as_bytes());
        for part in &parts {
            total.update(part.as_bytes());
        }
        BuildKey {
            key: hex::encode(total.finalize()),
            parts,
        }
    }

    /// The key, then each part's digest: what a manifest keeps of the build.
    fn summary(&self) -> String {
        format!("{} {}", self.key, self.parts.join(" "))
    }

    /// Which parts differ from an earlier build's summary, in words.
    pub fn changed_since(&self, earlier: &str) -> Vec<&'static str> {
        let earlier_parts: Vec<&str> = earlier.split(' ').skip(1).collect();
        self.parts
            .iter()
            .zip(PART_NAMES)
            .enumerate()
            .filter(|(i, (part, _))| earlier_parts.get(*i) != Some(&part.as_str()))
            .map(|(_, (_, name))| name)
            .collect()
    }
}

/// One line per context entry: what the key hashes and the manifest stores.
fn manifest_line(entry: &Entry, digest: Option<&str>) -> String {
    match &entry.kind {
        EntryKind::File { mode, .. } => {
            format!("f\t{mode:o}\t{}\t{}\n", digest.unwrap_or("-"), entry.name)
        }
        EntryKind::Dir { mode } => format!("d\t{mode:o}\t-\t{}\n", entry.name),
        EntryKind::Symlink { target } => format!("l\t777\t{}\t{}\n", target.display(), entry.name),
    }
}

/// Stores the key's parts and the context's file list after a build, for the next
/// rebuild's explanation.
pub fn write_manifest(
    path: &Path,
    key: &BuildKey,
    entries: &[Entry],
    digests: &[Option<String>],
) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    crate::files::write_replacing(path, |out| {
        writeln!(out, "{SUMMARY_PREFIX}{}", key.summary())?;
        for (entry, digest) in entries.iter().zip(digests) {
            out.write_all(manifest_line(entry, digest.as_deref()).as_bytes())?;
        }
        Ok(())
    })
}

/// Manifests are read this far only.
const MAX_MANIFEST_BYTES: u64 = 256 << 20;

/// The summary of the build a manifest describes, for [`BuildKey::changed_since`].
fn manifest_summary(path: &Path) -> Option<String> {
    let file = io::Read::take(crate::files::open_regular(path).ok()?, MAX_MANIFEST_BYTES);
    let first = io::BufRead::lines(io::BufReader::new(file)).next()?.ok()?;
    first.strip_prefix(SUMMARY_PREFIX).map(str::to_owned)
}

/// The files that differ from the last build's manifest: `changed a.txt, added b.txt, …`.
fn file_changes(path: &Path, entries: &[Entry], digests: &[Option<String>]) -> Option<String> {
    let old = crate::files::read_limited(path, MAX_MANIFEST_BYTES).ok()?;
    let old = String::from_utf8(old).ok()?;
    let by_name = |text: &str| -> BTreeMap<String, String> {
        text.lines()
            .filter_map(|l| {
                let fields: Vec<&str> = l.splitn(4, '\t').collect();
                (fields.len() == 4).then(|| (fields[3].to_owned(), fields[..3].join("\t")))
            })
            .collect()
    };
    let before = by_name(&old);
    let now_text: String = entries
        .iter()
        .zip(digests)
        .map(|(e, d)| manifest_line(e, d.as_deref()))
        .collect();
    let now = by_name(&now_text);
    let mut changes = Vec::new();
    for (name, line) in &now {
        match before.get(name) {
            None => changes.push(format!("added {name}")),
            Some(old_line) if old_line != line => changes.push(format!("changed {name}")),
            Some(_) => {}
        }
    }
    changes.extend(
        before
            .keys()
            .filter(|n| !now.contains_key(*n))
            .map(|n| format!("removed {n}")),
    );
    let shown: Vec<String> = changes.iter().take(5).cloned().collect();
    let more = changes.len().saturating_sub(shown.len());
    (!shown.is_empty()).then(|| {
        if more > 0 {
            format!("{} (+{more} more)", shown.join(", "))
        } else {
            shown.join(", ")
        }
    })
}

/// Why the last build of this image (as its manifest tells) cannot be reused.
pub fn why_rebuilt(
    key: &BuildKey,
    manifest: &Path,
    entries: &[Entry],
    digests: &[Option<String>],
) -> String {
    let Some(earlier) = manifest_summary(manifest) else {
        return "no earlier build".to_owned();
    };
    let changed = key.changed_since(&earlier);
    if changed.is_empty() {
        return "the earlier build is gone".to_owned();
    }
    let mut reasons: Vec<String> = changed.iter().map(|c| format!("{c} changed")).collect();
    if let Some(i) = changed.iter().position(|c| c.contains("context"))
        && let Some(files) = file_changes(manifest, entries, digests)
    {
        reasons[i] = format!("context changed: {files}");
    }
    reasons.join("; ")
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::build::context::Stamp;
    use crate::collector::GeneratedFile;

    fn build() -> Build {
        Build {
            dockerfile: "FROM x\n".into(),
            generated_files: vec![GeneratedFile {
                name: "__dockhand_file_1".into(),
                contents: "hello".into(),
                mode: 0o644,
            }],
            extra_contexts: Vec::new(),
            context: None,
            depends_on: Vec::new(),
            external_bases: vec!["x".into()],
            cache_from: Vec::new(),
        }
    }

    fn file(name: &str, mode: u32) -> Entry {
        let stamp = Stamp {
            size: 1,
            mtime_ns: 0,
            inode: 1,
        };
        Entry {
            name: name.into(),
            source: PathBuf::from(name),
            kind: EntryKind::File {
                mode,
                stamp,
                changed_ns: 0,
            },
        }
    }

    fn key(
        build: &Build,
        entries: &[Entry],
        digests: &[Option<String>],
        deps: &[&str],
        bases: &[&str],
    ) -> String {
        let deps: Vec<String> = deps.iter().map(|d| (*d).to_owned()).collect();
        let bases: Vec<String> = bases.iter().map(|b| (*b).to_owned()).collect();
        BuildKey::new(build, entries, digests, &deps, &bases).key
    }

    #[test]
    fn every_input_changes_the_key_and_nothing_else_does() {
        let entries = vec![file("a", 0o644)];
        let digests = vec![Some("d1".to_owned())];
        let same = key(&build(), &entries, &digests, &["k"], &["sha256:1"]);
        assert_eq!(
            same,
            key(&build(), &entries, &digests, &["k"], &["sha256:1"])
        );

        let mut dockerfile = build();
        dockerfile.dockerfile.push_str("RUN true\n");
        let mut generated = build();
        generated.generated_files[0].contents.push('!');
        let link = Entry {
            kind: EntryKind::Symlink {
                target: PathBuf::from("elsewhere"),
            },
            ..file("a", 0o644)
        };
        let variants = [
            key(&dockerfile, &entries, &digests, &["k"], &["sha256:1"]),
            key(&generated, &entries, &digests, &["k"], &["sha256:1"]),
            key(
                &build(),
                &[file("a", 0o755)],
                &digests,
                &["k"],
                &["sha256:1"],
            ),
            key(
                &build(),
                &[file("b", 0o644)],
                &digests,
                &["k"],
                &["sha256:1"],
            ),
            key(
                &build(),
                &entries,
                &[Some("d2".to_owned())],
                &["k"],
                &["sha256:1"],
            ),
            key(&build(), &[link], &[None], &["k"], &["sha256:1"]),
            key(&build(), &entries, &digests, &["k2"], &["sha256:1"]),
            key(&build(), &entries, &digests, &["k"], &["sha256:2"]),
        ];
        for (i, variant) in variants.iter().enumerate() {
            assert_ne!(*variant, same, "variant {i} kept the key");
        }
    }

    #[test]
    fn the_manifest_names_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("m.tsv");
        let before = vec![
            file("keep", 0o644),
            file("edit", 0o644),
            file("gone", 0o644),
        ];
        let digests = vec![Some("1".into()), Some("2".into()), Some("3".into())];
        let earlier = BuildKey::new(&build(), &before, &digests, &[], &[]);
        write_manifest(&manifest, &earlier, &before, &digests).unwrap();
        let after = vec![
            file("keep", 0o644),
            file("edit", 0o644),
            file("new file", 0o644),
        ];
        let now = vec![Some("1".into()), Some("2b".into()), Some("4".into())];
        assert_eq!(
            file_changes(&manifest, &after, &now).as_deref(),
            Some("changed edit, added new file, removed gone")
        );
        assert_eq!(file_changes(&manifest, &before, &digests), None);

        let summary = manifest_summary(&manifest).unwrap();
        assert!(earlier.changed_since(&summary).is_empty());
        let now_key = BuildKey::new(&build(), &after, &now, &[], &[]);
        assert_eq!(now_key.changed_since(&summary), ["a file in the context"]);
    }
}
