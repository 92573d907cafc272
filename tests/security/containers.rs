//! Every task container is bounded by default: no new privileges, a process limit, the
//! agent's memory and CPU limits; the operator can change each.

use crate::support::Project;
use crate::support::agent::{AgentProcess, LONG, unique};

fn project(script: &str) -> Project {
    Project::new(&format!(
        "tag: sec-box-{}\ncontext: false\ncommands: [FROM dockhand/busybox:local]\nbash: |\n{}",
        unique(),
        script
            .lines()
            .map(|l| format!("  {l}\n"))
            .collect::<String>()
    ))
}

#[test]
fn task_containers_gain_no_privileges_by_default() {
    let run = project("grep NoNewPrivs /proc/self/status").run(&["run"]);
    assert_eq!(run.code, Some(0), "{run}");
    assert!(run.stdout.contains("NoNewPrivs:\t1"), "{run}");
}

#[test]
fn a_fork_bomb_stops_at_the_process_limit() {
    let script = "i=0\nwhile [ $i -lt 200 ]; do sleep 30 & i=$((i+1)); done\necho all 200 started";
    let run = project(script).run(&["run", "--pids-limit", "40"]);
    assert!(run.stdout.contains("can't fork"), "{run}");
    assert!(!run.stdout.contains("all 200 started"), "{run}");
}

#[test]
fn the_agents_memory_limit_kills_a_task_that_exceeds_it() {
    let repo = tempfile::tempdir().unwrap();
    std::fs::write(
        repo.path().join("config.yml"),
        format!(
            "tag: sec-mem-{}\ncontext: false\ncommands: [FROM dockhand/busybox:local]\ncommand: [sh, -c, 'head -c 300000000 /dev/zero | tail -c 299000000 > /dev/null && echo survived']\n",
            unique()
        ),
    )
    .unwrap();
    std::fs::write(
        repo.path().join("agent.toml"),
        "[docker]\nmemory = \"64m\"\n[[source]]\nkind = \"watch\"\npath = \".\"\n",
    )
    .unwrap();
    let agent = AgentProcess::start(repo.path(), &["agent"]);
    let job = agent.wait_finished(1, LONG)[0].clone();
    assert_eq!(job.status, "failed", "{}", job.log());
    assert!(
        !job.log().contains("survived"),
        "a 300 MB buffer does not fit in 64 MiB: {}",
        job.log()
    );
}

#[test]
fn tasks_cannot_make_device_nodes_or_raw_sockets() {
    let run = project("mknod /tmp/disk b 8 0 && echo made-node\nping -c 1 -W 1 127.0.0.1 && echo pinged\necho checked").run(&["run"]);
    assert_eq!(run.code, Some(0), "{run}");
    assert!(run.stdout.contains("checked"), "{run}");
    assert!(!run.stdout.contains("made-node"), "MKNOD is dropped: {run}");
    assert!(!run.stdout.contains("pinged"), "NET_RAW is dropped: {run}");
}
