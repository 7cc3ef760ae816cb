"""SshHost against real OpenSSH servers on 127.0.0.1 (tests/sshd.py): connecting, host key
checks, GPUs streamed from a fake nvidia-smi, copying study code, runs launched and
watched through the host watcher (events, not polls), a dropped connection (the sshd
session processes killed, the listener up) and a daemon restart, kills, and a clean stop."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from hypd import lifecycle as lc
from hypd.hosts import GpusRead, HostError
from hypd.ssh import SshHost
from hypd.study import parse_study
from hypd.wrapper import RunScript, script_text
from tests.fakes.nvidia_smi import gpu, write_gpu_failure
from tests.sshd import SshdCluster, SshdHost, sshd_unavailable

pytestmark = [pytest.mark.ssh,
              pytest.mark.skipif(sshd_unavailable() is not None, reason=sshd_unavailable() or "")]

FAST: dict[str, Any] = dict(gpu_interval=0.2, backoff=(0.1, 0.5), keepalive=(1.0, 3), connect_timeout=5.0,
                            command_timeout=15.0, kill_grace=2.0)


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


class Served:
    """A host served as the daemon serves it, with the events it sends kept in order."""

    def __init__(self, host: SshHost) -> None:
        self.host = host
        self.events: list[object] = []
        self.task = asyncio.create_task(host.serve(self.events.append))

    def of(self, kind: type, run: int | None = None) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind) and (run is None or getattr(e, "run", None) == run)]

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def hosts(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Served]]]:
    """make(server, **config overrides) -> a served SshHost; all stopped at the end,
    leaving no task behind."""
    made: list[Served] = []

    async def make(server: SshdHost, wait: bool = True, **overrides: Any) -> Served:
        served = Served(SshHost(server.host_config(**overrides), tmp_path / "home", **FAST))
        made.append(served)
        if wait:
            assert await served.host.wait_up(15), served.host.state
        return served

    yield make
    for served in made:
        await served.stop()
    await asyncio.sleep(0)
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()] == []


def ctl(host: SshHost, number: int, study: str = "s") -> str:
    return f"{host.root}/runs/{study}/{number:04d}"


def script(host: SshHost, number: int, command: str, study: str = "s") -> str:
    return script_text(RunScript(run=f"{study}:{number}", ctl_dir=ctl(host, number, study),
                                 run_dir=f"{host.root}/studies/{study}/{number:04d}", workdir=host.root,
                                 env={"PYTHONUNBUFFERED": "1"}, stages=[("train", command)]))


def local_log(tmp_path: Path, number: int) -> Path:
    path = tmp_path / "home" / "runs" / "s" / f"{number:04d}" / "log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def metrics_command(lines: int, pause: float) -> str:
    return (f"{sys.executable} -c 'import time\nfor i in range({lines}):\n"
            f"    print(\"METRICS: step=%d loss=%.3f\" % (i, 1.0 / (i + 1)), flush=True)\n"
            f"    time.sleep({pause})'")


# --------------------------------------------------------------------------- connecting

async def test_connects_up_with_root_and_cpu_slots_and_stops_cleanly(cluster: SshdCluster, hosts: Any) -> None:
    server = cluster.add(gpus=[gpu(0)])
    served = await hosts(server, workdir=str(server.root / "sub" / ".." / "work"))
    host = served.host
    assert host.state == ("up", "") and host.accepting and host.down_since is None
    assert host.root == str(server.root / "work")  # created and resolved on the host by the watcher
    assert (server.root / "work").is_dir()
    assert host.cpu_slots == os.cpu_count()
    assert served.of(lc.HostUp) == [lc.HostUp(host.name)]
    host.set_draining(True)
    assert host.state[0] == "draining" and not host.accepting
    host.set_draining(False)
    await served.stop()


async def test_cpu_slots_from_config(cluster: SshdCluster, hosts: Any) -> None:
    served = await hosts(cluster.add(gpus=None), cpu_slots=3)
    assert served.host.cpu_slots == 3 and served.host.rules().cpu_slots == 3


async def test_unknown_host_key_is_refused(cluster: SshdCluster, hosts: Any, tmp_path: Path) -> None:
    server = cluster.add(gpus=None)
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    served = await hosts(server, wait=False, known_hosts=str(empty))
    host = served.host
    await until(lambda: "host key" in host.state[1], what="the host key refusal")
    state, why = host.state
    assert state == "down" and not host.accepting
    assert f"host key for 127.0.0.1:{server.port} not in known_hosts" in why
    assert f"ssh-keyscan -p {server.port} 127.0.0.1" in why and "known_hosts = false" in why
    assert [type(e) for e in served.events] == [lc.HostDown]  # said once, not at every retry
    with pytest.raises(HostError, match="is down: host key"):
        await host.launch(1, ctl(host, 1), script(host, 1, "true"), str(local_log(tmp_path, 1)))

    served3 = await hosts(server, known_hosts=False)  # the explicit opt-out
    assert served3.host.state == ("up", "")


async def test_a_changed_host_key_is_named_as_such_with_both_fingerprints(
        cluster: SshdCluster, hosts: Any, tmp_path: Path) -> None:
    server = cluster.add(gpus=None)
    impostor = asyncssh.generate_private_key(server.host_key_pub[0])  # the same kind, another key
    known = tmp_path / "changed_known_hosts"
    known.write_text(f"[127.0.0.1]:{server.port} {impostor.export_public_key().decode().split()[0]} "
                     f"{impostor.export_public_key().decode().split()[1]}\n")
    served = await hosts(server, wait=False, known_hosts=str(known))
    await until(lambda: "host key" in served.host.state[1].lower(), what="the host key refusal")
    state, why = served.host.state
    real = asyncssh.import_public_key(" ".join(server.host_key_pub[:2])).get_fingerprint()
    assert state == "down" and why.startswith(f"HOST KEY CHANGED for 127.0.0.1:{server.port}: possibly an attack")
    assert impostor.get_fingerprint() in why and real in why  # what was known, what is offered
    assert f"ssh-keygen -R '[127.0.0.1]:{server.port}' -f {known}" in why
    assert "ssh-keyscan" not in why and "known_hosts = false" not in why  # no advice that trusts the new key


async def test_known_hosts_false_warns_at_each_connect(cluster: SshdCluster, hosts: Any,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    server = cluster.add(gpus=None)
    with caplog.at_level(logging.WARNING, logger="hypd.ssh"):
        served = await hosts(server, known_hosts=False)
        server.kill()
        server.start()
        await until(lambda: served.host.connects >= 2 and served.host.state == ("up", ""), 30, "a reconnect")
    warned = [r for r in caplog.records if "without checking its host key (known_hosts = false)" in r.getMessage()]
    assert len(warned) >= served.host.connects >= 2
    await served.stop()


async def test_unreachable_host_is_down_then_comes_up_by_itself(cluster: SshdCluster, hosts: Any) -> None:
    server = cluster.add(gpus=None, start=False)
    served = await hosts(server, wait=False)
    await until(lambda: "refused" in served.host.state[1], what="connection refused")
    server.start()
    assert await served.host.wait_up(10)
    assert [type(e) for e in served.events if isinstance(e, lc.HostDown | lc.HostUp)] == [lc.HostDown, lc.HostUp]


async def test_a_host_that_stops_answering_goes_down_by_keepalive(cluster: SshdCluster, hosts: Any) -> None:
    server = cluster.add(gpus=None)
    served = await hosts(server)  # keepalive every 1 s, down after 3 unanswered
    server.freeze()
    try:
        await until(lambda: served.host.state[0] == "down", 15, "the keepalive to give up")
    finally:
        server.thaw()
    assert await served.host.wait_up(15)


# --------------------------------------------------------------------------- GPUs

async def test_gpus_stream_from_one_nvidia_smi(cluster: SshdCluster, hosts: Any) -> None:
    server = cluster.add(gpus=[gpu(0), gpu(1)])
    served = await hosts(server)
    host = served.host
    await until(lambda: host.gpus() is not None and len(host.gpus().gpus) == 2, 10, "a reading")
    server.set_gpus([gpu(0), gpu(1, memory_used_mib=9000, utilization_pct=95, pids=[4242]), gpu(2)])
    await until(lambda: len(host.gpus().gpus) == 3 and host.gpus().gpus[1].memory_used_mib == 9000, 10,
                "the new GPU state")
    assert served.of(GpusRead) and all(e.host == host.name for e in served.of(GpusRead))
    assert host.gpu_stream_starts == 1  # one long-running process, not one per poll


async def test_host_without_nvidia_smi_offers_cpu_slots(cluster: SshdCluster, hosts: Any) -> None:
    served = await hosts(cluster.add(gpus=None))
    host = served.host
    await until(lambda: host.gpus() is not None, 10, "a reading")
    snap = host.gpus()
    assert snap.source == "none" and not snap.gpus and "nvidia-smi not found" in (snap.error or "")
    assert host.accepting and host.cpu_slots >= 1


async def test_broken_driver_is_a_failed_snapshot_then_recovers(cluster: SshdCluster, hosts: Any) -> None:
    server = cluster.add(gpus=[gpu(0)])
    assert server.gpu_state is not None
    write_gpu_failure(server.gpu_state)
    served = await hosts(server)
    host = served.host
    await until(lambda: host.gpus() is not None and "NVIDIA driver" in (host.gpus().error or ""), 10,
                "the driver failure")
    server.set_gpus([gpu(0), gpu(1)])
    await until(lambda: len(host.gpus().gpus) == 2, 15, "nvidia-smi to be restarted")


# --------------------------------------------------------------------------- study code

async def test_prepare_study_copies_changed_files_only(cluster: SshdCluster, hosts: Any, tmp_path: Path) -> None:
    server = cluster.add(gpus=None)
    host = (await hosts(server)).host
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
    assert await host.prepare_study(spec) == workdir and host.uploads == 3  # nothing changed

    host2 = (await hosts(server)).host  # a restarted daemon trusts the manifest kept on the host
    assert await host2.prepare_study(spec) == workdir and host2.uploads == 0

    (src / "data" / "a.txt").write_text("changed")
    os.utime(src / "data" / "a.txt", (time.time() + 5, time.time() + 5))
    assert await host.prepare_study(spec) == workdir
    assert host.uploads == 4 and (code / "data" / "a.txt").read_text() == "changed"

    bare = parse_study(text.replace('files = ["train.py", "data/"]\n', ""), "cp.toml", base_dir=src)
    assert await host.prepare_study(bare) == str(src)
    missing = parse_study(text.replace('"data/"', '"nothere.py"'), "cp.toml", base_dir=src)
    with pytest.raises(HostError, match="nothere.py"):
        await host.prepare_study(missing)


# --------------------------------------------------------------------------- runs

async def test_a_run_is_launched_streamed_and_its_end_told(cluster: SshdCluster, hosts: Any, tmp_path: Path) -> None:
    server = cluster.add(gpus=None)
    served = await hosts(server)
    host = served.host
    log_path = local_log(tmp_path, 1)
    await host.launch(1, ctl(host, 1), script(host, 1, metrics_command(20, 0.02) + " && exit 3"), str(log_path))
    await until(lambda: served.of(lc.Cleaned, 1), 20, "the run to end")
    (started,) = served.of(lc.Launched, 1)
    assert started.pid > 1 and started.start
    (exited,) = served.of(lc.Exited, 1)
    assert (exited.status, exited.stage) == (3, "train")
    remote = (Path(ctl(host, 1)) / "log").read_bytes()
    assert log_path.read_bytes() == remote and exited.size == len(remote)
    assert remote.count(b"METRICS:") == 20
    grew = [e.size for e in served.of(lc.LogGrew, 1)]
    assert grew == sorted(grew) and grew[-1] == exited.size
    order = [type(e) for e in served.events if getattr(e, "run", None) == 1]
    assert order.index(lc.Launched) < order.index(lc.Exited) < order.index(lc.Cleaned)


async def test_a_dropped_connection_is_back_within_seconds_and_loses_no_line(cluster: SshdCluster, hosts: Any,
                                                                            tmp_path: Path) -> None:
    server = cluster.add(gpus=None)
    served = await hosts(server)
    host = served.host
    long_log, short_log = local_log(tmp_path, 2), local_log(tmp_path, 3)
    await host.launch(2, ctl(host, 2), script(host, 2, metrics_command(60, 0.05)), str(long_log))
    await host.launch(3, ctl(host, 3), script(host, 3, metrics_command(5, 0.01)), str(short_log))
    await until(lambda: long_log.exists() and long_log.read_bytes().count(b"\n") >= 5, 10, "the log to stream")
    await until(lambda: served.of(lc.Exited, 3), 10, "the short run to end")
    launched = served.of(lc.Launched, 2)[0]
    served.events.clear()
    await until(lambda: server.drop_connections(), 5, "session processes to kill")
    await until(lambda: served.of(lc.HostDown), 10, "the host to go down")
    dropped = time.monotonic()
    assert await host.wait_up(10)
    assert time.monotonic() - dropped < 10
    # As the daemon does on HostUp: watch again from the end of what is here.
    size = long_log.stat().st_size
    await host.watch(2, ctl(host, 2), str(long_log), size, launched.pid, launched.start)
    await until(lambda: served.of(lc.Exited, 2), 20, "the run to end")
    remote = (Path(ctl(host, 2)) / "log").read_bytes()
    assert long_log.read_bytes() == remote  # no byte lost or doubled
    assert remote.count(b"\n") == 60
    assert served.of(lc.Exited, 2)[0].status == 0


async def test_a_run_adopted_by_a_new_host_object_goes_on(cluster: SshdCluster, hosts: Any, tmp_path: Path) -> None:
    server = cluster.add(gpus=None)
    first = await hosts(server)
    log_path = local_log(tmp_path, 5)
    await first.host.launch(5, ctl(first.host, 5), script(first.host, 5, metrics_command(30, 0.05)), str(log_path))
    await until(lambda: first.of(lc.Launched, 5) and log_path.exists() and log_path.read_bytes().count(b"\n") >= 3, 10,
                "some log")
    launched = first.of(lc.Launched, 5)[0]
    await first.stop()  # the daemon stops; the run goes on
    second = await hosts(server)  # the next daemon knows the pid and the control folder
    await second.host.watch(5, ctl(second.host, 5), str(log_path), log_path.stat().st_size, launched.pid,
                            launched.start)
    await until(lambda: second.of(lc.Exited, 5), 20, "the run to end")
    assert second.of(lc.Alive, 5)[0].pid == launched.pid
    assert second.of(lc.Exited, 5)[0].status == 0
    assert log_path.read_bytes() == (Path(ctl(second.host, 5)) / "log").read_bytes()


async def test_kill_ends_the_run_and_what_it_left_behind(cluster: SshdCluster, hosts: Any, tmp_path: Path) -> None:
    server = cluster.add(gpus=None)
    served = await hosts(server)
    host = served.host
    command = "(setsid sleep 300 &); sleep 300 & echo children started; wait"
    log_path = local_log(tmp_path, 4)
    await host.launch(4, ctl(host, 4), script(host, 4, command), str(log_path))
    await until(lambda: log_path.exists() and b"children started" in log_path.read_bytes(), 10, "the children")
    await host.kill(4)
    await until(lambda: served.of(lc.Cleaned, 4), 15, "the run and its leftovers to end")
    (exited,) = served.of(lc.Exited, 4)
    assert exited.status is None  # killed as a whole: no exit file
    marker = f"HYPD_CTL={ctl(host, 4)}"
    check = server.ssh(f"grep -l -a -F '{marker}' /proc/[0-9]*/environ 2>/dev/null | wc -l")
    assert check.stdout.strip() == "0", check.stdout
