//! `commands` to Dockerfile text. Each form of harpoon's command list becomes one or more
//! instruction lines; generated ADD files and extra directories are named by a hash of what
//! they hold, and every reference to another image of the config becomes a build edge.

use std::collections::HashMap;
use std::path::Path;

use super::context;
use super::diagnostic::Problem;
use super::format::Formatted;
use super::model::{Context, ExtraContext, GeneratedFile};
use super::node::{KeyPath, Node, Value};
use super::read::Reader;
use super::suggest;

/// What a command list turns into.
#[derive(Debug, Default)]
pub struct Dockerfile {
    pub lines: Vec<String>,
    pub generated_files: Vec<GeneratedFile>,
    pub extra_contexts: Vec<ExtraContext>,
    pub depends_on: Vec<String>,
    pub external_bases: Vec<String>,
    /// Names given to build stages with `AS name`, which later FROM/COPY --from may use.
    stages: Vec<String>,
}

impl Dockerfile {
    pub fn text(&self) -> String {
        let mut text = self.lines.join("\n");
        text.push('\n');
        text
    }
}

/// Names of the images in the config: full name by config name.
pub struct ImageNames<'n> {
    pub full: &'n HashMap<String, String>,
}

impl ImageNames<'_> {
    /// The full name of image `name`; an image left out for unset environment values is
    /// reported at `node` (a note that makes this image unresolved too).
    fn full_of(&self, r: &mut Reader<'_, '_>, name: &str, node: &Node, path: &KeyPath) -> String {
        match self.full.get(name) {
            Some(full) => full.clone(),
            None => {
                r.d.error(
                    &node.location,
                    path,
                    Problem::ImageUnresolved(name.to_owned()),
                );
                String::new()
            }
        }
    }

    fn by_full_name(&self, reference: &str) -> Option<&str> {
        let with_tag = if reference
            .rsplit('/')
            .next()
            .is_some_and(|last| last.contains(':'))
        {
            reference.to_owned()
        } else {
            format!("{reference}:latest")
        };
        self.full
            .iter()
            .find(|(_, full)| **full == with_tag)
            .map(|(name, _)| name.as_str())
    }
}

const ADD_KEYS: &[&str] = &[
    "dest",
    "content",
    "formatted",
    "context",
    "prefix",
    "get",
    "from",
    "path",
    "to",
];

pub fn read(
    r: &mut Reader<'_, '_>,
    node: &Node,
    path: &KeyPath,
    names: &ImageNames<'_>,
    config_root: &Path,
) -> Dockerfile {
    let mut out = Dockerfile::default();
    let errors_before = r.d.error_count();
    let Some(items) = r.list(node, path) else {
        return out;
    };
    for (i, item) in items.iter().enumerate() {
        let item_path = path.index(i);
        match &item.value {
            Value::Str(line) if !line.trim().contains(char::is_whitespace) => r.invalid(
                item,
                &item_path,
                "command",
                line,
                "a Dockerfile line is an instruction and its arguments (`RUN make`)",
            ),
            Value::Str(line) => out.verbatim(line, names),
            Value::Seq(parts) => out.structured(r, item, parts, &item_path, names, config_root),
            Value::Map(entries) => match entries.as_slice() {
                [entry] if matches!(entry.key.as_str(), "ADD" | "COPY") => {
                    let spec_path = item_path.key(&entry.key);
                    if let Some(spec) = r.map(&entry.value, &spec_path) {
                        out.add_spec(r, &entry.key, &spec, &spec_path, names, config_root);
                    }
                }
                _ => r.invalid(
                    item,
                    &item_path,
                    "command",
                    &entries.iter().map(|e| e.key.as_str()).collect::<Vec<_>>().join(", "),
                    "a mapping command has one key, ADD or COPY (`{ADD: {dest: ..., content: ...}}`)",
                ),
            },
            _ => r.wrong(
                item,
                &item_path,
                "a Dockerfile line or an [INSTRUCTION, value] list",
            ),
        }
    }
    let has_from = out.lines.iter().any(|l| {
        l.split_whitespace()
            .next()
            .is_some_and(|w| w.eq_ignore_ascii_case("FROM"))
    });
    if !has_from && errors_before == r.d.error_count() {
        r.invalid(
            node,
            path,
            "commands",
            "(no FROM)",
            "an image's commands start from a base: add [FROM, image]",
        );
    }
    out
}

