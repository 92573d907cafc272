//! A task's own test results: JUnit XML files picked out of a tar stream of the task's
//! container and read into a [`TestSummary`]. The files are the repository's, so nothing
//! is trusted: reading is streaming with caps on bytes, cases and text kept; entities are
//! never expanded (an entity bomb stays a literal); a malformed or cut-short file is a
//! warning naming the file and line, never an error.

use std::io::{BufReader, Read};

use globset::{Glob, GlobMatcher};
use quick_xml::events::{BytesStart, Event};

use crate::events::{TestCase, TestStatus, TestSummary};

/// One report file is read up to this many bytes; the rest is a warning.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// All of a task's report archives together, as read from the engine.
pub const MAX_ARCHIVE_BYTES: u64 = 512 * 1024 * 1024;
/// Cases kept for junit.xml (counts go on).
const MAX_CASES: usize = 10_000;
/// Failed cases kept in the result.
const MAX_FAILURES: usize = 100;
/// Text kept per failed case (message and output each).
const MAX_TEXT: usize = 4 * 1024;
/// Warnings kept: a million malformed files say so once.
const MAX_WARNINGS: usize = 20;

/// A container path pattern, for reports and artifacts alike: `target/test-results/*.xml`,
/// `/out/report.xml`, `dist/`.
#[derive(Clone, Debug)]
pub struct Pattern {
    /// As written, for messages.
    pub text: String,
    /// The part before the first glob character, the path to ask the engine for.
    pub base: String,
    matcher: GlobMatcher,
}

impl Pattern {
    /// Parses a pattern as the config gives it; `relative_to` is the container's working
    /// directory for a relative one. The error says why (for the collector's message).
    pub fn new(text: &str, relative_to: &str) -> Result<Pattern, String> {
        if text.is_empty() {
            return Err("an empty path".into());
        }
        if text.split('/').any(|part| part == "..") {
            return Err("`..` is not allowed in a report or artifact path".into());
        }
        let full = if text.starts_with('/') {
            text.to_owned()
        } else {
            format!("{}/{text}", relative_to.trim_end_matches('/'))
        };
        let full = full.trim_end_matches('/').to_owned();
        let glob_at = full.find(['*', '?', '[', '{']).unwrap_or(full.len());
        let base = match full[..glob_at].rfind('/') {
            Some(slash) if glob_at < full.len() => full[..slash].to_owned(),
            _ => full.clone(),
        };
        let base = if base.is_empty() { "/".into() } else { base };
        let glob = Glob::new(&full).map_err(|e| e.kind().to_string())?;
        Ok(Pattern {
            text: text.to_owned(),
            base,
            matcher: glob.compile_matcher(),
        })
    }

    /// The parent of `base` in the container: tar entries of `base` are named from its last
    /// component, so an entry's container path is this joined with the entry's name.
    pub fn archive_root(&self) -> &str {
        match self.base.rfind('/') {
            Some(0) | None => "",
            Some(slash) => &self.base[..slash],
        }
    }

    fn matches(&self, container_path: &str) -> bool {
        self.matcher.is_match(container_path)
    }

    /// Whether the pattern picks `container_path` itself or a directory above it (`dist/`
    /// picks everything in `dist`).
    pub fn picks(&self, container_path: &str) -> bool {
        let mut path = container_path;
        loop {
            if self.matches(path) {
                return true;
            }
            match path.rfind('/') {
                Some(slash) if slash > 0 => path = &path[..slash],
                _ => return false,
            }
        }
    }
}

/// Adds what the report files matching `pattern` in `archive` (a tar of `pattern.base`
/// from the container) say to `summary`. An archive that breaks off is a warning.
pub fn read_archive(archive: impl Read, pattern: &Pattern, summary: &mut TestSummary) {
    let mut archive = tar::Archive::new(archive);
    let mut matched = 0;
    let entries = match archive.entries() {
        Ok(entries) => entries,
        Err(e) => {
            warn(summary, format!("{}: {e}", pattern.text));
            return;
        }
    };
    for entry in entries {
        let mut entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                warn(
                    summary,
                    format!("{}: the copy broke off: {e}", pattern.text),
                );
                return;
            }
        };
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let path = format!("{}/{}", pattern.archive_root(), name.trim_end_matches('/'));
        if !pattern.matches(&path) {
            continue;
        }
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        matched += 1;
        if !kind.is_file() {
            warn(
                summary,
                format!("{path}: not a regular file (a link is not followed); skipped"),
            );
            continue;
        }
        let size = entry.size();
        read_file(&mut entry, &path, size, summary);
    }
    if matched == 0 {
        warn(summary, format!("{}: no report file matched", pattern.text));
    }
}

