//! YAML text to [`Node`]s, on top of `saphyr-parser`'s event stream. Building the tree here
//! rather than through a serde model keeps a location on every value and key, catches
//! duplicate keys (which YAML libraries silently resolve), supports `<<` merge keys as
//! harpoon's PyYAML did, and bounds what a hostile file can make us allocate.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use saphyr_parser::{Event, Marker, Parser, ScalarStyle, Tag};

use super::diagnostic::{Diagnostics, Problem};
use super::node::{Entry, KeyPath, Location, Node, Value};

/// Deeper nesting than this is refused; no config needs it and recursion over the tree
/// stays far from the stack's limit.
pub const MAX_DEPTH: usize = 64;
/// Alias expansion beyond this many values is refused (the "billion laughs" document).
pub const MAX_NODES: usize = 250_000;
/// Nor may the text of keys and scalars, aliases expanded, exceed this: a few aliases of
/// one long string are few values but many bytes.
pub const MAX_TEXT_BYTES: usize = 16 * 1024 * 1024;

/// What is left of the limits above for one configuration, shared by all its files.
#[derive(Debug)]
pub struct Budget {
    nodes: usize,
    bytes: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            nodes: MAX_NODES,
            bytes: MAX_TEXT_BYTES,
        }
    }
}

/// Parses one config file, charging what it builds to `budget`. Problems go to
/// `diagnostics`; `None` means the file could not be read as YAML at all. An empty file is
/// an empty mapping.
pub fn parse(
    file: &Arc<Path>,
    text: &str,
    budget: &mut Budget,
    diagnostics: &mut Diagnostics,
) -> Option<Node> {
    let mut builder = Builder {
        file: file.clone(),
        stack: Vec::new(),
        anchors: HashMap::new(),
        budget,
        root: None,
        documents: 0,
        duplicates: Vec::new(),
    };
    for event in Parser::new_from_str(text) {
        let result = match event {
            Ok((event, span)) => builder.event(event, span.start),
            Err(e) => Err((*e.marker(), Problem::Syntax(e.info().to_owned()))),
        };
        if let Err((marker, problem)) = result {
            let location = builder.location(marker);
            diagnostics.error(&location, &builder.path(), problem);
            return None;
        }
    }
    for (location, path, problem) in builder.duplicates.drain(..) {
        diagnostics.error(&location, &path, problem);
    }
    let root = builder.root.unwrap_or_else(|| {
        Node::new(
            Value::Map(Vec::new()),
            Location {
                file: file.clone(),
                line: 1,
                column: 1,
            },
        )
    });
    Some(match root.value {
        Value::Null => Node::new(Value::Map(Vec::new()), root.location),
        _ => root,
    })
}

struct Builder<'b> {
    file: Arc<Path>,
    stack: Vec<Frame>,
    /// Each anchored value with its size: values and text bytes.
    anchors: HashMap<usize, (Node, usize, usize)>,
    budget: &'b mut Budget,
    root: Option<Node>,
    documents: usize,
    duplicates: Vec<(Location, KeyPath, Problem)>,
}

enum Frame {
    Seq {
        items: Vec<Node>,
        location: Location,
        anchor: usize,
    },
    Map {
        entries: Vec<Entry>,
        location: Location,
        anchor: usize,
        key: Option<PendingKey>,
        merges: Vec<Node>,
    },
}

struct PendingKey {
    text: String,
    location: Location,
    is_merge: bool,
}

type Failure = (Marker, Problem);

