//! The `context` option: which directory is sent as an image's build context, and which of
//! its files. `.dockerignore` is applied when the context is built, not here.

use std::path::Path;

use super::diagnostic::Problem;
use super::load::{absolute_in, confine};
use super::model::Context;
use super::node::{KeyPath, Node, Value};
use super::read::Reader;
use super::suggest;

const KEYS: &[&str] = &[
    "enabled",
    "parent_dir",
    "include",
    "exclude",
    "use_gitignore",
];
const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "use_git_timestamps",
        "build caching in dockhand does not depend on file times",
    ),
    ("find_options", "use `include` and `exclude` globs"),
    (
        "ignore_find_errors",
        "dockhand lists the context's files itself, without `find`; there are no find errors to ignore",
    ),
];

/// Reads a context option. `Some(None)` is a disabled context; `None` an error already
/// reported. `allow_enabled` is false for ADD's `context`, which is always sent.
pub fn read(
    r: &mut Reader<'_, '_>,
    node: Option<&Node>,
    path: &KeyPath,
    config_root: &Path,
    allow_enabled: bool,
) -> Option<Option<Context>> {
    let default = Context {
        parent_dir: config_root.to_path_buf(),
        include: Vec::new(),
        exclude: Vec::new(),
        use_gitignore: false,
    };
    let Some(node) = node else {
        return Some(Some(default));
    };
    let node = r.resolve(node, path)?;
    match &node.value {
        Value::Null => return Some(Some(default)),
        Value::Bool(true) => return Some(Some(default)),
        Value::Bool(false) if allow_enabled => return Some(None),
        Value::Map(_) => {}
        _ => {
            r.wrong(&node, path, "true, false or a mapping of context options");
            return None;
        }
    }
    let known = if allow_enabled { KEYS } else { &KEYS[1..] };
    suggest::check_keys(&node, path, "context", known, UNSUPPORTED, r.d);
    if allow_enabled && r.field(&node, path, "enabled", Reader::bool) == Some(false) {
        return Some(None);
    }
    let mut context = default;
    if let Some(dir) = r.field(&node, path, "parent_dir", Reader::text) {
        context.parent_dir = absolute_in(config_root, Path::new(&dir));
        let problem = match confine(r.workspace, &context.parent_dir, "context directory") {
            Ok(resolved) if resolved.is_dir() => None,
            Ok(_) => Some(Problem::MissingPath {
                what: "context directory",
                path: context.parent_dir.display().to_string(),
            }),
            Err(problem) => Some(problem),
        };
        if let Some(problem) = problem {
            let dir_node = node.get("parent_dir").unwrap_or(&node);
            r.d.error(&dir_node.location, &path.key("parent_dir"), problem);
            return None;
        }
    }
    context.include = r
        .field(&node, path, "include", Reader::texts)
        .unwrap_or_default();
    context.exclude = r
        .field(&node, path, "exclude", Reader::texts)
        .unwrap_or_default();
    context.use_gitignore = r
        .field(&node, path, "use_gitignore", Reader::bool)
        .unwrap_or(false);
    Some(Some(context))
}
