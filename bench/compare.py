#!/usr/bin/env python3
"""dockhand against the plain docker CLI doing the same work, side by side in one run.

Prints medians and ratios (dockhand / docker; below 1.0 means dockhand is faster) and
dockhand's peak RSS. Needs the release binary (cargo build --release) and the engine with
dockhand/busybox:local (scripts/ensure-docker). Usage: bench/compare.py [--runs N] [--only NAME]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKHAND = os.path.join(ROOT, "target", "release", "dockhand")
BASE = "dockhand/busybox:local"


def timed(argv, cwd=None, stdout=subprocess.DEVNULL, env=None):
    """Runs argv; returns (seconds, peak RSS in MiB of that process tree's largest member).
    Dirty pages are written back first, so one run's writeback does not slow the next."""
    os.sync()
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=stdout, stderr=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(argv)}")
    return elapsed, usage.ru_maxrss / 1024


def sh(script, cwd=None):
    return lambda: timed(["sh", "-c", script], cwd=cwd)


def measure(name, runs, contenders):
    """contenders: [(label, fn)] where fn() -> (seconds, rss), run interleaved. Labels
    starting with "dockhand" are compared with every other."""
    for _, fn in contenders:
        fn()  # warm the cache and the engine
    samples = {label: [] for label, _ in contenders}
    rss = {label: 0.0 for label, _ in contenders}
    for _ in range(runs):
        for label, fn in contenders:
            seconds, peak = fn()
            samples[label].append(seconds)
            rss[label] = max(rss[label], peak)
    medians = {label: statistics.median(s) for label, s in samples.items()}
    print(f"\n## {name} (median of {runs})")
    for label, _ in contenders:
        print(f"  {label:<44} {medians[label]:8.3f}s  peak RSS {rss[label]:6.1f} MiB")
    ours = [label for label, _ in contenders if label.startswith("dockhand")]
    theirs = [label for label, _ in contenders if not label.startswith("dockhand")]
    for a in ours:
        for b in theirs:
            print(f"  ratio  {a} / {b} = {medians[a] / medians[b]:.3f}")
    return medians, rss


def trivial(runs, work):
    d = os.path.join(work, "trivial")
    os.makedirs(d)
    with open(os.path.join(d, "config.yml"), "w") as f:
        f.write(f"tag: bench-trivial\ncontext: false\ncommands: [FROM {BASE}, 'RUN echo built > /built']\ncommand: 'true'\n")
    with open(os.path.join(d, "Dockerfile"), "w") as f:
        f.write(f"FROM {BASE}\nRUN echo built > /built\n")
    results = os.path.join(work, "results")
    return measure("trivial job: cached build + run `true`", runs, [
        ("dockhand run", lambda: timed([DOCKHAND, "--no-harpoonrc", "run", "--results-dir", results], cwd=d)),
        ("docker build -q + docker run --rm", sh("docker build -q -t bench-trivial-cli . >/dev/null && docker run --rm bench-trivial-cli true", cwd=d)),
        ("docker run --rm (image already built)", lambda: timed(["docker", "run", "--rm", "bench-trivial-cli", "true"])),
        ("docker run --rm on dockhand's isolated network", lambda: timed(["docker", "run", "--rm", "--network", isolated_network(), "bench-trivial-cli", "true"])),
    ])


def isolated_network():
    """The user-defined network dockhand runs one-shot tasks on (made by its first run)."""
    names = subprocess.run(
        ["docker", "network", "ls", "--filter", "label=dockhand.shared=isolated", "--format", "{{.Name}}"],
        check=True, capture_output=True, text=True).stdout.split()
    if not names:
        sys.exit("no dockhand isolated network: dockhand run has not made it")
    return names[0]


