//! Where each agent.toml setting comes from — a position in the file, an environment
//! variable, a `--set` flag, or the defaults — and which keys no layer may name. Problems
//! are blamed on the layer that set the key, and `agent --check` shows each value's origin.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::Path;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::agent::{
    AgentConfig, AgentNotify, AgentSection, DockerSection, HttpSource, ScheduleSource,
    SecretsSection, WatchSource,
};
use super::fields::field_names;
use crate::collector::closest;

/// Where a setting (or a problem with it) comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Default,
    File {
        file: String,
        line: usize,
        column: usize,
    },
    /// Somewhere in the file, where no position is known.
    InFile(String),
    Env(String),
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File { file, line, column } => write!(f, "{file}:{line}:{column}"),
            Origin::InFile(file) => f.write_str(file),
            Origin::Env(name) => write!(f, "environment variable {name}"),
            Origin::Flag(flag) => write!(f, "flag `{flag}`"),
        }
    }
}

/// A setting given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Override {
    pub key: String,
    pub value: String,
    /// How it was given, for blame: `--concurrency`, `--set agent.name=…`; never the value
    /// (it may be a secret).
    pub flag: String,
}

impl Override {
    /// `--set KEY=VALUE`.
    pub fn set(key: &str, value: &str) -> Override {
        Override::flag(key, value, &format!("--set {key}=…"))
    }

    pub fn flag(key: &str, value: &str, flag: &str) -> Override {
        Override {
            key: key.to_owned(),
            value: value.to_owned(),
            flag: flag.to_owned(),
        }
    }
}

/// One problem with the settings, blamed on where the key was set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub at: Origin,
    /// The key, as [`display_key`] writes it; none for the file as a whole.
    pub key: Option<String>,
    pub message: String,
    pub help: Option<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.at)?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// A key path as the `config` crate writes it (`agent.concurrency`, `source[0].cron`) for
/// people: entries of an array of tables are numbered from 1, as `[[source]]` blocks are
/// counted in the file.
pub fn display_key(key: &str) -> String {
    let Some((name, rest)) = key.split_once('[') else {
        return key.to_owned();
    };
    let Some((index, field)) = rest.split_once(']') else {
        return key.to_owned();
    };
    let Ok(index) = index.parse::<usize>() else {
        return key.to_owned();
    };
    let number = index + 1;
    match field.trim_start_matches('.') {
        "" => format!("[[{name}]] #{number}"),
        field => format!("[[{name}]] #{number} {field}"),
    }
}

/// The known keys of one settings file, so [`Layers`] can find unknown ones in any file
/// shaped like agent.toml: plain sections, and arrays of tables.
#[derive(Debug)]
pub struct Schema {
    /// Environment variables `PREFIX__SECTION__KEY` set keys.
    pub env_prefix: &'static str,
    /// Lists that may be given as one comma-separated environment variable.
    pub list_keys: &'static [&'static str],
    /// The keys at the top of the file.
    pub root: fn() -> &'static [&'static str],
    /// `[section]` tables and their keys.
    pub sections: &'static [(&'static str, Fields)],
    /// `[[array]]` tables and the keys of each entry.
    pub arrays: &'static [(&'static str, Fields)],
    /// `section.key` tables whose own keys are free (names chosen by the user).
    pub free_tables: &'static [(&'static str, &'static str)],
}

/// The keys of a table.
#[derive(Debug)]
pub enum Fields {
    Fixed(fn() -> &'static [&'static str]),
    /// Chosen by the entry's `kind` (which is always known); none for an unknown kind (serde
    /// names the kinds).
    ByKind(fn(&str) -> Option<&'static [&'static str]>),
}