/// Reads one JUnit XML file into `summary`.
pub fn read_file(file: impl Read, path: &str, size: u64, summary: &mut TestSummary) {
    if size > MAX_FILE_BYTES {
        warn(
            summary,
            format!(
                "{path}: {size} bytes, over the {} MiB a report may have; only its start is read",
                MAX_FILE_BYTES / 1024 / 1024
            ),
        );
    }
    let mut reader = quick_xml::Reader::from_reader(BufReader::new(file.take(MAX_FILE_BYTES)));
    let mut parser = Parser {
        summary,
        path,
        line: 1,
        case: None,
        depth: 0,
        case_depth: 0,
        capture: None,
        cases_capped: false,
    };
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_event_into(&mut buf) {
            Ok(Event::Eof) => break,
            Ok(event) => {
                let newlines = event.matches('\n').count();
                parser.event(event);
                parser.line += newlines;
            }
            Err(e) => {
                let line = parser.line;
                warn(
                    parser.summary,
                    format!("{path}:{line}: not well-formed JUnit XML ({e}); the rest is ignored"),
                );
                break;
            }
        }
    }
    // A case still open was cut short: it is not counted.
}

/// Where the text of an element inside a case goes.
#[derive(Clone, Copy, PartialEq)]
enum Capture {
    /// The failure's (or error's) body.
    Body,
    /// `system-out` / `system-err`.
    Output,
}

struct Parser<'s> {
    summary: &'s mut TestSummary,
    path: &'s str,
    line: usize,
    case: Option<TestCase>,
    depth: usize,
    /// The depth of the open `testcase`: only its direct children say how it ended.
    case_depth: usize,
    capture: Option<(Capture, usize)>,
    /// Whether this file went past the cases kept (said once).
    cases_capped: bool,
}

