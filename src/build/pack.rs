//! Packing copied directories: a `COPY dir /dest` whose directory nothing else in the
//! Dockerfile reads is sent as one archive inside the context and the line as
//! `ADD __dockhand_pack_N.tar /dest`, which the classic builder unpacks to the same files,
//! modes, owners and times.
//!
//! Why: the engine writes every context file to disk before the first step, and creating
//! a file costs it ~0.7 ms here: 14 s for 20,000 files, most of a build whose steps are
//! all cached. One archive is one file.
//!
//! `COPY . dest` packs the whole context, the Dockerfile and generated files included, as
//! the engine would have copied them.
//!
//! Anything this does not fully understand keeps the Dockerfile as it is: JSON-form or
//! multi-line ADD/COPY, variables, heredocs, flags other than `--from`, wildcards or
//! sources that overlap the directory, empty directories, and whiteout-named files (which
//! unpacking would treat as deletions).

use super::context::{Entry, EntryKind};

/// Prefix of the packed archives' names; no user file is called this.
const PACK_PREFIX: &str = "__dockhand_pack_";

/// The Dockerfile to send and the directories to send as archives.
#[derive(Debug, PartialEq, Eq)]
pub struct Packing {
    pub dockerfile: String,
    pub packs: Vec<Pack>,
}

/// One directory of the context sent as one archive.
#[derive(Debug, PartialEq, Eq)]
pub struct Pack {
    /// The directory's path in the context, `/`-separated, without a trailing `/`; empty
    /// for the whole context.
    pub dir: String,
    /// The archive's name in the context.
    pub file: String,
}

impl Packing {
    /// The pack that holds `entry`, or replaces it (the packed directory itself).
    pub fn pack_of(&self, entry: &Entry) -> Option<&Pack> {
        self.packs.iter().find(|p| {
            p.dir.is_empty()
                || entry
                    .name
                    .strip_prefix(&p.dir)
                    .is_some_and(|rest| rest.starts_with('/') || rest.is_empty())
        })
    }
}

/// An ADD/COPY line that could be packed.
struct Candidate {
    line: usize,
    dir: String,
    dest: String,
}

/// Decides what to pack in `dockerfile`, given the context's entries (sorted by name).
pub fn plan(dockerfile: &str, entries: &[Entry]) -> Packing {
    let unchanged = || Packing {
        dockerfile: dockerfile.to_owned(),
        packs: Vec::new(),
    };
    let Some((sources, candidates)) = read(dockerfile) else {
        return unchanged();
    };
    let mut chosen: Vec<Candidate> = Vec::new();
    for candidate in candidates {
        let readers = sources
            .iter()
            .filter(|s| overlaps(s, &candidate.dir))
            .count();
        if readers == 1 && packable(&candidate.dir, entries) {
            chosen.push(candidate);
        }
    }
    if chosen.is_empty() {
        return unchanged();
    }
    let mut lines: Vec<String> = dockerfile.lines().map(str::to_owned).collect();
    let mut packs = Vec::new();
    for (i, candidate) in chosen.into_iter().enumerate() {
        let file = format!("{PACK_PREFIX}{i}.tar");
        lines[candidate.line] = format!("ADD {file} {}", candidate.dest);
        packs.push(Pack {
            dir: candidate.dir,
            file,
        });
    }
    let mut text = lines.join("\n");
    if dockerfile.ends_with('\n') {
        text.push('\n');
    }
    Packing {
        dockerfile: text,
        packs,
    }
}

