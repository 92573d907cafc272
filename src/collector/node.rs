//! The YAML tree the collector works on: every node and every key remembers where it was
//! written, so a problem found after several files were merged still points at the file,
//! line and column that said it.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// A position in a config file (1-based line and column).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    pub file: Arc<Path>,
    pub line: u32,
    pub column: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// A YAML value with the location it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub value: Value,
    pub location: Location,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    /// A plain scalar that reads as a number, kept as written (`1.10` stays `1.10`).
    Number(String),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

/// One `key: value` pair of a mapping. Keys are kept as text: YAML's non-string keys
/// (`80: x`) mean the same to a config as their spelling.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub key: String,
    pub key_location: Location,
    pub value: Node,
}

impl Node {
    pub fn new(value: Value, location: Location) -> Self {
        Node { value, location }
    }

    /// What kind of value this is, for "expected X, found Y" messages.
    pub fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "nothing (null)",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    pub fn as_map(&self) -> Option<&[Entry]> {
        match &self.value {
            Value::Map(entries) => Some(entries),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The entry for `key` when this is a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entry(key).map(|e| &e.value)
    }

    pub fn entry(&self, key: &str) -> Option<&Entry> {
        self.as_map()?.iter().find(|e| e.key == key)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        match &mut self.value {
            Value::Map(entries) => entries
                .iter_mut()
                .find(|e| e.key == key)
                .map(|e| &mut e.value),
            _ => None,
        }
    }

    /// Drops `key` when this is a mapping.
    pub fn remove(&mut self, key: &str) {
        if let Value::Map(entries) = &mut self.value {
            entries.retain(|e| e.key != key);
        }
    }

    /// Scalars as the text a Dockerfile or a command line would carry.
    pub fn scalar_text(&self) -> Option<String> {
        match &self.value {
            Value::Str(s) | Value::Number(s) => Some(s.clone()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Null | Value::Seq(_) | Value::Map(_) => None,
        }
    }

    /// Values and text bytes (of keys and of text and number scalars) in this tree: what
    /// the collector's budgets charge.
    pub fn size(&self) -> (usize, usize) {
        let add = |(n, b): (usize, usize), (m, c): (usize, usize)| (n + m, b + c);
        match &self.value {
            Value::Seq(items) => items.iter().map(Node::size).fold((1, 0), add),
            Value::Map(entries) => entries
                .iter()
                .map(|e| add((1, e.key.len()), e.value.size()))
                .fold((1, 0), add),
            Value::Str(text) | Value::Number(text) => (1, text.len()),
            Value::Null | Value::Bool(_) => (1, 0),
        }
    }

    /// Deep-merges `over` onto `self`: mappings merge key by key, anything else from `over`
    /// replaces what was there (the rule for later files and for root image defaults).
    pub fn merge(&mut self, over: Node) {
        match (&mut self.value, over.value) {
            (Value::Map(base), Value::Map(over_entries)) => {
                for entry in over_entries {
                    match base.iter_mut().find(|e| e.key == entry.key) {
                        Some(existing) => {
                            existing.key_location = entry.key_location;
                            existing.value.merge(entry.value);
                        }
                        None => base.push(entry),
                    }
                }
                self.location = over.location;
            }
            (_, value) => {
                self.value = value;
                self.location = over.location;
            }
        }
    }
}

/// Where a value sits in the merged configuration, e.g. `images.app.commands[2]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyPath(Vec<Segment>);

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Segment {
    Key(String),
    Index(usize),
}

impl KeyPath {
    pub fn root() -> Self {
        KeyPath(Vec::new())
    }

    pub fn key(&self, key: &str) -> Self {
        let mut next = self.clone();
        next.0.push(Segment::Key(key.to_owned()));
        next
    }

    pub fn index(&self, index: usize) -> Self {
        let mut next = self.clone();
        next.0.push(Segment::Index(index));
        next
    }

    /// Parses a dotted reference such as `images.app.tag` (as written inside `{...}`).
    pub fn dotted(text: &str) -> Self {
        KeyPath(
            text.split('.')
                .map(|k| Segment::Key(k.to_owned()))
                .collect(),
        )
    }

    /// The mapping keys along the path, for lookups into the document.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|s| match s {
            Segment::Key(k) => Some(k.as_str()),
            Segment::Index(_) => None,
        })
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(root)");
        }
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(k) if i == 0 => f.write_str(k)?,
                Segment::Key(k) => write!(f, ".{k}")?,
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}
