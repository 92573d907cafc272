//! A job's workspace is a snapshot of the checkout whose files are hard links into a mirror
//! the agent keeps: what one job writes into them must never reach the next job.

use crate::support::agent::{AgentProcess, LONG, unique};

/// The job rewrites `build.sh` in place (same inode, same size), puts its mtime back and
/// removes its link, so a mirror that trusted size and mtime, or looked only at what the
/// job directory still holds, would hand the next job the rewritten script.
#[test]
fn a_job_that_rewrites_a_file_in_place_poisons_no_later_job() {
    let repo = tempfile::tempdir().unwrap();
    std::fs::write(repo.path().join("build.sh"), "echo honest\n").unwrap();
    std::fs::write(
        repo.path().join("config.yml"),
        format!(
            r#"tag: sec-poison-{}
context: false
commands: [FROM dockhand/busybox:local]
volumes: {{mount: [".:/ws"]}}
bash: |
  echo "saw: $(sh /ws/build.sh)"
  touch -r /ws/build.sh /tmp/mtime
  echo 'echo hacked' > /ws/build.sh
  touch -r /tmp/mtime /ws/build.sh
  rm /ws/build.sh
"#,
            unique()
        ),
    )
    .unwrap();
    let agent = AgentProcess::start(repo.path(), &["watch", ".", "--debounce", "200ms"]);
    let first = agent.wait_finished(1, LONG)[0].clone();
    assert_eq!(first.status, "succeeded", "{}", agent.transcript());
    assert!(first.log().contains("saw: honest"), "{}", first.log());
    assert_eq!(
        std::fs::read_to_string(repo.path().join("build.sh")).unwrap(),
        "echo honest\n",
        "the checkout itself is never written"
    );

    std::fs::write(repo.path().join("trigger"), "again").unwrap();
    let second = agent.wait_finished(2, LONG)[1].clone();
    assert_eq!(second.status, "succeeded", "{}", agent.transcript());
    let log = second.log();
    assert!(log.contains("saw: honest"), "{log}");
    assert!(!log.contains("saw: hacked"), "{log}");
}
