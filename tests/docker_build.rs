//! Build stages against the real engine: every command form, dependency order and
//! parallelism, failing steps, contexts (.dockerignore, escapes, symlinks).

mod support;

use support::{Project, in_image};

#[test]
fn every_command_form_builds_and_puts_the_right_files_in_place() {
    let project = Project::new(
        r#"
image_name_prefix: t-forms
version: "2.5"
images:
  base:
    context: false
    commands:
      - FROM dockhand/busybox:local
      - [RUN, "echo base-{version} > /base.txt"]
  app:
    context:
      parent_dir: src
    commands:
      - [FROM, "{images.base}", "as first"]
      - "RUN echo verbatim {not-formatted} > /verbatim.txt"
      - [ENV, [ONE=1, "TWO={version}"]]
      - [ADD, {dest: /etc/content.txt, content: "literal {version}\n"}]
      - [ADD, {dest: /etc/formatted.txt, formatted: "v={version} base={images.base}\n"}]
      - [COPY, {dest: /from-image.txt, content: {image: "{images.base}", path: /base.txt}}]
      - [ADD, {dest: /vendor, context: {parent_dir: vendor}}]
      - [ADD, {prefix: /app, get: [a.sh, b.sh]}]
      - [COPY, {from: "{images.base}", path: /base.txt, to: /copied.txt}]
      - [RUN, "echo $ONE-$TWO > /env.txt"]
"#,
    );
    project.write("src/a.sh", "echo a\n");
    project.write("src/b.sh", "echo b\n");
    project.write("vendor/lib/x.txt", "vendored\n");
    let run = project.run(&["build", "app"]);
    assert_eq!(run.code, Some(0), "{run}");
    let image = "t-forms-app:latest";
    let cat = |path: &str| in_image(image, &["cat", path]);
    assert_eq!(cat("/verbatim.txt"), "verbatim {not-formatted}\n");
    assert_eq!(cat("/etc/content.txt"), "literal {version}\n");
    assert_eq!(
        cat("/etc/formatted.txt"),
        "v=2.5 base=t-forms-base:latest\n"
    );
    assert_eq!(cat("/from-image.txt"), "base-2.5\n");
    assert_eq!(cat("/copied.txt"), "base-2.5\n");
    assert_eq!(cat("/vendor/lib/x.txt"), "vendored\n");
    assert_eq!(cat("/app/a.sh"), "echo a\n");
    assert_eq!(cat("/app/b.sh"), "echo b\n");
    assert_eq!(cat("/env.txt"), "1-2.5\n");
    assert_eq!(
        in_image(image, &["stat", "-c", "%a %u", "/etc/content.txt"]),
        "644 0\n"
    );
    assert!(
        run.stage("build", "app")["image_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("sha256:"))
    );
}

#[test]
fn dependencies_build_first_and_independent_images_in_parallel() {
    let project = Project::new(
        r#"
image_name_prefix: t-order
context: false
images:
  base:
    commands: [FROM dockhand/busybox:local, "RUN sleep 1"]
  left:
    commands: [[FROM, "{images.base}"], "RUN sleep 2 && echo left > /side"]
  right:
    commands: [[FROM, "{images.base}"], "RUN sleep 2 && echo right > /side"]
"#,
    );
    let run = project.run(&["build", "--no-cache", "--json", "-j", "2"]);
    assert_eq!(run.code, Some(0), "{run}");
    let events: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let position = |kind: &str, stage: u64| {
        events
            .iter()
            .position(|e| e["type"] == kind && e["stage"] == stage)
            .unwrap()
    };
    let (base, left, right) = (1, 2, 3);
    assert!(position("stage_finished", base) < position("stage_started", left));
    assert!(position("stage_finished", base) < position("stage_started", right));
    assert!(
        position("stage_started", right) < position("stage_finished", left),
        "left and right did not overlap"
    );
    assert!(
        position("stage_started", left) < position("stage_finished", right),
        "left and right did not overlap"
    );
}

#[test]
fn a_failing_run_step_fails_its_build_with_the_step_and_the_output() {
    let project = Project::new(
        r#"
image_name_prefix: t-failrun
context: false
images:
  base:
    commands:
      - FROM dockhand/busybox:local
      - [RUN, "echo about to fail; echo details >&2; exit 7"]
  child:
    commands: [[FROM, "{images.base}"]]
"#,
    );
    let run = project.run(&["build"]);
    assert_eq!(run.code, Some(201), "{run}");
    let base = run.stage("build", "base");
    assert_eq!(base["status"], "failed");
    let message = base["message"].as_str().unwrap();
    assert!(message.contains("returned a non-zero code: 7"), "{message}");
    assert!(message.contains("Step 2/"), "{message}");
    let tail = base["output_tail"].as_array().unwrap();
    assert!(tail.iter().any(|l| l == "about to fail"), "{tail:?}");
    assert_eq!(run.stage("build", "child")["status"], "skipped");
    assert_eq!(
        (run.stdout.lines())
            .filter(|l| l.ends_with("about to fail"))
            .count(),
        1,
        "the console shows the output once (the engine may colour it): {run}"
    );
}

#[test]
fn a_missing_base_image_is_a_clear_failure_not_a_pull() {
    let project =
        Project::new("tag: t-nobase\ncontext: false\ncommands: [FROM dockhand/never-made:1]\n");
    let run = project.run(&["build"]);
    assert_eq!(run.code, Some(201), "{run}");
    let message = run.stage("build", "t-nobase")["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("`dockhand/never-made:1` is not in the engine, and dockhand never pulls"),
        "{message}"
    );
}

#[test]
fn dockerignore_and_context_globs_decide_what_arrives() {
    let project = Project::new(
        r#"
tag: t-context
context:
  exclude: ["*.log"]
commands:
  - FROM dockhand/busybox:local
  - COPY . /ctx
"#,
    );
    for file in [
        "keep.txt",
        "app.log",
        "docs/a.md",
        "docs/keep.md",
        "node_modules/x/index.js",
        "src/main.rs",
        "src/deep/tmp.bak",
        "secret.env",
    ] {
        project.write(file, file);
    }
    project.write(
        ".dockerignore",
        "# docs except one\ndocs\n!docs/keep.md\nnode_modules\n**/*.bak\n/secret.env\n",
    );
    let run = project.run(&["build"]);
    assert_eq!(run.code, Some(0), "{run}");
    let listed = in_image("t-context:latest", &["find", "/ctx", "-type", "f"]);
    let mut arrived: Vec<&str> = listed
        .lines()
        .map(|l| l.trim_start_matches("/ctx/"))
        .collect();
    arrived.sort_unstable();
    let expected = [
        ".dockerignore",
        "__dockhand_Dockerfile",
        "config.yml",
        "docs/keep.md",
        "keep.txt",
        "src/main.rs",
    ];
    assert_eq!(
        arrived, expected,
        "the results in .dockhand/ must not be sent either"
    );
}

#[test]
fn symlinks_are_stored_as_links_and_contexts_cannot_leave_the_workspace() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "do not send").unwrap();
    let project = Project::new(
        r#"
tag: t-links
commands:
  - FROM dockhand/busybox:local
  - COPY . /ctx
"#,
    );
    std::os::unix::fs::symlink(outside.path().join("secret"), project.path().join("link")).unwrap();
    // The classic builder's cache ignores a symlink's target, so an earlier run's image
    // would be reused: build afresh.
    let run = project.run(&["build", "--no-cache"]);
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(
        in_image("t-links:latest", &["readlink", "/ctx/link"]).trim(),
        outside.path().join("secret").to_str().unwrap()
    );
    assert_eq!(
        in_image("t-links:latest", &["cat", "/ctx/link"]),
        "",
        "the link's target must not be in the image"
    );

    let escape = Project::new(&format!(
        "tag: t-escape\ncontext: {{parent_dir: {}}}\ncommands: [FROM dockhand/busybox:local]\n",
        outside.path().display()
    ));
    // Refused while the config is read, located where the directory is named.
    let run = escape.run(&["build"]);
    assert_eq!(run.code, Some(200), "{run}");
    assert!(
        run.stderr.contains("is outside") && run.stderr.contains("config.yml:2:23"),
        "{run}"
    );

    let dotdot = Project::new(
        "tag: t-dotdot\ncontext: {parent_dir: ..}\ncommands: [FROM dockhand/busybox:local]\n",
    );
    let run = dotdot.run(&["build"]);
    assert_eq!(run.code, Some(200), "{run}");
    assert!(run.stderr.contains("is outside"), "{run}");
}

