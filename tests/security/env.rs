//! A job sees only its own environment, the secrets its config names and the agent's
//! `pass_env` variables: never the rest of the agent's environment, never its tokens.

use std::process::Command;

use crate::support::agent::{AgentProcess, LONG, unique};

/// A checkout whose task prints the variables `names` (with `:unset` defaults), under an
/// agent.toml of `settings` that watches it.
fn checkout(names: &[&str], extra: &str, settings: &str) -> tempfile::TempDir {
    let repo = tempfile::tempdir().unwrap();
    let env: Vec<String> = names.iter().map(|n| format!("\"{n}:unset\"")).collect();
    let echo: Vec<String> = names.iter().map(|n| format!("{n}=${n}")).collect();
    std::fs::write(
        repo.path().join("config.yml"),
        format!(
            "tag: sec-env-{}\ncontext: false\ncommands: [FROM dockhand/busybox:local]\nenv: [{}]\ncommand: [sh, -c, 'echo {}']\n{extra}",
            unique(),
            env.join(", "),
            echo.join(" ")
        ),
    )
    .unwrap();
    std::fs::write(
        repo.path().join("agent.toml"),
        format!("{settings}\n[[source]]\nkind = \"watch\"\npath = \".\"\n"),
    )
    .unwrap();
    repo
}

#[test]
fn the_agents_environment_and_tokens_stay_out_of_jobs() {
    let repo = checkout(
        &["DOCKHAND_TOKEN", "HOME", "RUST_LOG"],
        "",
        "[agent]\npass_env = [\"RUST_LOG\"]",
    );
    let agent = AgentProcess::start(repo.path(), &["agent"]);
    let job = agent.wait_finished(1, LONG)[0].clone();
    assert_eq!(job.status, "succeeded", "{}", job.log());
    let log = job.log();
    assert!(
        log.contains("DOCKHAND_TOKEN=unset HOME=unset RUST_LOG=warn"),
        "only pass_env reaches the job: {log}"
    );
}

#[test]
fn naming_a_token_variable_without_a_default_is_a_config_error() {
    let repo = tempfile::tempdir().unwrap();
    std::fs::write(
        repo.path().join("config.yml"),
        format!(
            "tag: sec-token-{}\ncontext: false\ncommands: [FROM dockhand/busybox:local]\nenv: [DOCKHAND_TOKEN]\ncommand: [sh, -c, 'echo $DOCKHAND_TOKEN']\n",
            unique()
        ),
    )
    .unwrap();
    let agent = AgentProcess::start(repo.path(), &["watch", "."]);
    let job = agent.wait_finished(1, LONG)[0].clone();
    assert_eq!((job.status.as_str(), job.exit_code), ("failed", 200));
    assert!(
        job.log()
            .contains("environment variable `DOCKHAND_TOKEN` is not set"),
        "{}",
        job.log()
    );
    assert!(!job.log().contains(crate::support::server::REGISTRATION));
}

#[test]
fn secrets_reach_only_the_configs_that_name_them() {
    let secret = format!("agent-secret-{}", unique());
    let settings = format!("[secrets]\nvalues = {{ API_TOKEN = \"{secret}\" }}");
    let unnamed = checkout(&["API_TOKEN"], "", &settings);
    let agent = AgentProcess::start(unnamed.path(), &["agent"]);
    let job = agent.wait_finished(1, LONG)[0].clone();
    assert!(job.log().contains("API_TOKEN=unset"), "{}", job.log());
    drop(agent);

    let formatted = tempfile::tempdir().unwrap();
    std::fs::write(
        formatted.path().join("config.yml"),
        format!(
            "tag: sec-fmt-{}\ncontext: false\ncommands: [FROM dockhand/busybox:local]\ncommand: [sh, -c, 'echo {{API_TOKEN:from_env}}']\n",
            unique()
        ),
    )
    .unwrap();
    std::fs::write(
        formatted.path().join("agent.toml"),
        format!("{settings}\n[[source]]\nkind = \"watch\"\npath = \".\"\n"),
    )
    .unwrap();
    let agent = AgentProcess::start(formatted.path(), &["agent"]);
    let job = agent.wait_finished(1, LONG)[0].clone();
    assert_eq!((job.status.as_str(), job.exit_code), ("failed", 200));
    assert!(
        job.log()
            .contains("reads the agent's secret `API_TOKEN` ({API_TOKEN:from_env}) but does not name it in `secrets:`"),
        "{}",
        job.log()
    );
    drop(agent);

    let named = checkout(&["API_TOKEN"], "secrets: [API_TOKEN]\n", &settings);
    let agent = AgentProcess::start(named.path(), &["agent"]);
    let job = agent.wait_finished(1, LONG)[0].clone();
    assert_eq!(job.status, "succeeded", "{}", job.log());
    assert!(job.log().contains("API_TOKEN=***"), "{}", job.log());
    assert!(!job.log().contains(&secret));
}

#[test]
fn token_variables_can_never_be_passed() {
    let dir = tempfile::tempdir().unwrap();
    for settings in [
        "[agent]\npass_env = [\"DOCKHAND_TOKEN\"]",
        "[secrets]\nfrom_env = [\"DOCKHAND_ADMIN_TOKEN\"]",
        "[agent]\npass_env = [\"DEPLOY_KEY\"]\n[[source]]\nkind = \"http\"\nurl = \"http://127.0.0.1:9\"\ntoken_env = \"DEPLOY_KEY\"",
    ] {
        std::fs::write(dir.path().join("agent.toml"), settings).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_dockhand"))
            .args(["agent", "--check"])
            .current_dir(dir.path())
            .env_remove("DOCKHAND_AGENT_CONFIG")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(200), "{settings}: {stderr}");
        assert!(
            stderr.contains("holds one of dockhand's own tokens; no job may see it"),
            "{stderr}"
        );
    }
}
