//! The collector's entry point: files in, a validated [`Config`] (or every problem) out.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use indexmap::IndexMap;

use super::diagnostic::{Diagnostic, Diagnostics, Problem, Severity};
use super::format::{Expansion, Formatter};
use super::image::{self, IMAGE_KEYS};
use super::load::{self, Loaded};
use super::model::{Config, Images, Shape, Task, Unresolved};
use super::node::{KeyPath, Location, Node, Value};
use super::read::Reader;
use super::suggest;
use super::task::{self, TaskDef};

/// What to collect and what formatting may read.
#[derive(Clone, Debug, Default)]
pub struct CollectOptions {
    /// The main config file.
    pub config: PathBuf,
    /// `~/.harpoonrc.yml`, loaded beneath everything when it exists.
    pub home_config: Option<PathBuf>,
    /// The extra CLI arguments after `--`, for `{$@}`.
    pub cli_args: Vec<String>,
    /// The environment `{NAME:from_env}` reads.
    pub env: HashMap<String, String>,
    /// Where the config, the files it pulls in and its context directories must lie, links
    /// resolved: the job's workspace. `None` reads anywhere.
    pub workspace: Option<PathBuf>,
}

/// A collected configuration and the warnings found on the way.
#[derive(Debug)]
pub struct Collected {
    pub config: Config,
    pub warnings: Diagnostics,
    /// The variables `{NAME:from_env}` read: an agent checks that a config reads no secret
    /// it does not name.
    pub env_read: BTreeSet<String>,
    /// Whether any value read `{$@}`: extra arguments nothing reads are a mistake.
    pub cli_args_read: bool,
}

const ROOT_KEYS: &[&str] = &["images", "harpoon", "pipeline", "secrets", "tasks"];

/// Reads, merges, formats and validates a configuration. `Err` holds every problem found,
/// sorted by file and position.
pub fn collect(options: &CollectOptions) -> Result<Collected, Diagnostics> {
    let mut d = Diagnostics::default();
    let Some(loaded) = load::load(
        &options.config,
        options.home_config.as_deref(),
        options.workspace.as_deref(),
        &mut d,
    ) else {
        return Err(d.finish());
    };
    let collector = Collector {
        options,
        loaded: &loaded,
        env_read: RefCell::default(),
        cli_args_read: Cell::new(false),
        expansion: Expansion::default(),
    };
    let config = collector.run(&mut d);
    match config {
        Some(config) if !d.has_errors() => Ok(Collected {
            config,
            warnings: d.finish(),
            env_read: collector.env_read.into_inner(),
            cli_args_read: collector.cli_args_read.get(),
        }),
        _ => Err(d.finish()),
    }
}

struct Collector<'a> {
    options: &'a CollectOptions,
    loaded: &'a Loaded,
    env_read: RefCell<BTreeSet<String>>,
    cli_args_read: Cell<bool>,
    expansion: Expansion,
}

