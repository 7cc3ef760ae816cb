"""SshHost against real OpenSSH servers on 127.0.0.1 (tests/sshd.py): connecting, host key
checks, GPUs streamed from a fake nvidia-smi, copying study code, launching detached runs,
following their logs across a dropped connection and a daemon restart, signalling process
groups, and a clean close."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from hypd.hosts import Handle, HostError, Launch, Status
from hypd.ssh import SshHost
from hypd.study import parse_study
from hypd.wrapper import RunScript
from tests.fakes.nvidia_smi import gpu, write_gpu_failure
from tests.sshd import SshdCluster, SshdHost, sshd_cluster, sshd_unavailable

pytestmark = [pytest.mark.ssh,
              pytest.mark.skipif(sshd_unavailable() is not None, reason=sshd_unavailable() or "")]

FAST: dict[str, Any] = dict(gpu_interval=0.2, log_interval=0.1, backoff=(0.1, 0.5), keepalive=(1.0, 3),
                            connect_timeout=5.0, command_timeout=15.0)


async def until(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(0.05)


def other_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]


@pytest.fixture
def cluster(tmp_path: Path) -> Any:
    with sshd_cluster(tmp_path / "sshd") as c:
        yield c


@pytest.fixture
async def hosts(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[SshHost]]]:
    """make(server, **config overrides) -> a started SshHost (home: tmp_path/home); all
    closed at the end, leaving no task behind."""
    made: list[SshHost] = []

    async def make(server: SshdHost, wait: bool = True, **overrides: Any) -> SshHost:
        host = SshHost(server.host_config(**overrides), tmp_path / "home", **FAST)
        made.append(host)
        await host.start()
        if wait:
            assert await host.wait_up(15), host.state
        return host

    yield make
    for host in made:
        await host.close()
    await asyncio.sleep(0)
    assert other_tasks() == []


def run_script(host: SshHost, number: int, command: str, study: str = "s") -> RunScript:
    root = host.root
    return RunScript(run=f"{study}:{number}", ctl_dir=f"{root}/runs/{study}/{number:04d}",
                     run_dir=f"{root}/studies/{study}/{number:04d}", workdir=root,
                     env={"PYTHONUNBUFFERED": "1"}, stages=[("train", command)])


def local_log(tmp_path: Path, study: str, number: int) -> Path:
    """Where the daemon keeps a run's log: <home>/runs/<study>/<NNNN>/log."""
    return tmp_path / "home" / "runs" / study / f"{number:04d}" / "log"


async def wait_ended(host: SshHost, handle: Handle, ctl_dir: str, timeout: float = 30) -> Status:
    async def ended() -> Status | None:
        try:
            status = await host.status(handle, ctl_dir)
        except HostError:
            return None
        return None if status.alive else status
    return await until(ended, timeout, "the run to end")


def metrics_command(lines: int, pause: float) -> str:
    return (f"{sys.executable} -c 'import time\nfor i in range({lines}):\n"
            f"    print(\"METRICS: step=%d loss=%.3f\" % (i, 1.0 / (i + 1)), flush=True)\n"
            f"    time.sleep({pause})'")


# --------------------------------------------------------------------------- connecting

async def test_connects_up_with_root_and_cpu_slots_and_closes_cleanly(cluster: SshdCluster, hosts: Any) -> None:
    server = cluster.add(gpus=[gpu(0)])
    host = await hosts(server, workdir=str(server.root / "sub" / ".." / "work"))
    assert host.state == ("up", "")
    assert host.accepting and host.down_since is None
    assert host.root == str(server.root / "work")  # created and resolved on the host
    assert (server.root / "work").is_dir()
    assert host.cpu_slots == os.cpu_count()
    host.set_draining(True)
    assert host.state[0] == "draining" and not host.accepting
    host.set_draining(False)
    assert host.accepting
    await host.close()
    assert other_tasks() == []  # no supervisor, GPU stream or log pump left
    assert host.state == ("down", "closed") and not host.accepting
    await host.close()  # twice is fine


async def test_cpu_slots_from_config(cluster: SshdCluster, hosts: Any) -> None:
    host = await hosts(cluster.add(gpus=None), cpu_slots=3)
    assert host.cpu_slots == 3


