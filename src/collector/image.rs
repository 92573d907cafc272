//! One image: its name, its Dockerfile and context, and its run options, read from the
//! image's mapping with the root's image options merged beneath it.

use std::collections::HashMap;
use std::path::Path;

use super::commands::{self, ImageNames};
use super::context;
use super::diagnostic::Problem;
use super::format::Formatted;
use super::model::{Build, Image};
use super::node::{Entry, KeyPath, Node, Value};
use super::read::Reader;
use super::run;
use super::suggest;

/// Keys an image mapping may have. Every one but `tasks`, `name` and `container_name` (each
/// names one image) may also be set at the root as a default for every image.
pub const IMAGE_KEYS: &[&str] = &[
    "commands",
    "context",
    "tasks",
    "command",
    "bash",
    "shell",
    "env",
    "ports",
    "volumes",
    "links",
    "wait_condition",
    "dependency_options",
    "user",
    "cpu",
    "network",
    "tag",
    "name",
    "image_name_prefix",
    "image_index",
    "cache_from",
    "container_name",
    "ulimits",
    "read_only_rootfs",
    "reports",
    "artifacts",
    "vars",
    "no_tty_option",
];

/// harpoon image options dockhand rejects, with what to do instead.
pub const IMAGE_UNSUPPORTED: &[(&str, &str)] = &[
    ("image_name", "use `name`"),
    ("squash_after", "dockhand does not squash images"),
    ("squash_before_push", "dockhand does not squash images"),
    (
        "persistence",
        "use `volumes.mount` on a path in the workspace",
    ),
    ("privileged", "agents never run privileged containers"),
    ("volumes_from", "use `volumes.share_with`"),
    (
        "cleanup_intermediate_images",
        "dockhand always removes intermediate containers",
    ),
    (
        "deleteable_image",
        "images are kept; remove them with docker",
    ),
    ("link", "harpoon deprecated it; use `links`"),
    (
        "key_name",
        "harpoon sets it to the image's key itself; the key under `images` is the name",
    ),
    (
        "harpoon",
        "harpoon fills it in for each image from the root `harpoon` section, which dockhand reads for `extra_files` only",
    ),
    (
        "configuration",
        "harpoon sets it to the whole configuration; refer to values with `{a.b.c}`",
    ),
    (
        "assume_role",
        "dockhand gives tasks no cloud credentials; name the values a task needs in `secrets:` and pass them with `env`",
    ),
    (
        "authentication",
        "dockhand neither pulls nor pushes; base images must already be in the agent's engine",
    ),
    (
        "lxc_conf",
        "Docker dropped the LXC driver (1.10); there is no equivalent",
    ),
    (
        "log_config",
        "dockhand streams every container's output into the job's log itself (the log driver is `none`)",
    ),
    (
        "security_opt",
        "it loosens a container's confinement (seccomp, AppArmor, SELinux labels); agents run every container with no-new-privileges and the engine's default profiles, and have no setting to widen them",
    ),
    (
        "devices",
        "host devices in a container widen the sandbox; agents have no setting to allow them",
    ),
    (
        "other_options",
        "raw engine options would bypass the sandbox's checks; use the dockhand option for the setting (the README lists every harpoon option)",
    ),
    (
        "restart_policy",
        "a task runs once and its exit decides the job; a restarting container would never end. Retry inside the task's command",
    ),
];

/// The root's image options, the defaults beneath every image.
pub fn root_defaults(document: &Node) -> Node {
    let entries: Vec<Entry> = document
        .as_map()
        .unwrap_or_default()
        .iter()
        .filter(|e| {
            IMAGE_KEYS.contains(&e.key.as_str())
                && !matches!(e.key.as_str(), "tasks" | "name" | "container_name")
        })
        .cloned()
        .collect();
    Node::new(Value::Map(entries), document.location.clone())
}

/// How an image's full name is spelt. In the single-image shape `tag` is the whole
/// reference (`repo/app:1.0`).
pub fn full_name(
    r: &mut Reader<'_, '_>,
    key: &str,
    image: &Node,
    path: &KeyPath,
    single: bool,
) -> Option<String> {
    let tag = r.field(image, path, "tag", Reader::text);
    let (repository, tag) = if single {
        let reference = tag.unwrap_or_else(|| key.to_owned());
        match reference.rsplit_once(':').filter(|(_, t)| !t.contains('/')) {
            Some((repo, tag)) => (repo.to_owned(), tag.to_owned()),
            None => (reference, "latest".to_owned()),
        }
    } else {
        let name = r
            .field(image, path, "name", Reader::text)
            .unwrap_or_else(|| key.to_owned());
        let prefix = r
            .field(image, path, "image_name_prefix", Reader::text)
            .unwrap_or_default();
        let mut index = r
            .field(image, path, "image_index", Reader::text)
            .unwrap_or_default();
        if !index.is_empty() && !index.ends_with('/') {
            index.push('/');
        }
        let name = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}-{name}")
        };
        (
            format!("{index}{name}"),
            tag.unwrap_or_else(|| "latest".to_owned()),
        )
    };
    let at = image
        .get("tag")
        .or_else(|| image.get("name"))
        .unwrap_or(image);
    let at_path = if image.get("tag").is_some() {
        path.key("tag")
    } else {
        path.clone()
    };
    if let Err(reason) = check_repository(&repository) {
        r.invalid(at, &at_path, "image name", &repository, reason);
        return None;
    }
    let tag_ok = tag.len() <= 128
        && tag
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !tag_ok {
        r.invalid(
            at,
            &at_path,
            "image tag",
            &tag,
            "a tag is up to 128 letters, digits, `_`, `.`, `-`, not starting with `.` or `-`",
        );
        return None;
    }
    Some(format!("{repository}:{tag}"))
}

