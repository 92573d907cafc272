//! Bind mounts never reach the host outside the workspace: not through a link a task
//! planted, not through a link the repository ships, not by swapping a directory for a link
//! while the next container starts, and never to the Docker socket.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::agent::{AgentProcess, LONG, unique};
use crate::support::{JobRun, Project};

/// A host directory outside every workspace, holding a file no job may read.
fn host_secret() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("host-only-{}", unique());
    std::fs::write(dir.path().join("marker"), &marker).unwrap();
    (dir, marker)
}

/// The symlink-then-mount attack: `plant` leaves `escape -> /` in the mounted workspace,
/// `read` mounts the Docker socket and a host directory through it.
fn planted_link_config(host_dir: &Path) -> String {
    format!(
        r#"image_name_prefix: sec-mounts-{}
context: false
images:
  box:
    commands: [FROM dockhand/busybox:local]
    tasks:
      plant:
        options:
          volumes: {{mount: [".:/ws"]}}
          command: [sh, -c, "ln -sfn / /ws/escape && echo planted"]
      read:
        options:
          volumes:
            mount:
              - ./escape/var/run/docker.sock:/d.sock
              - ./escape{host}:/h
          command: [sh, -c, "ls -l /d.sock; cat /h/marker"]
pipeline:
  - plant
  - {{task: read, needs: [plant]}}
"#,
        unique(),
        host = host_dir.display()
    )
}

#[test]
fn a_link_a_task_planted_cannot_carry_a_later_mount_out_of_the_workspace() {
    let (host_dir, marker) = host_secret();
    let project = Project::new(&planted_link_config(host_dir.path()));
    let run = project.run(&["run"]);
    assert_eq!(run.code, Some(1), "the refused task fails the job\n{run}");
    assert_eq!(run.stage("run", "plant")["status"], "passed", "{run}");
    let read = run.stage("run", "read");
    assert_eq!(read["status"], "failed", "{run}");
    let message = read["message"].as_str().unwrap();
    assert!(
        message.contains("goes through the symlink") && message.contains("escape"),
        "{message}"
    );
    assert!(!run.stdout.contains(&marker) && !run.log().contains(&marker));
    assert!(!run.stdout.contains("d.sock"), "{run}");
}

#[test]
fn the_same_attack_fails_under_the_agent() {
    let (host_dir, marker) = host_secret();
    let repo = tempfile::tempdir().unwrap();
    std::fs::write(
        repo.path().join("config.yml"),
        planted_link_config(host_dir.path()),
    )
    .unwrap();
    let agent = AgentProcess::start(repo.path(), &["watch", "."]);
    let job = agent.wait_finished(1, LONG)[0].clone();
    assert_eq!((job.status.as_str(), job.exit_code), ("failed", 1));
    let log = job.log();
    assert!(log.contains("goes through the symlink"), "{log}");
    assert!(!log.contains(&marker), "{log}");
}

#[test]
fn a_link_the_repository_ships_is_refused_before_anything_runs() {
    let project = Project::new(&format!(
        "tag: sec-shipped-{}\ncontext: false\ncommands: [FROM dockhand/busybox:local]\nvolumes: {{mount: [\"./etc-link:/h\"]}}\ncommand: [cat, /h/hostname]\n",
        unique()
    ));
    std::os::unix::fs::symlink("/etc", project.path().join("etc-link")).unwrap();
    let run = project.run(&["run"]);
    assert_eq!(run.code, Some(200), "{run}");
    assert!(run.stderr.contains("goes through the symlink"), "{run}");
    assert!(run.stderr.contains("etc-link"), "{run}");
}

#[test]
fn the_docker_socket_needs_the_operator_even_by_its_own_path() {
    let project = Project::new(&format!(
        "tag: sec-socket-{}\ncontext: false\ncommands: [FROM dockhand/busybox:local]\nvolumes: {{mount: [\"/var/run/docker.sock:/d.sock\"]}}\ncommand: [ls, -l, /d.sock]\n",
        unique()
    ));
    let refused = project.run(&["run"]);
    assert_eq!(refused.code, Some(200), "{refused}");
    assert!(
        refused.stderr.contains("`--allow-docker-socket`"),
        "names the flag: {refused}"
    );
    let allowed = project.run(&["run", "--allow-docker-socket"]);
    assert_eq!(allowed.code, Some(0), "{allowed}");
    assert!(allowed.stdout.contains("/d.sock"), "{allowed}");
}

