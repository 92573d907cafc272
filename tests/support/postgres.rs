//! A real PostgreSQL 15 for tests: one server per test binary, started on first use from
//! Debian's binaries (`scripts/ensure-postgres` installs them) on a free port of 127.0.0.1
//! in a temporary directory, stopped and removed when the binary exits, panicking tests
//! included; every caller gets a fresh database. Blocking: it runs PostgreSQL's programs. Also compiled into the library's tests
//! (the store conformance suite), so it needs nothing from `tests/support`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const BIN: &str = "/usr/lib/postgresql/15/bin";

struct Cluster {
    dir: PathBuf,
    port: u16,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

/// The URL of a new, empty database on this binary's server.
pub fn fresh_database() -> String {
    let port = CLUSTER.get_or_init(start).port;
    let mut bytes = [0; 8];
    getrandom::fill(&mut bytes).unwrap();
    let name = format!("test_{}", hex::encode(bytes));
    let created = run(
        Command::new(Path::new(BIN).join("createdb")).args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-p",
            &port.to_string(),
            &name,
        ]),
        "creating a test database",
    );
    created.unwrap_or_else(|e| panic!("{e}"));
    format!("postgres://postgres@127.0.0.1:{port}/{name}")
}

/// As the `postgres` user: PostgreSQL refuses to run as root.
fn as_postgres(program: &str) -> Command {
    let program = Path::new(BIN).join(program);
    if unsafe { libc::geteuid() } == 0 {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn run(command: &mut Command, what: &str) -> Result<(), String> {
    let output = command.output().map_err(|e| format!("{what}: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    ))
}

fn start() -> Cluster {
    assert!(
        Path::new(BIN).join("initdb").exists(),
        "PostgreSQL 15 is not installed ({BIN}/initdb is missing): run scripts/ensure-postgres \
         (apt-get install postgresql-15)"
    );
    let dir = tempfile::Builder::new()
        .prefix("dockhand-pg-")
        .tempdir()
        .unwrap()
        .keep();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    if let Err(e) = init_and_start(&dir, port) {
        let _ = std::fs::remove_dir_all(&dir);
        panic!("{e}");
    }
    unsafe { libc::atexit(stop_at_exit) };
    Cluster { dir, port }
}

fn init_and_start(dir: &Path, port: u16) -> Result<(), String> {
    let data = dir.join("data");
    if unsafe { libc::geteuid() } == 0 {
        run(
            Command::new("chown").arg("postgres:").arg(dir),
            "giving the test PostgreSQL directory to the postgres user",
        )?;
    }
    run(
        as_postgres("initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data),
        "initdb",
    )?;
    let options = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=400",
        dir.display()
    );
    run(
        as_postgres("pg_ctl")
            .args(["-w", "-D"])
            .arg(&data)
            .args(["-o", &options, "-l"])
            .arg(dir.join("server.log"))
            .arg("start"),
        "starting the test PostgreSQL",
    )
}

extern "C" fn stop_at_exit() {
    let Some(cluster) = CLUSTER.get() else {
        return;
    };
    let _ = as_postgres("pg_ctl")
        .args(["-w", "-m", "immediate", "-D"])
        .arg(cluster.dir.join("data"))
        .arg("stop")
        .output();
    let _ = std::fs::remove_dir_all(&cluster.dir);
}
