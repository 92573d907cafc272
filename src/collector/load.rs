//! Reading every file that makes up one configuration and merging them into one document:
//! `~/.harpoonrc.yml` beneath all, then the main file, then for each file the image files of
//! its `images.__images_from__` directories and the files its `harpoon.extra_files` names,
//! each loaded after the file that named it. Mappings deep-merge; anything else from a later
//! file replaces what was there.
//!
//! With a workspace, every file and directory is resolved, links included, and must lie
//! inside it: a repository's config cannot read the agent's host. `~/.harpoonrc.yml` and
//! what it names are the operator's own and exempt.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::diagnostic::{Diagnostics, Problem};
use super::node::{Entry, KeyPath, Location, Node, Value};
use super::yaml::{self, Budget};
use crate::files::{self, ConfineError};

/// Larger config files are refused; only this much of one is ever read.
pub const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;
/// All the files of one configuration together.
pub const MAX_TOTAL_BYTES: u64 = 16 * 1024 * 1024;
/// A chain of `extra_files` longer than this is almost certainly a mistake.
const MAX_FILES: usize = 1000;

/// The merged document and the files it came from.
#[derive(Debug)]
pub struct Loaded {
    pub document: Node,
    pub files: Vec<PathBuf>,
    pub config_root: PathBuf,
    /// The main file as named, and where its document starts: what a problem of the whole
    /// config points at (the merged document carries the last file's position).
    pub main: PathBuf,
    pub main_location: Location,
    /// The folder of each image read from an `__images_from__` file: harpoon gives such an
    /// image its own `{config_root}`, so its context and relative paths start there.
    pub image_roots: HashMap<String, PathBuf>,
}

/// Loads `main` and everything it pulls in, confined to `workspace` when there is one.
/// Returns `None` only when the main file itself cannot be read or parsed; problems in
/// other files are recorded and loading goes on.
pub fn load(
    main: &Path,
    home_config: Option<&Path>,
    workspace: Option<&Path>,
    diagnostics: &mut Diagnostics,
) -> Option<Loaded> {
    let main = absolute(main);
    let config_root = main.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut loader = Loader {
        config_root: config_root.clone(),
        workspace: None,
        seen: HashSet::new(),
        files: Vec::new(),
        bytes_read: 0,
        budget: Budget::default(),
        document: None,
        image_roots: HashMap::new(),
        diagnostics,
    };
    if let Some(home) = home_config.filter(|p| p.is_file()) {
        let home = absolute(home);
        if home != main {
            loader.load_file(&home, None);
        }
    }
    loader.workspace = workspace.map(Path::to_path_buf);
    let main_location = loader.load_file(&main, None)?;
    let document = loader.document.take()?;
    Some(Loaded {
        document,
        files: loader.files,
        config_root,
        main,
        main_location,
        image_roots: loader.image_roots,
    })
}

struct Loader<'d> {
    config_root: PathBuf,
    /// Where every file read must lie; `None` while the home config loads.
    workspace: Option<PathBuf>,
    /// Files loaded, by resolved path.
    seen: HashSet<PathBuf>,
    files: Vec<PathBuf>,
    bytes_read: u64,
    budget: Budget,
    document: Option<Node>,
    image_roots: HashMap<String, PathBuf>,
    diagnostics: &'d mut Diagnostics,
}

