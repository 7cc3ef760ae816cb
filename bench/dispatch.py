"""Dispatch benchmark: how well the daemon keeps 32 GPUs on 4 SSH hosts busy, and what it
costs per run (daemon CPU, SSH requests).

    python bench/dispatch.py [--hosts 4] [--gpus 8] [--runs 320] [--seconds 3] [--files 0] [--keep]

What it does: starts N real OpenSSH servers on 127.0.0.1 (tests/sshd.py), each a simulated
host with its own fake nvidia-smi reporting G idle GPUs and its own workdir; writes
hosts.toml for them and a config.toml with the local machine disabled (and the daemon's
defaults otherwise: GPUs read every second per host, unless --gpu-poll); starts `hypd serve`
on a fresh $HYPD_HOME, which builds an SshHost (hypd/ssh/) per host: one connection, one
host watcher (hypd/hostwatch.py) and one streaming nvidia-smi each. Once every host is up
it measures the daemon's idle CPU for --idle seconds, submits one random-search study of
R trials, each `sleep S` then a METRICS line, 1 GPU per run, parallel = N x G (with
--files F, F small files in `run.files`, copied to each host over SFTP before its first
run), polls the `studies` op once a second until the study has finished, and prints:

    makespan / ideal      makespan: submit -> the daemon recorded the last run's end;
                          ideal = ceil(R / (N x G)) x S
    run length            median time on the host from the wrapper's pid file to its exit
                          file (S plus the shells' own start-up)
    idle GPU-seconds      while work waited (submit -> the last run's start): the share
                          of N x G x that window in which a GPU ran nothing, a GPU's busy
                          time being [pid file, exit file] of its runs on the host
    launch latency        p50 / p99 per GPU, from the moment it fell free on the host (the
                          previous run's exit file; the submit for a GPU's first run) to
                          the next run's pid file there; `reuse` counts only GPUs falling
                          free mid-study, the first wave (all N x G at once) apart
    daemon CPU            user + system of `hypd serve` during the study, per run; and per
                          run net of its idle rate (ticks, GPU streams, keepalives, this
                          benchmark's polling) measured before the submit
    daemon peak RSS       VmHWM of that process
    SSH requests per run  counted on the servers (see bench/sshcount.py): each sshd runs at
                          LogLevel DEBUG1, which logs every channel open, every channel
                          request (exec, subsystem, env, signal...) and every connection-
                          level request (keepalive) a client sends; the SFTP subsystem is a
                          proxy that logs every SFTP packet the client sends. Counted from
                          the submit to the study's end, over all hosts, divided by R.
                          Log bytes streamed back on the watcher's channel, and the
                          watcher's commands, are data on an open channel, not requests:
                          their volume is printed apart (log bytes per run).

Each figure is printed with the load average (the machine may be shared: 2 cores here run
32 fake GPUs' worth of `sleep`s, 4 sshds, 4 watchers and the daemon). Everything runs on
this machine: the remote workdirs are local folders, so the host-side pid and exit files
are read directly for timing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import BenchError, Daemon, load, main_thread_cpu, percentile, proc_usage, study_runs  # noqa: I001
from sshcount import count_sftp_log, count_sshd_log, sftp_proxy_command, size

from hypd.inventory import save_inventory
from tests.fakes.nvidia_smi import gpu
from tests.sshd import SshdCluster, sshd_unavailable

STUDY = "dispatch"


def wait_for_hosts(daemon: Daemon, names: list[str], gpus: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    listed: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        daemon.check_alive()
        listed = daemon.try_call("hosts", 10.0) or []
        known = {h["name"]: h for h in listed}
        missing = [n for n in names if n not in known]
        if listed and missing:
            raise BenchError(f"the daemon does not list the SSH hosts of {daemon.home / 'hosts.toml'} "
                             f"(it lists: {', '.join(known) or 'none'}; missing: {', '.join(missing)})")
        if listed and all(known[n]["state"] == "up" and len(known[n]["gpus"]) == gpus for n in names):
            return
        time.sleep(0.2)
    states = ", ".join(f"{h['name']}: {h['state']} {h.get('why') or ''} ({len(h['gpus'])} GPUs)" for h in listed)
    raise BenchError(f"the SSH hosts did not come up with {gpus} GPUs each within {timeout:g} s: {states}")


def mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def analyse(runs: list[dict[str, Any]], submitted: float, roots: dict[str, Path], n_gpus: int, seconds: float,
            n_runs: int) -> dict[str, Any]:
    done = [r for r in runs if r["started"] is not None and r["ended"] is not None]
    if len(done) < n_runs:
        states = Counter(r["state"] for r in runs)
        raise BenchError(f"only {len(done)} of {n_runs} runs ran to an end: {dict(states)}")
    failed = [r for r in done if r["state"] != "completed"]

    # On the host: when each run's wrapper started (its pid file) and ended (its exit file).
    missing = 0
    for r in done:
        ctl = roots[r["host"]] / "runs" / STUDY / f"{r['run_no']:04d}"
        r["host_start"], r["host_end"] = mtime(ctl / "pid"), mtime(ctl / "exit")
        if r["host_start"] is None or r["host_end"] is None:
            missing += 1
            r["host_start"] = r["host_start"] or r["started"]
            r["host_end"] = r["host_end"] or r["ended"]

    makespan = max(r["ended"] for r in done) - submitted
    ideal = math.ceil(n_runs / n_gpus) * seconds

    by_gpu: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in done:
        for g in r["gpus"] or []:
            by_gpu.setdefault((r["host"], g), []).append(r)
    first, reuse, placement = [], [], []
    for seq in by_gpu.values():
        seq.sort(key=lambda r: r["host_start"])
        free_at = submitted
        for i, r in enumerate(seq):
            (first if i == 0 else reuse).append(r["host_start"] - free_at)
            placement.append(r["started"] - free_at)
            free_at = r["host_end"]
    launch = first + reuse

    last_start = max(r["host_start"] for r in done)
    window = max(1e-9, last_start - submitted)
    busy = sum(max(0.0, min(r["host_end"], last_start) - max(r["host_start"], submitted)) for r in done)
    idle_fraction = max(0.0, 1 - busy / (n_gpus * window))
    lengths = [r["host_end"] - r["host_start"] for r in done]

    return {"runs": len(done), "failed": len(failed), "host_files_missing": missing, "makespan_s": makespan,
            "ideal_s": ideal, "makespan_over_ideal": makespan / ideal, "run_length_median_s": statistics.median(lengths),
            "idle_gpu_fraction_while_waiting": idle_fraction,
            "launch_p50_s": percentile(launch, 50), "launch_p99_s": percentile(launch, 99),
            "launch_first_wave_p50_s": percentile(first, 50), "launch_first_wave_max_s": max(first),
            "launch_reuse_p50_s": percentile(reuse, 50), "launch_reuse_p99_s": percentile(reuse, 99),
            "placement_p50_s": percentile(placement, 50), "placement_p99_s": percentile(placement, 99)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", type=int, default=4)
    p.add_argument("--gpus", type=int, default=8, help="fake GPUs per host")
    p.add_argument("--runs", type=int, default=320)
    p.add_argument("--seconds", type=float, default=3.0, help="length of one trial")
    p.add_argument("--files", type=int, default=0, help="small files in run.files, copied to each host over SFTP")
    p.add_argument("--gpu-poll", default="", help="[daemon] gpu_poll in config.toml (default: the daemon's)")
    p.add_argument("--idle", type=float, default=10.0, help="seconds of idle daemon CPU measured before the submit")
    p.add_argument("--timeout", type=float, default=900.0, help="give up after this many seconds")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, database)")
    p.add_argument("--serve", default=f"{sys.executable} -m hypd serve",
                   help="the command that runs the daemon in the foreground (default: %(default)s)")
    args = p.parse_args()

    reason = sshd_unavailable()
    if reason:
        print(f"dispatch benchmark: {reason}", file=sys.stderr)
        return 2

    base = Path(tempfile.mkdtemp(prefix="hyb", dir="/tmp"))  # short: the daemon's socket lives here
    home = base / "home"
    home.mkdir()
    cluster = SshdCluster(base / "sshd")
    daemon = Daemon(home, args.serve)
    print(f"at start: {load()}")
    try:
        sftp_logs = [base / f"sftp-{i + 1}.log" for i in range(args.hosts)]
        servers = [cluster.add(f"node{i + 1}", gpus=[gpu(g) for g in range(args.gpus)], log_level="DEBUG1",
                               sftp_server=sftp_proxy_command(sftp_logs[i])) for i in range(args.hosts)]
        roots = {s.name: s.root for s in servers}
        save_inventory(home / "hosts.toml", [s.host_config() for s in servers])
        gpu_poll = f'gpu_poll = "{args.gpu_poll}"\n' if args.gpu_poll else ""
        (home / "config.toml").write_text(f"[daemon]\n{gpu_poll}\n[local]\nenabled = false\n")
        n_gpus = args.hosts * args.gpus
        workdir = base / "code"
        workdir.mkdir()
        files = ""
        if args.files:
            for i in range(args.files):
                (workdir / f"part{i}.py").write_text(f"# part {i}\n" + "x = 1\n" * 200)
            files = f"files = {json.dumps([f'part{i}.py' for i in range(args.files)])}"
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
            retries = 0

            [params]
            x = {{ type = "float", low = -1.0, high = 1.0 }}

            [run]
            workdir = "{workdir}"
            {files}
            command = "sleep {args.seconds:g}; echo \\"METRICS: loss={{x}}\\""
            """))

        daemon.start()
        wait_for_hosts(daemon, [s.name for s in servers], args.gpus, 60)

        # The idle rate: hosts up, nothing to run, polled as during the study.
        cpu0, t0 = daemon.cpu(), time.monotonic()
        while time.monotonic() - t0 < args.idle:
            daemon.try_call("studies", 10.0)
            time.sleep(1.0)
        idle_rate = (daemon.cpu() - cpu0) / (time.monotonic() - t0)

        sshd_offsets = [size(s.log_file) for s in servers]
        sftp_offsets = [size(f) for f in sftp_logs]
        cpu_before, t_before = daemon.cpu(), time.monotonic()
        loop_before = main_thread_cpu(daemon.pid)
        submitted = time.time()
        daemon.call("submit", path=str(study), text=study.read_text(), as_name=None)
        daemon.wait_study(STUDY, args.timeout)
        study_s = time.monotonic() - t_before
        cpu_after, peak_kib = proc_usage(daemon.pid)
        loop_cpu = main_thread_cpu(daemon.pid) - loop_before
        load_end = load()
        requests: Counter[str] = Counter()
        for server, off in zip(servers, sshd_offsets):
            requests += count_sshd_log(server.log_file, off)
        for log, off in zip(sftp_logs, sftp_offsets):
            requests += count_sftp_log(log, off)
        connects = requests.get("connect", 0)  # a new TCP connection counts as one request

        runs = study_runs(daemon, STUDY)
        result = analyse(runs, submitted, roots, n_gpus, args.seconds, args.runs)
        log_bytes = sum(os.path.getsize(r["log_path"]) for r in runs if r.get("log_path")
                        and os.path.exists(r["log_path"]))
        total_requests = sum(requests.values())
        keepalives = sum(v for k, v in requests.items() if k.startswith("global:keepalive"))
        cpu = cpu_after - cpu_before
        result.update(
            daemon_cpu_s=cpu, daemon_cpu_ms_per_run=cpu / args.runs * 1000, daemon_loop_cpu_s=loop_cpu,
            daemon_idle_cpu_ms_per_s=idle_rate * 1000,
            daemon_cpu_ms_per_run_net=max(0.0, cpu - idle_rate * study_s) / args.runs * 1000,
            daemon_peak_rss_mib=peak_kib / 1024, ssh_connections_opened=connects,
            ssh_requests=dict(sorted((k, v) for k, v in requests.items() if v)),
            ssh_requests_per_run=total_requests / args.runs,
            ssh_requests_per_run_without_keepalives=(total_requests - keepalives) / args.runs,
            log_bytes_per_run=log_bytes / args.runs, hosts=args.hosts, gpus_per_host=args.gpus,
            trial_s=args.seconds, files=args.files, load_at_end=os.getloadavg())

        r = result
        ms = 1000
        print(f"{args.runs} runs of {args.seconds:g} s on {args.hosts} SSH hosts x {args.gpus} GPUs, "
              f"{args.files} file(s) staged ({r['failed']} not completed)")
        print(f"makespan            {r['makespan_s']:.1f} s  (ideal {r['ideal_s']:.1f} s, "
              f"x{r['makespan_over_ideal']:.3f}; goal <= 1.10)")
        print(f"run length          median {r['run_length_median_s']:.3f} s on the host (pid file -> exit file)")
        print(f"idle GPU-seconds    {r['idle_gpu_fraction_while_waiting']:.1%} while work waited (goal <= 3 %)")
        print(f"launch latency      p50 {r['launch_p50_s'] * ms:.0f} ms, p99 {r['launch_p99_s'] * ms:.0f} ms "
              f"(GPU free on the host -> next pid file; goal p50 <= 200, p99 <= 500)")
        print(f"  reuse             p50 {r['launch_reuse_p50_s'] * ms:.0f} ms, p99 {r['launch_reuse_p99_s'] * ms:.0f} ms"
              f"  (a GPU freed mid-study)")
        print(f"  first wave        p50 {r['launch_first_wave_p50_s'] * ms:.0f} ms, max "
              f"{r['launch_first_wave_max_s'] * ms:.0f} ms  (submit -> the {n_gpus} first pid files)")
        print(f"placement latency   p50 {r['placement_p50_s'] * ms:.0f} ms, p99 {r['placement_p99_s'] * ms:.0f} ms"
              f"  (GPU free on the host -> the daemon records `running`)")
        print(f"daemon CPU          {cpu:.2f} s in {study_s:.1f} s: {r['daemon_cpu_ms_per_run']:.1f} ms per run; "
              f"{r['daemon_cpu_ms_per_run_net']:.1f} ms per run net of its idle "
              f"{r['daemon_idle_cpu_ms_per_s']:.1f} ms/s (goal <= 5 ms); {loop_cpu / cpu:.0%} in the event loop's "
              f"thread, the rest in SQLite's and the executor's")
        print(f"daemon peak RSS     {r['daemon_peak_rss_mib']:.0f} MiB")
        print(f"SSH requests        {r['ssh_requests_per_run']:.3f} per run "
              f"({r['ssh_requests_per_run_without_keepalives']:.3f} without keepalives; goal <= 5), "
              f"besides {r['log_bytes_per_run']:.0f} log bytes per run: "
              + (", ".join(f"{k} {v}" for k, v in r["ssh_requests"].items()) or "none")
              + f"; {connects} new connection(s)")
        print(f"at end: {load_end}")
        print(json.dumps(result))
        return 0
    except BenchError as exc:
        print(f"dispatch benchmark: {exc} ({load()})", file=sys.stderr)
        return 1
    finally:
        daemon.stop(kill_runs=True)
        cluster.close()
        if args.keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