impl Builder<'_> {
    fn location(&self, marker: Marker) -> Location {
        Location {
            file: self.file.clone(),
            line: u32::try_from(marker.line()).unwrap_or(u32::MAX),
            column: u32::try_from(marker.col() + 1).unwrap_or(u32::MAX),
        }
    }

    fn event(&mut self, event: Event<'_>, at: Marker) -> Result<(), Failure> {
        match event {
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err((at, Problem::ExtraDocument(self.documents)));
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                let is_merge = style == ScalarStyle::Plain && text == "<<";
                self.count(0, text.len(), at)?;
                let value = resolve_scalar(&text, style, tag.as_deref());
                let node = Node::new(value, self.location(at));
                self.complete(node, anchor, is_merge, at)?;
            }
            Event::SequenceStart(anchor, _) => {
                self.open(at)?;
                self.stack.push(Frame::Seq {
                    items: Vec::new(),
                    location: self.location(at),
                    anchor,
                });
            }
            Event::MappingStart(anchor, _) => {
                self.open(at)?;
                self.stack.push(Frame::Map {
                    entries: Vec::new(),
                    location: self.location(at),
                    anchor,
                    key: None,
                    merges: Vec::new(),
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Frame::Seq {
                        items,
                        location,
                        anchor,
                    }) => (Node::new(Value::Seq(items), location), anchor),
                    Some(Frame::Map {
                        mut entries,
                        location,
                        anchor,
                        merges,
                        ..
                    }) => {
                        apply_merges(&mut entries, merges);
                        (Node::new(Value::Map(entries), location), anchor)
                    }
                    None => return Ok(()),
                };
                self.complete(node, anchor, false, at)?;
            }
            Event::Alias(id) => {
                let (nodes, bytes) = match self.anchors.get(&id) {
                    Some((_, nodes, bytes)) => (*nodes, *bytes),
                    None => return Err((at, Problem::UnknownAlias(id.to_string()))),
                };
                self.count(nodes, bytes, at)?;
                let mut node = self.anchors[&id].0.clone();
                if let Some(Frame::Map { key: None, .. }) = self.stack.last() {
                    node.location = self.location(at);
                }
                self.complete(node, 0, false, at)?;
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
        Ok(())
    }

    /// The key path of the value being built, from the keys and indexes of open frames.
    fn path(&self) -> KeyPath {
        let mut path = KeyPath::root();
        for frame in &self.stack {
            path = match frame {
                Frame::Seq { items, .. } => path.index(items.len()),
                Frame::Map { key: Some(k), .. } => path.key(&k.text),
                Frame::Map { key: None, .. } => path,
            };
        }
        path
    }

    fn open(&mut self, at: Marker) -> Result<(), Failure> {
        if self.stack.len() >= MAX_DEPTH {
            return Err((at, Problem::TooDeep(MAX_DEPTH)));
        }
        if let Some(Frame::Map { key: None, .. }) = self.stack.last() {
            return Err((
                at,
                Problem::Syntax("mapping keys must be plain values, not lists or mappings".into()),
            ));
        }
        Ok(())
    }

    /// Charges `nodes` values and `bytes` of text to the budget, before they are built.
    fn count(&mut self, nodes: usize, bytes: usize, at: Marker) -> Result<(), Failure> {
        let budget = &mut *self.budget;
        budget.nodes = budget
            .nodes
            .checked_sub(nodes)
            .ok_or((at, Problem::TooManyNodes(MAX_NODES)))?;
        budget.bytes = budget
            .bytes
            .checked_sub(bytes)
            .ok_or((at, Problem::TooMuchText(MAX_TEXT_BYTES)))?;
        Ok(())
    }

    /// A finished value goes into its parent: as a sequence item, a mapping key, or the
    /// value of the pending key.
    fn complete(
        &mut self,
        node: Node,
        anchor: usize,
        is_merge_key: bool,
        at: Marker,
    ) -> Result<(), Failure> {
        self.count(1, 0, at)?;
        if anchor != 0 {
            // The copy kept for aliases is charged too: nested anchors each keep one.
            let (nodes, bytes) = node.size();
            self.count(nodes, bytes, at)?;
            self.anchors.insert(anchor, (node.clone(), nodes, bytes));
        }
        if let Some(Frame::Map {
            entries,
            key: Some(pending),
            ..
        }) = self.stack.last()
            && let Some(first) = entries.iter().find(|e| e.key == pending.text)
        {
            let problem = Problem::DuplicateKey {
                key: pending.text.clone(),
                first: first.key_location.clone(),
            };
            let entry = (pending.location.clone(), self.path(), problem);
            self.duplicates.push(entry);
            if let Some(Frame::Map { key, .. }) = self.stack.last_mut() {
                *key = None;
            }
            return Ok(());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries,
                key,
                merges,
                ..
            }) => match key.take() {
                None => {
                    let text = node.scalar_text().unwrap_or_default();
                    *key = Some(PendingKey {
                        text,
                        location: node.location,
                        is_merge: is_merge_key,
                    });
                }
                Some(pending) if pending.is_merge => match node.value {
                    Value::Map(_) => merges.push(node),
                    Value::Seq(items) => {
                        for item in items {
                            if item.as_map().is_none() {
                                return Err((at, Problem::BadMergeKey(item.kind())));
                            }
                            merges.push(item);
                        }
                    }
                    _ => return Err((at, Problem::BadMergeKey(node.kind()))),
                },
                Some(pending) => {
                    entries.push(Entry {
                        key: pending.text,
                        key_location: pending.location,
                        value: node,
                    });
                }
            },
        }
        Ok(())
    }
}

/// `<<` entries fill in keys the mapping does not set itself; earlier merge sources win.
fn apply_merges(entries: &mut Vec<Entry>, merges: Vec<Node>) {
    for source in merges {
        if let Value::Map(merged) = source.value {
            for entry in merged {
                if !entries.iter().any(|e| e.key == entry.key) {
                    entries.push(entry);
                }
            }
        }
    }
}

/// YAML 1.2 core schema for plain scalars; quoted scalars and `!!str` are always text.
fn resolve_scalar(text: &str, style: ScalarStyle, tag: Option<&Tag>) -> Value {
    if let Some(tag) = tag
        && tag.suffix == "str"
    {
        return Value::Str(text.to_owned());
    }
    if style != ScalarStyle::Plain {
        return Value::Str(text.to_owned());
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => Value::Null,
        "true" | "True" | "TRUE" => Value::Bool(true),
        "false" | "False" | "FALSE" => Value::Bool(false),
        _ if looks_numeric(text) => Value::Number(text.to_owned()),
        _ => Value::Str(text.to_owned()),
    }
}

fn looks_numeric(text: &str) -> bool {
    let body = text.strip_prefix(['-', '+']).unwrap_or(text);
    if let Some(hex) = body.strip_prefix("0x") {
        return !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit());
    }
    if let Some(oct) = body.strip_prefix("0o") {
        return !oct.is_empty() && oct.chars().all(|c| c.is_digit(8));
    }
    if matches!(body, ".inf" | ".Inf" | ".INF") || matches!(text, ".nan" | ".NaN" | ".NAN") {
        return true;
    }
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let digits = mantissa.replacen('.', "", 1);
    let mantissa_ok = !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit())
        && mantissa.matches('.').count() <= 1;
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && e.chars().all(|c| c.is_ascii_digit())
    });
    mantissa_ok && exponent_ok
}
