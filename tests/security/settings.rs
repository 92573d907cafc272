//! The agent's settings are the operator's: a watched checkout's own `agent.toml` is never
//! read, and the checkout cannot redirect the agent's own directories through a link.

use std::process::Command;

use crate::support::agent::{AgentProcess, LONG, unique};

#[test]
fn a_checkouts_own_agent_toml_does_not_widen_the_sandbox() {
    let repo = tempfile::tempdir().unwrap();
    std::fs::write(
        repo.path().join("agent.toml"),
        "[agent]\npass_env = [\"SEC_AGENT_ONLY\"]\n[docker]\nallow_network_modes = [\"host\"]\n",
    )
    .unwrap();
    std::fs::write(
        repo.path().join("config.yml"),
        format!(
            "tag: sec-settings-{}\ncontext: false\ncommands: [FROM dockhand/busybox:local]\nnetwork: {{mode: host}}\ncommand: [hostname]\n",
            unique()
        ),
    )
    .unwrap();
    let agent = AgentProcess::start(repo.path(), &["watch", "."]);
    let job = agent.wait_finished(1, LONG)[0].clone();
    assert_eq!((job.status.as_str(), job.exit_code), ("failed", 200));
    assert!(job.log().contains("allow_network_modes"), "{}", job.log());
}

#[test]
fn watch_refuses_a_dockhand_link_the_checkout_ships() {
    let repo = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::write(
        repo.path().join("config.yml"),
        "tag: sec-link\ncontext: false\ncommands: [FROM dockhand/busybox:local]\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), repo.path().join(".dockhand")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dockhand"))
        .args(["watch", ".", "--name", &format!("test-{}", unique())])
        .current_dir(repo.path())
        .env_remove("DOCKHAND_AGENT_CONFIG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(200), "{stderr}");
    assert!(stderr.contains("is a symlink"), "{stderr}");
    assert_eq!(
        std::fs::read_dir(elsewhere.path()).unwrap().count(),
        0,
        "nothing was written through the link"
    );
}
