//! harpoon's string formatting: `{a.b.c}` looks up the merged document, `{{`/`}}` escape,
//! `{NAME:env}` renders `${NAME}`, `{NAME:from_env}` takes the host's value, `{$@}` the extra
//! CLI arguments, `{config_root}` the main file's directory, and `{images.x}` names image x
//! (a dependency when it is the whole value, the image's full name inside longer text).
//!
//! Formatting is lazy, like harpoon's: only values the collector reads are formatted, so an
//! unused key that needs an unset variable is no error. A value that is exactly one
//! reference to a mapping or list stands for that mapping or list.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use super::diagnostic::{Diagnostic, Diagnostics, Problem};
use super::node::{KeyPath, Location, Node, Value};
use super::suggest;

/// What resolving one configuration may build beyond its files, in bytes: root options
/// copied into every image, the document copied for each task that changes it, references
/// expanded. Unbounded, a 1 MB config copying a long default into 3,000 images took 3 GB,
/// and four levels of a hundred references each ran for minutes.
pub const MAX_EXPANSION: usize = 32 * 1024 * 1024;
/// What one value, or one reference looked up, costs of [`MAX_EXPANSION`] besides its text.
const VALUE_COST: usize = 64;

/// The part of [`MAX_EXPANSION`] left, shared by everything that resolves one config.
#[derive(Debug)]
pub struct Expansion {
    left: Cell<usize>,
    reported: Cell<bool>,
}

impl Default for Expansion {
    fn default() -> Self {
        Expansion {
            left: Cell::new(MAX_EXPANSION),
            reported: Cell::new(false),
        }
    }
}

impl Expansion {
    /// Charges `values` and `bytes` before they are built. The first overdraft is reported
    /// at `location`; it and every later charge return false.
    pub fn charge(
        &self,
        (values, bytes): (usize, usize),
        location: &Location,
        path: &KeyPath,
        d: &mut Diagnostics,
    ) -> bool {
        let cost = values.saturating_mul(VALUE_COST).saturating_add(bytes);
        if let Some(left) = self.left.get().checked_sub(cost) {
            self.left.set(left);
            return true;
        }
        self.left.set(0);
        if !self.reported.replace(true) {
            d.error(location, path, Problem::ExpandsTooMuch(MAX_EXPANSION));
        }
        false
    }
}

/// What a value formats to.
#[derive(Clone, Debug)]
pub enum Formatted {
    Text(String),
    /// The whole value was `{images.NAME}`.
    Image(String),
    /// The whole value referenced a mapping, list or null; its strings are not yet formatted.
    Node(Node),
}

/// Everything formatting may read. One per collection (and one per task with overrides).
pub struct Formatter<'a> {
    pub document: &'a Node,
    pub config_root: &'a str,
    /// The extra CLI arguments as shell words, for `{$@}`.
    pub cli_args: &'a dyn Fn() -> String,
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// Full names of images, once they are known; `None` while the names themselves are
    /// being formatted.
    pub image_names: Option<&'a HashMap<String, String>>,
    expansion: &'a Expansion,
    /// The image whose options are being read: `{__image__.x}` is `{images.<it>.x}`.
    image: Option<&'a str>,
    /// References being expanded, to report cycles instead of recursing forever.
    active: RefCell<Vec<String>>,
}

