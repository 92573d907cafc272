//! Typed reads of formatted values: the one place that turns "expected a list, found a
//! string" into a diagnostic, so the option readers stay declarative.

use std::path::Path;
use std::time::Duration;

use super::diagnostic::{Diagnostics, Problem};
use super::format::{Formatted, Formatter};
use super::node::{KeyPath, Node, Value};

pub struct Reader<'r, 'a> {
    pub fmt: &'r Formatter<'a>,
    /// Where directories the config names must lie (see `CollectOptions::workspace`).
    pub workspace: Option<&'r Path>,
    pub d: &'r mut Diagnostics,
}

impl Reader<'_, '_> {
    pub fn wrong(&mut self, node: &Node, path: &KeyPath, expected: &'static str) {
        let problem = Problem::WrongType {
            expected,
            found: node.kind(),
        };
        self.d.error(&node.location, path, problem);
    }

    pub fn invalid(
        &mut self,
        node: &Node,
        path: &KeyPath,
        what: &'static str,
        value: &str,
        reason: impl Into<String>,
    ) {
        let problem = Problem::Invalid {
            what,
            value: value.to_owned(),
            reason: reason.into(),
        };
        self.d.error(&node.location, path, problem);
    }

    pub fn format(&mut self, node: &Node, path: &KeyPath) -> Option<Formatted> {
        self.fmt.format(node, path, self.d)
    }

    pub fn text(&mut self, node: &Node, path: &KeyPath) -> Option<String> {
        self.fmt.text(node, path, self.d)
    }

    /// The value behind a whole-value reference, or the node itself.
    pub fn resolve(&mut self, node: &Node, path: &KeyPath) -> Option<Node> {
        self.fmt.resolve(node, path, self.d)
    }

    pub fn map(&mut self, node: &Node, path: &KeyPath) -> Option<Node> {
        let node = self.resolve(node, path)?;
        match node.value {
            Value::Map(_) => Some(node),
            _ => {
                self.wrong(&node, path, "a mapping");
                None
            }
        }
    }

    /// A list; one text, number or boolean where a list goes is a list of it, as harpoon
    /// reads every list (`commands: "FROM x"`, `ports: "8080:80"`).
    pub fn list(&mut self, node: &Node, path: &KeyPath) -> Option<Vec<Node>> {
        let node = self.resolve(node, path)?;
        match node.value {
            Value::Seq(items) => Some(items),
            Value::Str(_) | Value::Number(_) | Value::Bool(_) => Some(vec![node]),
            _ => {
                self.wrong(&node, path, "a list");
                None
            }
        }
    }

    /// A list of text values; every bad item is reported.
    pub fn texts(&mut self, node: &Node, path: &KeyPath) -> Option<Vec<String>> {
        let items = self.list(node, path)?;
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match self.text(item, &path.index(i)) {
                Some(t) => out.push(t),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    pub fn bool(&mut self, node: &Node, path: &KeyPath) -> Option<bool> {
        let node = self.resolve(node, path)?;
        match &node.value {
            Value::Bool(b) => Some(*b),
            Value::Str(_) => match self.text(&node, path)?.as_str() {
                "true" => Some(true),
                "false" => Some(false),
                other => {
                    self.invalid(&node, path, "boolean", other, "expected true or false");
                    None
                }
            },
            _ => {
                self.wrong(&node, path, "true or false");
                None
            }
        }
    }

    pub fn number<T: std::str::FromStr>(
        &mut self,
        node: &Node,
        path: &KeyPath,
        what: &'static str,
    ) -> Option<T> {
        let node = self.resolve(node, path)?;
        if !matches!(node.value, Value::Number(_) | Value::Str(_)) {
            self.wrong(&node, path, "a number");
            return None;
        }
        let text = self.text(&node, path)?;
        match text.parse() {
            Ok(n) => Some(n),
            Err(_) => {
                self.invalid(&node, path, what, &text, "not a whole number in range");
                None
            }
        }
    }

    /// Seconds as a number, or a human duration such as `"90s"` or `"5m"`.
    pub fn duration(&mut self, node: &Node, path: &KeyPath) -> Option<Duration> {
        let node = self.resolve(node, path)?;
        if let Value::Number(n) = &node.value {
            return match n.parse::<u64>() {
                Ok(secs) => Some(Duration::from_secs(secs)),
                Err(_) => {
                    self.invalid(
                        &node,
                        path,
                        "duration",
                        n,
                        "a number of seconds must be a whole number",
                    );
                    None
                }
            };
        }
        let text = self.text(&node, path)?;
        match crate::util::parse_duration(&text) {
            Ok(d) => Some(d),
            Err(reason) => {
                self.invalid(&node, path, "duration", &text, reason);
                None
            }
        }
    }

    /// Runs `read` on the entry `key` of `map` when it is present and not null.
    pub fn field<T>(
        &mut self,
        map: &Node,
        path: &KeyPath,
        key: &str,
        read: impl FnOnce(&mut Self, &Node, &KeyPath) -> Option<T>,
    ) -> Option<T> {
        let node = map.get(key)?;
        if matches!(node.value, Value::Null) {
            return None;
        }
        read(self, node, &path.key(key))
    }
}
