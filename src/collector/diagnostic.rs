//! Problems found in a configuration. The collector never stops at the first one: every
//! check records a [`Diagnostic`] and carries on, so one `dockhand check` shows them all.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use super::node::{KeyPath, Location};

/// What is wrong, without where: the location and key path live in [`Diagnostic`].
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("cannot read config file: {0}")]
    Read(std::io::Error),
    #[error("config file is larger than {limit} bytes")]
    FileTooLarge { limit: u64 },
    #[error("the config's files together are larger than {0} bytes")]
    FilesTooLarge(u64),
    #[error("{0}; a config reads only files and directories inside its workspace")]
    Outside(crate::files::ConfineError),
    #[error("YAML syntax error: {0}")]
    Syntax(String),
    #[error("a config file holds one YAML document; this is document {0}")]
    ExtraDocument(usize),
    #[error("nesting deeper than {0} levels")]
    TooDeep(usize),
    #[error("the document expands to more than {0} values (aliases referring to aliases?)")]
    TooManyNodes(usize),
    #[error("the document's text expands to more than {0} bytes (aliases of long values?)")]
    TooMuchText(usize),
    #[error(
        "the config expands to more than {0} bytes as it is resolved (long root options copied into many images or tasks, references to references?)"
    )]
    ExpandsTooMuch(usize),
    #[error("alias `*{0}` refers to no anchor")]
    UnknownAlias(String),
    #[error("`<<` merges mappings; this is {0}")]
    BadMergeKey(&'static str),
    #[error("duplicate key `{key}` (first written at {first})")]
    DuplicateKey { key: String, first: Location },
    #[error("unknown key `{key}` in {section}")]
    UnknownKey { key: String, section: String },
    #[error("`{key}` is a harpoon option dockhand does not support: {why}")]
    Unsupported { key: String, why: &'static str },
    #[error("expected {expected}, found {found}")]
    WrongType {
        expected: &'static str,
        found: &'static str,
    },
    #[error("`{key}` is required in {section}")]
    MissingKey { key: &'static str, section: String },
    #[error("{what} `{path}` does not exist")]
    MissingPath { what: &'static str, path: String },
    #[error("`{0}` is already loaded; a file can be included once")]
    FileLoadedTwice(String),
    #[error("the config defines no images: add `images:` (harpoon shape) or `tag` and `commands`")]
    NoImages,
    #[error("unterminated `{{` in `{0}` (write `{{{{` for a literal brace)")]
    UnterminatedPlaceholder(String),
    #[error("unmatched `}}` in `{0}` (write `}}}}` for a literal brace)")]
    UnmatchedBrace(String),
    #[error("`{{{reference}}}` refers to nothing: `{missing}` is not set")]
    UnknownReference { reference: String, missing: String },
    #[error("`{{{reference}}}` is {found}; only text can go inside a longer string")]
    NotText {
        reference: String,
        found: &'static str,
    },
    #[error("unknown format `:{0}` (known: `:env`, `:from_env`)")]
    UnknownFormatSpec(String),
    #[error("`{{{0}:from_env}}` needs `{0}` in the environment, and it is not set")]
    EnvUnset(String),
    #[error("`{{images.{0}}}` names image `{0}`, which needs environment values that are not set")]
    ImageUnresolved(String),
    #[error("reference cycle: {}", .0.join(" -> "))]
    ReferenceCycle(Vec<String>),
    #[error("no image named `{0}`")]
    UnknownImage(String),
    #[error("invalid {what} `{value}`: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("image dependency cycle: {}", .0.join(" -> "))]
    DependencyCycle(Vec<String>),
    #[error("task `{task}` is also defined at {first}; task names form one namespace")]
    TaskClash { task: String, first: Location },
    #[error("action `{action}` is not a dockhand task action: {hint}")]
    UnsupportedAction { action: String, hint: &'static str },
    #[error("no task named `{0}`")]
    UnknownTask(String),
    #[error("`{0}` appears twice in the pipeline")]
    DuplicateStep(String),
    #[error("`needs` names `{0}`, which is not a step of the pipeline")]
    UnknownNeed(String),
    #[error("pipeline `needs` cycle: {}", .0.join(" -> "))]
    NeedsCycle(Vec<String>),
    #[error("the `harpoon` section key `{0}` is ignored by dockhand")]
    IgnoredHarpoonKey(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
    /// Not a problem for every job: an image that needs an unset environment value fails
    /// only the jobs that build or run it.
    Note,
}

/// One problem, where it is, and what might fix it.
#[derive(Debug)]
pub struct Diagnostic {
    pub severity: Severity,
    pub location: Location,
    pub key_path: KeyPath,
    pub problem: Problem,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(location: &Location, key_path: &KeyPath, problem: Problem) -> Self {
        Diagnostic {
            severity: Severity::Error,
            location: location.clone(),
            key_path: key_path.clone(),
            problem,
            help: None,
        }
    }

    pub fn warning(location: &Location, key_path: &KeyPath, problem: Problem) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(location, key_path, problem)
        }
    }

    /// Whether this only says that an environment value `{NAME:from_env}` reads is unset
    /// (or that an image needing one is named): a problem for the jobs that use it only.
    pub fn is_unset_env(&self) -> bool {
        matches!(
            self.problem,
            Problem::EnvUnset(_) | Problem::ImageUnresolved(_)
        )
    }

    /// One line: the message, where, and the key path.
    pub fn located(&self) -> String {
        format!("{} (at {}, {})", self.problem, self.location, self.key_path)
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn message(&self) -> String {
        self.problem.to_string()
    }
}

/// Everything found during one collection, plus the text of the files read, so problems can
/// be shown with the line they are on.
#[derive(Debug, Default)]
pub struct Diagnostics {
    items: Vec<Diagnostic>,
    sources: HashMap<Arc<Path>, Arc<str>>,
}

impl Diagnostics {
    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.items.push(diagnostic);
    }

    pub fn error(&mut self, location: &Location, key_path: &KeyPath, problem: Problem) {
        self.push(Diagnostic::error(location, key_path, problem));
    }

    /// Moves every item of `other` here.
    pub(crate) fn absorb(&mut self, other: Diagnostics) {
        self.items.extend(other.items);
        self.sources.extend(other.sources);
    }

    /// Gives each problem whose location `path_of` knows that key path.
    pub(crate) fn relocate(&mut self, path_of: impl Fn(&Location) -> Option<KeyPath>) {
        for item in &mut self.items {
            if let Some(path) = path_of(&item.location) {
                item.key_path = path;
            }
        }
    }

    /// Takes the unset-environment problems out (see [`Diagnostic::is_unset_env`]), the
    /// rest stay.
    pub(crate) fn take_unset_env(&mut self) -> Vec<Diagnostic> {
        let (unset, rest) = std::mem::take(&mut self.items)
            .into_iter()
            .partition(Diagnostic::is_unset_env);
        self.items = rest;
        unset
    }

    pub(crate) fn add_source(&mut self, path: Arc<Path>, text: Arc<str>) {
        self.sources.insert(path, text);
    }

    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|d| d.severity == Severity::Error)
    }

    pub fn error_count(&self) -> usize {
        self.items
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }

    /// Sorted by file and position, with repeats (the same problem reached through two
    /// tasks that share an image) removed.
    pub fn finish(mut self) -> Self {
        self.items.sort_by(|a, b| {
            (&a.location, a.severity, a.message()).cmp(&(&b.location, b.severity, b.message()))
        });
        self.items.dedup_by(|a, b| {
            a.location == b.location && a.severity == b.severity && a.message() == b.message()
        });
        self
    }

    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Human form: message, `--> file:line:col (key.path)`, the offending line with a caret,
    /// and the help line when there is one.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for d in &self.items {
            let label = match d.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
                Severity::Note => "note",
            };
            let _ = writeln!(out, "{label}: {}", d.problem);
            let _ = writeln!(out, "  --> {} (at {})", d.location, d.key_path);
            if let Some(line) = self.source_line(&d.location) {
                let gutter = d.location.line.to_string();
                let pad = " ".repeat(gutter.len());
                let caret_pad: String = line
                    .chars()
                    .take(d.location.column.saturating_sub(1) as usize)
                    .map(|c| if c == '\t' { '\t' } else { ' ' })
                    .collect();
                let _ = writeln!(out, "{pad} |");
                let _ = writeln!(out, "{gutter} | {line}");
                let _ = writeln!(out, "{pad} | {caret_pad}^");
            }
            if let Some(help) = &d.help {
                let _ = writeln!(out, "  = help: {help}");
            }
            out.push('\n');
        }
        out
    }

    fn source_line(&self, location: &Location) -> Option<&str> {
        let text = self.sources.get(&location.file)?;
        text.lines().nth(location.line.checked_sub(1)? as usize)
    }

    pub fn to_json(&self) -> Vec<JsonDiagnostic> {
        self.items.iter().map(JsonDiagnostic::from).collect()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

/// The machine-readable form used by `--json`.
#[derive(Debug, Serialize)]
pub struct JsonDiagnostic {
    pub severity: Severity,
    pub file: String,
    pub line: u32,
    pub column: u32,
    pub key_path: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

impl From<&Diagnostic> for JsonDiagnostic {
    fn from(d: &Diagnostic) -> Self {
        JsonDiagnostic {
            severity: d.severity,
            file: d.location.file.display().to_string(),
            line: d.location.line,
            column: d.location.column,
            key_path: d.key_path.to_string(),
            message: d.message(),
            help: d.help.clone(),
        }
    }
}