impl Dockerfile {
    /// A plain string goes in as written. FROM and COPY --from lines that name an image of
    /// this config still count as dependencies, so build order holds.
    fn verbatim(&mut self, line: &str, names: &ImageNames<'_>) {
        let line = line.trim_end_matches('\n');
        let mut words = line.split_whitespace();
        let instruction = words.next().unwrap_or_default().to_ascii_uppercase();
        let args: Vec<&str> = words.collect();
        match instruction.as_str() {
            "FROM" => {
                let mut args = args.iter().filter(|a| !a.starts_with("--"));
                if let Some(image) = args.next() {
                    self.from(image, names);
                }
                if let (Some(as_kw), Some(stage)) = (args.next(), args.next())
                    && as_kw.eq_ignore_ascii_case("as")
                {
                    self.stages.push((*stage).to_owned());
                }
            }
            "COPY" => {
                for arg in &args {
                    if let Some(from) = arg.strip_prefix("--from=")
                        && let Some(name) = names.by_full_name(from)
                    {
                        self.depend(name);
                    }
                }
            }
            _ => {}
        }
        self.lines.push(line.to_owned());
    }

    fn from(&mut self, image: &str, names: &ImageNames<'_>) {
        if let Some(name) = names.by_full_name(image) {
            self.depend(name);
        } else if !self.stages.iter().any(|s| s == image)
            && image != "scratch"
            && !self.external_bases.iter().any(|b| b == image)
        {
            self.external_bases.push(image.to_owned());
        }
    }

    fn depend(&mut self, name: &str) {
        if !self.depends_on.iter().any(|d| d == name) {
            self.depends_on.push(name.to_owned());
        }
    }

    fn structured(
        &mut self,
        r: &mut Reader<'_, '_>,
        item: &Node,
        parts: &[Node],
        path: &KeyPath,
        names: &ImageNames<'_>,
        config_root: &Path,
    ) {
        let (instruction_node, value) = match parts {
            [i, v] | [i, v, _] => (i, v),
            _ => {
                r.invalid(
                    item,
                    path,
                    "command",
                    &format!("a list of {} items", parts.len()),
                    "write [INSTRUCTION, value] or [FROM, image, \"as stage\"]",
                );
                return;
            }
        };
        let Some(written) = instruction_node.as_str() else {
            r.wrong(
                instruction_node,
                &path.index(0),
                "an instruction name such as RUN",
            );
            return;
        };
        // The line starts as written (harpoon keeps `["ENV ONE", "{one}"]` and the case);
        // its first word is the instruction.
        let written = written.trim();
        let instruction = written
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        if instruction.is_empty() || !instruction.chars().all(|c| c.is_ascii_alphabetic()) {
            r.invalid(
                instruction_node,
                &path.index(0),
                "instruction",
                written,
                "an instruction name (letters), optionally followed by the start of its arguments",
            );
            return;
        }
        let single_word = !written.contains(char::is_whitespace);
        let value_path = path.index(1);
        let stage = match parts.get(2) {
            Some(third) if instruction == "FROM" && single_word => {
                match r.text(third, &path.index(2)) {
                    Some(t) => Some(t),
                    None => return,
                }
            }
            Some(third) => {
                r.invalid(
                    third,
                    &path.index(2),
                    "command",
                    &instruction,
                    "only FROM takes a third item (\"as stage\")",
                );
                return;
            }
            None => None,
        };
        let Some(resolved) = r.resolve(value, &value_path) else {
            return;
        };
        match &resolved.value {
            Value::Map(_) if matches!(instruction.as_str(), "ADD" | "COPY") && single_word => {
                self.add_spec(r, &instruction, &resolved, &value_path, names, config_root);
            }
            Value::Map(_) => r.wrong(
                &resolved,
                &value_path,
                "text (only ADD and COPY take a mapping)",
            ),
            Value::Seq(values) => {
                for (i, v) in values.iter().enumerate() {
                    if let Some(text) = r.text(v, &value_path.index(i)) {
                        self.lines.push(format!("{written} {text}"));
                    }
                }
            }
            Value::Null => r.wrong(&resolved, &value_path, "a value for the instruction"),
            _ => match r.format(&resolved, &value_path) {
                Some(Formatted::Image(name)) if instruction == "FROM" && single_word => {
                    let full = names.full_of(r, &name, &resolved, &value_path);
                    self.depend(&name);
                    self.push_from(written, &full, stage);
                }
                Some(Formatted::Image(name)) => {
                    let full = names.full_of(r, &name, &resolved, &value_path);
                    self.lines.push(format!("{written} {full}"));
                }
                Some(Formatted::Text(text)) if instruction == "FROM" && single_word => {
                    let image = text
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    self.from(&image, names);
                    self.push_from(written, &text, stage);
                }
                Some(Formatted::Text(text)) => self.lines.push(format!("{written} {text}")),
                Some(Formatted::Node(n)) => r.wrong(&n, &value_path, "text"),
                None => {}
            },
        }
    }

