"""Running a command on a Slurm cluster's login node: here (login = "local") or over the
one SSH connection hypd keeps to it (hypd/ssh/connection.py). A command that could not be
run, or whose end was not seen, is a `ShellError` (one line); a command that ran and
failed is a `Result` with its exit status."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hypd.inventory import HostConfig


class ShellError(ConnectionError):
    """The command may or may not have run: the connection failed under it, or it took
    longer than its timeout."""


@dataclass(frozen=True)
class Result:
    status: int
    out: str
    err: str


class LocalShell:
    async def open(self) -> None:
        return None

    async def wait_closed(self) -> None:
        await asyncio.Event().wait()  # this machine does not go away

    def close(self) -> None:
        return None

    def explain(self, exc: BaseException) -> str:
        return str(exc)

    async def run(self, command: str, stdin: bytes = b"", timeout: float = 60.0) -> Result:
        try:
            proc = await asyncio.create_subprocess_shell(command, stdin=asyncio.subprocess.PIPE,
                                                         stdout=asyncio.subprocess.PIPE,
                                                         stderr=asyncio.subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            raise ShellError(f"cannot start a shell: {exc.strerror or exc}") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise ShellError(f"no answer within {timeout:g} s") from None
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        return Result(proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace"))


class SshShell:
    def __init__(self, config: HostConfig, *, connect_options: Mapping[str, Any] | None = None,
                 keepalive: tuple[float, int] = (5.0, 3), connect_timeout: float = 15.0) -> None:
        from hypd.ssh.connection import Connector  # asyncssh: only where a login node is remote

        self.connector = Connector(config, connect_options=connect_options, keepalive=keepalive,
                                   connect_timeout=connect_timeout)
        self.conn: Any = None
        self.client: Any = None

    async def open(self) -> None:
        self.conn, self.client = await self.connector.connect()

    async def wait_closed(self) -> None:
        if self.conn is not None:
            await self.conn.wait_closed()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = None

    def explain(self, exc: BaseException) -> str:
        return self.connector.explain(exc)

    async def run(self, command: str, stdin: bytes = b"", timeout: float = 60.0) -> Result:
        import asyncssh

        from hypd.ssh.connection import exc_text

        conn = self.conn
        if conn is None:
            raise ShellError("not connected")
        try:
            done = await asyncio.wait_for(conn.run(command, input=stdin, encoding=None), timeout)
        except (asyncssh.Error, OSError, TimeoutError) as exc:
            raise ShellError(exc_text(exc)) from None
        status = done.returncode if done.returncode is not None else 255
        out = (done.stdout or b"").decode(errors="replace")
        err = (done.stderr or b"").decode(errors="replace")
        return Result(status, out, err)
