"""Artifacts: the files a study's `[run] fetch` globs name in a run's folder on its host,
copied back into the run's local folder when the run ends (`hypd pull RUN` by hand).

A fetch starts after the run's GPUs were released (the next run there does not wait for
it), runs off the event loop (SFTP is asynchronous, local copies in a thread), and a
fetch that fails is one log line and a note `hypd info` shows: the run stays as it ended.
`copy_local` and `FetchResult` are the host side for the local machine (hypd/hosts.py);
SSH hosts copy over their SFTP session (hypd/ssh/staging.py)."""

from __future__ import annotations

import asyncio
import glob
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hypd.runstate import RunState
from hypd.study import run_dir_path

if TYPE_CHECKING:
    from hypd.hosts import Host
    from hypd.store import Store
    from hypd.studies import Studies

log = logging.getLogger("hypd.artifacts")

FETCHES_AT_ONCE = 4  # copies under way together (each may be large)


@dataclass
class FetchResult:
    files: list[str] = field(default_factory=list)  # paths under the run's folder (a folder counts as one)
    missing: list[str] = field(default_factory=list)  # patterns that matched nothing


def matches(run_dir: Path, pattern: str) -> list[str]:
    """What a glob matches under run_dir, as paths relative to it (never outside it)."""
    base = os.path.realpath(run_dir)
    out = []
    for path in sorted(glob.glob(os.path.join(glob.escape(str(run_dir)), pattern), recursive=True)):
        if os.path.realpath(path).startswith(base + os.sep):
            out.append(os.path.relpath(path, run_dir))
    return out


def copy_local(run_dir: Path, patterns: tuple[str, ...], dest: Path) -> FetchResult:
    """(Blocking: run it in a thread.) Copy the matches of `patterns` from run_dir into
    dest; nothing is copied when dest is run_dir itself."""
    result = FetchResult()
    same = os.path.realpath(run_dir) == os.path.realpath(dest)
    for pattern in patterns:
        matched = matches(run_dir, pattern)
        if not matched:
            result.missing.append(pattern)
        for rel in (m for m in matched if m not in result.files):
            result.files.append(rel)
            if same:
                continue
            source, target = run_dir / rel, dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target, dirs_exist_ok=True, symlinks=True)
            else:
                shutil.copy2(source, target)
    return result


class Fetcher:
    """Fetches runs' artifacts: after each run ends, and on request (op `pull`)."""

    def __init__(self, store: Store, studies: Studies, hosts: Callable[[], dict[str, Host]], home: Path,
                 find_run: Callable[[str], Awaitable[dict[str, Any]]]) -> None:
        self.store = store
        self.find_run = find_run  # a run by name, or a Refusal
        self.studies = studies
        self.hosts = hosts
        self.home = home
        self.gate = asyncio.Semaphore(FETCHES_AT_ONCE)
        self._tasks: set[asyncio.Task[Any]] = set()

    def after_release(self, run_id: int, study: str) -> None:
        """A run's processes are gone and its GPUs given back: fetch its artifacts now, in
        a task of their own (nothing at all for a study that names none)."""
        rt = self.studies.all.get(study)
        if rt is not None and not rt.spec.fetch:
            return
        task = asyncio.create_task(self._after_release(run_id), name=f"fetch:{run_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def catch_up(self) -> None:
        """At start: fetch again what a stopped daemon was copying (each once its host is up)."""
        for run_id in await self.store.fetches_under_way():
            task = asyncio.create_task(self._after_release(run_id, wait_up=True), name=f"fetch:{run_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _after_release(self, run_id: int, wait_up: bool = False) -> None:
        try:
            row = await self.store.run_by_id(run_id)
            if row is None or row["state"] in (RunState.PENDING.value, RunState.RUNNING.value):
                return
            rt = self.studies.all.get(row["study"])
            if rt is None or not rt.spec.fetch or not row["run_dir"]:
                return
            host = self.hosts().get(row["host"] or "")
            if wait_up and host is not None:
                await host.wait_up(host.lost_after)
            await self.fetch(row)
        except Exception:  # noqa: BLE001 - a fetch never fails a run, nor the daemon
            log.exception("fetching the artifacts of run %d failed", run_id)

    def local_dir(self, row: dict[str, Any]) -> Path | None:
        """Where a run's artifacts go on this machine (its folder there; for a run on this
        machine, its own folder)."""
        rt = self.studies.all.get(row["study"])
        if rt is None:
            return None
        if row["host"] == "local" and row["run_dir"]:
            return Path(row["run_dir"])
        return run_dir_path(self.home, rt.spec, row["run_no"], row["params"])

    async def fetch(self, row: dict[str, Any]) -> dict[str, Any]:
        """Copy the run's artifacts now and store how it went; the stored record. Never
        raises for a copy that failed: that is the record's error."""
        rt = self.studies.all[row["study"]]
        dest = self.local_dir(row)
        assert dest is not None
        host = self.hosts().get(row["host"] or "")
        error = ""
        result = FetchResult()
        from hypd.hosts import HostError

        # Marked first: a daemon stopped mid-copy fetches it again at its next start.
        started = {"dir": str(dest), "files": [], "missing": [], "error": "", "at": time.time(),
                   "host": row["host"] or "", "run_dir": row["run_dir"] or "", "fetching": True}
        await self.store.set_artifacts(row["id"], started)
        async with self.gate:
            try:
                if host is None:
                    raise HostError(f"host {row['host']} is not in hosts.toml any more")
                result = await host.fetch(row["run_dir"], rt.spec.fetch, dest)
            except HostError as exc:
                error = str(exc)
        if error:
            log.warning("%s: artifacts not fetched from %s: %s (hypd pull %s tries again)", row["name"],
                        row["host"], error, row["name"])
        elif result.files:
            log.info("%s: %d artifact(s) fetched to %s", row["name"], len(result.files), dest)
        record = {**started, "files": result.files, "missing": result.missing, "error": error, "at": time.time(),
                  "fetching": False}
        await self.store.set_artifacts(row["id"], record)
        return record

    async def op_pull(self, run: str) -> dict[str, Any]:
        """`hypd pull RUN`: fetch a run's artifacts now (also while it runs: a checkpoint so far)."""
        from hypd.server import Refusal

        row = await self.find_run(run)
        rt = self.studies.all[row["study"]]
        if not rt.spec.fetch:
            raise Refusal("invalid", f"study {row['study']} names no artifacts: add [run] fetch = [\"ckpt/best.pt\", "
                                     "\"*.json\"] (globs in the run's folder) and submit it again")
        if not row["run_dir"]:
            raise Refusal("conflict", f"{run} has not started: it has no folder yet")
        record = await self.fetch(row)
        if record["error"]:
            raise Refusal("error", f"{run}: {record['error']}")
        return record