/// agent.toml.
pub static AGENT_SCHEMA: Schema = Schema {
    env_prefix: "DOCKHAND",
    list_keys: &[
        "agent.labels",
        "agent.pass_env",
        "docker.allow_host_mounts",
        "docker.allow_network_modes",
        "docker.cap_drop",
        "secrets.from_env",
    ],
    root: field_names::<AgentConfig>,
    sections: &[
        ("agent", Fields::Fixed(field_names::<AgentSection>)),
        ("docker", Fields::Fixed(field_names::<DockerSection>)),
        ("secrets", Fields::Fixed(field_names::<SecretsSection>)),
    ],
    arrays: &[
        ("source", Fields::ByKind(source_fields)),
        ("notify", Fields::Fixed(field_names::<AgentNotify>)),
    ],
    free_tables: &[("secrets", "values")],
};

impl Schema {
    fn section(&self, name: &str) -> Option<&'static [&'static str]> {
        self.sections
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, fields)| match fields {
                Fields::Fixed(fields) => Some(fields()),
                Fields::ByKind(_) => None,
            })
    }

    fn array(&self, name: &str) -> Option<&Fields> {
        self.arrays
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, fields)| fields)
    }
}

/// Every key set by the file, the environment and the flags, with where; and every key
/// none of them may set.
#[derive(Debug)]
pub struct Layers {
    schema: &'static Schema,
    origins: BTreeMap<String, Origin>,
    file: Option<String>,
    pub problems: Vec<Problem>,
}

/// agent.toml's layers.
impl Default for Layers {
    fn default() -> Self {
        Layers::new(&AGENT_SCHEMA)
    }
}

impl Layers {
    /// The layers of a settings file shaped by `schema`.
    pub fn new(schema: &'static Schema) -> Layers {
        Layers {
            schema,
            origins: BTreeMap::new(),
            file: None,
            problems: Vec::new(),
        }
    }

    /// Where `key` was set last (flags over environment over file); the file as a whole,
    /// or the defaults, when no layer names it.
    pub fn origin(&self, key: &str) -> Origin {
        let mut key = key;
        loop {
            if let Some(origin) = self.origins.get(key) {
                return origin.clone();
            }
            match key.rfind(['.', '[']) {
                Some(end) => key = &key[..end],
                None => break,
            }
        }
        self.file.clone().map_or(Origin::Default, Origin::InFile)
    }

    /// Where `key` was set, only when a layer names that very key.
    pub fn set_at(&self, key: &str) -> Option<&Origin> {
        self.origins.get(key)
    }

    /// A problem with the value of `key`, blamed on where it was set.
    pub fn problem(&self, key: &str, message: impl Into<String>) -> Problem {
        Problem {
            at: self.origin(key),
            key: Some(display_key(key)),
            message: message.into(),
            help: None,
        }
    }

    /// Reads the file's keys with their positions; a syntax error is the file's problem.
    /// Returns the file's text without its unknown keys, so the settings can still be
    /// checked and every other problem reported at once.
    pub fn read_file(&mut self, file: &Path, text: &str) -> String {
        let name = file.display().to_string();
        self.file = Some(name.clone());
        let at = |span: Range<usize>| {
            let (line, column) = line_column(text, span.start);
            Origin::File {
                file: name.clone(),
                line,
                column,
            }
        };
        let root = match DeTable::parse(text) {
            Ok(root) => root.into_inner(),
            Err(e) => {
                self.problems.push(Problem {
                    at: e.span().map_or(Origin::InFile(name.clone()), &at),
                    key: None,
                    message: e.message().trim().to_owned(),
                    help: None,
                });
                return text.to_owned();
            }
        };
        let mut keys = Vec::new();
        let mut unknown = Vec::new();
        let mut walk = Walk {
            schema: self.schema,
            keys: &mut keys,
            unknowns: &mut unknown,
            problems: &mut self.problems,
            at: &at,
        };
        walk.file(&root);
        for (key, span) in keys {
            self.origins.insert(key, at(span));
        }
        if unknown.is_empty() {
            return text.to_owned();
        }
        let Ok(mut table) = toml::from_str::<toml::Table>(text) else {
            return text.to_owned();
        };
        for path in &unknown {
            remove(&mut table, path);
        }
        toml::to_string(&table).unwrap_or_else(|_| text.to_owned())
    }