impl Collector<'_> {
    /// `{$@}`: the extra arguments as shell words (quoted where needed, so a command string
    /// or a script splits them back as given); remembers that they were read.
    fn cli_args(&self) -> String {
        self.cli_args_read.set(true);
        let args = self.options.cli_args.iter().map(String::as_str);
        shlex::try_join(args).unwrap_or_else(|_| self.options.cli_args.join(" "))
    }

    /// The host's value of `name`, for `{name:from_env}`; remembers that it was read.
    fn env(&self, name: &str) -> Option<String> {
        self.env_read.borrow_mut().insert(name.to_owned());
        self.options.env.get(name).cloned()
    }

    fn run(&self, d: &mut Diagnostics) -> Option<Config> {
        let document = &self.loaded.document;
        check_root(document, d);
        let shape = if document.get("images").is_some() {
            Shape::Harpoon
        } else if document.get("commands").is_some() {
            Shape::SingleImage
        } else {
            let at = &self.loaded.main_location;
            d.error(at, &KeyPath::root(), Problem::NoImages);
            return None;
        };
        let Resolved {
            images,
            names,
            order: image_order,
            unresolved,
        } = self.images(document, shape, None, d)?;
        let (images, unresolved) = (Arc::new(images), Arc::new(unresolved));

        let root = self.root_string();
        let cli_args = || self.cli_args();
        let env = |name: &str| self.env(name);
        let fmt = Formatter::new(
            document,
            &root,
            &cli_args,
            &env,
            Some(&names),
            &self.expansion,
        );
        let mut r = Reader {
            fmt: &fmt,
            workspace: self.options.workspace.as_deref(),
            d,
        };
        let mut defs = task::read_tasks(&mut r, document, &names, &image_order);
        if let (Shape::SingleImage, Some(name)) = (shape, image_order.first()) {
            let name = name.clone();
            defs.entry(name.clone()).or_insert_with(|| TaskDef {
                name: name.clone(),
                image: name,
                action: super::model::TaskAction::Run,
                description: Some("build and run the image".into()),
                options: None,
                overrides: None,
                location: document.location.clone(),
                path: KeyPath::root(),
            });
        }
        let mut pipeline = match document.get("pipeline") {
            Some(node) => task::read_pipeline(&mut r, node, &defs),
            None => Vec::new(),
        };
        if let (Shape::SingleImage, None, Some(name)) =
            (shape, document.get("pipeline"), image_order.first())
        {
            let step = Node::new(Value::Str(name.clone()), document.location.clone());
            pipeline = task::read_pipeline(
                &mut r,
                &Node::new(Value::Seq(vec![step]), document.location.clone()),
                &defs,
            );
        }
        let secrets = match document.get("secrets") {
            Some(node) => task::read_secrets(&mut r, node),
            None => Vec::new(),
        };
        let tasks = self.tasks(defs, (&images, &unresolved), shape, d);
        Some(Config {
            config_root: self.loaded.config_root.clone(),
            config_file: self.loaded.main.clone(),
            files: self.loaded.files.clone(),
            shape,
            images,
            unresolved,
            tasks,
            pipeline,
            secrets,
        })
    }

    fn root_string(&self) -> String {
        self.loaded.config_root.to_string_lossy().into_owned()
    }

    /// Resolves every image of `document`: the images that read without errors, the full
    /// names, every image name in the order written, and the images that need unset
    /// environment values (their problems become notes: only a job using them fails). Used
    /// for the config itself and again for each task whose options or overrides change the
    /// document.
    fn images(
        &self,
        document: &Node,
        shape: Shape,
        task: Option<&str>,
        d: &mut Diagnostics,
    ) -> Option<Resolved> {
        let nodes = image_nodes(document, shape, &self.expansion, d)?;
        let root = self.root_string();
        let cli_args = || self.cli_args();
        let env = |name: &str| self.env(name);
        let mut unset: IndexMap<String, Vec<Diagnostic>> = IndexMap::new();

        let mut names = HashMap::new();
        for (key, node, path) in &nodes {
            let naming = Formatter::new(document, &root, &cli_args, &env, None, &self.expansion)
                .for_image(key);
            let mut scratch = Diagnostics::default();
            let mut r = Reader {
                fmt: &naming,
                workspace: self.options.workspace.as_deref(),
                d: &mut scratch,
            };
            let full = image::full_name(&mut r, key, node, path, shape == Shape::SingleImage);
            if let Some(full) = full {
                names.insert(key.clone(), full);
            }
            defer(&mut unset, key, scratch, d);
        }
        for key in unset.keys() {
            names.remove(key);
        }
        let mut images = Images::new();
        for (key, node, path) in &nodes {
            let image_root = self
                .loaded
                .image_roots
                .get(key)
                .unwrap_or(&self.loaded.config_root);
            let image_root_text = image_root.to_string_lossy();
            let fmt = Formatter::new(
                document,
                &image_root_text,
                &cli_args,
                &env,
                Some(&names),
                &self.expansion,
            )
            .for_image(key);
            let mut scratch = Diagnostics::default();
            let mut r = Reader {
                fmt: &fmt,
                workspace: self.options.workspace.as_deref(),
                d: &mut scratch,
            };
            let check_keys = shape == Shape::Harpoon;
            let image = image::read(&mut r, key, node, path, &names, image_root, check_keys);
            defer(&mut unset, key, scratch, d);
            if let Some(image) = image.filter(|_| !unset.contains_key(key)) {
                images.insert(key.clone(), image);
            }
        }
        check_cycles(&images, d);
        let mut unresolved = Unresolved::new();
        for (key, _, _) in nodes.iter().filter(|(key, _, _)| unset.contains_key(key)) {
            unresolved.insert(key.clone(), reasons(&unset, key));
        }
        for (key, problems) in unset {
            for mut problem in problems {
                problem.severity = Severity::Note;
                problem.help = Some(match task {
                    None => format!(
                        "image `{key}` is left out; only a job that builds or runs it fails"
                    ),
                    Some(task) => format!(
                        "image `{key}` as task `{task}` sees it is left out; only a job running the task fails"
                    ),
                });
                d.push(problem);
            }
        }
        let order = nodes.into_iter().map(|(key, _, _)| key).collect();
        Some(Resolved {
            images,
            names,
            order,
            unresolved,
        })
    }

    /// Tasks with their images; a task with `options` or `overrides` gets the images of the
    /// document as the task changes it.
    fn tasks(
        &self,
        defs: IndexMap<String, TaskDef>,
        (images, unresolved): (&Arc<Images>, &Arc<Unresolved>),
        shape: Shape,
        d: &mut Diagnostics,
    ) -> IndexMap<String, Task> {
        let mut tasks = IndexMap::new();
        for (name, def) in defs {
            let def_image = def.image.clone();
            let task_images = if def.options.is_none() && def.overrides.is_none() {
                Some((images.clone(), unresolved.clone()))
            } else {
                let document = &self.loaded.document;
                let path = KeyPath::root();
                if !self
                    .expansion
                    .charge(document.size(), &def.location, &path, d)
                {
                    continue;
                }
                let mut document = document.clone();
                if let Some(overrides) = def.overrides {
                    document.merge(overrides);
                }
                let mut options_at = HashMap::new();
                if let Some(options) = def.options {
                    key_paths(&options, &def.path.key("options"), &mut options_at);
                    merge_into_image(&mut document, &def.image, options, shape);
                }
                let mut scratch = Diagnostics::default();
                let resolved = self.images(&document, shape, Some(&name), &mut scratch);
                scratch.relocate(|at| options_at.get(at).cloned());
                d.absorb(scratch);
                resolved.map(|r| (Arc::new(r.images), Arc::new(r.unresolved)))
            };
            let known = |(images, unresolved): &(Arc<Images>, Arc<Unresolved>)| {
                images.contains_key(&def_image) || unresolved.contains_key(&def_image)
            };
            if let Some((task_images, task_unresolved)) = task_images.filter(known) {
                tasks.insert(
                    name.clone(),
                    Task {
                        name,
                        image: def.image,
                        action: def.action,
                        description: def.description,
                        location: def.location,
                        images: task_images,
                        unresolved: task_unresolved,
                    },
                );
            }
        }
        tasks
    }
}