async def test_unknown_host_key_is_refused(cluster: SshdCluster, hosts: Any, tmp_path: Path) -> None:
    server = cluster.add(gpus=None)
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    host = await hosts(server, wait=False, known_hosts=str(empty))
    await until(lambda: "host key" in host.state[1], what="the host key refusal")
    state, why = host.state
    assert state == "down" and not host.accepting
    assert f"host key for 127.0.0.1:{server.port} not in known_hosts" in why
    assert f"ssh-keyscan -p {server.port} 127.0.0.1" in why and "known_hosts = false" in why
    assert host.down_since is not None and host.down_since <= time.time()
    with pytest.raises(HostError, match="is down: host key"):
        await host.status(Handle(12345, None), str(server.root / "runs/s/0001"))
    snap = await host.read_gpus()
    assert not snap.ok and "down" in (snap.error or "")

    # A changed key (another key recorded for the same host) is refused the same way.
    changed = tmp_path / "changed_known_hosts"
    other = cluster.add(gpus=None, start=False)
    changed.write_text(f"[127.0.0.1]:{server.port} {' '.join(other.host_key_pub[:2])}\n")
    host2 = await hosts(server, wait=False, known_hosts=str(changed))
    await until(lambda: "host key" in host2.state[1], what="the changed key refusal")

    # known_hosts = false is the explicit opt-out.
    host3 = await hosts(server, known_hosts=False)
    assert host3.state == ("up", "")


async def test_unreachable_host_is_down_and_methods_raise_host_error(cluster: SshdCluster,
                                                                     hosts: Any) -> None:
    server = cluster.add(gpus=None, start=False)
    host = await hosts(server, wait=False)
    await until(lambda: "refused" in host.state[1], what="connection refused")
    assert host.state[0] == "down"
    script = run_script(host, 1, "true")
    for call in (host.launch(Launch(script, "/tmp/nowhere/log")), host.find_handle(script.ctl_dir),
                 host.signal(Handle(99999, None), signal.SIGTERM), host.group_alive(Handle(99999, None))):
        with pytest.raises(HostError) as info:
            await call
        assert "\n" not in str(info.value) and "refused" in str(info.value)
    server.start()  # comes up by itself once the server is there
    assert await host.wait_up(10)


async def test_a_host_that_stops_answering_goes_down_by_keepalive(cluster: SshdCluster, hosts: Any) -> None:
    server = cluster.add(gpus=None)
    host = await hosts(server)  # keepalive every 1 s, down after 3 unanswered
    server.freeze()
    try:
        await until(lambda: host.state[0] == "down", 15, "the keepalive to give up")
        assert "keepalive" in host.state[1].lower(), host.state
    finally:
        server.thaw()
    assert await host.wait_up(15)


# --------------------------------------------------------------------------- GPUs

async def test_gpus_stream_from_one_nvidia_smi(cluster: SshdCluster, hosts: Any) -> None:
    server = cluster.add(gpus=[gpu(0), gpu(1)])
    host = await hosts(server)
    snap = await host.read_gpus()
    assert snap.ok and snap.source == "nvidia-smi"
    assert [(g.index, g.memory_used_mib) for g in snap.gpus] == [(0, 0), (1, 0)]
    # GPU 1 is taken by someone else's process: the next readings show its memory used.
    server.set_gpus([gpu(0), gpu(1, memory_used_mib=9000, utilization_pct=95, pids=[4242]), gpu(2)])

    async def changed() -> bool:
        s = await host.read_gpus()
        return len(s.gpus) == 3 and s.gpus[1].memory_used_mib == 9000
    await until(changed, 10, "the new GPU state")
    snap = await host.read_gpus()
    assert snap.gpus[1].utilization_pct == 95 and snap.gpus[0].memory_used_mib == 0
    first = snap.taken_at
    await until(lambda: host._gpu is not None and host._gpu.taken_at > first, 5, "a newer reading")
    assert host.gpu_stream_starts == 1  # one long-running process, not one per poll


async def test_host_without_nvidia_smi_offers_cpu_slots(cluster: SshdCluster, hosts: Any) -> None:
    host = await hosts(cluster.add(gpus=None))
    snap = await host.read_gpus()
    assert snap.source == "none" and not snap.gpus
    assert "nvidia-smi not found" in (snap.error or "")
    assert host.accepting and host.cpu_slots >= 1


async def test_broken_driver_is_a_failed_snapshot_then_recovers(cluster: SshdCluster, hosts: Any) -> None:
    server = cluster.add(gpus=[gpu(0)])
    assert server.gpu_state is not None
    write_gpu_failure(server.gpu_state)
    host = await hosts(server)

    async def failed() -> bool:
        s = await host.read_gpus()
        return not s.ok and "NVIDIA driver" in (s.error or "")
    await until(failed, 10, "the driver failure")
    server.set_gpus([gpu(0), gpu(1)])

    async def back() -> bool:
        return len((await host.read_gpus()).gpus) == 2
    await until(back, 15, "nvidia-smi to be restarted")


# --------------------------------------------------------------------------- study code