#[test]
fn a_missing_mount_directory_is_made_inside_the_workspace() {
    let project = Project::new(&format!(
        "tag: sec-missing-{}\ncontext: false\ncommands: [FROM dockhand/busybox:local]\nvolumes: {{mount: [\"./out/deep:/out\"]}}\ncommand: [sh, -c, \"echo made > /out/file\"]\n",
        unique()
    ));
    let run = project.run(&["run"]);
    assert_eq!(run.code, Some(0), "{run}");
    let written = std::fs::read_to_string(project.path().join("out/deep/file")).unwrap();
    assert_eq!(written, "made\n");
}

/// A container of a running job swaps a directory of the workspace for a link to `/` as
/// fast as it can while another job's tasks mount a path through that directory: whatever
/// state the check sees is the state the engine mounts (the swapper is paused meanwhile),
/// so a task sees the directory's contents or is refused, never the host.
#[test]
fn a_directory_swapped_for_a_link_while_a_task_starts_never_mounts_the_host() {
    swap_race(false);
}

/// The same when the workspace is reached through a link and the mounts name its real path:
/// the gate must recognise the path either way.
#[test]
fn the_swap_race_holds_when_the_workspace_is_reached_through_a_link() {
    swap_race(true);
}

fn swap_race(through_link: bool) {
    let (host_dir, marker) = host_secret();
    let attempts = 6;
    let readers: String = (1..=attempts)
        .map(|i| {
            let needs = if i == 1 {
                ", needs: [arm]".to_owned()
            } else {
                format!(", needs: [read{}]", i - 1)
            };
            format!("  - {{task: read{i}, allow_failure: true{needs}}}\n")
        })
        .collect();
    let project = Project::new("");
    let real = project.path().canonicalize().unwrap();
    let flip = if through_link {
        format!("{}/flip", real.display())
    } else {
        "./flip".to_owned()
    };
    let tasks: String = (1..=attempts)
        .map(|i| {
            format!(
                "      read{i}:\n        options:\n          volumes: {{mount: [\"{flip}{host}:/h:ro\"]}}\n          command: [sh, -c, \"cat /h/marker || echo no-marker\"]\n",
                host = host_dir.path().display()
            )
        })
        .collect();
    let config = format!(
        r#"image_name_prefix: sec-race-{}
context: false
images:
  box:
    commands: [FROM dockhand/busybox:local]
    tasks:
      swap:
        options:
          volumes: {{mount: [".:/ws"]}}
          bash: |
            cd /ws && mkdir -p real && touch started
            while [ ! -e go ]; do sleep 0.05; done
            i=0
            while [ ! -e stop ] && [ $i -lt 200000 ]; do
              mv real flip; mv flip real; ln -s / flip; rm flip
              i=$((i+1))
            done
      arm:
        options:
          volumes: {{mount: [".:/ws"]}}
          command: [touch, /ws/go]
{tasks}pipeline:
  - {{task: arm}}
{readers}"#,
        unique()
    );
    project.write("config.yml", &config);
    let links = tempfile::tempdir().unwrap();
    let config_path = if through_link {
        let link = links.path().join("checkout");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        link.join("config.yml")
    } else {
        real.join("config.yml")
    };
    let config_arg = config_path.to_str().unwrap();
    let swapper = project.spawn(&["-c", config_arg, "run", "swap"]);
    let started = Instant::now();
    while !project.path().join("started").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the swapper did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let run = project.run(&["-c", config_arg, "run"]);
    std::fs::write(project.path().join("stop"), "").unwrap();
    let swapped = JobRun::from_output(swapper.wait_with_output().unwrap());
    assert_eq!(swapped.code, Some(0), "the swapper ends cleanly\n{swapped}");
    swapped.assert_nothing_left();
    assert!(
        !run.stdout.contains(&marker) && !run.log().contains(&marker),
        "a task read the host through the swapped link\n{run}"
    );
    let refused = run.log().matches("goes through the symlink").count();
    let inside = run.stdout.matches("no-marker").count();
    assert_eq!(
        refused + inside,
        attempts,
        "every attempt was refused or saw the workspace\n{run}"
    );
}