/// The key path of every key and value in `node` (at `path`), by where it is written: a
/// problem found in a task's options once they are merged into the image is reported at
/// the options' path (`images.app.tasks.t.options.cpu.x`, not `images.app.cpu.x`).
fn key_paths(node: &Node, path: &KeyPath, out: &mut HashMap<Location, KeyPath>) {
    out.entry(node.location.clone())
        .or_insert_with(|| path.clone());
    match &node.value {
        Value::Map(entries) => {
            for entry in entries {
                let entry_path = path.key(&entry.key);
                // A mapping starts where its first key does; the key names the spot.
                out.insert(entry.key_location.clone(), entry_path.clone());
                key_paths(&entry.value, &entry_path, out);
            }
        }
        Value::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                key_paths(item, &path.index(i), out);
            }
        }
        _ => {}
    }
}

/// What [`Collector::images`] resolves.
struct Resolved {
    images: Images,
    names: HashMap<String, String>,
    order: Vec<String>,
    unresolved: Unresolved,
}

/// Moves the problems of one image's `scratch` to `d`, except unset environment values,
/// which are kept under the image in `unset`.
fn defer(
    unset: &mut IndexMap<String, Vec<Diagnostic>>,
    key: &str,
    mut scratch: Diagnostics,
    d: &mut Diagnostics,
) {
    let problems = scratch.take_unset_env();
    d.absorb(scratch);
    if !problems.is_empty() {
        unset.entry(key.to_owned()).or_default().extend(problems);
    }
}

