//! Snapshot tests over tests/fixtures/valid: each config's resolved form (every image's
//! Dockerfile, generated files, contexts, run options), each task's view of its image and
//! the default plan. Paths under the fixture directory are redacted to `[root]`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use dockhand::collector::{CollectOptions, Severity, collect};
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
        .map(|t| json!({ "task": t, "image": t.image().unwrap() }))
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
    let release = config.tasks["release"]
        .image()
        .unwrap()
        .build
        .dockerfile
        .clone();
    text.push_str(&format!("## app as task `release` sees it\n{release}"));
    insta::assert_snapshot!(text.replace(dir.to_str().unwrap(), "[root]"));
}

#[test]
fn harpoon_forms_single_values_port_lists_and_network_mode() {
    insta::assert_snapshot!(resolved("harpoon-forms"));
}

/// `{VAR:from_env}` is needed only where used (issue 12 item 6): with the value unset, the
/// images needing it are left out with notes, and only a plan that builds or runs one of
/// them fails, naming where the value is used.
#[test]
fn unset_environment_values_fail_only_the_jobs_that_use_them() {
    let dir = fixture("from-env-where-used");
    let collected = collect(&options(&dir)).unwrap_or_else(|d| panic!("should collect:\n{d}"));
    let notes: Vec<String> = collected
        .warnings
        .iter()
        .map(|d| {
            assert_eq!(d.severity, Severity::Note, "{}", collected.warnings);
            format!("{}:{} {}", d.location.line, d.location.column, d.key_path)
        })
        .collect();
    assert_eq!(
        notes,
        [
            "10:16 images.other.commands[0][1]",
            "14:10 images.tagged.tag",
            "17:23 images.child.commands[0][1]",
            "29:17 images.plain.tasks.with-env.options.env[0]",
        ],
        "{}",
        collected.warnings
    );
    let config = &collected.config;
    let unresolved: Vec<&String> = config.unresolved.keys().collect();
    assert_eq!(unresolved, ["other", "tagged", "child"]);
    assert!(config.tasks.contains_key("other-test"));

    let plan = |request| {
        Plan::new(config, &request).map(|p| p.images().map(String::from).collect::<Vec<_>>())
    };
    let tasks = |names: &[&str]| Request::Tasks(names.iter().map(|n| n.to_string()).collect());
    let images = |names: &[&str]| Request::Images(names.iter().map(|n| n.to_string()).collect());
    assert_eq!(plan(tasks(&["test"])).unwrap(), ["app"]);
    assert_eq!(plan(images(&["app", "plain"])).unwrap(), ["app", "plain"]);
    assert_eq!(plan(tasks(&["plain"])).unwrap(), ["plain"]);

    let at =
        |line: u32, column: u32| format!("{}:{line}:{column}", dir.join("config.yml").display());
    let failures = [
        (images(&["other"]), "image `other` is needed", at(10, 16)),
        (
            tasks(&["other-test"]),
            "image `other` is needed by task `other-test`",
            at(10, 16),
        ),
        (
            tasks(&["web"]),
            "image `tagged` is needed by task `web`",
            at(14, 10),
        ),
        (images(&["child"]), "image `child` is needed", at(14, 10)),
        (
            tasks(&["with-env"]),
            "image `plain` is needed by task `with-env`",
            at(29, 17),
        ),
        (Request::Default, "image `other` is needed", at(10, 16)),
    ];
    for (request, message, location) in failures {
        let error = plan(request.clone())
            .expect_err(&format!("{request:?} should fail"))
            .to_string();
        assert!(error.contains(message), "{request:?}: {error}");
        assert!(
            error.contains(&location)
                && error.contains("`DOCKHAND_TEST_VERSION` in the environment"),
            "{request:?} should say where the value is used ({location}): {error}"
        );
    }

    let mut set = options(&dir);
    set.env.insert("DOCKHAND_TEST_VERSION".into(), "1.2".into());
    let collected = collect(&set).unwrap();
    assert!(collected.warnings.is_empty(), "{}", collected.warnings);
    let config = &collected.config;
    assert!(config.unresolved.is_empty());
    assert_eq!(
        config.images["other"].build.dockerfile,
        "FROM example/app:1.2\n"
    );
    assert_eq!(config.images["child"].build.dockerfile, "FROM tagged:1.2\n");
    assert!(Plan::new(config, &Request::Default).is_ok());
}

fn dockhand(dir: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_dockhand"))
        .args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .env_remove("HARPOON_CONFIG")
        .env_remove("DOCKHAND_TEST_VERSION")
        .output()
        .unwrap()
}

/// The commands on a config where one image needs an unset value: `check` passes with
/// notes, the Dockerfile of an unrelated image prints, and only commands using the image
/// fail, as config errors (200) saying where the value is used.
#[test]
fn commands_need_environment_values_only_for_what_they_use() {
    let dir = fixture("from-env-where-used");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();

    let out = dockhand(&dir, &["check"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("note: `{DOCKHAND_TEST_VERSION:from_env}` needs"),
        "{stderr}"
    );
    assert!(!stderr.contains("error"), "{stderr}");
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("3 image(s) (+3 needing unset environment values, see the notes)"),
        "{stdout}"
    );

    let out = dockhand(&dir, &["dockerfile", "app"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "FROM busybox:local\n");

    let at = format!("{}:10:16", dir.join("config.yml").display());
    for args in [&["dockerfile", "other"][..], &["run", "other-test"]] {
        let out = dockhand(&dir, args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(200), "{args:?}: {stderr}");
        assert!(
            stderr.contains("image `other`") && stderr.contains(&at),
            "{args:?}: {stderr}"
        );
    }
}

/// The summary names the main config, not the last file it pulled in (issue 12 item 8).
#[test]
fn check_summary_names_the_main_config() {
    let dir = fixture("harpoon-forms");
    let out = dockhand(&dir, &["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    let main = dir.join("config.yml");
    assert!(
        stdout.starts_with(&format!("ok: {} (+1 more file(s))", main.display())),
        "{stdout}"
    );
}

#[test]
fn harpoon_options_beyond_dockhands_own() {
    insta::assert_snapshot!(resolved("harpoon-options"));
}
