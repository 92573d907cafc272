//! Snapshot tests over tests/fixtures/valid: each config's resolved form (every image's
//! Dockerfile, generated files, contexts, run options), each task's view of its image and
//! the default plan. Paths under the fixture directory are redacted to `[root]`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use dockhand::collector::{CollectOptions, collect};
use dockhand::plan::{Plan, Request};
use serde_json::json;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/valid")
        .join(name)
}

fn options(dir: &Path) -> CollectOptions {
    CollectOptions {
        config: dir.join("config.yml"),
        home_config: Some(dir.join("home/.harpoonrc.yml")),
        cli_args: vec!["--fast".into(), "-v".into()],
        env: HashMap::from([("HOME".to_owned(), "/home/ci".to_owned())]),
        workspace: Some(dir.to_path_buf()),
    }
}

/// The snapshot text for one fixture.
fn resolved(name: &str) -> String {
    resolved_in(&fixture(name), name)
}

fn resolved_in(dir: &Path, name: &str) -> String {
    let collected =
        collect(&options(dir)).unwrap_or_else(|d| panic!("{name} should be valid:\n{d}"));
    assert!(
        collected.warnings.is_empty(),
        "{name} has warnings:\n{}",
        collected.warnings
    );
    let config = &collected.config;
    let tasks: Vec<_> = config
        .tasks
        .values()
        .map(|t| json!({ "task": t, "image": t.image() }))
        .collect();
    let plan = |request| match Plan::new(config, &request) {
        Ok(plan) => json!(plan),
        Err(e) => json!({ "error": e.to_string() }),
    };
    let all_tasks: Vec<String> = config.tasks.keys().cloned().collect();
    let report = json!({
        "config": config,
        "tasks": tasks,
        "plan_default": plan(Request::Default),
        "plan_all_tasks": plan(Request::Tasks(all_tasks)),
        "plan_build_all": plan(Request::Images(Vec::new())),
    });
    let text = serde_json::to_string_pretty(&report).unwrap();
    text.replace(dir.to_str().unwrap(), "[root]")
}

#[test]
fn single_image_shape() {
    insta::assert_snapshot!(resolved("single"));
}

#[test]
fn harpoon_shape_with_every_form() {
    insta::assert_snapshot!(resolved("harpoon"));
}

/// A checkout elsewhere resolves to the same text: nothing that reaches a Dockerfile (and
/// with it a build key) may depend on where the repository lives.
#[test]
fn resolution_does_not_depend_on_the_checkout_path() {
    let copy = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", fixture("harpoon").display()))
        .arg(copy.path())
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(resolved_in(copy.path(), "harpoon"), resolved("harpoon"));
}

#[test]
fn yaml_anchors_and_merge_keys() {
    insta::assert_snapshot!(resolved("yaml-features"));
}

/// The Dockerfiles on their own, so a change to rendering shows as a readable diff.
#[test]
fn harpoon_dockerfiles() {
    let dir = fixture("harpoon");
    let config = collect(&options(&dir)).unwrap().config;
    let mut text = String::new();
    for image in config.images.values() {
        text.push_str(&format!(
            "## {} ({})\n{}\n",
            image.name, image.full_name, image.build.dockerfile
        ));
        for file in &image.build.generated_files {
            text.push_str(&format!(
                "### {} (mode {:o})\n{}\n",
                file.name, file.mode, file.contents
            ));
        }
    }
    let release = config.tasks["release"].image().build.dockerfile.clone();
    text.push_str(&format!("## app as task `release` sees it\n{release}"));
    insta::assert_snapshot!(text.replace(dir.to_str().unwrap(), "[root]"));
}

#[test]
fn harpoon_forms_single_values_port_lists_and_network_mode() {
    insta::assert_snapshot!(resolved("harpoon-forms"));
}