/// Why image `key` is unresolved, located, with the reasons of the images it names that
/// are unresolved themselves (so a plan failing on it shows which value to set, and where).
fn reasons(unset: &IndexMap<String, Vec<Diagnostic>>, key: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen = vec![key];
    let mut stack = vec![key];
    while let Some(image) = stack.pop() {
        for problem in unset.get(image).into_iter().flatten() {
            let line = problem.located();
            if !out.contains(&line) {
                out.push(line);
            }
            if let Problem::ImageUnresolved(other) = &problem.problem
                && !seen.contains(&other.as_str())
            {
                seen.push(other);
                stack.push(other);
            }
        }
    }
    out
}

/// `(name, image node with root defaults beneath, key path)` for every image.
fn image_nodes(
    document: &Node,
    shape: Shape,
    expansion: &Expansion,
    d: &mut Diagnostics,
) -> Option<Vec<(String, Node, KeyPath)>> {
    let defaults = image::root_defaults(document);
    if shape == Shape::SingleImage {
        let tag = defaults
            .get("tag")
            .and_then(Node::as_str)
            .unwrap_or("image");
        let repository = tag
            .rsplit_once(':')
            .filter(|(_, t)| !t.contains('/'))
            .map_or(tag, |(r, _)| r);
        let name = repository
            .rsplit('/')
            .next()
            .unwrap_or(repository)
            .to_owned();
        if defaults.get("tag").is_none() {
            let problem = Problem::MissingKey {
                key: "tag",
                section: "a single-image config (it names the image)".into(),
            };
            d.error(&document.location, &KeyPath::root(), problem);
            return None;
        }
        return Some(vec![(name, defaults, KeyPath::root())]);
    }
    let images_path = KeyPath::root().key("images");
    let images_node = document.get("images")?;
    let Some(entries) = images_node.as_map() else {
        let problem = Problem::WrongType {
            expected: "a mapping of image names to image options",
            found: images_node.kind(),
        };
        d.error(&images_node.location, &images_path, problem);
        return None;
    };
    if entries.is_empty() {
        d.error(&images_node.location, &images_path, Problem::NoImages);
        return None;
    }
    let mut out = Vec::new();
    for entry in entries {
        let path = images_path.key(&entry.key);
        let name_ok = !entry.key.is_empty()
            && entry
                .key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
        if !name_ok {
            let problem = Problem::Invalid {
                what: "image name",
                value: entry.key.clone(),
                reason: "image names in `images` are letters, digits, `_` and `-` (they appear in `{images.NAME}`)".into(),
            };
            d.error(&entry.key_location, &path, problem);
            continue;
        }
        if entry.value.as_map().is_none() {
            let problem = Problem::WrongType {
                expected: "a mapping of image options",
                found: entry.value.kind(),
            };
            d.error(&entry.value.location, &path, problem);
            continue;
        }
        let ((a, b), (c, e)) = (defaults.size(), entry.value.size());
        if !expansion.charge((a + c, b + e), &entry.key_location, &path, d) {
            return None;
        }
        let mut node = defaults.clone();
        clear_overridden_command(&mut node, &entry.value);
        node.merge(entry.value.clone());
        node.location = entry.key_location.clone();
        out.push((entry.key.clone(), node, path));
    }
    Some(out)
}

