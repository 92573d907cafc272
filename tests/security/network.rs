//! No container leaves its job's network unless the operator allows that network mode:
//! `host` would reach services bound to the host's 127.0.0.1, `container:NAME` another
//! container's (another job's) namespace.

use crate::support::Project;
use crate::support::agent::{AgentProcess, LONG, unique};

fn config(mode: &str) -> String {
    spelled("mode", mode)
}

/// `key` is `mode`, or `network_mode` as harpoon spells it: one setting, one rule.
fn spelled(key: &str, mode: &str) -> String {
    format!(
        "tag: sec-net-{}\ncontext: false\ncommands: [FROM dockhand/busybox:local]\nnetwork: {{{key}: \"{mode}\"}}\ncommand: [hostname]\n",
        unique()
    )
}

#[test]
fn host_and_container_modes_are_refused_unless_allowed() {
    for mode in ["host", "container:some-other-job", "bridge"] {
        let project = Project::new(&config(mode));
        let run = project.run(&["run"]);
        assert_eq!(run.code, Some(200), "{mode}: {run}");
        assert!(
            run.stderr.contains(&format!(
                "network mode `{mode}`, which leaves the job's own network"
            )),
            "{run}"
        );
        let flag = format!("`--allow-network-mode {mode}`");
        assert!(run.stderr.contains(&flag), "names the flag: {run}");
    }
    let harpoon = Project::new(&spelled("network_mode", "host"));
    let run = harpoon.run(&["run"]);
    assert_eq!(run.code, Some(200), "harpoon's spelling: {run}");
    assert!(run.stderr.contains("--allow-network-mode host"), "{run}");
    let none = Project::new(&config("none"));
    let run = none.run(&["run"]);
    assert_eq!(run.code, Some(0), "`none` leaves nothing: {run}");
}

#[test]
fn the_operator_can_allow_the_host_network() {
    let project = Project::new(&config("host"));
    let run = project.run(&["run", "--allow-network-mode", "host"]);
    assert_eq!(run.code, Some(0), "{run}");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert!(
        run.stdout.contains(&format!("| {}", host.trim())),
        "the task ran in the host's namespace: {run}"
    );
}

#[test]
fn the_agent_refuses_the_host_network_by_default() {
    let repo = tempfile::tempdir().unwrap();
    std::fs::write(repo.path().join("config.yml"), config("host")).unwrap();
    let agent = AgentProcess::start(repo.path(), &["watch", "."]);
    let job = agent.wait_finished(1, LONG)[0].clone();
    assert_eq!((job.status.as_str(), job.exit_code), ("failed", 200));
    assert!(job.log().contains("allow_network_modes"), "{}", job.log());
}

#[test]
fn publishing_ports_on_the_host_needs_the_operator() {
    for ports in [
        "ports: [\"127.0.0.1:18082:8080\"]",
        "network: {publish_all_ports: true}",
    ] {
        let project = Project::new(&format!(
            "tag: sec-ports-{}\ncontext: false\ncommands: [FROM dockhand/busybox:local]\n{ports}\ncommand: [true]\n",
            unique()
        ));
        let refused = project.run(&["run"]);
        assert_eq!(refused.code, Some(200), "{refused}");
        assert!(
            refused.stderr.contains("`--allow-published-ports`"),
            "{refused}"
        );
        let allowed = project.run(&["run", "--allow-published-ports"]);
        assert_eq!(allowed.code, Some(0), "{allowed}");
    }
}

/// A task's `dependency_options` can publish a service's ports too: the same rule.
#[test]
fn a_services_ports_published_through_dependency_options_need_the_operator() {
    let project = Project::new(&format!(
        r#"image_name_prefix: sec-depports-{}
context: false
images:
  svc:
    commands: [FROM dockhand/busybox:local]
    command: [sleep, "30"]
  app:
    commands: [FROM dockhand/busybox:local]
    links: ["{{images.svc}}:svc"]
    dependency_options: {{svc: {{ports: ["127.0.0.1:18931:8080"]}}}}
    tasks:
      t:
        options:
          command: [true]
"#,
        unique()
    ));
    let refused = project.run(&["run", "t"]);
    assert_eq!(refused.code, Some(200), "{refused}");
    assert!(
        refused.stderr.contains("`--allow-published-ports`") && refused.stderr.contains("`svc`"),
        "{refused}"
    );
}
