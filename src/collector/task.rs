//! Tasks (`images.<img>.tasks.<name>` and root `tasks` with an `image`), the `pipeline:`
//! extension and `secrets:`. Task names are one namespace across all images.

use std::collections::HashMap;

use indexmap::IndexMap;

use super::diagnostic::{Diagnostic, Problem};
use super::format::Formatted;
use super::image::{IMAGE_KEYS, IMAGE_UNSUPPORTED};
use super::model::{PipelineStep, TaskAction};
use super::node::{KeyPath, Location, Node, Value};
use super::read::Reader;
use super::run::{env, valid_env_name};
use super::suggest;

const TASK_KEYS: &[&str] = &["action", "options", "overrides", "description"];
const ROOT_TASK_KEYS: &[&str] = &["action", "options", "overrides", "description", "image"];
const TASK_UNSUPPORTED: &[(&str, &str)] = &[
    ("label", "`dockhand list` groups tasks by image"),
    ("spec", "harpoon deprecated it; use `action` and `options`"),
];
const STEP_KEYS: &[&str] = &["task", "needs", "timeout", "allow_failure", "env"];

/// A task as written, before its image is resolved with its options and overrides.
#[derive(Debug)]
pub struct TaskDef {
    pub name: String,
    pub image: String,
    pub action: TaskAction,
    pub description: Option<String>,
    pub options: Option<Node>,
    pub overrides: Option<Node>,
    pub location: Location,
    /// Where the task is written, e.g. `images.app.tasks.test`.
    pub path: KeyPath,
}

/// Every task of the config, in the order written, clashes reported.
pub fn read_tasks(
    r: &mut Reader<'_, '_>,
    document: &Node,
    images: &HashMap<String, String>,
    image_order: &[String],
) -> IndexMap<String, TaskDef> {
    let mut tasks: IndexMap<String, TaskDef> = IndexMap::new();
    let mut add = |r: &mut Reader<'_, '_>, def: TaskDef| {
        if let Some(first) = tasks.get(&def.name) {
            let problem = Problem::TaskClash {
                task: def.name.clone(),
                first: first.location.clone(),
            };
            r.d.error(&def.location, &KeyPath::root(), problem);
        } else {
            tasks.insert(def.name.clone(), def);
        }
    };
    let images_node = document.get("images");
    for image in image_order {
        let Some(task_map) = images_node
            .and_then(|n| n.get(image))
            .and_then(|n| n.get("tasks"))
        else {
            continue;
        };
        let path = KeyPath::root().key("images").key(image).key("tasks");
        let Some(task_map) = r.map(task_map, &path) else {
            continue;
        };
        for entry in task_map.as_map().unwrap_or_default() {
            if let Some(def) = task(
                r,
                &entry.key,
                &entry.key_location,
                &entry.value,
                &path.key(&entry.key),
                Some(image),
                images,
            ) {
                add(r, def);
            }
        }
    }
    if let Some(root_tasks) = document.get("tasks") {
        let path = KeyPath::root().key("tasks");
        if let Some(task_map) = r.map(root_tasks, &path) {
            for entry in task_map.as_map().unwrap_or_default() {
                if let Some(def) = task(
                    r,
                    &entry.key,
                    &entry.key_location,
                    &entry.value,
                    &path.key(&entry.key),
                    None,
                    images,
                ) {
                    add(r, def);
                }
            }
        }
    }
    tasks
}