    /// Whether the `PREFIX__SECTION__KEY` variable `name` names a setting; an unknown
    /// one is a problem.
    pub fn read_env(&mut self, name: &str) -> bool {
        let Some(rest) =
            (name.strip_prefix(self.schema.env_prefix)).and_then(|rest| rest.strip_prefix("__"))
        else {
            return false;
        };
        let key = rest.to_lowercase().replace("__", ".");
        self.read_key(key, Origin::Env(name.to_owned()))
    }

    /// Whether a command-line flag's key names a setting; an unknown one is a problem.
    pub fn read_flag(&mut self, given: &Override) -> bool {
        self.read_key(given.key.clone(), Origin::Flag(given.flag.clone()))
    }

    fn read_key(&mut self, key: String, origin: Origin) -> bool {
        if let Some(problem) = unknown_dotted(self.schema, &key, &origin) {
            self.problems.push(problem);
            return false;
        }
        self.origins.insert(key, origin);
        true
    }

    /// `text` (the merged settings printed as TOML) with each value's origin as a comment.
    pub fn annotate(&self, text: &str) -> String {
        let mut section = String::new();
        let mut entries: BTreeMap<&str, usize> = BTreeMap::new();
        let mut out = String::new();
        for line in text.lines() {
            let trimmed = line.trim();
            if let Some(name) = trimmed
                .strip_prefix("[[")
                .and_then(|t| t.strip_suffix("]]"))
            {
                let count = entries.entry(name).or_default();
                section = format!("{name}[{count}]");
                *count += 1;
            } else if let Some(name) = trimmed.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
                section = name.to_owned();
            }
            out.push_str(line);
            if let Some((key, _)) = trimmed.split_once(" = ") {
                let key = key.trim_matches('"');
                let path = match section.as_str() {
                    "" => key.to_owned(),
                    section => format!("{section}.{key}"),
                };
                match self.origins.get(&path) {
                    Some(origin) => out.push_str(&format!("  # {origin}")),
                    None => out.push_str("  # default"),
                }
            }
            out.push('\n');
        }
        out
    }
}

/// Where an unknown key sits in the file: its section (or array entry) and its name.
#[derive(Debug)]
enum Unknown {
    Root(String),
    Section(String, String),
    Entry(String, usize, String),
}

fn remove(table: &mut toml::Table, path: &Unknown) {
    match path {
        Unknown::Root(key) => {
            table.remove(key);
        }
        Unknown::Section(section, key) => {
            if let Some(toml::Value::Table(section)) = table.get_mut(section) {
                section.remove(key);
            }
        }
        Unknown::Entry(array, index, key) => {
            if let Some(toml::Value::Array(entries)) = table.get_mut(array)
                && let Some(toml::Value::Table(entry)) = entries.get_mut(*index)
            {
                entry.remove(key);
            }
        }
    }
}

/// Collects the file's leaf keys (`section.key`, `array[N].key`) and reports unknown ones.
struct Walk<'w> {
    schema: &'static Schema,
    keys: &'w mut Vec<(String, Range<usize>)>,
    unknowns: &'w mut Vec<Unknown>,
    problems: &'w mut Vec<Problem>,
    at: &'w dyn Fn(Range<usize>) -> Origin,
}

type Key<'k> = Spanned<std::borrow::Cow<'k, str>>;