async def test_prepare_study_copies_changed_files_only(cluster: SshdCluster, hosts: Any,
                                                       tmp_path: Path) -> None:
    server = cluster.add(gpus=None)
    host = await hosts(server)
    src = tmp_path / "src"
    (src / "data" / "deep").mkdir(parents=True)
    (src / "train.py").write_text("print('hi')\n")
    (src / "train.py").chmod(0o755)
    (src / "data" / "a.txt").write_text("a" * 1000)
    (src / "data" / "deep" / "b.bin").write_bytes(os.urandom(300_000))
    (src / "unlisted.txt").write_text("not copied")
    text = ('[study]\nname = "cp"\nobjective = { metric = "loss", goal = "minimize" }\nalgorithm = "random"\n'
            'max_trials = 1\n[params]\nx = { type = "float", low = 0, high = 1 }\n'
            '[run]\nworkdir = "."\nfiles = ["train.py", "data/"]\ncommand = "python3 train.py"\n')
    spec = parse_study(text, "cp.toml", base_dir=src)

    workdir = await host.prepare_study(spec)
    code = server.root / "studies" / "cp" / "code"
    assert workdir == str(code)
    assert (code / "train.py").read_text() == "print('hi')\n"
    assert os.access(code / "train.py", os.X_OK)
    assert (code / "data" / "deep" / "b.bin").read_bytes() == (src / "data" / "deep" / "b.bin").read_bytes()
    assert not (code / "unlisted.txt").exists()
    assert host.uploads == 3

    assert await host.prepare_study(spec) == workdir
    assert host.uploads == 3  # nothing changed: nothing copied

    # A new SshHost (a restarted daemon) trusts the manifest kept on the host.
    host2 = await hosts(server)
    assert await host2.prepare_study(spec) == workdir and host2.uploads == 0

    (src / "data" / "a.txt").write_text("changed")
    os.utime(src / "data" / "a.txt", (time.time() + 5, time.time() + 5))
    assert await host.prepare_study(spec) == workdir
    assert host.uploads == 4 and (code / "data" / "a.txt").read_text() == "changed"

    # Without files the study's own workdir is used as it is (shared filesystem).
    bare = parse_study(text.replace('files = ["train.py", "data/"]\n', ""), "cp.toml", base_dir=src)
    assert await host.prepare_study(bare) == str(src)

    missing = parse_study(text.replace('"data/"', '"nothere.py"'), "cp.toml", base_dir=src)
    with pytest.raises(HostError, match="nothere.py"):
        await host.prepare_study(missing)


# --------------------------------------------------------------------------- runs

async def test_launch_streams_log_and_survives_a_dropped_connection(cluster: SshdCluster, hosts: Any,
                                                                   tmp_path: Path) -> None:
    server = cluster.add(gpus=None)
    host = await hosts(server)
    script = run_script(host, 1, metrics_command(40, 0.1))
    log_path = local_log(tmp_path, "s", 1)
    started = time.monotonic()
    handle = await host.launch(Launch(script, str(log_path)))
    assert time.monotonic() - started < 5
    assert handle.pid > 1 and handle.proc_start
    assert (await host.status(handle, script.ctl_dir)).alive
    await until(lambda: log_path.exists() and log_path.read_text().count("\n") >= 5, 10, "the log to stream")

    server.kill()  # the listener and its connection children: the connection really drops
    await until(lambda: host.state[0] == "down", 10, "the host to go down")
    state, why = host.state
    assert why and host.down_since is not None and not host.accepting
    with pytest.raises(HostError, match="is down"):
        await host.status(handle, script.ctl_dir)
    await asyncio.sleep(0.5)  # the run goes on meanwhile
    server.start()
    assert await host.wait_up(15)
    assert host.connects == 2

    status = await wait_ended(host, handle, script.ctl_dir)
    assert status.exit == (0, "-")
    remote = (Path(script.ctl_dir) / "log").read_bytes()
    local = log_path.read_bytes()
    assert local == remote  # byte for byte: nothing lost, nothing doubled
    lines = local.decode().splitlines()
    assert [int(line.split()[1].split("=")[1]) for line in lines] == list(range(40))
    assert host.following == []


async def test_status_and_find_handle_during_launch_wait_for_it(cluster: SshdCluster, hosts: Any, tmp_path: Path) -> None:
    # The daemon's monitor may ask about a run whose launch() has not returned yet.
    host = await hosts(cluster.add(gpus=None))
    script = run_script(host, 7, "sleep 1")
    launching = asyncio.create_task(host.launch(Launch(script, str(local_log(tmp_path, "s", 7)))))
    await asyncio.sleep(0)
    early = await host.status(None, script.ctl_dir)  # answered with the handle launch() returns
    found = await host.find_handle(script.ctl_dir)
    handle = await launching
    assert early.alive and found == handle
    assert (await host.status(found, script.ctl_dir)).alive
    assert (await wait_ended(host, handle, script.ctl_dir)).exit == (0, "-")