#[test]
fn use_gitignore_leaves_out_ignored_files_unless_included() {
    let project = Project::new(
        r#"
tag: t-gitignore
context:
  use_gitignore: true
  include: ["build/keep.txt"]
commands:
  - FROM dockhand/busybox:local
  - COPY . /ctx
"#,
    );
    project.write(".gitignore", "build/\n*.tmp\n");
    for file in [
        "src/app.txt",
        "build/out.bin",
        "build/keep.txt",
        "scratch.tmp",
    ] {
        project.write(file, file);
    }
    let run = project.run(&["build", "--no-cache"]);
    assert_eq!(run.code, Some(0), "{run}");
    let listed = in_image("t-gitignore:latest", &["find", "/ctx", "-type", "f"]);
    let mut arrived: Vec<&str> = listed
        .lines()
        .map(|l| l.trim_start_matches("/ctx/"))
        .collect();
    arrived.sort_unstable();
    assert_eq!(
        arrived,
        [
            ".gitignore",
            "__dockhand_Dockerfile",
            "build/keep.txt",
            "config.yml",
            "src/app.txt"
        ]
    );
}

#[test]
fn a_packed_directory_arrives_exactly_as_a_copied_one() {
    // `packed` has COPY lines dockhand sends as one archive each; `copied` says the same in
    // the JSON form, which it leaves alone. Both must put the same files in place.
    let steps = |copy_new: &str, copy_existing: &str| {
        format!(
            r#"
    context: {{exclude: [config.yml]}}
    commands:
      - FROM dockhand/busybox:local
      - RUN mkdir -p /existing && chown 1000:1000 /existing && chmod 750 /existing
      - '{copy_new}'
      - '{copy_existing}'"#
        )
    };
    // The whole context: `whole`'s .dockerignore makes the engine drop the Dockerfile,
    // `bare` has none.
    let whole = |copy: &str| {
        format!(
            r#"
    context: {{parent_dir: whole}}
    commands:
      - FROM dockhand/busybox:local
      - '{copy}'"#
        )
    };
    let project = Project::new(&format!(
        "image_name_prefix: t-pack\nimages:\n  packed:{}\n  copied:{}\n  packed-root:{}\n  copied-root:{}\n  packed-bare:{}\n",
        steps("COPY tree /new", "COPY tree2/ /existing"),
        steps(
            r#"COPY ["tree", "/new"]"#,
            r#"COPY ["tree2/", "/existing"]"#
        ),
        whole("COPY . /new"),
        whole(r#"COPY [".", "/new"]"#),
        whole("COPY . /new").replace("parent_dir: whole", "parent_dir: bare"),
    ));
    project.write("bare/c.txt", "c\n");
    project.write("whole/a.txt", "a\n");
    project.write("whole/x.log", "left out\n");
    project.write("whole/sub/b.txt", "b\n");
    project.write("whole/.dockerignore", "*.log\n__dockhand_Dockerfile\n");
    let long = format!("{}/{}.txt", "d".repeat(60), "n".repeat(80));
    for (path, body) in [
        ("tree/a.txt", "a\n"),
        ("tree/run.sh", "#!/bin/sh\n"),
        ("tree/private/key", "k\n"),
        ("tree/with space/ünï.txt", "u\n"),
        (&format!("tree/{long}"), "long\n"),
        ("tree2/b.txt", "b\n"),
        ("tree2/sub/c.txt", "c\n"),
    ] {
        project.write(path, body);
    }
    let root = project.path();
    let chmod = |path: &str, mode: u32| {
        std::fs::set_permissions(
            root.join(path),
            std::os::unix::fs::PermissionsExt::from_mode(mode),
        )
        .unwrap();
    };
    chmod("tree/run.sh", 0o755);
    chmod("tree/private/key", 0o600);
    chmod("tree/private", 0o700);
    chmod("tree2/sub", 0o775);
    std::fs::create_dir(root.join("tree/empty")).unwrap();
    std::os::unix::fs::symlink("../a.txt", root.join("tree/private/link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("tree2/abs")).unwrap();

    let shown = project.run(&["dockerfile", "packed"]);
    assert!(
        shown
            .stdout
            .contains("ADD __dockhand_pack_0.tar /new\nADD __dockhand_pack_1.tar /existing\n"),
        "`dockhand dockerfile` must show what is sent:\n{shown}"
    );

    let run = project.run(&["build"]);
    assert_eq!(run.code, Some(0), "{run}");
    let notes = |image: &str| run.stage("build", image)["message"].to_string() + &run.log();
    assert!(
        notes("packed").contains("packed in archives"),
        "nothing was packed:\n{run}"
    );

    let listing = |image: &str| {
        in_image(
            &format!("t-pack-{image}:latest"),
            &[
                "sh",
                "-c",
                "stat -c '%n %a %u %g %F' /new /existing; cd / && \
                 find new existing -mindepth 1 -exec stat -c '%n %a %u %g %s %Y %F' {} + | sort; \
                 find new existing -type l -exec readlink {} + | sort; \
                 find new existing -type f -exec md5sum {} + | sort",
            ],
        )
    };
    let packed = listing("packed");
    assert!(
        packed.contains(&long) && packed.contains("ünï.txt"),
        "{packed}"
    );
    assert_eq!(packed, listing("copied"));

    let shown = project.run(&["dockerfile", "packed-root"]);
    assert!(
        shown.stdout.contains("ADD __dockhand_pack_0.tar /new\n"),
        "{shown}"
    );
    let root = in_image("t-pack-packed-root:latest", &["find", "/new"]);
    assert!(
        root.contains("/new/sub/b.txt") && !root.contains("x.log") && !root.contains("__dockhand"),
        "{root}"
    );
    let listing = |image: &str| {
        in_image(
            &format!("t-pack-{image}:latest"),
            &[
                "sh",
                "-c",
                "cd / && find new -mindepth 1 -exec stat -c '%n %a %u %g %s %Y %F' {} + | sort",
            ],
        )
    };
    assert_eq!(listing("packed-root"), listing("copied-root"));
    // Without a .dockerignore naming it, `COPY .` copies the Dockerfile as generated.
    assert!(
        in_image(
            "t-pack-packed-bare:latest",
            &["cat", "/new/__dockhand_Dockerfile"]
        )
        .contains("COPY . /new\n")
    );
}