impl Walk<'_> {
    fn unknown(&mut self, key: &Key<'_>, path: String, known: &[&str], place: Unknown) {
        let at = (self.at)(key.span());
        self.problems
            .push(unknown_key(key.get_ref(), path, known, at));
        self.unknowns.push(place);
    }

    fn file(&mut self, root: &DeTable<'_>) {
        let schema = self.schema;
        for (section, value) in root {
            let name = section.get_ref().as_ref();
            match (schema.array(name), value.get_ref()) {
                (Some(fields), DeValue::Array(entries)) => self.array(name, fields, entries),
                (_, DeValue::Table(table)) if schema.section(name).is_some() => {
                    self.section(name, table)
                }
                _ if !(schema.root)().contains(&name) => {
                    let place = Unknown::Root(name.to_owned());
                    self.unknown(section, name.to_owned(), (schema.root)(), place);
                }
                _ => self.keys.push((name.to_owned(), section.span())),
            }
        }
    }

    fn array(&mut self, name: &str, fields: &Fields, entries: &[Spanned<DeValue<'_>>]) {
        for (index, entry) in entries.iter().enumerate() {
            let prefix = format!("{name}[{index}]");
            self.keys.push((prefix.clone(), entry.span()));
            let DeValue::Table(table) = entry.get_ref() else {
                continue;
            };
            let known = match fields {
                Fields::Fixed(fields) => Some(fields()),
                Fields::ByKind(by_kind) => table
                    .iter()
                    .find_map(|(k, v)| match v.get_ref() {
                        DeValue::String(kind) if k.get_ref() == "kind" => Some(kind.as_ref()),
                        _ => None,
                    })
                    .and_then(by_kind),
            };
            let kind_field = matches!(fields, Fields::ByKind(_));
            for (key, _) in table {
                let path = format!("{prefix}.{}", key.get_ref());
                if let Some(known) = known
                    && !(kind_field && key.get_ref() == "kind")
                    && !known.contains(&key.get_ref().as_ref())
                {
                    let place = Unknown::Entry(name.to_owned(), index, key.get_ref().to_string());
                    self.unknown(key, path.clone(), known, place);
                }
                self.keys.push((path, key.span()));
            }
        }
    }

    fn section(&mut self, name: &str, table: &DeTable<'_>) {
        let known = self.schema.section(name).unwrap_or_default();
        for (key, value) in table {
            let path = format!("{name}.{}", key.get_ref());
            if !known.contains(&key.get_ref().as_ref()) {
                let place = Unknown::Section(name.to_owned(), key.get_ref().to_string());
                self.unknown(key, path.clone(), known, place);
            }
            let free = (self.schema.free_tables.iter())
                .any(|(section, field)| *section == name && *field == key.get_ref());
            if free && let DeValue::Table(values) = value.get_ref() {
                for (value_key, _) in values {
                    self.keys
                        .push((format!("{path}.{}", value_key.get_ref()), value_key.span()));
                }
            }
            self.keys.push((path, key.span()));
        }
    }
}

/// The keys of a `[[source]]` of `kind`, besides `kind`; none for an unknown kind (serde
/// names the kinds).
fn source_fields(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "http" => Some(field_names::<HttpSource>()),
        "watch" => Some(field_names::<WatchSource>()),
        "schedule" => Some(field_names::<ScheduleSource>()),
        _ => None,
    }
}

/// A `section.key` from the environment or a flag that names nothing.
fn unknown_dotted(schema: &Schema, key: &str, origin: &Origin) -> Option<Problem> {
    let (section, field) = key.split_once('.').unwrap_or((key, ""));
    let root = (schema.root)();
    if !root.contains(&section) {
        return Some(unknown_key(section, key.to_owned(), root, origin.clone()));
    }
    let known = schema.section(section)?;
    let field = field.split('.').next().unwrap_or_default();
    (!known.contains(&field)).then(|| unknown_key(field, key.to_owned(), known, origin.clone()))
}