    fn push_from(&mut self, from: &str, image: &str, stage: Option<String>) {
        match stage {
            Some(stage) => {
                let name = stage.split_whitespace().last().unwrap_or_default();
                self.stages.push(name.to_owned());
                self.lines.push(format!("{from} {image} {stage}"));
            }
            None => self.lines.push(format!("{from} {image}")),
        }
    }

    /// The mapping forms of ADD and COPY.
    fn add_spec(
        &mut self,
        r: &mut Reader<'_, '_>,
        instruction: &str,
        spec: &Node,
        path: &KeyPath,
        names: &ImageNames<'_>,
        config_root: &Path,
    ) {
        suggest::check_keys(
            spec,
            path,
            &format!("an {instruction} mapping"),
            ADD_KEYS,
            &[],
            r.d,
        );
        let sources: Vec<&str> = ["get", "content", "formatted", "context"]
            .into_iter()
            .filter(|k| spec.get(k).is_some())
            .collect();
        if sources.len() > 1 && sources[0] == "get" {
            r.invalid(
                spec,
                path,
                "ADD mapping",
                &sources.join(", "),
                "give exactly one of `get`, `content`, `formatted` or `context`",
            );
        } else if spec.get("get").is_some() {
            self.prefix_get(r, instruction, spec, path);
        } else if spec.get("from").is_some() || spec.get("to").is_some() {
            self.copy_from(r, instruction, spec, path, names);
        } else if let Some(dest_node) = spec.get("dest") {
            let Some(dest) = r.text(dest_node, &path.key("dest")) else {
                return;
            };
            self.add_to_dest(r, instruction, spec, path, &dest, names, config_root);
        } else {
            let problem = Problem::MissingKey {
                key: "dest",
                section: format!(
                    "an {instruction} mapping (or use `get` with `prefix`, or COPY's `from`/`path`/`to`)"
                ),
            };
            r.d.error(&spec.location, path, problem);
        }
    }