/// What a container runs is chosen at one level, as in harpoon's merged options: `command`
/// or `bash` in `over` (a task's options over its image, an image over the root's
/// defaults) replaces both in `base`, and `shell` too when `over` runs a plain `command`.
/// Written together in one mapping they still contradict each other.
fn clear_overridden_command(base: &mut Node, over: &Node) {
    let (command, bash) = (over.get("command").is_some(), over.get("bash").is_some());
    if command || bash {
        base.remove("command");
        base.remove("bash");
    }
    if command && !bash && over.get("shell").is_none() {
        base.remove("shell");
    }
}

fn merge_into_image(document: &mut Node, image: &str, options: Node, shape: Shape) {
    if shape == Shape::SingleImage {
        clear_overridden_command(document, &options);
        document.merge(options);
        return;
    }
    if let Some(target) = document
        .get_mut("images")
        .and_then(|images| images.get_mut(image))
    {
        clear_overridden_command(target, &options);
    }
    let location = options.location.clone();
    let entry = |key: &str, value: Node| super::node::Entry {
        key: key.to_owned(),
        key_location: location.clone(),
        value,
    };
    let wrapper = Node::new(
        Value::Map(vec![entry(
            "images",
            Node::new(Value::Map(vec![entry(image, options)]), location.clone()),
        )]),
        location.clone(),
    );
    document.merge(wrapper);
}

/// Build-order cycles (FROM, COPY --from) and start-order cycles (links, share_with).
fn check_cycles(images: &Images, d: &mut Diagnostics) {
    let index: HashMap<&str, usize> = images
        .keys()
        .enumerate()
        .map(|(i, k)| (k.as_str(), i))
        .collect();
    let names: Vec<&String> = images.keys().collect();
    let build: Vec<Vec<usize>> = images
        .values()
        .map(|i| {
            i.build
                .depends_on
                .iter()
                .filter_map(|n| index.get(n.as_str()).copied())
                .collect()
        })
        .collect();
    let start: Vec<Vec<usize>> = images
        .values()
        .map(|i| {
            i.run
                .links
                .iter()
                .map(|l| &l.image)
                .chain(&i.run.share_with)
                .filter_map(|n| index.get(n.as_str()).copied())
                .collect()
        })
        .collect();
    for (edges, what) in [(&build, "builds"), (&start, "links or share_with")] {
        for cycle in crate::graph::cycles(edges) {
            let mut members: Vec<String> = cycle.iter().map(|&i| names[i].clone()).collect();
            members.push(members[0].clone());
            let first = &images[cycle[0]];
            let diagnostic = Diagnostic::error(
                &first.location,
                &KeyPath::root().key("images").key(&first.name),
                Problem::DependencyCycle(members),
            )
            .with_help(format!(
                "each image in the cycle {what} from the next; break one of these references"
            ));
            d.push(diagnostic);
        }
    }
}

/// The root may hold any key (harpoon lets other keys be reference targets), but a key one
/// edit away from a known one is most likely that key: an error, since `pipline:` would
/// otherwise build, run nothing and succeed. The `harpoon` section is read for
/// `extra_files` only.
fn check_root(document: &Node, d: &mut Diagnostics) {
    for entry in document.as_map().unwrap_or_default() {
        let key = entry.key.as_str();
        if ROOT_KEYS.contains(&key) || IMAGE_KEYS.contains(&key) {
            continue;
        }
        let known = ROOT_KEYS.iter().chain(IMAGE_KEYS).copied();
        if let Some(candidate) =
            suggest::closest(key, known).filter(|c| strsim::osa_distance(key, c) <= 1)
        {
            let problem = Problem::UnknownKey {
                key: key.to_owned(),
                section: "the root".into(),
            };
            let path = KeyPath::root().key(key);
            d.push(
                Diagnostic::error(&entry.key_location, &path, problem).with_help(format!(
                    "did you mean `{candidate}`? (a root key kept only as a reference target needs a name further from the config's keys)"
                )),
            );
        }
    }
    if let Some(harpoon) = document.get("harpoon") {
        for entry in harpoon.as_map().unwrap_or_default() {
            let path = KeyPath::root().key("harpoon").key(&entry.key);
            d.push(Diagnostic::warning(
                &entry.key_location,
                &path,
                Problem::IgnoredHarpoonKey(entry.key.clone()),
            ));
        }
    }
}
