"""GPU readings of an SSH host: one long-running `nvidia-smi --query-gpu=... -l N` over the
host's connection, restarted if it dies; a host without nvidia-smi gives a "none"
snapshot (it then offers CPU slots) and is looked at again every minute."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import time
from collections.abc import Callable

import asyncssh

from hypd.gpus import SOURCE_NVIDIA_SMI, GpuReading, GpuSnapshot, nvidia_smi_args, parse_nvidia_smi_csv
from hypd.ssh.connection import exc_text, one_line

log = logging.getLogger("hypd.ssh")

MARK = "@hypd"
NO_NVIDIA_SMI_RETRY = 60.0  # seconds between looks for nvidia-smi on a host that has none


def sh(script: str) -> str:
    """A command line that runs `script` with /bin/sh whatever the user's login shell is."""
    return "exec /bin/sh -c " + shlex.quote(script)


class GpuStream:
    def __init__(self, host: str, conn: asyncssh.SSHClientConnection, interval: float,
                 publish: Callable[[GpuSnapshot], None]) -> None:
        self.host = host
        self.conn = conn
        self.interval = interval
        self.publish = publish
        self.starts = 0  # nvidia-smi processes started

    async def run(self) -> None:
        """Until cancelled: stream readings, restarting nvidia-smi with backoff."""
        delay = 1.0
        while True:
            started = time.monotonic()
            try:
                error, missing = await self._stream_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a channel that fails is a value too
                error, missing = f"cannot run nvidia-smi: {exc_text(exc)}", False
            self.publish(GpuSnapshot.failed(error))
            if missing:
                await asyncio.sleep(NO_NVIDIA_SMI_RETRY)
                continue
            log.warning("host %s: %s; restarting it", self.host, error)
            if time.monotonic() - started > 60:
                delay = 1.0
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _stream_once(self) -> tuple[str, bool]:
        """Run one streaming nvidia-smi until it ends; (why it ended, nvidia-smi missing)."""
        argv = nvidia_smi_args(self.interval)
        script = (f'command -v nvidia-smi >/dev/null 2>&1 || {{ echo "{MARK} missing"; exit 127; }}; '
                  f"exec {shlex.join(argv)}")
        stale = max(15.0, 5 * self.interval)
        proc = await self.conn.create_process(sh(script), stderr=asyncssh.STDOUT, encoding="utf-8",
                                              errors="replace")
        self.starts += 1
        block: list[GpuReading] = []
        gap = min(0.1, self.interval / 4)  # nvidia-smi prints a block's lines together
        errors: list[str] = []
        missing = False

        def flush() -> None:
            nonlocal block
            if block:
                self.publish(GpuSnapshot(tuple(block), SOURCE_NVIDIA_SMI, time.time()))
                block = []

        try:
            while True:
                try:
                    line = await asyncio.wait_for(proc.stdout.readline(), gap if block else stale)
                except TimeoutError:
                    if block:
                        flush()
                        continue
                    return f"nvidia-smi gave no reading for {stale:g} s", False
                if not line:
                    break
                text = line.strip()
                if not text:
                    continue
                if text == f"{MARK} missing":
                    missing = True
                    continue
                try:
                    readings = parse_nvidia_smi_csv(text)
                except ValueError:
                    if len(errors) < 3:
                        errors.append(one_line(text, 200))
                    continue
                if not readings:
                    continue
                if block and readings[0].index <= block[-1].index:
                    flush()
                block.append(readings[0])
            flush()
        finally:
            proc.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait_closed(), 5)
        if missing:
            return f"nvidia-smi not found on host {self.host}", True
        return f"nvidia-smi exited with status {proc.exit_status}: {errors[0] if errors else 'no message'}", False