/// Docker's rules for the repository part, checked here so a bad name fails `check`.
fn check_repository(repository: &str) -> Result<(), String> {
    let (registry, path) = match repository.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            (Some(first), rest)
        }
        _ => (None, repository),
    };
    if registry.is_some_and(|r| r.is_empty() || r.chars().any(char::is_whitespace)) {
        return Err("the registry part is not a host name".into());
    }
    for component in path.split('/') {
        let separators_ok =
            !component.starts_with(['.', '_', '-']) && !component.ends_with(['.', '_', '-']);
        let chars_ok = component
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
        if component.is_empty() || !separators_ok || !chars_ok {
            return Err(format!(
                "`{component}`: image names are lowercase letters, digits and `.`, `_`, `-` between them"
            ));
        }
    }
    Ok(())
}

/// Reads an image; `None` when it had errors (already reported).
pub fn read(
    r: &mut Reader<'_, '_>,
    key: &str,
    image: &Node,
    path: &KeyPath,
    names: &HashMap<String, String>,
    config_root: &Path,
    check: bool,
) -> Option<Image> {
    if check {
        suggest::check_keys(
            image,
            path,
            &format!("image `{key}`"),
            IMAGE_KEYS,
            IMAGE_UNSUPPORTED,
            r.d,
        );
    }
    let errors_before = r.d.error_count();
    let full_name = names.get(key)?.clone();
    let Some(commands_node) = image.get("commands") else {
        let problem = Problem::MissingKey {
            key: "commands",
            section: format!("image `{key}`"),
        };
        r.d.error(&image.location, path, problem);
        return None;
    };
    let dockerfile = commands::read(
        r,
        commands_node,
        &path.key("commands"),
        &ImageNames { full: names },
        config_root,
    );
    let context = context::read(
        r,
        image.get("context"),
        &path.key("context"),
        config_root,
        true,
    );
    let run = run::read(r, image, path, names, config_root);
    let cache_from = r
        .field(image, path, "cache_from", |r, n, p| {
            cache_from(r, n, p, &full_name, names)
        })
        .unwrap_or_default();
    r.field(image, path, "vars", Reader::map);
    r.field(image, path, "no_tty_option", Reader::bool);
    if r.d.error_count() > errors_before {
        return None;
    }
    Some(Image {
        name: key.to_owned(),
        full_name,
        location: image.location.clone(),
        build: Build {
            dockerfile: dockerfile.text(),
            generated_files: dockerfile.generated_files,
            extra_contexts: dockerfile.extra_contexts,
            context: context?,
            depends_on: dockerfile.depends_on,
            external_bases: dockerfile.external_bases,
            cache_from,
        },
        run,
    })
}

/// `cache_from`: `true` (the image's own earlier build), `false`, or images whose layers the
/// engine may reuse: `{images.x}` or any image reference.
fn cache_from(
    r: &mut Reader<'_, '_>,
    node: &Node,
    path: &KeyPath,
    own: &str,
    names: &HashMap<String, String>,
) -> Option<Vec<String>> {
    let node = r.resolve(node, path)?;
    if let Value::Bool(b) = node.value {
        return Some(if b { vec![own.to_owned()] } else { Vec::new() });
    }
    let items = r.list(&node, path)?;
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let item_path = path.index(i);
        let reference = match r.format(item, &item_path)? {
            Formatted::Image(name) => match names.get(&name) {
                Some(full) => full.clone(),
                None => {
                    r.d.error(&item.location, &item_path, Problem::ImageUnresolved(name));
                    continue;
                }
            },
            Formatted::Text(text) => text,
            Formatted::Node(n) => {
                r.wrong(&n, &item_path, "an image reference or `{images.NAME}`");
                continue;
            }
        };
        if reference.is_empty() || reference.chars().any(char::is_whitespace) {
            r.invalid(
                item,
                &item_path,
                "image reference",
                &reference,
                "an image reference has no spaces",
            );
            continue;
        }
        out.push(reference);
    }
    Some(out)
}
