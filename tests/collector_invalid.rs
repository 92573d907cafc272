//! Every file under tests/fixtures/invalid is a broken config whose `# expect:` lines say
//! which problems the collector must report: `[FILE:]LINE:COLUMN message-substring`. The
//! test fails on a missing problem and on any problem not expected, so messages, positions
//! and the "report everything at once" rule are all pinned.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use dockhand::collector::{CollectOptions, Severity, collect};

struct Expected {
    file: Option<String>,
    line: u32,
    column: u32,
    message: String,
}

fn expectations(config: &Path) -> Vec<Expected> {
    let text = std::fs::read_to_string(config).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("# expect: "))
        .map(|spec| {
            let (position, message) = spec.split_once(' ').expect("`# expect: LINE:COL message`");
            let parts: Vec<&str> = position.split(':').collect();
            let (file, line, column) = match parts.as_slice() {
                [line, column] => (None, line, column),
                [file, line, column] => (Some((*file).to_owned()), line, column),
                _ => panic!("bad expectation {spec}"),
            };
            Expected {
                file,
                line: line.parse().unwrap(),
                column: column.parse().unwrap(),
                message: message.to_owned(),
            }
        })
        .collect()
}

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/invalid");
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| if p.is_dir() { p.join("config.yml") } else { p })
        .collect();
    out.sort();
    out
}

#[test]
fn every_invalid_fixture_reports_exactly_its_expected_problems() {
    let fixtures = fixtures();
    assert!(
        fixtures.len() >= 30,
        "the corpus has {} invalid configs",
        fixtures.len()
    );
    let mut failures = Vec::new();
    for config in &fixtures {
        let expected = expectations(config);
        assert!(
            !expected.is_empty(),
            "{} has no `# expect:` line",
            config.display()
        );
        let options = CollectOptions {
            config: config.clone(),
            env: HashMap::from([("HOME".to_owned(), "/home/test".to_owned())]),
            workspace: config.parent().map(Path::to_path_buf),
            ..CollectOptions::default()
        };
        let diagnostics = match collect(&options) {
            Ok(_) => {
                failures.push(format!("{}: collected without errors", config.display()));
                continue;
            }
            Err(d) => d,
        };
        let errors: Vec<_> = diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .collect();
        let dir = config.parent().unwrap();
        for want in &expected {
            let file = dir.join(
                want.file
                    .as_deref()
                    .unwrap_or_else(|| config.file_name().unwrap().to_str().unwrap()),
            );
            let found = errors.iter().any(|d| {
                *d.location.file == *file
                    && d.location.line == want.line
                    && d.location.column == want.column
                    && d.message().contains(&want.message)
            });
            if !found {
                failures.push(format!(
                    "{}: expected {}:{} {:?}\n  got:\n{}",
                    config.display(),
                    want.line,
                    want.column,
                    want.message,
                    diagnostics.render()
                ));
            }
        }
        if errors.len() != expected.len() {
            failures.push(format!(
                "{}: expected {} error(s), got {}:\n{}",
                config.display(),
                expected.len(),
                errors.len(),
                diagnostics.render()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failure(s):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// A problem inside a task's options is reported at the options' own key path, nested keys
/// included, though it is found once they are merged into the image (issue 12 item 8).
#[test]
fn task_option_problems_are_reported_at_the_options_path() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/invalid/harpoon-refused-options.yml");
    let options = CollectOptions {
        config: config.clone(),
        workspace: config.parent().map(Path::to_path_buf),
        ..CollectOptions::default()
    };
    let diagnostics = collect(&options).expect_err("the fixture is invalid");
    let paths: Vec<String> = diagnostics
        .iter()
        .filter(|d| d.location.line >= 53)
        .map(|d| d.key_path.to_string())
        .collect();
    assert_eq!(
        paths,
        [
            "images.app.tasks.opts.options.privileged",
            "images.app.tasks.opts.options.cpu.cap_add",
            "images.ctx.context.ignore_find_errors",
        ],
        "{}",
        diagnostics.render()
    );
}
