//! harpoon options that change how a container runs or an image builds, checked against
//! the real engine (issue 12 item 7): what the collector accepts must reach Docker.

mod support;

use support::Project;

/// `ulimits`, `read_only_rootfs`, `cpu.mem_limit`, `cpu.cap_drop` and `container_name` (a
/// name the dependency answers to on the job's network) as the task's container sees them.
#[test]
fn harpoon_run_options_reach_the_container() {
    let project = Project::new(
        r#"
image_name_prefix: t-hopts
context: false
images:
  db:
    commands:
      - FROM dockhand/busybox:local
      - [ADD, {dest: /srv/x, content: "served\n"}]
    container_name: database
    command: [httpd, -f, -p, "8080", -h, /srv]
    wait_condition: {port_open: [8080], timeout: 20s, wait_between_attempts: 100ms}
  app:
    commands: [FROM dockhand/busybox:local]
    links: ["{images.db}"]
    ulimits: [{name: nofile, soft: 512, hard: 1024}]
    read_only_rootfs: true
    cpu: {mem_limit: 67108864, cap_drop: [CHOWN]}
    tasks:
      probe:
        options:
          bash: |
            echo "nofile $(ulimit -Sn) $(ulimit -Hn)"
            if touch /probe 2>/dev/null; then echo "rootfs writable"; else echo "rootfs read-only"; fi
            echo "memory $(cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes)"
            grep CapBnd /proc/self/status
            wget -q -O - http://database:8080/x
"#,
    );
    let run = project.run(&["run", "probe"]);
    assert_eq!(run.code, Some(0), "{run}");
    for want in [
        "nofile 512 1024",
        "rootfs read-only",
        "memory 67108864",
        "served",
    ] {
        assert!(run.stdout.contains(want), "missing {want:?}:\n{run}");
    }
    let bounding = run
        .stdout
        .lines()
        .find_map(|l| l.split("CapBnd:").nth(1))
        .map(|hex| u64::from_str_radix(hex.trim(), 16).unwrap())
        .unwrap_or_else(|| panic!("no CapBnd line:\n{run}"));
    assert_eq!(bounding & 1, 0, "CAP_CHOWN (bit 0) is still there:\n{run}");
}

/// The same options left out give the engine's defaults, so the test above can fail.
#[test]
fn without_the_options_the_container_has_the_defaults() {
    let project = Project::new(
        r#"
tag: t-hopts-plain
context: false
commands: [FROM dockhand/busybox:local]
bash: |
  if touch /probe 2>/dev/null; then echo "rootfs writable"; else echo "rootfs read-only"; fi
  grep CapBnd /proc/self/status
"#,
    );
    let run = project.run(&["run"]);
    assert_eq!(run.code, Some(0), "{run}");
    assert!(run.stdout.contains("rootfs writable"), "{run}");
    let bounding = run
        .stdout
        .lines()
        .find_map(|l| l.split("CapBnd:").nth(1))
        .map(|hex| u64::from_str_radix(hex.trim(), 16).unwrap())
        .unwrap();
    assert_eq!(bounding & 1, 1, "{run}");
}

/// `cache_from` reaches the build: the classic builder then takes cached layers only from
/// the named images' history, so a layer cached locally is reused through the image that
/// has it and not through an unrelated one.
#[test]
fn cache_from_names_the_images_the_build_takes_layers_from() {
    let token = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let image = |label: &str, cache_from: &str| {
        format!(
            "  {label}:\n    commands:\n      - FROM dockhand/busybox:local\n      - RUN echo {token} > /token\n      - LABEL which={label}\n{cache_from}"
        )
    };
    let config = format!(
        "image_name_prefix: t-cachefrom\ncontext: false\nimages:\n{}{}{}{}",
        image("seed", ""),
        image("hinted", "    cache_from: [\"{images.seed}\"]\n"),
        image("unrelated", "    cache_from: [dockhand/busybox:local]\n"),
        image("plain", ""),
    );
    let project = Project::new(&config);
    let seed = project.run(&["build", "seed"]);
    assert_eq!(seed.code, Some(0), "{seed}");
    let reused = |name: &str| {
        let run = project.run(&["build", name]);
        assert_eq!(run.code, Some(0), "{run}");
        let log = run.log();
        let step = log
            .split(&format!("RUN echo {token}"))
            .nth(1)
            .unwrap_or_else(|| panic!("no RUN step in the build log:\n{log}"));
        let next = step.lines().take(3).collect::<Vec<_>>().join("\n");
        next.contains("Using cache")
    };
    assert!(reused("hinted"), "the seed's layer should be reused");
    assert!(
        reused("plain"),
        "the local cache applies without cache_from"
    );
    assert!(
        !reused("unrelated"),
        "with cache_from, only the named images' layers are reused"
    );
}