impl Loader<'_> {
    /// Reads, parses and merges one file, then what it names. `named_at` is the reference
    /// that asked for it, for "file not found" errors. Returns where the file's document
    /// starts, `None` when it could not be read.
    fn load_file(
        &mut self,
        path: &Path,
        named_at: Option<(&Location, &KeyPath)>,
    ) -> Option<Location> {
        let mut tree = self.read(path, named_at)?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let extra_files = self.take_paths(&mut tree, &["harpoon", "extra_files"], &dir);
        let images_from = self.take_paths(&mut tree, &["images", "__images_from__"], &dir);
        if tree.as_map().is_none() {
            let path = KeyPath::root();
            self.diagnostics.error(
                &tree.location,
                &path,
                Problem::WrongType {
                    expected: "a mapping at the top of a config file",
                    found: tree.kind(),
                },
            );
            return None;
        }
        let location = tree.location.clone();
        match &mut self.document {
            Some(document) => document.merge(tree),
            None => self.document = Some(tree),
        }
        for (directory, location, key_path) in images_from {
            self.load_images_from(&directory, &location, &key_path);
        }
        for (file, location, key_path) in extra_files {
            self.load_file(&file, Some((&location, &key_path)));
        }
        Some(location)
    }

    fn read(&mut self, path: &Path, named_at: Option<(&Location, &KeyPath)>) -> Option<Node> {
        let file: Arc<Path> = Arc::from(path);
        let here = Location {
            file: file.clone(),
            line: 1,
            column: 1,
        };
        let (at, key_path) = match named_at {
            Some((location, key_path)) => (location.clone(), key_path.clone()),
            None => (here, KeyPath::root()),
        };
        let resolved = match self.resolve(path, "config file") {
            Ok(resolved) => resolved,
            Err(problem) => {
                self.diagnostics.error(&at, &key_path, problem);
                return None;
            }
        };
        if !self.seen.insert(resolved.clone()) {
            let problem = Problem::FileLoadedTwice(path.display().to_string());
            self.diagnostics.error(&at, &key_path, problem);
            return None;
        }
        if self.files.len() >= MAX_FILES {
            let problem = Problem::Invalid {
                what: "file list",
                value: path.display().to_string(),
                reason: format!("more than {MAX_FILES} config files"),
            };
            self.diagnostics.error(&at, &key_path, problem);
            return None;
        }
        let limit = MAX_FILE_BYTES.min(MAX_TOTAL_BYTES - self.bytes_read);
        let text = match read_text(&resolved, limit) {
            Ok(text) => text,
            Err(Problem::FileTooLarge { .. }) if limit < MAX_FILE_BYTES => {
                let problem = Problem::FilesTooLarge(MAX_TOTAL_BYTES);
                self.diagnostics.error(&at, &key_path, problem);
                return None;
            }
            Err(problem) => {
                self.diagnostics.error(&at, &key_path, problem);
                return None;
            }
        };
        self.bytes_read += text.len() as u64;
        let text: Arc<str> = Arc::from(text);
        self.diagnostics.add_source(file.clone(), text.clone());
        self.files.push(path.to_path_buf());
        yaml::parse(&file, &text, &mut self.budget, self.diagnostics)
    }

    fn resolve(&self, path: &Path, what: &'static str) -> Result<PathBuf, Problem> {
        confine(self.workspace.as_deref(), path, what)
    }

    /// Removes a list-of-paths key (one path or a list) from `tree` and resolves each entry
    /// against `dir`. `{config_root}` may be used in them.
    fn take_paths(
        &mut self,
        tree: &mut Node,
        keys: &[&str; 2],
        dir: &Path,
    ) -> Vec<(PathBuf, Location, KeyPath)> {
        let section_path = KeyPath::root().key(keys[0]);
        let Value::Map(root) = &mut tree.value else {
            return Vec::new();
        };
        let Some(Value::Map(section)) = root
            .iter_mut()
            .find(|e| e.key == keys[0])
            .map(|e| &mut e.value.value)
        else {
            return Vec::new();
        };
        let Some(index) = section.iter().position(|e| e.key == keys[1]) else {
            return Vec::new();
        };
        let Entry { value, .. } = section.remove(index);
        let key_path = section_path.key(keys[1]);
        let items: Vec<(Node, KeyPath)> = match value.value {
            Value::Seq(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, n)| (n, key_path.index(i)))
                .collect(),
            _ => vec![(value, key_path)],
        };
        let root = self.config_root.to_string_lossy().into_owned();
        let mut out = Vec::new();
        for (node, path) in items {
            match node.as_str() {
                Some(text) => {
                    let resolved = text.replace("{config_root}", &root);
                    out.push((absolute_in(dir, Path::new(&resolved)), node.location, path));
                }
                None => self.diagnostics.error(
                    &node.location,
                    &path,
                    Problem::WrongType {
                        expected: "a path",
                        found: node.kind(),
                    },
                ),
            }
        }
        out
    }

    /// Every `*.yml`/`*.yaml` in `directory` is one image, named by the file's stem.
    /// Links among them are read like any file: [`Loader::read`] refuses those leading
    /// outside the workspace.
    fn load_images_from(&mut self, directory: &Path, location: &Location, key_path: &KeyPath) {
        let listed = self.resolve(directory, "directory").and_then(|resolved| {
            fs::read_dir(resolved).map_err(|_| Problem::MissingPath {
                what: "directory",
                path: directory.display().to_string(),
            })
        });
        let entries = match listed {
            Ok(entries) => entries,
            Err(problem) => {
                self.diagnostics.error(location, key_path, problem);
                return;
            }
        };
        // Subfolders too, as harpoon walks them (links to folders are not followed); each
        // file names the image by its own name, wherever it sits.
        let mut files: Vec<PathBuf> = Vec::new();
        let mut folders: Vec<(PathBuf, PathBuf)> = Vec::new();
        let mut listing = Some((directory.to_path_buf(), entries));
        while let Some((folder, entries)) = listing.take() {
            for entry in entries.filter_map(Result::ok) {
                let path = folder.join(entry.file_name());
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                if kind.is_dir() {
                    folders.push((path, entry.path()));
                } else if (kind.is_file() || kind.is_symlink())
                    && matches!(
                        path.extension().and_then(|e| e.to_str()),
                        Some("yml" | "yaml")
                    )
                {
                    files.push(path);
                }
            }
            while listing.is_none()
                && let Some((folder, resolved)) = folders.pop()
            {
                listing = fs::read_dir(resolved).ok().map(|entries| (folder, entries));
            }
        }
        files.sort();
        for file in files {
            let Some(stem) = file.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
                continue;
            };
            let Some(tree) = self.read(&file, Some((location, key_path))) else {
                continue;
            };
            if let Some(folder) = file.parent() {
                self.image_roots.insert(stem.clone(), folder.to_path_buf());
            }
            let image = Entry {
                key: stem,
                key_location: tree.location.clone(),
                value: tree,
            };
            let images = Node::new(Value::Map(vec![image]), location.clone());
            let wrapper = Node::new(
                Value::Map(vec![Entry {
                    key: "images".into(),
                    key_location: location.clone(),
                    value: images,
                }]),
                location.clone(),
            );
            match &mut self.document {
                Some(document) => document.merge(wrapper),
                None => self.document = Some(wrapper),
            }
        }
    }
}