async def test_failed_stage_exit_and_log(cluster: SshdCluster, hosts: Any, tmp_path: Path) -> None:
    host = await hosts(cluster.add(gpus=None), setup="echo setting up")
    script = run_script(host, 2, "echo partial; printf 'no newline'; exit 3")
    script = RunScript(**{**script.__dict__, "setup": host.setup})
    handle = await host.launch(Launch(script, str(local_log(tmp_path, "s", 2))))
    status = await wait_ended(host, handle, script.ctl_dir)
    assert status.exit == (3, "train")
    text = local_log(tmp_path, "s", 2).read_text()
    assert text.startswith("setting up\npartial\nno newline")
    assert "stage train failed" in text


async def test_launch_that_cannot_start_is_a_host_error(cluster: SshdCluster, hosts: Any,
                                                        tmp_path: Path) -> None:
    host = await hosts(cluster.add(gpus=None))
    script = run_script(host, 3, "true")
    script = RunScript(**{**script.__dict__, "ctl_dir": "/proc/nope/0003"})
    with pytest.raises(HostError) as info:
        await host.launch(Launch(script, str(local_log(tmp_path, "s", 3))))
    assert "cannot" in str(info.value) and "\n" not in str(info.value)
    assert host.state == ("up", "")


async def test_signal_term_ends_the_whole_process_group(cluster: SshdCluster, hosts: Any,
                                                         tmp_path: Path) -> None:
    server = cluster.add(gpus=None)
    host = await hosts(server)
    script = run_script(host, 4, "sleep 300 & sleep 301 & echo children started; wait")
    handle = await host.launch(Launch(script, str(local_log(tmp_path, "s", 4))))
    await until(lambda: server.ssh(f"pgrep -g {handle.pid} sleep").stdout.count("\n") == 2, 10,
                "both sleeps to run")
    assert await host.group_alive(handle)
    assert await host.signal(handle, signal.SIGTERM)
    await until(lambda: _not(host.group_alive(handle)), 10, "the group to end")
    check = server.ssh(f"pgrep -g {handle.pid}; echo rc=$?")  # a fresh connection
    assert check.stdout.strip() == "rc=1", check.stdout
    status = await host.status(handle, script.ctl_dir)
    assert not status.alive and status.exit is None  # killed as a whole: no exit file
    assert not await host.signal(handle, signal.SIGTERM)  # nothing left to signal
    assert "children started" in local_log(tmp_path, "s", 4).read_text()


async def test_a_launch_cut_off_midway_is_ended_when_the_host_is_back(cluster: SshdCluster, hosts: Any,
                                                                     tmp_path: Path) -> None:
    server = cluster.add(gpus=None)
    host = await hosts(server)
    script = run_script(host, 8, "sleep 300")
    handle = await host.launch(Launch(script, str(local_log(tmp_path, "s", 8))))
    host._orphans.add(script.ctl_dir)  # as if the connection had dropped before launch() returned
    await until(lambda: _not(host.group_alive(handle)), 10, "the orphan to be ended")
    assert host._orphans == set()


async def _not(value: Awaitable[bool]) -> bool:
    return not await value


async def test_adopted_run_resumes_its_log_after_a_daemon_restart(cluster: SshdCluster, hosts: Any,
                                                                   tmp_path: Path) -> None:
    server = cluster.add(gpus=None)
    first = await hosts(server)
    script = run_script(first, 5, metrics_command(30, 0.1))
    log_path = local_log(tmp_path, "s", 5)
    handle = await first.launch(Launch(script, str(log_path)))
    await until(lambda: log_path.exists() and log_path.read_text().count("\n") >= 3, 10, "some log")
    await first.close()  # the daemon stops; the run goes on
    copied = log_path.stat().st_size
    await asyncio.sleep(0.5)
    assert (Path(script.ctl_dir) / "log").stat().st_size > copied

    second = await hosts(server)  # the next daemon: it knows the handle and the control folder only
    found = await second.find_handle(script.ctl_dir)
    assert found == handle
    assert script.ctl_dir in second.following  # following again, into <home>/runs/s/0005/log
    status = await wait_ended(second, handle, script.ctl_dir)
    assert status.exit == (0, "-")
    assert log_path.read_bytes() == (Path(script.ctl_dir) / "log").read_bytes()
    assert log_path.read_text().count("\n") == 30


async def test_status_alone_restarts_following(cluster: SshdCluster, hosts: Any, tmp_path: Path) -> None:
    server = cluster.add(gpus=None)
    first = await hosts(server)
    script = run_script(first, 6, metrics_command(10, 0.05))
    log_path = local_log(tmp_path, "s", 6)
    handle = await first.launch(Launch(script, str(log_path)))
    await first.close()
    second = await hosts(server)
    status = await wait_ended(second, handle, script.ctl_dir)  # status() only, as the daemon does
    assert status.exit == (0, "-")
    assert log_path.read_bytes() == (Path(script.ctl_dir) / "log").read_bytes()