def big_output(runs, work):
    d = os.path.join(work, "output")
    os.makedirs(d)
    producer = "yes 0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvw | head -c 200000000"
    with open(os.path.join(d, "config.yml"), "w") as f:
        f.write(f"tag: bench-output\ncontext: false\ncommands: [FROM {BASE}]\nbash: '{producer}'\n")
    subprocess.run([DOCKHAND, "--no-harpoonrc", "build"], cwd=d, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = os.path.join(work, "results")
    outcome = measure("a task writing 200 MB to stdout", runs, [
        ("dockhand run (console + results dir)", lambda: timed([DOCKHAND, "--no-harpoonrc", "run", "--results-dir", results], cwd=d)),
        ("docker run --rm (json-file log driver)", lambda: timed(["docker", "run", "--rm", "bench-output:latest", "sh", "-c", producer])),
        ("docker run --rm --log-driver none", lambda: timed(["docker", "run", "--rm", "--log-driver", "none", "bench-output:latest", "sh", "-c", producer])),
    ])
    for job in os.listdir(results):
        stage_log = os.path.join(results, job, "stages", "2-run-bench-output.log")
        size = os.path.getsize(stage_log)
        if size != 200_000_001:  # 200 MB, and the newline that ends its unfinished last line
            sys.exit(f"dockhand lost output: {stage_log} has {size} bytes, not 200000001")
    return outcome


def artifact(runs, work):
    """A task that writes 100 MB, kept as an artifact, against docker create/start, docker cp
    of the same path and docker rm."""
    d = os.path.join(work, "artifact")
    os.makedirs(d)
    producer = "mkdir -p /out && head -c 100000000 /dev/urandom > /out/blob"
    with open(os.path.join(d, "config.yml"), "w") as f:
        f.write(f"tag: bench-artifact\ncontext: false\ncommands: [FROM {BASE}]\nbash: '{producer}'\n"
                "artifacts: {paths: [/out], max_size: 200m}\n")
    subprocess.run([DOCKHAND, "--no-harpoonrc", "build"], cwd=d, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = os.path.join(work, "results-artifact")
    copies = os.path.join(work, "docker-cp")
    os.makedirs(copies)
    docker = (f"id=$(docker create --log-driver none bench-artifact:latest sh -c '{producer}') && docker start -a $id && "
              f"docker cp $id:/out $(mktemp -d -p {copies}) && docker rm $id >/dev/null")
    outcome = measure("a task writing 100 MB, copied out", runs, [
        ("dockhand run (artifacts: /out)", lambda: timed([DOCKHAND, "--no-harpoonrc", "run", "--results-dir", results], cwd=d)),
        ("docker create + start -a + cp /out + rm", sh(docker)),
    ])
    for job in os.listdir(results):
        blob = os.path.join(results, job, "artifacts", "bench-artifact", "out", "blob")
        if os.path.getsize(blob) != 100_000_000:
            sys.exit(f"dockhand lost bytes: {blob}")
    return outcome


def big_context(runs, work):
    d = os.path.join(work, "context")
    os.makedirs(d)
    block = os.urandom(10_000)
    for i in range(20_000):
        sub = os.path.join(d, "src", f"d{i // 500:03d}")
        os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, f"f{i:05d}.dat"), "wb") as f:
            f.write(block[: 5_000 + (i % 10) * 1000] + i.to_bytes(4, "little"))
    with open(os.path.join(d, "config.yml"), "w") as f:
        # docker's Dockerfiles (rewritten during the run) are not part of dockhand's context.
        f.write(f"tag: bench-context\ncontext: {{exclude: ['Dockerfile*']}}\ncommands: [FROM {BASE}, 'COPY src /src', [ENV, 'RUN_ID={{RUN_ID:from_env}}']]\ncommand: 'true'\n")
    with open(os.path.join(d, "Dockerfile"), "w") as f:
        f.write(f"FROM {BASE}\nCOPY src /src\nENV RUN_ID=0\n")
    results = os.path.join(d, ".dockhand", "results")
    size = subprocess.run(["du", "-sm", os.path.join(d, "src")], capture_output=True, text=True).stdout.split()[0]
    dockhand = [DOCKHAND, "--no-harpoonrc", "build", "--results-dir", results]
    runs_so_far = [0]

    def first_run():
        # A new RUN_ID changes the Dockerfile's last step, so no build has the build key,
        # and without the digest cache every file is hashed: dockhand does all its work and
        # sends the context; the engine answers FROM and COPY from its cache.
        digests = os.path.join(d, ".dockhand", "cache", "digests.tsv")
        if os.path.exists(digests):
            os.remove(digests)
        runs_so_far[0] += 1
        return timed(dockhand, cwd=d, env={**os.environ, "RUN_ID": str(runs_so_far[0])})

    def docker_changed():
        # The same change for docker: its last step is new, FROM and COPY come from cache.
        with open(os.path.join(d, "Dockerfile.changed"), "w") as f:
            f.write(f"FROM {BASE}\nCOPY src /src\nENV RUN_ID=x{runs_so_far[0]}\n")
        return timed(["sh", "-c", "docker build -q -f Dockerfile.changed -t bench-context-cli2 . >/dev/null"], cwd=d)

    edits = [0]

    def edited(run):
        # One file gets content no earlier run had, so the COPY step runs again for both.
        def contender():
            edits[0] += 1
            with open(os.path.join(d, "src", "d000", "f00000.dat"), "wb") as f:
                f.write(block + edits[0].to_bytes(4, "little"))
            return run()
        return contender

    first = measure(f"a 20,000-file context ({size} MB)", runs, [
        ("dockhand build, unchanged re-run", lambda: timed(dockhand, cwd=d, env={**os.environ, "RUN_ID": "0"})),
        ("dockhand build, first run (last step changed, no digest cache)", first_run),
        ("docker build -q, every step cached", sh("docker build -q -t bench-context-cli . >/dev/null", cwd=d)),
        ("docker build -q, last step changed", docker_changed),
    ])
    # Apart: these edits would make the re-runs above rebuild.
    changed = measure(f"the same context, one file changed each run ({size} MB)", runs, [
        ("dockhand build, one file changed (COPY runs)", edited(lambda: timed(dockhand, cwd=d, env={**os.environ, "RUN_ID": "0"}))),
        ("docker build -q, one file changed (COPY runs)", edited(sh("docker build -q -t bench-context-cli . >/dev/null", cwd=d))),
    ])
    return first, changed


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", choices=["trivial", "output", "context", "artifact"])
    args = parser.parse_args()
    if not os.access(DOCKHAND, os.X_OK):
        sys.exit("build the release binary first: cargo build --release")
    env_note = subprocess.run(["docker", "version", "--format", "engine {{.Server.Version}}, API {{.Server.APIVersion}}"], capture_output=True, text=True).stdout.strip()
    print(f"dockhand vs docker CLI on {os.cpu_count()} cores, {env_note}")
    work = tempfile.mkdtemp(prefix="dockhand-bench-")
    try:
        for name, fn in [("trivial", trivial), ("output", big_output), ("artifact", artifact), ("context", big_context)]:
            if args.only in (None, name):
                fn(args.runs, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