/// The resolved `path`, a regular file of at most `limit` bytes, as text; no device or
/// FIFO is read, and no link swapped in since it was resolved is followed.
fn read_text(path: &Path, limit: u64) -> Result<String, Problem> {
    let bytes = files::read_limited_unlinked(path, limit).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidData => Problem::FileTooLarge { limit },
        _ => Problem::Read(e),
    })?;
    String::from_utf8(bytes).map_err(|e| {
        Problem::Read(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
        ))
    })
}

/// `path` (a `what`) resolved, links included, and inside `workspace` when there is one.
pub fn confine(
    workspace: Option<&Path>,
    path: &Path,
    what: &'static str,
) -> Result<PathBuf, Problem> {
    files::resolve_inside(workspace, path).map_err(|e| match e {
        e if e.is_not_found() => Problem::MissingPath {
            what,
            path: path.display().to_string(),
        },
        ConfineError::Resolve { cause, .. } => Problem::Read(cause),
        outside @ ConfineError::Outside { .. } => Problem::Outside(outside),
    })
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// `path` against `dir` when relative, normalised without touching the filesystem.
pub fn absolute_in(dir: &Path, path: &Path) -> PathBuf {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        dir.join(path)
    };
    let mut out = PathBuf::new();
    for component in joined.components() {
        match component {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}
