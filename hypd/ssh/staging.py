"""A study's code on an SSH host: `run.files` (relative to the study's workdir here)
copied over SFTP to <root>/studies/<study>/code/, only what changed since the last copy.
A manifest kept on the host (size, mtime, mode of each file) lets a restarted daemon
copy nothing that is already there. The same copy onto a folder of this machine (a Slurm
cluster's shared filesystem seen from its login node, when hypd runs there) goes through
`LocalFiles`, which answers the few SFTP calls the copy makes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import stat as stat_module
from pathlib import Path, PurePosixPath
from typing import Any

import asyncssh

from hypd.artifacts import FetchResult
from hypd.study import StudySpec

log = logging.getLogger("hypd.ssh")

CODE_MANIFEST = ".hypd-code.json"  # in <root>/studies/<study>/: what code/ holds (size, mtime, mode)


def local_manifest(workdir: str, files: tuple[str, ...]) -> dict[str, list[int]]:
    """relative posix path -> [size, mtime_ns, mode] of every file `files` names under
    `workdir` (folders recursively). ValueError naming an entry that does not exist."""
    base = Path(workdir)
    manifest: dict[str, list[int]] = {}

    def add(path: Path) -> None:
        st = path.stat()
        rel = path.relative_to(base).as_posix()
        manifest[rel] = [st.st_size, st.st_mtime_ns, stat_module.S_IMODE(st.st_mode)]

    for entry in files:
        path = base / entry.rstrip("/")
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
                for name in sorted(filenames):
                    full = Path(dirpath) / name
                    if full.is_file():
                        add(full)
        elif path.is_file():
            add(path)
        else:
            raise ValueError(f"run.files entry {entry!r} does not exist in {workdir}")
    return manifest


class _LocalFile:
    def __init__(self, path: str, mode: str) -> None:
        self.path, self.mode = path, mode
        self.file: Any = None

    async def __aenter__(self) -> _LocalFile:
        self.file = await asyncio.to_thread(open, self.path, self.mode)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.file.close)

    async def read(self) -> bytes:
        return await asyncio.to_thread(self.file.read)

    async def write(self, data: bytes) -> None:
        await asyncio.to_thread(self.file.write, data)


class LocalFiles:
    """The SFTP calls `Stager` makes, on this machine's files (OSError for what fails)."""

    def open(self, path: str, mode: str) -> _LocalFile:
        return _LocalFile(path, mode)

    async def makedirs(self, path: str, exist_ok: bool = False) -> None:
        await asyncio.to_thread(os.makedirs, path, exist_ok=exist_ok)

    async def put(self, local: str, remote: str, preserve: bool = False) -> None:
        await asyncio.to_thread(shutil.copy2 if preserve else shutil.copyfile, local, remote)

    async def remove(self, path: str) -> None:
        await asyncio.to_thread(os.remove, path)

    async def posix_rename(self, old: str, new: str) -> None:
        await asyncio.to_thread(os.replace, old, new)


class Stager:
    """Copies studies' code to one host over its SFTP session (or `LocalFiles`)."""

    def __init__(self, host: str, timeout: float) -> None:
        self.host = host
        self.timeout = timeout
        self.uploads = 0  # files copied
        self._prepared: dict[str, str] = {}  # study -> manifest digest known to be on the host
        self._locks: dict[str, asyncio.Lock] = {}

    async def prepare(self, sftp: asyncssh.SFTPClient | LocalFiles, root: str, spec: StudySpec) -> str:
        """The folder runs of `spec` work in on the host. ValueError/OSError (a file
        missing here; with LocalFiles, any failure), asyncssh errors (the host)."""
        if not spec.files:
            return spec.workdir  # a shared filesystem, or code that is already there
        study_dir = f"{root}/studies/{spec.name}"
        code = f"{study_dir}/code"
        manifest = await asyncio.to_thread(local_manifest, spec.workdir, tuple(spec.files))
        digest = hashlib.sha256(json.dumps([root, manifest], sort_keys=True).encode()).hexdigest()
        if self._prepared.get(spec.name) == digest:
            return code
        async with self._locks.setdefault(spec.name, asyncio.Lock()):
            if self._prepared.get(spec.name) != digest:
                await self._copy(sftp, spec, study_dir, code, manifest)
                self._prepared[spec.name] = digest
        return code

    async def _copy(self, sftp: asyncssh.SFTPClient | LocalFiles, spec: StudySpec, study_dir: str, code: str,
                    manifest: dict[str, list[int]]) -> None:
        manifest_path = f"{study_dir}/{CODE_MANIFEST}"
        remote: dict[str, Any] = {}
        with contextlib.suppress(asyncssh.SFTPNoSuchFile, FileNotFoundError, ValueError):
            async with sftp.open(manifest_path, "rb") as f:
                loaded = json.loads(await asyncio.wait_for(f.read(), self.timeout))
            if isinstance(loaded, dict):
                remote = loaded
        changed = [rel for rel, meta in manifest.items() if remote.get(rel) != meta]
        removed = [rel for rel in remote if rel not in manifest]
        await asyncio.wait_for(sftp.makedirs(code, exist_ok=True), self.timeout)
        for folder in sorted({str(PurePosixPath(rel).parent) for rel in changed} - {"."}):
            await asyncio.wait_for(sftp.makedirs(f"{code}/{folder}", exist_ok=True), self.timeout)
        gate = asyncio.Semaphore(8)

        async def put(rel: str) -> None:
            async with gate:
                await sftp.put(str(Path(spec.workdir) / rel), f"{code}/{rel}", preserve=True)

        await asyncio.gather(*(put(rel) for rel in changed))
        for rel in removed:
            with contextlib.suppress(asyncssh.SFTPError, OSError):
                await sftp.remove(f"{code}/{rel}")
        tmp = f"{manifest_path}.tmp"
        async with sftp.open(tmp, "wb") as f:
            await f.write(json.dumps(manifest, sort_keys=True).encode())
        await sftp.posix_rename(tmp, manifest_path)
        self.uploads += len(changed)
        if changed or removed:
            log.info("host %s: study %s: copied %d file(s), removed %d", self.host, spec.name,
                     len(changed), len(removed))


async def fetch_files(sftp: asyncssh.SFTPClient, run_dir: str, patterns: tuple[str, ...], dest: Path,
                      timeout: float) -> FetchResult:
    """Copy what each glob matches under run_dir on the host into dest, paths kept (a
    folder with what it holds). asyncssh errors (the host), OSError (here)."""
    result = FetchResult()
    base = run_dir.rstrip("/")
    for pattern in patterns:
        found: list[str] = []

        def no_match(exc: Exception) -> None:
            if not isinstance(exc, asyncssh.SFTPNoSuchFile):
                raise exc

        for path in await asyncio.wait_for(sftp.glob(f"{glob_escape(base)}/{pattern}", error_handler=no_match),
                                           timeout):
            rel = str(PurePosixPath(str(path)).relative_to(base))
            if rel not in result.files and ".." not in PurePosixPath(rel).parts:
                found.append(rel)
        if not found:
            result.missing.append(pattern)
        for rel in found:
            target = dest / rel
            await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
            # No timeout on the copy itself: a large checkpoint takes as long as it takes;
            # a dead connection ends it (keepalives).
            await sftp.get(f"{base}/{rel}", str(target), preserve=True, recurse=True)
            result.files.append(rel)
    return result


def glob_escape(path: str) -> str:
    """A literal path inside a glob pattern (its [, * and ? taken as themselves)."""
    return "".join(f"[{c}]" if c in "[*?" else c for c in path)