/// What the Dockerfile's ADD/COPY lines can read from the context (a path reaches
/// everything under it; a pattern, everything under its literal prefix), and the lines
/// that could be packed; `None` when some line cannot be read with certainty.
fn read(dockerfile: &str) -> Option<(Vec<String>, Vec<Candidate>)> {
    let mut sources = Vec::new();
    let mut candidates = Vec::new();
    let mut continued = false;
    for (number, line) in dockerfile.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        if let Some(comment) = trimmed.strip_prefix('#') {
            if comment
                .trim_start()
                .to_ascii_lowercase()
                .starts_with("escape")
            {
                return None;
            }
            continue;
        }
        let starts = !continued;
        continued = trimmed.ends_with('\\');
        let mut words = trimmed.split_whitespace();
        let keyword = words.next().unwrap_or_default();
        let copies = ["ADD", "COPY"]
            .iter()
            .any(|k| keyword.eq_ignore_ascii_case(k));
        if !starts || !copies {
            continue;
        }
        if continued {
            return None;
        }
        let args: Vec<&str> = words.collect();
        let flags: Vec<&str> = args
            .iter()
            .copied()
            .take_while(|a| a.starts_with("--"))
            .collect();
        if flags.iter().any(|f| f.starts_with("--from=")) {
            continue;
        }
        let rest = &args[flags.len()..];
        if rest.first().is_some_and(|a| a.starts_with('[')) {
            return None;
        }
        let Some((dest, paths)) = rest.split_last() else {
            continue;
        };
        let mut line_sources = Vec::new();
        let mut exact = true;
        for path in paths {
            if path.contains(['$', '\\']) || path.starts_with("<<") {
                return None;
            }
            if keyword.eq_ignore_ascii_case("ADD") && path.contains("://") {
                continue;
            }
            let path = normalize(path)?;
            line_sources.push(match path.find(['*', '?', '[']) {
                Some(at) => {
                    exact = false;
                    path[..at]
                        .rsplit_once('/')
                        .map_or("", |(dir, _)| dir)
                        .to_owned()
                }
                None => path,
            });
        }
        if let ([dir], true) = (line_sources.as_slice(), exact && flags.is_empty()) {
            candidates.push(Candidate {
                line: number,
                dir: dir.clone(),
                dest: (*dest).to_owned(),
            });
        }
        sources.extend(line_sources);
    }
    Some((sources, candidates))
}

/// `./a//b/` → `a/b`, the root → ``; `None` for `..`.
fn normalize(path: &str) -> Option<String> {
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            part => parts.push(part),
        }
    }
    Some(parts.join("/"))
}

