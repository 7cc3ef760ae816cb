"""Dispatch benchmark: how well the daemon keeps 32 GPUs on 4 SSH hosts busy.

    python bench/dispatch.py [--hosts 4] [--gpus 8] [--runs 320] [--seconds 3] [--keep]

NOTE: this needs a daemon that builds an `SshHost` (hypd/ssh.py) for each host in
$HYPD_HOME/hosts.toml (hypd/inventory.py). A daemon without that stops it with a clear
message: the daemon does not list the SSH hosts.

What it does: starts N real OpenSSH servers on 127.0.0.1 (tests/sshd.py), each a simulated
host with its own fake nvidia-smi reporting G idle GPUs and its own workdir; writes
hosts.toml for them and a config.toml with the local machine disabled and fast polling;
starts `hypd serve` on a fresh $HYPD_HOME; submits one random-search study of R trials,
each a `sleep S` then a METRICS line, 1 GPU per run, parallel = N x G; waits with
`hypd wait`; then reads every run (`hypd ls --json`) and prints:

    makespan / ideal      ideal = ceil(R / (N x G)) x S
    idle GPU fraction     GPU-seconds left idle while trials still waited to start
    launch latency        median / p99: from the moment a GPU fell free (or the submit)
                          to the run's wrapper writing its pid file on the host; and the
                          daemon's part alone (to its `started` timestamp)
    daemon CPU seconds    user + system of the `hypd serve` process
    daemon peak RSS       VmHWM of that process

Everything runs on this machine: the remote workdirs are local folders, so pid files
can be read directly for timing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hypd.inventory import save_inventory  # noqa: E402
from tests.fakes.nvidia_smi import gpu  # noqa: E402
from tests.sshd import SshdCluster, sshd_unavailable  # noqa: E402

STUDY = "dispatch"


class BenchError(RuntimeError):
    pass


def cli(env: dict[str, str], *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "hypd", *args], env=env, capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise BenchError(f"hypd {' '.join(args)} exited {result.returncode}: {result.stderr.strip() or result.stdout.strip()}")
    return result


def proc_usage(pid: int) -> tuple[float, int]:
    """(CPU seconds, peak RSS in KiB) of a live process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    peak = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1])
    return cpu, peak


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    if not values:
        return math.nan
    k = (len(values) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def wait_for_hosts(env: dict[str, str], names: list[str], gpus: int, timeout: float, daemon: subprocess.Popen[bytes],
                   home: Path) -> None:
    deadline = time.monotonic() + timeout
    listed: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise BenchError(f"the daemon exited with {daemon.returncode}; see {home / 'serve.out'}")
        result = cli(env, "hosts", "--json", check=False, timeout=30)
        if result.returncode == 0:
            listed = json.loads(result.stdout)
            known = {h["name"]: h for h in listed}
            missing = [n for n in names if n not in known]
            if missing:
                raise BenchError(
                    f"the daemon does not know the SSH hosts in {home / 'hosts.toml'} (it lists: "
                    f"{', '.join(known) or 'none'}; missing: {', '.join(missing)}). This benchmark runs once "
                    "SshHost (hypd/ssh.py) is integrated into the daemon.")
            if all(known[n]["state"] == "up" and len(known[n]["gpus"]) == gpus for n in names):
                return
        time.sleep(0.5)
    states = ", ".join(f"{h['name']}: {h['state']} {h.get('why') or ''} ({len(h['gpus'])} GPUs)" for h in listed)
    raise BenchError(f"the SSH hosts did not come up with {gpus} GPUs each within {timeout:g} s: {states}")


def analyse(runs: list[dict[str, Any]], submitted: float, roots: dict[str, Path], n_gpus: int, seconds: float,
            n_runs: int) -> dict[str, Any]:
    done = [r for r in runs if r["started"] is not None and r["ended"] is not None]
    if len(done) < n_runs:
        states: dict[str, int] = {}
        for r in runs:
            states[r["state"]] = states.get(r["state"], 0) + 1
        raise BenchError(f"only {len(done)} of {n_runs} runs ran to an end: {states}")
    failed = [r for r in done if r["state"] != "completed"]

    # When each run's wrapper really started on its host: its pid file's mtime.
    for r in done:
        pid_file = roots[r["host"]] / "runs" / STUDY / f"{r['run_no']:04d}" / "pid"
        try:
            r["remote_start"] = pid_file.stat().st_mtime
        except OSError:
            r["remote_start"] = r["started"]

    makespan = max(r["ended"] for r in done) - submitted
    ideal = math.ceil(n_runs / n_gpus) * seconds

    # Launch latency: per GPU, from the moment it fell free (the previous run on it ended,
    # or the submit) to the next run on it starting.
    by_gpu: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in done:
        for g in r["gpus"] or []:
            by_gpu.setdefault((r["host"], g), []).append(r)
    launch, placement = [], []
    for seq in by_gpu.values():
        seq.sort(key=lambda r: r["started"])
        free_at = submitted
        for r in seq:
            launch.append(r["remote_start"] - free_at)
            placement.append(r["started"] - free_at)
            free_at = r["ended"]

    # Idle GPU-seconds while work waited: from the submit to the last run's start.
    last_start = max(r["remote_start"] for r in done)
    window = max(1e-9, last_start - submitted)
    busy = sum(max(0.0, min(r["ended"], last_start) - max(r["remote_start"], submitted)) for r in done)
    idle_fraction = max(0.0, 1 - busy / (n_gpus * window))

    return {"runs": len(done), "failed": len(failed), "makespan_s": makespan, "ideal_s": ideal,
            "makespan_over_ideal": makespan / ideal, "idle_gpu_fraction_while_waiting": idle_fraction,
            "launch_latency_median_s": statistics.median(launch), "launch_latency_p99_s": percentile(launch, 99),
            "placement_latency_median_s": statistics.median(placement),
            "placement_latency_p99_s": percentile(placement, 99)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", type=int, default=4)
    p.add_argument("--gpus", type=int, default=8, help="fake GPUs per host")
    p.add_argument("--runs", type=int, default=320)
    p.add_argument("--seconds", type=float, default=3.0, help="length of one trial")
    p.add_argument("--timeout", type=float, default=900.0, help="give up after this many seconds")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, database)")
    p.add_argument("--serve", default=f"{sys.executable} -m hypd serve",
                   help="the command that runs the daemon in the foreground (default: %(default)s); "
                        "to try an integration of SshHost before it is in the daemon")
    args = p.parse_args()

    reason = sshd_unavailable()
    if reason:
        print(f"dispatch benchmark: {reason}", file=sys.stderr)
        return 2

    base = Path(tempfile.mkdtemp(prefix="hyb", dir="/tmp"))  # short: the daemon's socket lives here
    home = base / "home"
    home.mkdir()
    cluster = SshdCluster(base / "sshd")
    daemon: subprocess.Popen[bytes] | None = None
    env = dict(os.environ, HYPD_HOME=str(home))
    try:
        servers = [cluster.add(f"node{i + 1}", gpus=[gpu(g) for g in range(args.gpus)]) for i in range(args.hosts)]
        roots = {s.name: s.root for s in servers}
        save_inventory(home / "hosts.toml", [s.host_config() for s in servers])
        (home / "config.toml").write_text(textwrap.dedent("""\
            [daemon]
            poll_interval = "0.1s"
            gpu_poll = "0.5s"
            kill_grace = "2s"

            [local]
            enabled = false
            """))
        n_gpus = args.hosts * args.gpus
        study = base / "dispatch.toml"
        study.write_text(textwrap.dedent(f"""\
            [study]
            name = "{STUDY}"
            objective = {{ metric = "loss", goal = "minimize" }}
            algorithm = "random"
            max_trials = {args.runs}
            parallel = {n_gpus}
            gpus = 1
            seed = 7

            [params]
            x = {{ type = "float", low = -1.0, high = 1.0 }}

            [run]
            workdir = "."
            command = "sleep {args.seconds:g}; echo \\"METRICS: loss={{x}}\\""
            """))

        with open(home / "serve.out", "ab") as out:
            daemon = subprocess.Popen(shlex.split(args.serve), env=env, stdout=out,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for_hosts(env, [s.name for s in servers], args.gpus, 60, daemon, home)
        cpu_before, _ = proc_usage(daemon.pid)

        submitted = time.time()
        cli(env, "submit", str(study))
        cli(env, "wait", STUDY, "--timeout", str(args.timeout), timeout=args.timeout + 30)
        cpu_after, peak_kib = proc_usage(daemon.pid)
        runs = json.loads(cli(env, "ls", "--study", STUDY, "--json", timeout=120).stdout)
        result = analyse(runs, submitted, roots, n_gpus, args.seconds, args.runs)
        result.update(daemon_cpu_s=cpu_after - cpu_before, daemon_cpu_total_s=cpu_after,
                      daemon_peak_rss_mib=peak_kib / 1024, hosts=args.hosts, gpus_per_host=args.gpus,
                      trial_s=args.seconds)

        print(f"{args.runs} runs of {args.seconds:g} s on {args.hosts} SSH hosts x {args.gpus} GPUs "
              f"({result['failed']} not completed)")
        print(f"makespan            {result['makespan_s']:.1f} s  (ideal {result['ideal_s']:.1f} s, "
              f"x{result['makespan_over_ideal']:.2f})")
        print(f"idle GPU fraction   {result['idle_gpu_fraction_while_waiting']:.1%} of GPU-seconds while work waited")
        print(f"launch latency      median {result['launch_latency_median_s'] * 1000:.0f} ms, "
              f"p99 {result['launch_latency_p99_s'] * 1000:.0f} ms  (GPU free -> pid file on the host)")
        print(f"placement latency   median {result['placement_latency_median_s'] * 1000:.0f} ms, "
              f"p99 {result['placement_latency_p99_s'] * 1000:.0f} ms  (GPU free -> daemon marks it started)")
        print(f"daemon CPU          {result['daemon_cpu_s']:.1f} s during the study "
              f"({result['daemon_cpu_total_s']:.1f} s in all)")
        print(f"daemon peak RSS     {result['daemon_peak_rss_mib']:.0f} MiB")
        print(json.dumps(result))
        return 0
    except BenchError as exc:
        print(f"dispatch benchmark: {exc}", file=sys.stderr)
        return 1
    finally:
        if daemon is not None and daemon.poll() is None:
            cli(env, "stop", "--kill-runs", check=False, timeout=60)
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
        cluster.close()
        if args.keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