fn unknown_key(name: &str, path: String, known: &[&str], at: Origin) -> Problem {
    Problem {
        at,
        key: Some(display_key(&path)),
        message: format!("unknown key `{name}`"),
        help: Some(match closest(name, known.iter().copied()) {
            Some(near) => format!("did you mean `{near}`?"),
            None => format!("known here: {}", known.join(", ")),
        }),
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_shown_with_sources_counted_from_one() {
        assert_eq!(display_key("agent.concurrency"), "agent.concurrency");
        assert_eq!(display_key("source[0].cron"), "[[source]] #1 cron");
        assert_eq!(display_key("source[2]"), "[[source]] #3");
        assert_eq!(display_key("source[0]kind"), "[[source]] #1 kind");
        assert_eq!(display_key("notify[1].url"), "[[notify]] #2 url");
        assert_eq!(display_key("secrets.values.A"), "secrets.values.A");
    }

    #[test]
    fn every_array_of_tables_has_its_keys_checked_and_numbered() {
        let mut layers = Layers::default();
        let text = "[[notify]]\nurl = \"http://h/\"\n\n[[notify]]\nurl = \"http://h/\"\nfromat = \"slack\"\n\n[[source]]\nkind = \"http\"\nurl = \"http://s/\"\n";
        let known = layers.read_file(Path::new("agent.toml"), text);
        assert!(!known.contains("fromat"), "{known}");
        let shown: Vec<String> = layers.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            shown,
            [
                "agent.toml:6:1: [[notify]] #2 fromat: unknown key `fromat`\n  help: did you mean `format`?"
            ]
        );
        assert_eq!(layers.origin("notify[1].url").to_string(), "agent.toml:5:1");
        assert_eq!(
            layers.origin("source[0].url").to_string(),
            "agent.toml:10:1"
        );
        let annotated = layers.annotate("[[notify]]\nurl = \"a\"\n\n[[notify]]\nurl = \"b\"\n");
        assert_eq!(
            annotated,
            "[[notify]]\nurl = \"a\"  # agent.toml:2:1\n\n[[notify]]\nurl = \"b\"  # agent.toml:5:1\n"
        );
    }

    #[test]
    fn every_unknown_key_is_found_with_its_position_and_a_near_miss() {
        let mut layers = Layers::default();
        let text = "[agent]\nconcurency = 2\n\n[dockr]\n\n[[source]]\nkind = \"watch\"\npath = \".\"\ndebounse = \"1s\"\n";
        let known = layers.read_file(Path::new("agent.toml"), text);
        assert_eq!(
            known,
            "[agent]\n\n[[source]]\nkind = \"watch\"\npath = \".\"\n"
        );
        let shown: Vec<String> = layers.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            shown,
            [
                "agent.toml:2:1: agent.concurency: unknown key `concurency`\n  help: did you mean `concurrency`?",
                "agent.toml:4:2: dockr: unknown key `dockr`\n  help: did you mean `docker`?",
                "agent.toml:9:1: [[source]] #1 debounse: unknown key `debounse`\n  help: did you mean `debounce`?",
            ]
        );
        assert_eq!(
            layers.origin("source[0].path").to_string(),
            "agent.toml:8:1"
        );
    }

    #[test]
    fn environment_and_flags_are_blamed_for_their_own_keys() {
        let mut layers = Layers::default();
        assert!(!layers.read_env("DOCKHAND__AGENT__CONCURENCY"));
        assert!(!layers.read_flag(&Override::set("docker.memroy", "1g")));
        assert!(layers.read_flag(&Override::set("docker.memory", "1g")));
        let shown: Vec<String> = layers.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            shown,
            [
                "environment variable DOCKHAND__AGENT__CONCURENCY: agent.concurency: unknown key `concurency`\n  help: did you mean `concurrency`?",
                "flag `--set docker.memroy=…`: docker.memroy: unknown key `memroy`\n  help: did you mean `memory`?",
            ]
        );
    }

    #[test]
    fn annotated_settings_name_each_values_origin() {
        let mut layers = Layers::default();
        layers.read_file(Path::new("a.toml"), "[agent]\nname = \"x\"\n");
        layers.read_flag(&Override::set("agent.parallel", "2"));
        let text = "[agent]\nname = \"x\"\nparallel = 3\nconcurrency = 2\n\n[[source]]\nkind = \"watch\"\n";
        assert_eq!(
            layers.annotate(text),
            "[agent]\nname = \"x\"  # a.toml:2:1\nparallel = 3  # flag `--set agent.parallel=…`\nconcurrency = 2  # default\n\n[[source]]\nkind = \"watch\"  # default\n"
        );
    }
}