/// dockhand's own files in the checkout (`dockhand run` keeps results and caches there)
/// are hidden from tasks that mount it, and never written through a link.
#[test]
fn tasks_cannot_reach_dockhand_s_own_files_in_the_checkout() {
    let target = tempfile::tempdir().unwrap();
    let planted = target.path().join("owned");
    let project = Project::new(&format!(
        r#"tag: sec-own-{}
context: false
commands: [FROM dockhand/busybox:local]
volumes: {{mount: [".:/ws"]}}
bash: |
  ls -A /ws/.dockhand | wc -l
  for d in /ws/.dockhand/results/* /ws/.dockhand/cache; do
    ln -s {planted} "$d/planted" 2>/dev/null && echo "planted in $d"
  done
  ln -s {planted} /ws/.dockhand/cache/digests.tmp 2>/dev/null && echo planted-cache
  echo done-planting
"#,
        unique(),
        planted = planted.display()
    ));
    let run = project.run(&["run"]);
    assert_eq!(run.code, Some(0), "{run}");
    assert!(
        run.stdout.contains("| 0\n"),
        "the task sees an empty .dockhand: {run}"
    );
    assert!(!run.stdout.contains("planted"), "{run}");
    assert!(
        !planted.exists(),
        "nothing was written outside the checkout"
    );

    std::fs::remove_dir_all(project.path().join(".dockhand")).unwrap();
    std::os::unix::fs::symlink(target.path(), project.path().join(".dockhand")).unwrap();
    let run = project.run(&["run"]);
    assert_eq!(run.code, Some(202), "{run}");
    assert!(run.stderr.contains(".dockhand is a symlink"), "{run}");
    assert_eq!(std::fs::read_dir(target.path()).unwrap().count(), 0);
}

#[test]
fn a_mount_of_dockhand_s_own_directory_is_refused() {
    let project = Project::new(&format!(
        "tag: sec-own-mount-{}\ncontext: false\ncommands: [FROM dockhand/busybox:local]\nvolumes: {{mount: [\"./.dockhand/results:/r\"]}}\ncommand: [ls, /r]\n",
        unique()
    ));
    let run = project.run(&["run"]);
    assert_eq!(run.code, Some(200), "{run}");
    assert!(run.stderr.contains("dockhand's own directory"), "{run}");
}

#[test]
fn mount_targets_stay_out_of_the_containers_kernel_views() {
    for target in ["/x/../etc", "/proc", "/", "/sys/fs"] {
        let project = Project::new(&format!(
            "tag: sec-target-{}\ncontext: false\ncommands: [FROM dockhand/busybox:local]\nvolumes: {{mount: [\".:{target}\"]}}\ncommand: [true]\n",
            unique()
        ));
        let run = project.run(&["run"]);
        assert_eq!(run.code, Some(200), "{target}: {run}");
        assert!(
            run.stderr.contains("container path must be absolute"),
            "{run}"
        );
    }
}

/// A task that could write the checkout's `.git` (a hook, `core.fsmonitor`) would run code
/// on the host at the developer's next `git status`: `.git` is mounted read-only, however
/// the checkout is mounted.
#[test]
fn the_checkouts_git_directory_is_read_only_to_tasks() {
    let project = Project::new(&format!(
        r#"image_name_prefix: sec-git-{}
context: false
images:
  box:
    commands: [FROM dockhand/busybox:local]
    tasks:
      whole:
        options:
          volumes: {{mount: [".:/ws"]}}
          bash: |
            cat /ws/.git/HEAD
            echo '[core]' >> /ws/.git/config && echo wrote-config
            touch /ws/.git/hooks/post-checkout && echo wrote-hook
            touch /ws/ordinary && echo wrote-ordinary
      direct:
        options:
          volumes: {{mount: ["./.git:/g"]}}
          bash: echo '[core]' >> /g/config && echo wrote-direct || true
pipeline:
  - {{task: whole, allow_failure: true}}
  - {{task: direct, needs: [whole]}}
"#,
        unique()
    ));
    let init = std::process::Command::new("git")
        .args(["init", "-q"])
        .current_dir(project.path())
        .status()
        .unwrap();
    assert!(init.success());
    let config_before = std::fs::read(project.path().join(".git/config")).unwrap();
    let run = project.run(&["run"]);
    assert!(run.stdout.contains("ref: refs/heads/"), "reads work: {run}");
    for wrote in ["wrote-config", "wrote-hook", "wrote-direct"] {
        assert!(!run.stdout.contains(wrote), "{wrote}: {run}");
    }
    assert!(run.stdout.contains("wrote-ordinary"), "{run}");
    assert_eq!(
        std::fs::read(project.path().join(".git/config")).unwrap(),
        config_before
    );
    assert!(!project.path().join(".git/hooks/post-checkout").exists());
}
