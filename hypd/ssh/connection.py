"""Opening one SSH connection to a host as `ssh user@addr -p port` would (default keys,
the agent, ~/.ssh/config, ~/.ssh/known_hosts, unless hosts.toml says otherwise), with
keepalives; and one line saying why it could not be opened or why it was lost."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from typing import Any

import asyncssh

from hypd.display import one_line
from hypd.inventory import HostConfig

log = logging.getLogger("hypd.ssh")

__all__ = ["one_line", "exc_text", "remote_path_expr", "Client", "Connector"]


def exc_text(exc: BaseException) -> str:
    """One line for an exception from asyncssh, the OS or asyncio."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, asyncssh.Error):
        return one_line(exc.reason or type(exc).__name__)
    if isinstance(exc, OSError) and exc.strerror:
        return one_line(exc.strerror)
    text = str(exc)
    return one_line(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def remote_path_expr(path: str) -> str:
    """A shell word for a configured remote path, with a leading ~ expanded on the host."""
    import shlex

    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


class Client(asyncssh.SSHClient):
    """Remembers why the connection ended."""

    def __init__(self) -> None:
        self.lost: Exception | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc


class HostKeyChanged(Exception):
    """known_hosts has a key for the host and the host offers another: a man in the middle,
    or a reinstalled host. Never to be waved through like an unknown key."""

    def __init__(self, file: str, known: list[str], offered: str) -> None:
        super().__init__(f"host key changed: known {', '.join(known)}, offered {offered}")
        self.file, self.known, self.offered = file, known, offered


class Connector:
    def __init__(self, config: HostConfig, *, connect_options: Mapping[str, Any] | None = None,
                 keepalive: tuple[float, int] = (5.0, 3), connect_timeout: float = 15.0) -> None:
        self.config = config
        self.connect_options = dict(connect_options or {})
        self.keepalive = keepalive
        self.connect_timeout = connect_timeout

    async def connect(self) -> tuple[asyncssh.SSHClientConnection, Client]:
        cfg = self.config
        if cfg.known_hosts is False:
            log.warning("host %s: connecting to %s:%d without checking its host key (known_hosts = false): "
                        "whoever can intercept the connection can pose as the host", cfg.name, cfg.address, cfg.port)
        try:
            conn, client = await asyncssh.create_connection(Client, cfg.address, **self._kwargs())
        except asyncssh.HostKeyNotVerifiable as exc:
            changed = await self._changed_key()
            if changed is not None:
                raise changed from exc
            raise
        return conn, client

    def _known_hosts_file(self) -> str:
        known = self.config.known_hosts
        return known if isinstance(known, str) else "~/.ssh/known_hosts"

    async def _changed_key(self) -> HostKeyChanged | None:
        """A refused host key that known_hosts has another key for (rather than none)."""
        cfg = self.config
        file = os.path.expanduser(self._known_hosts_file())
        try:
            known = list(asyncssh.match_known_hosts(file, cfg.address, cfg.address, cfg.port)[0])
        except (OSError, ValueError, asyncssh.Error):
            return None
        if not known:
            return None  # unknown, not changed
        algs = sorted({k.get_algorithm() for k in known})
        try:  # the key the host offers of the kinds known_hosts has (so a second kind is not taken for a change)
            offered = await asyncio.wait_for(asyncssh.get_server_host_key(
                cfg.address, cfg.port, server_host_key_algs=algs, config=None), self.connect_timeout)
        except (TimeoutError, OSError, asyncssh.Error, ValueError):
            return None
        if offered is None or any(k.public_data == offered.public_data for k in known):
            return None
        return HostKeyChanged(self._known_hosts_file(), [k.get_fingerprint() for k in known],
                              offered.get_fingerprint())

    def _kwargs(self) -> dict[str, Any]:
        cfg = self.config
        kw: dict[str, Any] = {
            "keepalive_interval": self.keepalive[0],
            "keepalive_count_max": self.keepalive[1],
            "connect_timeout": self.connect_timeout,
            "login_timeout": self.connect_timeout,
        }
        if cfg.port != 22 or not cfg.use_ssh_config:
            kw["port"] = cfg.port
        if cfg.user:
            kw["username"] = cfg.user
        if not cfg.use_ssh_config:
            kw["config"] = None
        if cfg.known_hosts is False:
            kw["known_hosts"] = None
        elif isinstance(cfg.known_hosts, str):
            kw["known_hosts"] = os.path.expanduser(cfg.known_hosts)
        if cfg.key:
            kw["client_keys"] = [os.path.expanduser(cfg.key)]
        kw.update(self.connect_options)
        return kw

    def explain(self, exc: BaseException) -> str:
        """Why a connection could not be made, in one line that says what to try, ending
        with the ssh command line that tries the same by hand."""
        return f"{self._why(exc)}; try by hand: {self.config.ssh_command}"

    def _why(self, exc: BaseException) -> str:
        cfg = self.config
        where = f"{cfg.address}:{cfg.port}"
        if isinstance(exc, HostKeyChanged):
            entry = cfg.address if cfg.port == 22 else f"[{cfg.address}]:{cfg.port}"
            return (f"HOST KEY CHANGED for {where}: possibly an attack (someone between you and the host), or "
                    f"the host was reinstalled; {exc.file} has {', '.join(exc.known)}, the host now offers "
                    f"{exc.offered}. Check the new key with whoever runs the host; only if it is right, remove the "
                    f"old entry with `ssh-keygen -R '{entry}' -f {exc.file}` and add the new one")
        if isinstance(exc, asyncssh.HostKeyNotVerifiable):
            file = self._known_hosts_file()
            keyscan = f"ssh-keyscan -p {cfg.port} {cfg.address} >> {file}"
            return (f"host key for {where} not in known_hosts ({file}); "
                    f"check it and add it with `{keyscan}`, or set known_hosts = false")
        if isinstance(exc, asyncssh.PermissionDenied):
            who = f"{cfg.user}@{where}" if cfg.user else where
            keys = f"key {cfg.key}" if cfg.key else "your default keys and agent"
            return f"authentication failed for {who} with {keys}: {exc_text(exc)}"
        if isinstance(exc, asyncio.TimeoutError):
            return f"no answer from {where} within {self.connect_timeout:g} s"
        if isinstance(exc, ConnectionRefusedError):
            return f"connection refused by {where}"
        if isinstance(exc, OSError):
            return f"cannot reach {where}: {exc_text(exc)}"
        return f"cannot connect to {where}: {exc_text(exc)}"
