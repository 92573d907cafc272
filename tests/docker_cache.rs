//! Incremental builds on the real engine: an image whose build key (Dockerfile, generated
//! files, context files and modes, dependencies' keys, base image ids) is unchanged is not
//! built and its context is not sent; any change to those rebuilds exactly the affected
//! images and their dependents.

mod support;

use std::os::unix::fs::PermissionsExt;

use support::{JobRun, Project, docker};

const CONFIG: &str = r#"
image_name_prefix: t-cache
images:
  mid:
    context: {parent_dir: mid}
    commands:
      - FROM t-cache-external:1
      - COPY . /mid
  leaf:
    context: false
    commands:
      - [FROM, "{images.mid}"]
      - [RUN, "echo leaf > /leaf"]
  other:
    context: {parent_dir: other}
    commands:
      - FROM dockhand/busybox:local
      - COPY . /other
"#;

fn statuses(run: &JobRun) -> Vec<(String, String)> {
    let result = run.result();
    result["stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "build")
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn expect(run: &JobRun, want: &[(&str, &str)]) {
    assert_eq!(run.code, Some(0), "{run}");
    let mut got = statuses(run);
    got.sort();
    let mut want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
    want.sort();
    assert_eq!(got, want, "{run}");
}

fn assert_message(run: &JobRun, image: &str, want: &str) {
    let stage = run.stage("build", image);
    let message = stage["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(want),
        "{image}: {message:?} lacks {want:?}\n{run}"
    );
}

#[test]
fn only_what_changed_is_rebuilt() {
    docker(&["tag", support::BASE_IMAGE, "t-cache-external:1"]);
    let project = Project::new(CONFIG);
    // Contents no earlier run had, so no image from an earlier run carries these keys.
    let nonce = project.path().display().to_string();
    project.write("mid/a.txt", &format!("one {nonce}\n"));
    project.write("mid/.dockerignore", "scratch.log\n");
    project.write("mid/scratch.log", "ignored\n");
    project.write("other/b.txt", &format!("other {nonce}\n"));
    let built = [("mid", "passed"), ("other", "passed"), ("leaf", "passed")];
    let cached = [("mid", "cached"), ("other", "cached"), ("leaf", "cached")];

    let first = project.run(&["build", "--no-cache"]);
    expect(&first, &built);

    let again = project.run(&["build"]);
    expect(&again, &cached);
    assert!(
        !again.stdout.contains("Step 1/"),
        "an unchanged re-run must not talk to the builder:\n{again}"
    );

    project.write("mid/scratch.log", "still ignored, but different\n");
    expect(&project.run(&["build"]), &cached);

    project.write("mid/a.txt", &format!("onE {nonce}\n"));
    let run = project.run(&["build"]);
    expect(
        &run,
        &[("mid", "passed"), ("other", "cached"), ("leaf", "passed")],
    );
    assert_message(&run, "mid", "context changed: changed a.txt");
    assert_message(&run, "leaf", "an image it builds from changed");

    let file = project.path().join("other/b.txt");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
    expect(
        &project.run(&["build"]),
        &[("mid", "cached"), ("other", "passed"), ("leaf", "cached")],
    );

    std::fs::write(
        project.path().join("config.yml"),
        CONFIG.replace("echo leaf", "echo LEAF"),
    )
    .unwrap();
    let run = project.run(&["build"]);
    expect(
        &run,
        &[("mid", "cached"), ("other", "cached"), ("leaf", "passed")],
    );
    assert_message(&run, "leaf", "the Dockerfile or a generated file changed");

    let different_base = tempfile::tempdir().unwrap();
    std::fs::write(
        different_base.path().join("Dockerfile"),
        format!("FROM {}\nRUN echo new > /new-base\n", support::BASE_IMAGE),
    )
    .unwrap();
    docker(&[
        "build",
        "-q",
        "-t",
        "t-cache-external:1",
        different_base.path().to_str().unwrap(),
    ]);
    let run = project.run(&["build"]);
    expect(
        &run,
        &[("mid", "passed"), ("other", "cached"), ("leaf", "passed")],
    );
    assert_message(&run, "mid", "an external base image changed");

    // The name taken by another image: the recorded build is still there, so it is
    // reused and named again rather than rebuilt.
    let other_id = docker(&["image", "inspect", "-f", "{{.Id}}", "t-cache-other:latest"]);
    docker(&["tag", support::BASE_IMAGE, "t-cache-other:latest"]);
    expect(&project.run(&["build"]), &cached);
    assert_eq!(
        docker(&["image", "inspect", "-f", "{{.Id}}", "t-cache-other:latest"]),
        other_id
    );

    docker(&["rmi", "t-cache-other:latest"]);
    expect(
        &project.run(&["build"]),
        &[("mid", "cached"), ("other", "passed"), ("leaf", "cached")],
    );

    expect(&project.run(&["build", "--no-cache"]), &built);
}
