//! A task's artifacts against the real engine: copied out of the finished container
//! through the archive API into `<results>/<job>/artifacts/<task>/` with their content and
//! modes, a link to `/etc/shadow` kept as a link, `when`, `required` and the caps.

mod support;

use std::os::unix::fs::PermissionsExt;

use support::Project;

#[test]
fn artifacts_arrive_with_their_content_and_modes_and_links_stay_links() {
    let project = Project::new(
        r#"
tag: t-artifacts-build
context: false
commands: [FROM dockhand/busybox:local, "WORKDIR /work"]
bash: |
  mkdir -p dist/bin coverage
  printf '#!/bin/sh\necho hi\n' > dist/bin/tool && chmod 750 dist/bin/tool
  printf 'read me' > dist/notes.txt && chmod 604 dist/notes.txt
  ln -s /etc/shadow dist/shadow
  echo '<coverage/>' > coverage/a.xml
  echo 'not picked' > coverage/b.txt
artifacts:
  paths: ["dist/", "coverage/*.xml", "missing/"]
"#,
    );
    let run = project.run(&["run"]);
    assert_eq!(run.code, Some(0), "{run}");
    let dir = run
        .results
        .as_ref()
        .unwrap()
        .join("artifacts/t-artifacts-build");
    let tool = dir.join("dist/bin/tool");
    assert_eq!(
        std::fs::read_to_string(&tool).unwrap(),
        "#!/bin/sh\necho hi\n"
    );
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&tool), 0o750);
    assert_eq!(mode(&dir.join("dist/notes.txt")), 0o604);
    assert_eq!(
        std::fs::read_link(dir.join("dist/shadow")).unwrap(),
        std::path::Path::new("/etc/shadow")
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("coverage/a.xml")).unwrap(),
        "<coverage/>\n"
    );
    assert!(!dir.join("coverage/b.txt").exists());

    let stage = run.stage("run", "t-artifacts-build");
    let artifacts = &stage["artifacts"];
    assert_eq!(artifacts["files"], 4, "{artifacts:#}");
    assert_eq!(artifacts["bytes"], 18 + 7 + 12, "{artifacts:#}");
    assert_eq!(
        artifacts["warnings"],
        serde_json::json!(["missing/: nothing matched"]),
        "{artifacts:#}"
    );
    assert!(
        run.stdout
            .contains("artifacts: 4 files, 37 bytes in artifacts/t-artifacts-build"),
        "{run}"
    );
}

#[test]
fn caps_required_paths_and_when_are_kept() {
    let project = Project::new(
        r#"
image_name_prefix: t-artifacts
context: false
images:
  many:
    commands: [FROM dockhand/busybox:local]
    bash: "mkdir /out && for i in 1 2 3 4 5; do echo $i > /out/f$i; done"
    artifacts: {paths: [/out], max_files: 3}
    tasks: {many: }
  big:
    commands: [FROM dockhand/busybox:local]
    bash: "mkdir /out && head -c 3000000 /dev/zero > /out/big"
    artifacts: {paths: [/out], max_size: 1m}
    tasks: {big: }
  needed:
    commands: [FROM dockhand/busybox:local]
    bash: "true"
    artifacts: {paths: [/out/report.txt], required: true}
    tasks: {needed: }
  onfail:
    commands: [FROM dockhand/busybox:local]
    bash: "mkdir /out && echo x > /out/x"
    artifacts: {paths: [/out], when: on_failure}
    tasks: {onfail: }
pipeline: [many, big, needed, onfail]
"#,
    );
    let run = project.run(&["run"]);
    assert_eq!(run.code, Some(1), "{run}");
    let results = run.results.clone().unwrap();

    let many = run.stage("run", "many");
    assert_eq!(many["status"], "passed", "{many:#}");
    assert_eq!(many["artifacts"]["files"], 3);
    assert_eq!(many["artifacts"]["capped"], true);
    assert!(
        many["artifacts"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("more than max_files (3) artifacts"),
        "{many:#}"
    );

    let big = run.stage("run", "big");
    assert_eq!(big["artifacts"]["files"], 0, "{big:#}");
    assert!(
        big["artifacts"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("over max_size (1048576 bytes)"),
        "{big:#}"
    );
    assert!(!results.join("artifacts/big/out/big").exists());

    let needed = run.stage("run", "needed");
    assert_eq!(needed["status"], "failed", "{needed:#}");
    assert_eq!(
        needed["message"],
        "required artifacts missing: /out/report.txt"
    );

    let onfail = run.stage("run", "onfail");
    assert_eq!(onfail["status"], "passed");
    assert!(onfail.get("artifacts").is_none(), "{onfail:#}");
    assert!(!results.join("artifacts/onfail").exists());
}

#[test]
fn artifact_settings_are_checked_where_they_are_written() {
    let project = Project::new(
        r#"
tag: t-artifacts-bad
context: false
commands: [FROM dockhand/busybox:local]
artifacts: {when: sometimes, max_size: lots, keep: true}
"#,
    );
    let run = project.run(&["run"]);
    assert_eq!(run.code, Some(200), "{run}");
    for expected in [
        "artifacts.when",
        "always, on_success or on_failure",
        "artifacts.max_size",
        "`lots` is not a size",
        "keep",
        "paths",
    ] {
        assert!(run.stderr.contains(expected), "{expected}: {run}");
    }
}