enum Piece<'s> {
    Literal(&'s str),
    Placeholder(&'s str),
}

impl<'a> Formatter<'a> {
    pub fn new(
        document: &'a Node,
        config_root: &'a str,
        cli_args: &'a dyn Fn() -> String,
        env: &'a dyn Fn(&str) -> Option<String>,
        image_names: Option<&'a HashMap<String, String>>,
        expansion: &'a Expansion,
    ) -> Self {
        Formatter {
            document,
            config_root,
            cli_args,
            env,
            image_names,
            expansion,
            image: None,
            active: RefCell::new(Vec::new()),
        }
    }

    /// This formatter reading image `name`'s options, for harpoon's `{__image__.x}`.
    pub fn for_image(mut self, name: &'a str) -> Self {
        self.image = Some(name);
        self
    }

    /// Formats a node: strings are formatted, other scalars are their text, mappings and
    /// lists are returned as they are.
    pub fn format(&self, node: &Node, path: &KeyPath, d: &mut Diagnostics) -> Option<Formatted> {
        match &node.value {
            Value::Str(s) => self.format_str(s, node, path, d),
            Value::Number(s) => Some(Formatted::Text(s.clone())),
            Value::Bool(b) => Some(Formatted::Text(b.to_string())),
            Value::Null | Value::Seq(_) | Value::Map(_) => {
                let charged = self.expansion.charge(node.size(), &node.location, path, d);
                charged.then(|| Formatted::Node(node.clone()))
            }
        }
    }

    /// Formats a node that must end up as text. An image reference becomes the image's
    /// full name.
    pub fn text(&self, node: &Node, path: &KeyPath, d: &mut Diagnostics) -> Option<String> {
        match self.format(node, path, d)? {
            Formatted::Text(t) => Some(t),
            Formatted::Image(name) => self.full_name(&name, node, path, d),
            Formatted::Node(n) => {
                let problem = Problem::WrongType {
                    expected: "text",
                    found: n.kind(),
                };
                d.error(&node.location, path, problem);
                None
            }
        }
    }

    /// The node a value stands for: itself, or what its single whole reference points at.
    pub fn resolve(&self, node: &Node, path: &KeyPath, d: &mut Diagnostics) -> Option<Node> {
        match &node.value {
            Value::Str(s) if is_single_placeholder(s) => match self.format(node, path, d)? {
                Formatted::Node(n) => Some(n),
                _ => Some(node.clone()),
            },
            _ => Some(node.clone()),
        }
    }

    fn full_name(
        &self,
        image: &str,
        node: &Node,
        path: &KeyPath,
        d: &mut Diagnostics,
    ) -> Option<String> {
        match self.image_names {
            Some(names) => {
                let name = names.get(image).cloned();
                if name.is_none() {
                    d.error(
                        &node.location,
                        path,
                        Problem::ImageUnresolved(image.to_owned()),
                    );
                }
                name
            }
            None => {
                let problem = Problem::Invalid {
                    what: "reference",
                    value: format!("{{images.{image}}}"),
                    reason: "image names cannot refer to other images".into(),
                };
                d.error(&node.location, path, problem);
                None
            }
        }
    }

    fn format_str(
        &self,
        s: &str,
        node: &Node,
        path: &KeyPath,
        d: &mut Diagnostics,
    ) -> Option<Formatted> {
        let pieces = match split(s) {
            Ok(pieces) => pieces,
            Err(problem) => {
                d.error(&node.location, path, problem);
                return None;
            }
        };
        if let [Piece::Placeholder(reference)] = pieces.as_slice() {
            return self.placeholder(reference, node, path, d);
        }
        let mut out = String::with_capacity(s.len());
        let mut ok = true;
        for piece in pieces {
            match piece {
                Piece::Literal(text) => out.push_str(text),
                Piece::Placeholder(reference) => match self.placeholder(reference, node, path, d) {
                    Some(Formatted::Text(t)) => {
                        if !self.expansion.charge((0, t.len()), &node.location, path, d) {
                            return None;
                        }
                        out.push_str(&t);
                    }
                    Some(Formatted::Image(name)) => match self.full_name(&name, node, path, d) {
                        Some(full) => out.push_str(&full),
                        None => ok = false,
                    },
                    Some(Formatted::Node(n)) => {
                        let problem = Problem::NotText {
                            reference: reference.to_owned(),
                            found: n.kind(),
                        };
                        d.error(&node.location, path, problem);
                        ok = false;
                    }
                    None => ok = false,
                },
            }
        }
        ok.then_some(Formatted::Text(out))
    }

    fn placeholder(
        &self,
        reference: &str,
        node: &Node,
        path: &KeyPath,
        d: &mut Diagnostics,
    ) -> Option<Formatted> {
        if let Some((name, spec)) = reference.rsplit_once(':') {
            return match spec {
                "env" => Some(Formatted::Text(format!("${{{name}}}"))),
                "from_env" => match (self.env)(name) {
                    Some(value) => Some(Formatted::Text(value)),
                    None => {
                        d.error(&node.location, path, Problem::EnvUnset(name.to_owned()));
                        None
                    }
                },
                other => {
                    d.error(
                        &node.location,
                        path,
                        Problem::UnknownFormatSpec(other.to_owned()),
                    );
                    None
                }
            };
        }
        if !self.expansion.charge((1, 0), &node.location, path, d) {
            return None;
        }
        match reference {
            "$@" => return Some(Formatted::Text((self.cli_args)())),
            "config_root" => return Some(Formatted::Text(self.config_root.to_owned())),
            _ => {}
        }
        let mut keys: Vec<&str> = reference.split('.').collect();
        if keys[0] == "__image__"
            && let Some(image) = self.image
        {
            keys.splice(0..1, ["images", image]);
        }
        if let ["images", image] = keys.as_slice()
            && self.lookup(&["images", image]).is_some()
        {
            return Some(Formatted::Image((*image).to_owned()));
        }
        let Some(target) = self.lookup(&keys) else {
            self.unknown_reference(reference, &keys, node, path, d);
            return None;
        };
        if self.active.borrow().iter().any(|r| r == reference) {
            let mut members = self.active.borrow().clone();
            let start = members.iter().position(|r| r == reference).unwrap_or(0);
            members.drain(..start);
            members.push(reference.to_owned());
            d.error(&node.location, path, Problem::ReferenceCycle(members));
            return None;
        }
        self.active.borrow_mut().push(reference.to_owned());
        let target_path = KeyPath::dotted(&keys.join("."));
        let result = self.format(target, &target_path, d);
        self.active.borrow_mut().pop();
        result
    }

    /// Whether the document has an image named `name`.
    pub fn has_image(&self, name: &str) -> bool {
        self.lookup(&["images", name]).is_some()
    }

    /// Looks a dotted path up in the document. Under `images.NAME`, a key the image does
    /// not set falls back to the root, where image defaults live.
    fn lookup(&self, keys: &[&str]) -> Option<&'a Node> {
        let direct = keys
            .iter()
            .try_fold(self.document, |node, key| node.get(key));
        match (direct, keys) {
            (None, ["images", image, rest @ ..]) if !rest.is_empty() => {
                self.document.get("images")?.get(image)?;
                rest.iter()
                    .try_fold(self.document, |node, key| node.get(key))
            }
            _ => direct,
        }
    }

    fn unknown_reference(
        &self,
        reference: &str,
        keys: &[&str],
        node: &Node,
        path: &KeyPath,
        d: &mut Diagnostics,
    ) {
        let mut parent = self.document;
        let mut depth = 0;
        for key in keys {
            match parent.get(key) {
                Some(child) => {
                    parent = child;
                    depth += 1;
                }
                None => break,
            }
        }
        let missing = keys[..(depth + 1).min(keys.len())].join(".");
        let problem = Problem::UnknownReference {
            reference: reference.to_owned(),
            missing,
        };
        let mut diagnostic = Diagnostic::error(&node.location, path, problem);
        if let (Some(map), Some(wanted)) = (parent.as_map(), keys.get(depth))
            && let Some(candidate) = suggest::closest(wanted, map.iter().map(|e| e.key.as_str()))
        {
            let mut fixed: Vec<&str> = keys[..depth].to_vec();
            fixed.push(candidate);
            diagnostic = diagnostic.with_help(format!("did you mean `{{{}}}`?", fixed.join(".")));
        }
        d.push(diagnostic);
    }
}

