#!/usr/bin/env python3
"""The job server's figures: submit → container start with idle agents waiting, log
upload throughput, claims per second on SQLite, and with --database on PostgreSQL with one
and two replicas, and submit → running across two replicas.

Needs the release binary (cargo build --release) and the engine with dockhand/busybox:local
(scripts/ensure-docker). Usage: bench/server.py [--runs N]
[--only latency|log|claims|replicas] [--database postgres://USER@HOST:PORT]
(a PostgreSQL server on which the bench may create databases, one per measurement).

latency: `dockhand server` and 1 or 4 idle `dockhand agent`s with an http source; each run
submits a job (a local-path source whose image is already built, a task that echoes) and
measures from the submit call to the run stage's stage_started event in the agent's JSON
output, and to the moment the container's first output line reaches the bench. p50 and p99.

log: one job printing 200 MB; the time from its run stage starting to the server holding
the whole log, against the time the task itself ran (how far the upload trails).

claims: 500 queued jobs, 8 client threads each claiming, accepting and reporting empty
results as fast as the server answers; offers accepted per second. With --database, also
on PostgreSQL through one replica and through two (the clients split between them).

replicas (with --database): two replicas on one PostgreSQL database; a client long-polls
replica B, a job is submitted to replica A; from the submit call to the accept's answer
(the job running). p50 and p99.
"""

import argparse
import hashlib
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKHAND = os.path.join(ROOT, "target", "release", "dockhand")
REGISTRATION = "bench-registration-token"
ADMIN = "bench-admin-token-0123456"

CONFIG = """image_name_prefix: bench-server
images:
  app:
    context: false
    commands: [FROM dockhand/busybox:local]
    tasks:
      go:
        options:
          command: [/bin/sh, -c, "{command}"]
pipeline: [go]
"""


def fresh_database(server):
    """A new database on the PostgreSQL server at `server` (postgres://USER@HOST:PORT); its URL."""
    parts = urllib.parse.urlparse(server)
    name = f"bench_{os.getpid()}_{time.time_ns()}"
    env = {**os.environ, "PGPASSWORD": parts.password or ""}
    subprocess.run(["/usr/lib/postgresql/15/bin/createdb", "-h", parts.hostname, "-p", str(parts.port or 5432),
                    "-U", parts.username or "postgres", name], check=True, env=env)
    return parts._replace(path="/" + name).geturl()


class Server:
    def __init__(self, work, extra=(), database=None):
        env = {**os.environ, "DOCKHAND_REGISTRATION_TOKEN": REGISTRATION, "DOCKHAND_ADMIN_TOKEN": ADMIN}
        self.proc = subprocess.Popen(
            [DOCKHAND, "server", "--listen", "127.0.0.1:0", "--database",
             database or os.path.join(work, "db", "jobs.db"), "--allow-local-sources", *extra],
            stderr=subprocess.PIPE, text=True, env=env)
        line = self.proc.stderr.readline()
        self.url = next(w for w in line.split() if w.startswith("http://"))
        self.host, self.port = self.url[len("http://"):].split(":")
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()

    def call(self, method, path, token=ADMIN, body=None, conn=None):
        own = conn is None
        conn = conn or http.client.HTTPConnection(self.host, int(self.port))
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        text = response.read()
        if own:
            conn.close()
        return response.status, (json.loads(text) if text else None)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