    fn prefix_get(
        &mut self,
        r: &mut Reader<'_, '_>,
        instruction: &str,
        spec: &Node,
        path: &KeyPath,
    ) {
        let prefix = r
            .field(spec, path, "prefix", Reader::text)
            .unwrap_or_default();
        let Some(get) = spec.get("get") else { return };
        let get_path = path.key("get");
        if get.value == Value::Null {
            r.wrong(get, &get_path, "a file name or a list of them");
            return;
        }
        let Some(nodes) = r.list(get, &get_path) else {
            return;
        };
        // File names are text, as harpoon has them: `get: 0` is a mistake, not file `0`.
        let mut items = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            let item_path = get_path.index(i);
            if matches!(node.value, Value::Str(_)) {
                items.extend(r.text(node, &item_path));
            } else {
                r.wrong(node, &item_path, "a file name (text)");
            }
        }
        for item in items {
            let dest = if prefix.is_empty() {
                item.clone()
            } else {
                format!(
                    "{}/{}",
                    prefix.trim_end_matches('/'),
                    item.trim_start_matches('/')
                )
            };
            self.lines
                .push(instruction_line(instruction, None, &[&item, &dest]));
        }
    }

    fn copy_from(
        &mut self,
        r: &mut Reader<'_, '_>,
        instruction: &str,
        spec: &Node,
        path: &KeyPath,
        names: &ImageNames<'_>,
    ) {
        if instruction != "COPY" {
            r.invalid(
                spec,
                path,
                "ADD mapping",
                "from",
                "`from`/`path`/`to` is a COPY form",
            );
            return;
        }
        let mut ok = true;
        let mut missing = |r: &mut Reader<'_, '_>, key: &'static str| {
            if spec.get(key).is_none() {
                let problem = Problem::MissingKey {
                    key,
                    section: "a COPY from mapping".into(),
                };
                r.d.error(&spec.location, path, problem);
                ok = false;
            }
        };
        missing(r, "from");
        missing(r, "path");
        missing(r, "to");
        if !ok {
            return;
        }
        let from_node = spec.get("from").unwrap_or(spec);
        let from = match r.format(from_node, &path.key("from")) {
            Some(Formatted::Image(name)) => {
                self.depend(&name);
                names.full_of(r, &name, from_node, &path.key("from"))
            }
            Some(Formatted::Text(text)) => {
                if let Some(name) = names.by_full_name(&text) {
                    self.depend(name);
                }
                text
            }
            Some(Formatted::Node(other)) => {
                r.wrong(&other, &path.key("from"), "an image or a stage name");
                return;
            }
            None => return,
        };
        let sources = match spec.get("path") {
            Some(n) if matches!(n.value, Value::Seq(_)) => r.texts(n, &path.key("path")),
            Some(n) => r.text(n, &path.key("path")).map(|t| vec![t]),
            None => None,
        };
        let to = r.field(spec, path, "to", Reader::text);
        let (Some(sources), Some(to)) = (sources, to) else {
            return;
        };
        let mut args: Vec<&str> = sources.iter().map(String::as_str).collect();
        args.push(&to);
        self.lines.push(instruction_line(
            "COPY",
            Some(&format!("--from={from}")),
            &args,
        ));
    }

    #[allow(clippy::too_many_arguments)]
    fn add_to_dest(
        &mut self,
        r: &mut Reader<'_, '_>,
        instruction: &str,
        spec: &Node,
        path: &KeyPath,
        dest: &str,
        names: &ImageNames<'_>,
        config_root: &Path,
    ) {
        let sources: Vec<&str> = ["content", "formatted", "context"]
            .into_iter()
            .filter(|k| spec.get(k).is_some())
            .collect();
        if sources.len() != 1 {
            r.invalid(
                spec,
                path,
                "ADD mapping",
                &sources.join(", "),
                "give exactly one of `content`, `formatted` or `context` with `dest`",
            );
            return;
        }
        let key = sources[0];
        let node = spec.get(key).unwrap_or(spec);
        let key_path = path.key(key);
        match key {
            "content" => match &node.value {
                Value::Str(contents) => self.generated(instruction, contents.clone(), dest),
                Value::Map(_) => self.content_from_image(r, node, &key_path, dest, names),
                _ => r.wrong(node, &key_path, "file contents (text) or {image, path}"),
            },
            "formatted" => {
                if let Some(contents) = r.text(node, &key_path) {
                    self.generated(instruction, contents, dest);
                }
            }
            _ => {
                if let Some(Some(context)) =
                    context::read(r, Some(node), &key_path, config_root, false)
                {
                    let name = extra_context_name(&context, config_root);
                    if !self.extra_contexts.iter().any(|c| c.name == name) {
                        self.extra_contexts.push(ExtraContext {
                            name: name.clone(),
                            context,
                        });
                    }
                    self.lines
                        .push(instruction_line(instruction, None, &[&name, dest]));
                }
            }
        }
    }

    fn generated(&mut self, instruction: &str, contents: String, dest: &str) {
        let name = content_name(&contents, dest);
        if !self.generated_files.iter().any(|f| f.name == name) {
            self.generated_files.push(GeneratedFile {
                name: name.clone(),
                contents,
                mode: 0o644,
            });
        }
        self.lines
            .push(instruction_line(instruction, None, &[&name, dest]));
    }

    /// `content: {image, path}` copies a file out of another image of the config; a
    /// multi-stage `COPY --from` does that inside the build, no container needed.
    fn content_from_image(
        &mut self,
        r: &mut Reader<'_, '_>,
        node: &Node,
        path: &KeyPath,
        dest: &str,
        names: &ImageNames<'_>,
    ) {
        suggest::check_keys(
            node,
            path,
            "`content` from an image",
            &["image", "path"],
            &[],
            r.d,
        );
        let image = match node.get("image") {
            Some(image_node) => match r.format(image_node, &path.key("image")) {
                Some(Formatted::Image(name)) => Some(name),
                Some(Formatted::Text(text))
                    if names.full.contains_key(&text) || r.fmt.has_image(&text) =>
                {
                    Some(text)
                }
                Some(Formatted::Text(text)) => {
                    let mut diagnostic = super::diagnostic::Diagnostic::error(
                        &image_node.location,
                        &path.key("image"),
                        Problem::UnknownImage(text.clone()),
                    );
                    if let Some(c) = suggest::closest(&text, names.full.keys().map(String::as_str))
                    {
                        diagnostic = diagnostic.with_help(format!("did you mean `{c}`?"));
                    }
                    r.d.push(diagnostic);
                    None
                }
                Some(Formatted::Node(n)) => {
                    r.wrong(&n, &path.key("image"), "an image (`{images.NAME}`)");
                    None
                }
                None => None,
            },
            None => {
                r.d.error(
                    &node.location,
                    path,
                    Problem::MissingKey {
                        key: "image",
                        section: "`content` from an image".into(),
                    },
                );
                None
            }
        };
        let file = r.field(node, path, "path", Reader::text);
        if node.get("path").is_none() {
            r.d.error(
                &node.location,
                path,
                Problem::MissingKey {
                    key: "path",
                    section: "`content` from an image".into(),
                },
            );
        }
        let (Some(image), Some(file)) = (image, file) else {
            return;
        };
        self.depend(&image);
        let full = names.full_of(r, &image, node, path);
        self.lines.push(instruction_line(
            "COPY",
            Some(&format!("--from={full}")),
            &[&file, dest],
        ));
    }
}