/// Whether one of two context paths contains the other (the root contains everything).
fn overlaps(a: &str, b: &str) -> bool {
    let within = |inner: &str, outer: &str| {
        outer.is_empty()
            || inner == outer
            || inner
                .strip_prefix(outer)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    within(a, b) || within(b, a)
}

/// A real directory of the context (or the context itself) with something in it and no
/// whiteout-named file.
fn packable(dir: &str, entries: &[Entry]) -> bool {
    let is_dir = dir.is_empty()
        || entries
            .iter()
            .any(|e| e.name == dir && matches!(e.kind, EntryKind::Dir { .. }));
    let prefix = if dir.is_empty() {
        String::new()
    } else {
        format!("{dir}/")
    };
    let mut inside = entries.iter().filter(|e| e.name.starts_with(&prefix));
    let mut any = false;
    let clean = inside.all(|e| {
        any = true;
        !e.name.rsplit('/').next().unwrap_or("").starts_with(".wh.")
    });
    is_dir && any && clean
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::build::context::Stamp;

    fn tree(names: &[&str]) -> Vec<Entry> {
        names
            .iter()
            .map(|name| Entry {
                name: name.trim_end_matches('/').to_owned(),
                source: PathBuf::from(name),
                kind: if name.ends_with('/') {
                    EntryKind::Dir { mode: 0o755 }
                } else {
                    EntryKind::File {
                        mode: 0o644,
                        stamp: Stamp {
                            size: 1,
                            mtime_ns: 0,
                            inode: 1,
                        },
                        changed_ns: 0,
                    }
                },
            })
            .collect()
    }

    fn packed(dockerfile: &str, entries: &[Entry]) -> Vec<String> {
        plan(dockerfile, entries)
            .packs
            .into_iter()
            .map(|p| p.dir)
            .collect()
    }

    #[test]
    fn a_directory_nothing_else_reads_is_sent_as_one_archive() {
        let entries = tree(&["lib/", "lib/x", "src/", "src/a/", "src/a/b", "top"]);
        let dockerfile =
            "FROM base\ncopy ./src/ /app\nCOPY top /top\nCOPY --from=other /lib /lib\nRUN true\n";
        let packing = plan(dockerfile, &entries);
        assert_eq!(
            packing.dockerfile,
            "FROM base\nADD __dockhand_pack_0.tar /app\nCOPY top /top\nCOPY --from=other /lib /lib\nRUN true\n"
        );
        assert_eq!(
            packing.packs,
            [Pack {
                dir: "src".into(),
                file: "__dockhand_pack_0.tar".into()
            }]
        );
        assert_eq!(packing.pack_of(&entries[3]).unwrap().dir, "src");
        assert!(packing.pack_of(&entries[2]).is_some());
        assert!(packing.pack_of(&entries[0]).is_none());
        assert_eq!(
            packed("FROM b\nCOPY src /a\nADD lib /l\n", &entries),
            ["src", "lib"]
        );
    }

    #[test]
    fn anything_uncertain_keeps_the_dockerfile_as_it_is() {
        let entries = tree(&["src/", "src/a/", "src/a/b", "src/.wh.x", "empty/", "f"]);
        let entries_clean = tree(&["src/", "src/a/", "src/a/b", "empty/", "f"]);
        for dockerfile in [
            "FROM b\nCOPY src /a\nCOPY src/a/b /b\n",
            "FROM b\nCOPY src /a\nCOPY src /again\n",
            "FROM b\nCOPY src /a\nCOPY . /all\n",
            "FROM b\nCOPY src /a\nCOPY sr* /x\n",
            "FROM b\nCOPY src /a\nCOPY ./*/a /x\n",
            "FROM b\nCOPY --chown=1 src /a\n",
            "FROM b\nCOPY src f /a/\n",
            "FROM b\nCOPY [\"src\", \"/a\"]\n",
            "FROM b\nCOPY src \\\n  /a\n",
            "FROM b\nCOPY $DIR /a\n",
            "FROM b\nCOPY src /a\nCOPY ${X} /y\n",
            "# escape=`\nFROM b\nCOPY src /a\n",
            "FROM b\nCOPY ../src /a\n",
            "FROM b\nCOPY empty /e\n",
            "FROM b\nCOPY f /f\n",
            "FROM b\nCOPY missing /m\n",
            "FROM b\nCOPY . /all\nADD __dockhand_file_1 /x\n",
        ] {
            let packing = plan(dockerfile, &entries_clean);
            assert_eq!(packing.packs, [], "{dockerfile:?}");
            assert_eq!(packing.dockerfile, dockerfile);
        }
        assert_eq!(
            packed("FROM b\nCOPY src /a\n", &entries),
            Vec::<String>::new()
        );
        assert_eq!(packed("FROM b\nCOPY src /a\n", &entries_clean), ["src"]);
        assert_eq!(packed("FROM b\nCOPY ./ /all\n", &entries_clean), [""]);
        assert!(packed("FROM b\nCOPY . /all\n", &entries).is_empty());
        assert_eq!(
            packed(
                "FROM b\nRUN echo \\\n  COPY f /x\nCOPY src /a\n",
                &entries_clean
            ),
            ["src"]
        );
        let continued = "FROM b\nRUN echo \\\n# a comment\n\n  COPY src /x\n";
        assert_eq!(plan(continued, &entries_clean).dockerfile, continued);
        assert_eq!(
            packed(
                "FROM b\nADD https://example.com/x /x\nCOPY src /a\n",
                &entries_clean
            ),
            ["src"]
        );
    }
}