/// Whether a string is exactly one `{...}` placeholder.
pub fn is_single_placeholder(s: &str) -> bool {
    matches!(split(s).as_deref(), Ok([Piece::Placeholder(_)]))
}

fn split(s: &str) -> Result<Vec<Piece<'_>>, Problem> {
    let mut pieces = Vec::new();
    let bytes = s.as_bytes();
    let mut literal_start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' if bytes.get(i + 1) == Some(&b'{') => {
                push_literal(&mut pieces, &s[literal_start..i + 1]);
                i += 2;
                literal_start = i;
            }
            b'}' if bytes.get(i + 1) == Some(&b'}') => {
                push_literal(&mut pieces, &s[literal_start..i + 1]);
                i += 2;
                literal_start = i;
            }
            b'{' => {
                push_literal(&mut pieces, &s[literal_start..i]);
                let Some(len) = s[i + 1..]
                    .find(['{', '}'])
                    .filter(|&n| bytes[i + 1 + n] == b'}')
                else {
                    return Err(Problem::UnterminatedPlaceholder(s.to_owned()));
                };
                let inner = &s[i + 1..i + 1 + len];
                if inner.trim().is_empty() {
                    return Err(Problem::Invalid {
                        what: "placeholder",
                        value: "{}".into(),
                        reason: "empty `{}`; write `{{}}` for literal braces".into(),
                    });
                }
                pieces.push(Piece::Placeholder(inner));
                i += len + 2;
                literal_start = i;
            }
            b'}' => return Err(Problem::UnmatchedBrace(s.to_owned())),
            _ => i += 1,
        }
    }
    push_literal(&mut pieces, &s[literal_start..]);
    Ok(pieces)
}

fn push_literal<'s>(pieces: &mut Vec<Piece<'s>>, text: &'s str) {
    if !text.is_empty() {
        pieces.push(Piece::Literal(text));
    }
}
