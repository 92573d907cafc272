#!/usr/bin/env python3
"""The agent's own figures: how soon after a file is saved the build stage starts under
`dockhand watch`, and how much memory an idle agent holds.

Needs the release binary (cargo build --release) and the engine with dockhand/busybox:local
(scripts/ensure-docker). Usage: bench/agent.py [--runs N] [--files N] [--only latency|idle]

latency: a checkout with --files source files; each run writes one file, and the time from
the write to the build stage's StageStarted event (the agent's JSON output) is measured.
The target is the debounce plus 50 ms. For scale, the same run prints how long the plain
docker CLI takes from `docker build` being called to its first step (the earliest a
hand-run or inotifywait-driven build could start).

idle: an agent with a yearly schedule (no job yet), and one with a watch source too after
its first job; peak RSS (VmHWM) and current RSS from /proc, 5 s later.
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKHAND = os.path.join(ROOT, "target", "release", "dockhand")
DEBOUNCE_MS = 300

CONFIG = """image_name_prefix: bench-agent
images:
  app:
    context:
      parent_dir: .
      exclude: [src]
    commands:
      - FROM dockhand/busybox:local
      - [ADD, {prefix: /app, get: [msg.txt]}]
    tasks:
      show:
        options:
          command: [cat, /app/msg.txt]
pipeline: [show]
"""


def checkout(files):
    dir = tempfile.mkdtemp(prefix="dockhand-bench-agent-")
    with open(os.path.join(dir, "config.yml"), "w") as f:
        f.write(CONFIG)
    with open(os.path.join(dir, "msg.txt"), "w") as f:
        f.write("start\n")
    src = os.path.join(dir, "src")
    for i in range(files):
        sub = os.path.join(src, f"m{i // 100}")
        os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, f"f{i}.txt"), "w") as f:
            f.write(f"source file {i}\n" * 64)
    return dir


class Events:
    """The agent's --json output, read on a thread."""

    def __init__(self, proc):
        self.lines = []
        self.cond = threading.Condition()
        threading.Thread(target=self.read, args=(proc,), daemon=True).start()

    def read(self, proc):
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            with self.cond:
                self.lines.append(event)
                self.cond.notify_all()

    def wait(self, predicate, start, timeout=120):
        """The first event at index >= start matching predicate; returns (index, event)."""
        deadline = time.time() + timeout
        with self.cond:
            while True:
                for i in range(start, len(self.lines)):
                    if predicate(self.lines[i]):
                        return i, self.lines[i]
                left = deadline - time.time()
                if left <= 0:
                    sys.exit("timed out waiting for the agent")
                self.cond.wait(left)


def at(event):
    return datetime.datetime.fromisoformat(event["at"].replace("Z", "+00:00")).timestamp()


def latency(runs, files):
    dir = checkout(files)
    proc = subprocess.Popen(
        [DOCKHAND, "watch", ".", "--json", "--debounce", f"{DEBOUNCE_MS}ms"],
        cwd=dir, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    events = Events(proc)
    try:
        seen, _ = events.wait(lambda e: e["type"] == "job_finished", 0)
        samples = []
        for run in range(runs):
            time.sleep(0.5)
            saved = time.time()
            with open(os.path.join(dir, "msg.txt"), "w") as f:
                f.write(f"run {run}\n")
            i, _ = events.wait(lambda e: e["type"] == "job_started", seen + 1)
            _, build = events.wait(lambda e: e["type"] == "stage_started" and e["stage"] == 1, i)
            seen, _ = events.wait(lambda e: e["type"] == "job_finished", i)
            samples.append((at(build) - saved) * 1000)
    finally:
        proc.terminate()
        proc.wait()
        subprocess.run(["rm", "-rf", dir])
    docker = []
    with tempfile.TemporaryDirectory() as ctx:
        with open(os.path.join(ctx, "Dockerfile"), "w") as f:
            f.write("FROM dockhand/busybox:local\nRUN echo {}\n".format(time.time()))
        for _ in range(runs):
            start = time.time()
            build = subprocess.Popen(["docker", "build", "--no-cache", "-q", ctx],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            build.wait()
            docker.append((time.time() - start) * 1000)
    median = statistics.median(samples)
    print(f"\n## save → build stage start, {files} extra files (median of {runs}, debounce {DEBOUNCE_MS} ms)")
    print(f"  dockhand watch   {median:7.1f} ms  = debounce + {median - DEBOUNCE_MS:.1f} ms"
          f"  (min {min(samples):.1f}, max {max(samples):.1f})")
    print(f"  target           {DEBOUNCE_MS + 50:7.1f} ms")
    print(f"  for scale: one whole `docker build` of a one-step Dockerfile takes "
          f"{statistics.median(docker):.0f} ms")


def proc_status(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def idle_agent(sources, wait_for_job):
    dir = checkout(0)
    with open(os.path.join(dir, "agent.toml"), "w") as f:
        f.write(sources)
    proc = subprocess.Popen([DOCKHAND, "agent", "--json"], cwd=dir,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    events = Events(proc)
    try:
        if wait_for_job:
            events.wait(lambda e: e["type"] == "job_finished", 0)
        time.sleep(5)
        return proc_status(proc.pid)
    finally:
        proc.terminate()
        proc.wait()
        subprocess.run(["rm", "-rf", dir])


def idle():
    schedule = '[[source]]\nkind = "schedule"\ncron = "@yearly"\npath = "."\ncatch_up = false\n'
    watch = '[[source]]\nkind = "watch"\npath = "."\n'
    print("\n## idle agent, 5 s after start or after its last job (target: peak RSS <= 20 MiB)")
    for label, sources, job in [
        ("a schedule, no job yet", schedule, False),
        ("a watch and a schedule, after one job", watch + schedule, True),
    ]:
        status = idle_agent(sources, job)
        print(f"  {label:<40} peak RSS (VmHWM) {status['VmHWM']:>10}"
              f"   current {status['VmRSS']:>10}   threads {status['Threads']}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--only", choices=["latency", "idle"])
    args = parser.parse_args()
    if not os.path.exists(DOCKHAND):
        sys.exit("build the release binary first: cargo build --release")
    if args.only in (None, "latency"):
        latency(args.runs, 0)
        latency(args.runs, args.files)
    if args.only in (None, "idle"):
        idle()


if __name__ == "__main__":
    main()