class Agent:
    """A `dockhand agent --json`; its events are read on a thread."""

    def __init__(self, work, server, name):
        self.dir = os.path.join(work, name)
        os.makedirs(self.dir)
        with open(os.path.join(self.dir, "agent.toml"), "w") as f:
            f.write(f'[agent]\nname = "{name}"\nconcurrency = 2\n'
                    f'[[source]]\nkind = "http"\nurl = "{server.url}"\n'
                    f'allow_local_sources = true\n')
        env = {**os.environ, "DOCKHAND_TOKEN": REGISTRATION}
        self.proc = subprocess.Popen([DOCKHAND, "agent", "--json"], cwd=self.dir, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.events = []
        self.cond = threading.Condition()
        threading.Thread(target=self.read, daemon=True).start()

    def read(self):
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            event["seen"] = time.time()
            with self.cond:
                self.events.append(event)
                self.cond.notify_all()

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


class ContainerStarts:
    """`docker events` for container starts, read on a thread: the engine's own time of
    each start (timeNano)."""

    def __init__(self):
        self.proc = subprocess.Popen(
            ["docker", "events", "--format", "{{json .}}", "--filter", "type=container",
             "--filter", "event=start"], stdout=subprocess.PIPE, text=True)
        self.starts = []
        threading.Thread(target=self.read, daemon=True).start()
        time.sleep(0.3)

    def read(self):
        for line in self.proc.stdout:
            try:
                self.starts.append(json.loads(line)["timeNano"] / 1e9)
            except (json.JSONDecodeError, KeyError):
                continue

    def first_after(self, t, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            later = [s for s in self.starts if s >= t]
            if later:
                return min(later)
            time.sleep(0.005)
        sys.exit("no container start seen")

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def run_events(agents, after, timeout=60):
    """The run stage's stage_started event and its first output after index `after` of
    the agents' events."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for agent in agents:
            with agent.cond:
                jobs, started = {}, None
                for e in agent.events[after.get(agent.dir, 0):]:
                    if e["type"] == "job_started":
                        jobs[e["job"]] = [i for i, (_, kind) in enumerate(e["stages"]) if kind == "run"]
                    elif e["type"] == "stage_started" and e["stage"] in jobs.get(e["job"], []):
                        started = e
                    elif started and e["type"] == "log" and e["stage"] == started["stage"]:
                        return started, e
        time.sleep(0.002)
    sys.exit("timed out waiting for a run stage")


def at(event):
    from datetime import datetime
    return datetime.fromisoformat(event["at"].replace("Z", "+00:00")).timestamp()


def project(work, command):
    dir = os.path.join(work, "project")
    os.makedirs(dir, exist_ok=True)
    with open(os.path.join(dir, "config.yml"), "w") as f:
        f.write(CONFIG.format(command=command))
    return dir


def wait_state(server, job, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        _, detail = server.call("GET", f"/api/v1/jobs/{job}")
        if detail["state"] not in ("queued", "offered", "running"):
            return detail
        time.sleep(0.05)
    sys.exit(f"job {job} did not finish")


def latency(runs, agents_count):
    with tempfile.TemporaryDirectory() as work:
        server = Server(work)
        agents = [Agent(work, server, f"bench-{i}") for i in range(agents_count)]
        path = project(work, "echo started")
        starts = ContainerStarts()
        try:
            samples, started_at, outputs = [], [], []
            for run in range(runs + 1):
                time.sleep(0.3)  # every agent is back in its long poll
                marks = {a.dir: len(a.events) for a in agents}
                submitted = time.time()
                _, body = server.call("POST", "/api/v1/jobs", body={"source": {"path": path}})
                started, output = run_events(agents, marks)
                wait_state(server, body["job_id"])
                if run > 0:  # the first builds the image
                    samples.append((at(started) - submitted) * 1000)
                    started_at.append((starts.first_after(submitted) - submitted) * 1000)
                    outputs.append((output["seen"] - submitted) * 1000)
        finally:
            starts.stop()
            for a in agents:
                a.stop()
            server.stop()
    print(f"\n## submit → container, {agents_count} idle agent(s) ({runs} jobs; targets: p50 ≤ 50 ms, p99 ≤ 200 ms)")
    for label, values in [("run stage start (container create next)", samples),
                          ("container start (the engine's start event)", started_at),
                          ("first output of the started container", outputs)]:
        values.sort()
        p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
        print(f"  {label:<40} p50 {statistics.median(values):7.1f} ms   p99 {p99:7.1f} ms   "
              f"min {values[0]:.1f}   max {values[-1]:.1f}")


def log_throughput():
    size = 200 * 1024 * 1024
    with tempfile.TemporaryDirectory() as work:
        server = Server(work)
        agent = Agent(work, server, "bench-log")
        path = project(work, f"head -c {size} /dev/zero | tr '\\\\0' 'x' | fold -w 99")
        try:
            _, body = server.call("POST", "/api/v1/jobs", body={"source": {"path": path}})
            job = body["job_id"]
            detail = wait_state(server, job, timeout=900)
            finished_server = time.time()
            run = next(s for s in detail["result"]["stages"] if s["kind"] == "run")
            from datetime import datetime
            ts = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
            task = ts(run["finished_at"]) - ts(run["started_at"])
            whole = finished_server - ts(run["started_at"])
        finally:
            agent.stop()
            server.stop()
    mb = detail["log_bytes"] / 1e6
    print(f"\n## log upload, one job printing {mb:.0f} MB ({detail['state']})")
    print(f"  task ran {task:.2f} s; the server held the whole log {whole:.2f} s after the task started "
          f"({whole - task:.2f} s after it ended): {mb / whole:.0f} MB/s end to end")


def claims(database=None, replicas=1):
    """On SQLite, or on a fresh database of the PostgreSQL server `database` through
    `replicas` replicas."""
    jobs = 500
    with tempfile.TemporaryDirectory() as work:
        url = fresh_database(database) if database else None
        servers = [Server(work, database=url)]
        try:
            for _ in range(replicas - 1):
                servers.append(Server(work, database=url))
            server = servers[0]
            for _ in range(jobs):
                server.call("POST", "/api/v1/jobs", body={"source": {"path": "/nowhere"}})
            _, agent = server.call("POST", "/api/v1/agents", token=REGISTRATION,
                                   body={"name": "bench", "version": "1", "labels": [], "capacity": 8})
            empty = hashlib.sha256(b"").hexdigest()
            done = []

            def worker(server):
                conn = http.client.HTTPConnection(server.host, int(server.port))
                token = agent["agent_token"]
                while True:
                    status, offer = server.call("POST", f"/api/v1/agents/{agent['agent_id']}/claim",
                                                token, {"free_slots": 1}, conn)
                    if status != 200:
                        return
                    status, accepted = server.call("POST", f"/api/v1/jobs/{offer['job_id']}/accept",
                                                   token, {"offer_id": offer["offer_id"]}, conn)
                    if status != 200:
                        continue
                    server.call("PUT", f"/api/v1/jobs/{offer['job_id']}/result", accepted["job_token"],
                                {"status": "succeeded", "exit_code": 0, "stages": [],
                                 "log": {"bytes": 0, "sha256": empty}}, conn)
                    done.append(offer["job_id"])

            start = time.time()
            threads = [threading.Thread(target=worker, args=(servers[i % replicas],)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.time() - start
        finally:
            for server in servers:
                server.stop()
    assert len(done) == jobs and len(set(done)) == jobs, "every job exactly once"
    where = f"PostgreSQL, {replicas} replica(s)" if database else "SQLite"
    print(f"\n## claims on {where}: {jobs} jobs, 8 clients claim + accept + result")
    print(f"  {jobs / elapsed:.0f} jobs/s ({elapsed:.2f} s), each exactly once")


def across_replicas(database, runs):
    """Submit to replica A while a client long-polls replica B: submit → accepted."""
    with tempfile.TemporaryDirectory() as work:
        url = fresh_database(database)
        a = Server(work, database=url)
        b = Server(work, database=url)
        try:
            _, agent = a.call("POST", "/api/v1/agents", token=REGISTRATION,
                              body={"name": "bench", "version": "1", "labels": [], "capacity": 1})
            token = agent["agent_token"]
            empty = hashlib.sha256(b"").hexdigest()
            samples = []
            for _ in range(runs):
                offered = {}

                def poll():
                    conn = http.client.HTTPConnection(b.host, int(b.port))
                    status, offer = b.call("POST", f"/api/v1/agents/{agent['agent_id']}/claim?wait=30",
                                           token, {"free_slots": 1}, conn)
                    status, accepted = b.call("POST", f"/api/v1/jobs/{offer['job_id']}/accept",
                                              token, {"offer_id": offer["offer_id"]}, conn)
                    offered["at"] = time.time()
                    offered["job"], offered["token"] = offer["job_id"], accepted["job_token"]

                poller = threading.Thread(target=poll)
                poller.start()
                time.sleep(0.2)
                start = time.time()
                a.call("POST", "/api/v1/jobs", body={"source": {"path": "/nowhere"}})
                poller.join()
                samples.append((offered["at"] - start) * 1000)
                a.call("PUT", f"/api/v1/jobs/{offered['job']}/result", offered["token"],
                       {"status": "succeeded", "exit_code": 0, "stages": [],
                        "log": {"bytes": 0, "sha256": empty}})
        finally:
            a.stop()
            b.stop()
    samples.sort()
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    print(f"\n## submit to replica A → running through replica B, PostgreSQL ({runs} runs)")
    print(f"  p50 {statistics.median(samples):7.1f} ms   p99 {p99:7.1f} ms")


def docker_baseline(runs):
    """`docker run` of the same container, from the call to its start event and to its
    first output line."""
    starts = ContainerStarts()
    started, samples = [], []
    for _ in range(runs):
        start = time.time()
        proc = subprocess.Popen(["docker", "run", "--rm", "--log-driver", "none",
                                 "dockhand/busybox:local", "echo", "started"],
                                stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()
        samples.append((time.time() - start) * 1000)
        started.append((starts.first_after(start) - start) * 1000)
        proc.wait()
    starts.stop()
    print(f"\n## for scale: `docker run --rm` of the same container ({runs} runs)")
    for label, values in [("container start", started), ("first output", samples)]:
        values.sort()
        print(f"  {label:<40} p50 {statistics.median(values):7.1f} ms   p99 {values[-1]:7.1f} ms")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--only", choices=["latency", "log", "claims", "replicas"])
    parser.add_argument("--database", help="a PostgreSQL server, postgres://USER@HOST:PORT")
    args = parser.parse_args()
    if not os.path.exists(DOCKHAND):
        sys.exit("build the release binary first: cargo build --release")
    if args.only in (None, "latency"):
        latency(args.runs, 1)
        latency(args.runs, 4)
        docker_baseline(args.runs)
    if args.only in (None, "claims"):
        claims()
        if args.database:
            claims(args.database, 1)
            claims(args.database, 2)
    if args.database and args.only in (None, "replicas"):
        across_replicas(args.database, args.runs)
    if args.only in (None, "log"):
        log_throughput()


if __name__ == "__main__":
    main()
