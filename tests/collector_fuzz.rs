//! Property tests: whatever YAML arrives, the collector returns a config or diagnostics and
//! never panics. `PROPTEST_CASES` sets the number of cases (the test script raises it).

use std::collections::HashMap;

use dockhand::collector::{CollectOptions, collect};
use proptest::prelude::*;
use serde_json::{Map, Value};

fn collect_text(text: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yml");
    std::fs::write(&config, text).unwrap();
    let options = CollectOptions {
        config,
        env: HashMap::from([("HOME".to_owned(), "/root".to_owned())]),
        ..CollectOptions::default()
    };
    if let Err(diagnostics) = collect(&options) {
        assert!(
            diagnostics.has_errors(),
            "Err without an error for:\n{text}"
        );
        let _ = diagnostics.render();
    }
}

/// Keys and values the collector gives meaning to, so random trees reach deep code paths.
const KEYS: &[&str] = &[
    "images",
    "commands",
    "tasks",
    "context",
    "parent_dir",
    "include",
    "env",
    "ports",
    "volumes",
    "mount",
    "share_with",
    "links",
    "wait_condition",
    "port_open",
    "dependency_options",
    "command",
    "bash",
    "shell",
    "tag",
    "name",
    "image_index",
    "pipeline",
    "task",
    "needs",
    "secrets",
    "harpoon",
    "extra_files",
    "__images_from__",
    "options",
    "overrides",
    "action",
    "dest",
    "content",
    "formatted",
    "get",
    "prefix",
    "from",
    "path",
    "to",
    "image",
    "a",
    "b",
    "<<",
    "timeout",
    "cpu",
    "network",
];
const STRINGS: &[&str] = &[
    "FROM busybox:local",
    "FROM",
    "RUN",
    "ADD",
    "COPY",
    "ENV",
    "{images.a}",
    "{images.b}",
    "{a}",
    "{b.c}",
    "{$@}",
    "{config_root}",
    "{X:env}",
    "{X:from_env}",
    "{{",
    "}}",
    "{",
    "}",
    "a",
    "b",
    "run",
    "make",
    "8080:80",
    "1:2:3:4",
    "./x:/y:ro",
    "A=1",
    "A:1",
    "9",
    "",
    "-",
    ".",
    "..",
    "/etc/passwd",
    "as x",
];

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(STRINGS).prop_map(|s| Value::String(s.to_owned())),
        any::<i32>().prop_map(Value::from),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
    ]
}

fn tree() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..6).prop_map(|entries| {
                let map: Map<String, Value> = entries
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect();
                Value::Object(map)
            }),
        ]
    })
}

proptest! {
    /// JSON is YAML: random trees over the config vocabulary.
    #[test]
    fn random_config_trees_never_panic(root in tree()) {
        collect_text(&serde_json::to_string_pretty(&root).unwrap());
    }

    /// A valid skeleton with random subtrees spliced in, to get past the early checks.
    #[test]
    fn random_image_options_never_panic(options in tree(), task in tree(), pipeline in tree()) {
        let root = serde_json::json!({
            "images": {
                "a": { "commands": ["FROM busybox:local"], "x": options, "tasks": { "t": task } },
                "b": { "commands": [["FROM", "{images.a}"]], "links": ["{images.a}"] },
            },
            "pipeline": pipeline,
        });
        let text = serde_json::to_string(&root).unwrap().replace("\"x\":", "\"env\":");
        collect_text(&text);
    }

    /// Arbitrary text over YAML's punctuation.
    #[test]
    fn arbitrary_yaml_text_never_panics(text in "[a-z0-9{}\\[\\]:,\\-\"' \n&*<>!|#%.?@`~]{0,200}") {
        collect_text(&text);
    }
}