impl Parser<'_> {
    fn event(&mut self, event: Event<'_>) {
        match event {
            Event::Start(e) => {
                self.depth += 1;
                self.open(&e, false);
            }
            Event::Empty(e) => {
                self.depth += 1;
                self.open(&e, true);
                self.close();
            }
            Event::End(_) => self.close(),
            Event::Text(t) => self.text(&t.xml10_content()),
            Event::CData(t) => self.text(&t),
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref() {
                    Ok(Some(c)) => c.to_string(),
                    _ => {
                        let name: &str = &r;
                        quick_xml::escape::resolve_predefined_entity(name)
                            .map_or_else(|| format!("&{name};"), str::to_owned)
                    }
                };
                self.text(&resolved);
            }
            _ => {}
        }
    }

    fn open(&mut self, e: &BytesStart<'_>, empty: bool) {
        let tag = e.local_name();
        if tag.as_ref() == "testcase" && self.case.is_none() {
            self.case = Some(TestCase {
                name: attribute(e, "name").unwrap_or_default(),
                class: attribute(e, "classname").unwrap_or_default(),
                status: TestStatus::Passed,
                duration_ms: attribute(e, "time")
                    .and_then(|t| t.trim().parse::<f64>().ok())
                    .filter(|t| t.is_finite() && *t >= 0.0)
                    .map_or(0, |t| (t * 1000.0).round() as u64),
                message: None,
                output: String::new(),
            });
            self.case_depth = self.depth;
            return;
        }
        if self.depth != self.case_depth + 1 {
            return;
        }
        let Some(case) = &mut self.case else {
            return;
        };
        let status = match tag.as_ref() {
            "failure" => Some(TestStatus::Failed),
            "error" => Some(TestStatus::Error),
            "skipped" => Some(TestStatus::Skipped),
            "system-out" | "system-err" => {
                if !empty {
                    self.capture = Some((Capture::Output, self.depth));
                }
                None
            }
            _ => None,
        };
        // The first verdict stands: a case both failed and skipped is a failure.
        if let Some(status) = status
            && case.status == TestStatus::Passed
        {
            case.status = status;
            case.message = attribute(e, "message").map(|m| capped(&m));
            if !empty && status != TestStatus::Skipped {
                self.capture = Some((Capture::Body, self.depth));
            }
        }
    }

    fn close(&mut self) {
        if self.capture.is_some_and(|(_, depth)| depth == self.depth) {
            self.capture = None;
        }
        if self.case.is_some() && self.depth == self.case_depth {
            self.finish_case();
        }
        self.depth = self.depth.saturating_sub(1);
    }

    fn text(&mut self, text: &str) {
        let (Some(case), Some(_)) = (&mut self.case, self.capture) else {
            return;
        };
        if matches!(case.status, TestStatus::Failed | TestStatus::Error) {
            push_capped(&mut case.output, text);
        }
    }

    fn finish_case(&mut self) {
        let Some(mut case) = self.case.take() else {
            return;
        };
        self.capture = None;
        let summary = &mut *self.summary;
        match case.status {
            TestStatus::Passed => summary.passed += 1,
            TestStatus::Failed => summary.failed += 1,
            TestStatus::Error => summary.errors += 1,
            TestStatus::Skipped => summary.skipped += 1,
        }
        summary.duration_ms = summary.duration_ms.saturating_add(case.duration_ms);
        if case.output.trim().is_empty() {
            case.output.clear();
        }
        if matches!(case.status, TestStatus::Failed | TestStatus::Error)
            && summary.failures.len() < MAX_FAILURES
        {
            summary.failures.push(case.clone());
        }
        if summary.cases.len() < MAX_CASES {
            summary.cases.push(case);
        } else if !self.cases_capped {
            self.cases_capped = true;
            let path = self.path;
            warn(
                summary,
                format!("{path}: more than {MAX_CASES} test cases; junit.xml keeps the first"),
            );
        }
    }
}

/// An attribute's value, entities resolved where they are XML's own (an unknown one stays
/// as written).
fn attribute(e: &BytesStart<'_>, name: &str) -> Option<String> {
    let attr = e
        .attributes()
        .flatten()
        .find(|a| a.key.local_name().as_ref() == name)?;
    Some(
        match attr.normalized_value(quick_xml::XmlVersion::Implicit1_0) {
            Ok(value) => value.into_owned(),
            Err(_) => attr.value.into_owned(),
        },
    )
}

fn capped(text: &str) -> String {
    let mut out = String::new();
    push_capped(&mut out, text);
    out
}

/// Appends to `out` up to [`MAX_TEXT`] bytes in all, on a character boundary.
fn push_capped(out: &mut String, text: &str) {
    let room = MAX_TEXT.saturating_sub(out.len());
    let mut end = text.len().min(room);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    out.push_str(&text[..end]);
}

/// Adds a warning, up to [`MAX_WARNINGS`].
pub fn warn(summary: &mut TestSummary, warning: String) {
    push_warning(&mut summary.warnings, warning);
}

