//! Docker's `.dockerignore` semantics, also used for a context's `include`/`exclude` globs:
//! patterns are relative to the context root (a leading `/` is dropped, paths are cleaned),
//! `*` and `?` stay within one path segment, `**` spans any number of segments, `!` makes
//! an exception, the last matching pattern wins, and a pattern that matches a directory
//! matches everything below it.

use regex::Regex;

/// More patterns than this in one `.dockerignore` are refused: each is a regex every path
/// of the context is matched against.
pub const MAX_PATTERNS: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum PatternError {
    #[error("bad pattern `{pattern}`: {reason}")]
    Bad { pattern: String, reason: String },
    #[error("more than {MAX_PATTERNS} patterns")]
    TooMany,
}

#[derive(Clone, Debug)]
struct Pattern {
    regex: Regex,
    exception: bool,
}

/// An ordered list of patterns.
#[derive(Clone, Debug, Default)]
pub struct PatternSet {
    patterns: Vec<Pattern>,
}

impl PatternSet {
    /// Parses `.dockerignore` text: one pattern a line, `#` comments, blank lines ignored;
    /// at most [`MAX_PATTERNS`].
    pub fn dockerignore(text: &str) -> Result<PatternSet, PatternError> {
        let lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        if lines.clone().count() > MAX_PATTERNS {
            return Err(PatternError::TooMany);
        }
        Self::new(lines)
    }

    pub fn new<'p>(lines: impl IntoIterator<Item = &'p str>) -> Result<PatternSet, PatternError> {
        let mut patterns = Vec::new();
        for line in lines {
            let (exception, body) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let cleaned = clean(body);
            if cleaned.is_empty() {
                continue;
            }
            let regex = Regex::new(&to_regex(&cleaned)).map_err(|e| PatternError::Bad {
                pattern: line.to_owned(),
                reason: e.to_string(),
            })?;
            patterns.push(Pattern { regex, exception });
        }
        Ok(PatternSet { patterns })
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether any pattern is an exception; without one, an excluded directory need not be
    /// walked.
    pub fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|p| p.exception)
    }

    /// Whether `path` (relative, `/`-separated) is matched: the last pattern matching it or
    /// one of its parent directories decides.
    pub fn matches(&self, path: &str) -> bool {
        let mut matched = false;
        for pattern in &self.patterns {
            if pattern.exception != matched {
                continue;
            }
            let hit = pattern.regex.is_match(path)
                || parents(path).any(|parent| pattern.regex.is_match(parent));
            if hit {
                matched = !pattern.exception;
            }
        }
        matched
    }

    /// Whether `path` matches any pattern, exceptions ignored (for `include` lists).
    pub fn any_matches(&self, path: &str) -> bool {
        self.patterns
            .iter()
            .any(|p| p.regex.is_match(path) || parents(path).any(|parent| p.regex.is_match(parent)))
    }
}

/// `a`, `a/b` for `a/b/c`.
fn parents(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

/// Go's `filepath.Clean`, then without a leading `/`.
fn clean(pattern: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in pattern.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !pattern.starts_with('/') {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

fn to_regex(pattern: &str) -> String {
    let mut out = String::from("^");
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    let mut in_class = false;
    while i < chars.len() {
        let c = chars[i];
        if in_class {
            if c == ']' {
                in_class = false;
            }
            if c == '\\' && i + 1 < chars.len() {
                out.push('\\');
                i += 1;
                out.push(chars[i]);
            } else {
                out.push(c);
            }
            i += 1;
            continue;
        }
        match c {
            '*' if chars.get(i + 1) == Some(&'*') => {
                i += 2;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                if i >= chars.len() {
                    out.push_str(".*");
                } else {
                    out.push_str("(.*/)?");
                }
                continue;
            }
            '*' => out.push_str("[^/]*"),
            '?' => out.push_str("[^/]"),
            '[' => {
                in_class = true;
                out.push('[');
                if chars.get(i + 1) == Some(&'!') {
                    out.push('^');
                    i += 1;
                }
            }
            '\\' if i + 1 < chars.len() => {
                i += 1;
                out.push_str(&regex::escape(&chars[i].to_string()));
            }
            other => out.push_str(&regex::escape(&other.to_string())),
        }
        i += 1;
    }
    out.push('$');
    out
}

#[cfg(test)]
mod tests {
    use super::PatternSet;

    /// Docker's documented examples and the corner cases its users trip on:
    /// (patterns, path, excluded?).
    #[test]
    fn dockerignore_conformance_table() {
        let table: &[(&str, &str, bool)] = &[
            ("*/temp*", "somedir/temporary.txt", true),
            ("*/temp*", "somedir/temp", true),
            ("*/temp*", "temp", false),
            ("*/*/temp*", "somedir/subdir/temporary.txt", true),
            ("*/*/temp*", "somedir/temporary.txt", false),
            ("temp?", "tempa", true),
            ("temp?", "tempab", false),
            ("temp?", "temp/a", false),
            ("*.md", "README.md", true),
            ("*.md", "docs/README.md", false),
            ("**/*.go", "a/b/c.go", true),
            ("**/*.go", "c.go", true),
            ("**", "anything/at/all", true),
            ("dir/**", "dir/a/b", true),
            ("dir/**", "dir", false),
            ("a/**/b", "a/b", true),
            ("a/**/b", "a/x/y/b", true),
            ("/build", "build/out.o", true),
            ("./build/", "build/out.o", true),
            ("build", "src/build", false),
            ("node_modules", "node_modules/x/index.js", true),
            ("*.md\n!README.md", "README.md", false),
            ("*.md\n!README.md", "CHANGES.md", true),
            (
                "*.md\n!README*.md\nREADME-secret.md",
                "README-secret.md",
                true,
            ),
            (
                "*.md\n!README*.md\nREADME-secret.md",
                "README-public.md",
                false,
            ),
            ("docs\n!docs/keep.txt", "docs/keep.txt", false),
            ("docs\n!docs/keep.txt", "docs/drop.txt", true),
            ("[a-c].txt", "b.txt", true),
            ("[a-c].txt", "d.txt", false),
            ("[^a].txt", "a.txt", false),
            ("[!a].txt", "b.txt", true),
            ("a\\*b", "a*b", true),
            ("a\\*b", "axb", false),
            ("file.txt", "file_txt", false),
            ("# comment\n\n  spaced.txt  ", "spaced.txt", true),
            ("x/../y", "y", true),
            ("a+b(c)", "a+b(c)", true),
        ];
        for (patterns, path, excluded) in table {
            let set = PatternSet::dockerignore(patterns).unwrap();
            assert_eq!(
                set.matches(path),
                *excluded,
                "patterns {patterns:?} on {path:?}"
            );
        }
    }
}