/// The name harpoon gives a file made from `content`, so the Dockerfile line is the same:
/// the MD5 of Python's `json.dumps({"content": contents})`, a `-`, and the destination with
/// `/` as `-` and spaces as `--`.
fn content_name(contents: &str, dest: &str) -> String {
    use md5::Digest as _;
    let mut json = String::from("{\"content\": \"");
    for c in contents.chars() {
        match c {
            '"' => json.push_str("\\\""),
            '\\' => json.push_str("\\\\"),
            '\n' => json.push_str("\\n"),
            '\r' => json.push_str("\\r"),
            '\t' => json.push_str("\\t"),
            '\u{8}' => json.push_str("\\b"),
            '\u{c}' => json.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7f => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    json.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => json.push(c),
        }
    }
    json.push_str("\"}");
    let hash = hex::encode(md5::Md5::digest(json.as_bytes()));
    format!("{hash}-{}", dest.replace('/', "-").replace(' ', "--"))
}

/// `INSTR [flag] a b`, or the JSON form when an argument has whitespace.
fn instruction_line(instruction: &str, flag: Option<&str>, args: &[&str]) -> String {
    let flag = flag.map(|f| format!("{f} ")).unwrap_or_default();
    if args.iter().any(|a| a.chars().any(char::is_whitespace)) {
        let json = serde_json::to_string(args).unwrap_or_default();
        format!("{instruction} {flag}{json}")
    } else {
        format!("{instruction} {flag}{}", args.join(" "))
    }
}

/// Names an extra context by what it sends, with its directory relative to the config root,
/// so the Dockerfile (and with it the build key) stays the same wherever the checkout lives.
fn extra_context_name(context: &Context, config_root: &Path) -> String {
    let dir = context
        .parent_dir
        .strip_prefix(config_root)
        .unwrap_or(&context.parent_dir);
    let described = format!(
        "{dir:?} {:?} {:?} {}",
        context.include, context.exclude, context.use_gitignore
    );
    format!(
        "__dockhand_ctx_{}",
        crate::util::short_hash(described.as_bytes())
    )
}