fn task(
    r: &mut Reader<'_, '_>,
    name: &str,
    name_at: &Location,
    node: &Node,
    path: &KeyPath,
    image: Option<&str>,
    images: &HashMap<String, String>,
) -> Option<TaskDef> {
    let valid_name = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
    if !valid_name {
        let problem = Problem::Invalid {
            what: "task name",
            value: name.to_owned(),
            reason: "task names are letters, digits, `_`, `-`, `.`, `:`, starting with a letter or digit".into(),
        };
        r.d.error(name_at, path, problem);
        return None;
    }
    let empty = Node::new(Value::Map(Vec::new()), node.location.clone());
    let node = match node.value {
        Value::Null => empty,
        _ => r.map(node, path)?,
    };
    let known = if image.is_some() {
        TASK_KEYS
    } else {
        ROOT_TASK_KEYS
    };
    suggest::check_keys(
        &node,
        path,
        &format!("task `{name}`"),
        known,
        TASK_UNSUPPORTED,
        r.d,
    );
    let image = match image {
        Some(image) => image.to_owned(),
        None => match node.get("image") {
            Some(image_node) => image_name(r, image_node, &path.key("image"), images)?,
            None => {
                let problem = Problem::MissingKey {
                    key: "image",
                    section: format!("task `{name}` (a task outside `images` names its image)"),
                };
                r.d.error(name_at, path, problem);
                return None;
            }
        },
    };
    let action = match r.field(&node, path, "action", Reader::text) {
        None => TaskAction::Run,
        Some(action) => parse_action(r, &node, path, &action),
    };
    let optional_map = |r: &mut Reader<'_, '_>, key: &str| r.field(&node, path, key, Reader::map);
    Some(TaskDef {
        name: name.to_owned(),
        image,
        action,
        description: r.field(&node, path, "description", Reader::text),
        options: optional_map(r, "options")
            .map(|options| known_options(r, options, &path.key("options"))),
        overrides: optional_map(r, "overrides"),
        location: name_at.clone(),
        path: path.clone(),
    })
}

/// Reports option keys no image has at the options' own path, and leaves them out of the
/// image the options merge into (where they would be reported at the image's path).
fn known_options(r: &mut Reader<'_, '_>, mut options: Node, path: &KeyPath) -> Node {
    suggest::check_keys(
        &options,
        path,
        "task options",
        IMAGE_KEYS,
        IMAGE_UNSUPPORTED,
        r.d,
    );
    if let Value::Map(entries) = &mut options.value {
        entries.retain(|e| IMAGE_KEYS.contains(&e.key.as_str()));
    }
    options
}

/// The task's action. A rejected action is reported and read as `run`, so the task still
/// exists for the pipeline's checks.
fn parse_action(r: &mut Reader<'_, '_>, node: &Node, path: &KeyPath, action: &str) -> TaskAction {
    let hint = match action {
        "run" => return TaskAction::Run,
        "make" => return TaskAction::Make,
        "make_all" | "make_pushable" => "`dockhand build` builds every image",
        "push" | "push_all" | "pull" | "pull_all" | "pull_parents" | "pull_arbitrary" => {
            "dockhand builds images locally on each agent and does not push or pull"
        }
        "show" | "show_pushable" | "list_tasks" => "`dockhand list` shows images and tasks",
        "print_dockerfile" | "print_all_dockerfiles" => {
            "`dockhand dockerfile IMAGE` prints an image's Dockerfile"
        }
        "run_task" => "a task with `action: run` (the default) does this",
        "tag" | "untag" | "delete_untagged" | "get_docker_context" | "ssh" | "resolve_config"
        | "print_config" => "use `dockhand check --json` or the docker CLI",
        other => {
            let problem = Problem::UnsupportedAction {
                action: other.to_owned(),
                hint: "dockhand tasks either `run` (the default) or `make`",
            };
            let at = node.get("action").unwrap_or(node);
            let mut diagnostic = Diagnostic::error(&at.location, &path.key("action"), problem);
            if let Some(c) = suggest::closest(other, ["run", "make"]) {
                diagnostic = diagnostic.with_help(format!("did you mean `{c}`?"));
            }
            r.d.push(diagnostic);
            return TaskAction::Run;
        }
    };
    let at = node.get("action").unwrap_or(node);
    let problem = Problem::UnsupportedAction {
        action: action.to_owned(),
        hint,
    };
    r.d.error(&at.location, &path.key("action"), problem);
    TaskAction::Run
}

fn image_name(
    r: &mut Reader<'_, '_>,
    node: &Node,
    path: &KeyPath,
    images: &HashMap<String, String>,
) -> Option<String> {
    let name = match r.format(node, path)? {
        Formatted::Image(name) => return Some(name),
        Formatted::Text(text) => text,
        Formatted::Node(n) => {
            r.wrong(&n, path, "an image name");
            return None;
        }
    };
    if images.contains_key(&name) {
        return Some(name);
    }
    let mut diagnostic =
        Diagnostic::error(&node.location, path, Problem::UnknownImage(name.clone()));
    if let Some(c) = suggest::closest(&name, images.keys().map(String::as_str)) {
        diagnostic = diagnostic.with_help(format!("did you mean `{c}`?"));
    }
    r.d.push(diagnostic);
    None
}