/// Adds a warning to a list kept to [`MAX_WARNINGS`]: a million bad entries say so once.
pub fn push_warning(warnings: &mut Vec<String>, warning: String) {
    if warnings.len() < MAX_WARNINGS {
        warnings.push(warning);
    } else if warnings.len() == MAX_WARNINGS {
        warnings.push("more warnings left out".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(xml: &str) -> TestSummary {
        let mut summary = TestSummary::default();
        read_file(xml.as_bytes(), "r.xml", xml.len() as u64, &mut summary);
        summary
    }

    #[test]
    fn patterns_ask_for_the_directory_before_the_first_glob() {
        let p = Pattern::new("target/results/*.xml", "/src").unwrap();
        assert_eq!(p.base, "/src/target/results");
        assert!(p.matches("/src/target/results/a.xml") && !p.matches("/src/target/b.xml"));
        assert!(!p.picks("/src/target/results") && !p.picks("/src/target/results/b.txt"));
        let p = Pattern::new("dist/", "/work").unwrap();
        assert!(p.picks("/work/dist") && p.picks("/work/dist/bin/tool"));
        let p = Pattern::new("/out/report.xml", "/").unwrap();
        assert_eq!(
            (p.base.as_str(), p.archive_root()),
            ("/out/report.xml", "/out")
        );
        assert!(Pattern::new("../x.xml", "/").is_err());
        assert!(Pattern::new("a/[b.xml", "/").is_err());
    }

    #[test]
    fn only_a_cases_own_children_say_how_it_ended() {
        let s = read(
            r#"<testsuite><testcase name="a" time="1.5"><flakyFailure>x</flakyFailure></testcase>
            <testcase name="b" classname="k"><failure message="m &amp; n">body</failure>
            <system-out>out</system-out></testcase><testcase name="c"><skipped/></testcase>
            <testcase name="d"><error message="e"/></testcase></testsuite>"#,
        );
        assert_eq!((s.passed, s.failed, s.skipped, s.errors), (1, 1, 1, 1));
        assert_eq!(s.duration_ms, 1500);
        let b = &s.failures[0];
        assert_eq!((b.name.as_str(), b.class.as_str()), ("b", "k"));
        assert_eq!(b.message.as_deref(), Some("m & n"));
        assert_eq!(b.output, "bodyout");
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    }

    #[test]
    fn malformed_xml_is_a_warning_with_its_line_and_keeps_what_came_before() {
        let s = read("<testsuite>\n<testcase name=\"a\"/>\n\n<testcase name=\"b\"></wrong>\n");
        assert_eq!(s.passed, 1, "{s:?}");
        assert_eq!(s.warnings.len(), 1);
        assert!(
            s.warnings[0].starts_with("r.xml:4: not well-formed"),
            "{:?}",
            s.warnings
        );
    }

    #[test]
    fn entities_are_never_expanded() {
        let mut xml =
            String::from("<?xml version=\"1.0\"?>\n<!DOCTYPE bomb [\n<!ENTITY a \"aaaaaaaaaa\">\n");
        for i in 1..10 {
            let prev = if i == 1 {
                "a".to_owned()
            } else {
                format!("a{}", i - 1)
            };
            xml.push_str(&format!(
                "<!ENTITY a{i} \"{}\">\n",
                format!("&{prev};").repeat(10)
            ));
        }
        xml.push_str("]>\n<testsuite><testcase name=\"&a9;\"><failure message=\"&a9;\">&a9;</failure></testcase></testsuite>");
        let s = read(&xml);
        assert_eq!(s.failed, 1);
        assert_eq!(s.failures[0].name, "&a9;");
        assert_eq!(s.failures[0].output, "&a9;");
    }

    #[test]
    fn text_kept_per_failure_is_capped() {
        let body = "x".repeat(MAX_TEXT * 10);
        let s = read(&format!(
            "<testcase name=\"a\"><failure message=\"{body}\">{body}</failure></testcase>"
        ));
        assert_eq!(s.failures[0].output.len(), MAX_TEXT);
        assert_eq!(
            s.failures[0].message.as_ref().map(String::len),
            Some(MAX_TEXT)
        );
    }

    #[test]
    fn the_real_runners_samples_parse_to_their_counts() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/junit");
        // (passed, failed, skipped, errors), counted independently with Python's ElementTree.
        for (file, counts) in [
            ("pytest.xml", (2, 1, 1, 1)),
            ("cargo-nextest.xml", (2, 1, 0, 0)),
            ("surefire.xml", (0, 2, 0, 0)),
            ("gotestsum.xml", (42, 13, 5, 0)),
            ("jest.xml", (1, 0, 0, 0)),
        ] {
            let xml = std::fs::read_to_string(dir.join(file)).unwrap();
            let s = read(&xml);
            assert_eq!((s.passed, s.failed, s.skipped, s.errors), counts, "{file}");
            assert!(s.warnings.is_empty(), "{file}: {:?}", s.warnings);
        }
    }
}