/// The `pipeline:` list: step names, `needs`, timeouts. `needs` cycles are reported with
/// every member.
pub fn read_pipeline<T>(
    r: &mut Reader<'_, '_>,
    node: &Node,
    tasks: &IndexMap<String, T>,
) -> Vec<PipelineStep> {
    let path = KeyPath::root().key("pipeline");
    let Some(items) = r.list(node, &path) else {
        return Vec::new();
    };
    let mut steps: Vec<PipelineStep> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let item_path = path.index(i);
        let step_node = match &item.value {
            Value::Str(_) => Node::new(
                Value::Map(vec![super::node::Entry {
                    key: "task".into(),
                    key_location: item.location.clone(),
                    value: item.clone(),
                }]),
                item.location.clone(),
            ),
            _ => match r.map(item, &item_path) {
                Some(n) => n,
                None => continue,
            },
        };
        suggest::check_keys(
            &step_node,
            &item_path,
            "a pipeline step",
            STEP_KEYS,
            &[],
            r.d,
        );
        let Some(task_node) = step_node.get("task") else {
            let problem = Problem::MissingKey {
                key: "task",
                section: "a pipeline step".into(),
            };
            r.d.error(&step_node.location, &item_path, problem);
            continue;
        };
        let task_path = if matches!(item.value, Value::Str(_)) {
            item_path.clone()
        } else {
            item_path.key("task")
        };
        let Some(task) = r.text(task_node, &task_path) else {
            continue;
        };
        if !tasks.contains_key(&task) {
            let mut diagnostic = Diagnostic::error(
                &task_node.location,
                &task_path,
                Problem::UnknownTask(task.clone()),
            );
            if let Some(c) = suggest::closest(&task, tasks.keys().map(String::as_str)) {
                diagnostic = diagnostic.with_help(format!("did you mean `{c}`?"));
            }
            r.d.push(diagnostic);
            continue;
        }
        if steps.iter().any(|s| s.task == task) {
            r.d.error(
                &task_node.location,
                &task_path,
                Problem::DuplicateStep(task),
            );
            continue;
        }
        steps.push(PipelineStep {
            task,
            needs: r
                .field(&step_node, &item_path, "needs", Reader::texts)
                .unwrap_or_default(),
            timeout: r.field(&step_node, &item_path, "timeout", Reader::duration),
            allow_failure: r
                .field(&step_node, &item_path, "allow_failure", Reader::bool)
                .unwrap_or(false),
            env: r
                .field(&step_node, &item_path, "env", env)
                .unwrap_or_default(),
            location: task_node.location.clone(),
        });
    }
    let mut ok = true;
    for (i, step) in steps.iter().enumerate() {
        for need in &step.needs {
            if !steps.iter().any(|s| &s.task == need) {
                let diagnostic = Diagnostic::error(
                    &step.location,
                    &path.index(i).key("needs"),
                    Problem::UnknownNeed(need.clone()),
                );
                r.d.push(diagnostic);
                ok = false;
            }
        }
    }
    if ok {
        let index: HashMap<&str, usize> = steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.task.as_str(), i))
            .collect();
        let edges: Vec<Vec<usize>> = steps
            .iter()
            .map(|s| s.needs.iter().map(|n| index[n.as_str()]).collect())
            .collect();
        for cycle in crate::graph::cycles(&edges) {
            let mut members: Vec<String> = cycle.iter().map(|&i| steps[i].task.clone()).collect();
            members.push(members[0].clone());
            let first = &steps[cycle[0]];
            r.d.error(
                &first.location,
                &path.index(cycle[0]).key("needs"),
                Problem::NeedsCycle(members),
            );
        }
    }
    steps
}

/// `secrets:` names: environment-variable names, each once.
pub fn read_secrets(r: &mut Reader<'_, '_>, node: &Node) -> Vec<String> {
    let path = KeyPath::root().key("secrets");
    let Some(items) = r.list(node, &path) else {
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let item_path = path.index(i);
        let Some(name) = item.as_str() else {
            r.wrong(item, &item_path, "a secret's name");
            continue;
        };
        if !valid_env_name(name) {
            r.invalid(
                item,
                &item_path,
                "secret name",
                name,
                "secret names are environment variable names: letters, digits and _",
            );
        } else if out.iter().any(|s| s == name) {
            r.invalid(item, &item_path, "secret name", name, "listed twice");
        } else {
            out.push(name.to_owned());
        }
    }
    out
}
