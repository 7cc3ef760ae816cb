"""The daemon's hosts: the local machine (config.toml) and the SSH hosts of hosts.toml,
built, served (one task each) and rebuilt when hosts.toml changes; and the `hosts` ops."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypd.config import Config
from hypd.hosts import Host, LocalHost, Sink
from hypd.inventory import (
    HostConfig,
    InventoryError,
    add_host,
    inventory_path,
    load_inventory,
    make_host,
    parse_target,
    remove_host,
    save_inventory,
    set_draining,
)
from hypd.server import Refusal

log = logging.getLogger("hypd.registry")

INVENTORY_CHECK_EVERY = 1.0  # seconds between looks at hosts.toml's modification time


class Registry:
    def __init__(self, home: Path, config: Config, sink: Sink, summary: Callable[[str], dict[str, Any]],
                 busy: Callable[[str], list[str]], wake: Callable[[], None]) -> None:
        self.home = home
        self.config = config
        self.sink = sink
        self.summary = summary  # host name -> what `hypd hosts` shows of it
        self.busy = busy  # host name -> names of the runs it has going
        self.wake = wake
        self.hosts: dict[str, Host] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.configs: dict[str, HostConfig] = {}
        self.inventory_mtime: float | None = None
        self.inventory_error = ""
        self.group: asyncio.TaskGroup | None = None

    def all(self) -> dict[str, Host]:
        return self.hosts

    async def start(self, group: asyncio.TaskGroup) -> None:
        """Build the hosts; each is served by a task of `group`."""
        self.group = group
        if self.config.local.enabled:
            self._add(LocalHost(self.config.local, self.home, gpu_poll=self.config.gpu_poll,
                                kill_grace=self.config.kill_grace))
        await self.reload()

    async def follow_inventory(self) -> None:
        """Rebuild hosts when hosts.toml changes, until cancelled."""
        while True:
            await asyncio.sleep(INVENTORY_CHECK_EVERY)
            if self._mtime() != self.inventory_mtime:
                await self.reload()

    def _add(self, host: Host) -> None:
        assert self.group is not None
        self.hosts[host.name] = host
        self.tasks[host.name] = self.group.create_task(host.serve(self.sink), name=f"host:{host.name}")

    async def _remove(self, name: str) -> None:
        self.hosts.pop(name, None)
        self.configs.pop(name, None)
        task = self.tasks.pop(name, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _mtime(self) -> float | None:
        path = inventory_path(self.home)
        try:
            return path.stat().st_mtime
        except FileNotFoundError:
            return None

    async def reload(self) -> None:
        """Bring the SSH hosts in line with hosts.toml: hosts added start, hosts removed
        stop, hosts changed are replaced (their runs go on: the new one watches them)."""
        path = inventory_path(self.home)
        try:
            self.inventory_mtime = self._mtime()
            configs = {c.name: c for c in load_inventory(path)}
            self.inventory_error = ""
        except InventoryError as exc:
            self.inventory_error = str(exc)
            log.error("%s (hosts unchanged until it is fixed)", exc)
            return
        for name, old in list(self.configs.items()):
            config = configs.get(name)
            host = self.hosts[name]
            if config == old:
                continue
            if config is not None and dataclasses.replace(config, draining=old.draining) == old:
                host.set_draining(config.draining)
                self.configs[name] = config
                log.info("host %s %s", name, "draining" if config.draining else "taking runs again")
                continue
            if config is None and self.busy(name):
                host.set_draining(True)
                log.warning("host %s left hosts.toml with runs going: draining until they end", name)
                continue
            await self._remove(name)  # first: two hosts must never watch the same runs
            log.info("host %s %s", name, "changed" if config is not None else "removed")
        for name, config in configs.items():
            if name not in self.hosts:
                self.configs[name] = config
                self._add(self._build(config))
                log.info("host %s added (%s)", name, config.target)
        self.wake()

    def _build(self, config: Any) -> Host:
        """The host a hosts.toml entry describes: a Slurm cluster, or an SSH machine."""
        if getattr(config, "kind", "ssh") == "slurm":
            from hypd.slurm import SlurmHost

            return SlurmHost(config, self.home, kill_grace=self.config.kill_grace)
        from hypd.ssh import SshHost  # asyncssh: only where SSH hosts are used

        return SshHost(config, self.home, gpu_interval=self.config.gpu_poll, kill_grace=self.config.kill_grace)

    # ------------------------------------------------------------ ops

    async def op_hosts(self) -> list[dict[str, Any]]:
        out = [self.summary(name) for name in self.hosts]
        if self.inventory_error:
            out.append({"name": "hosts.toml", "state": "error", "why": self.inventory_error, "cpu_slots": 0,
                        "cpu_used": 0, "cpu_runs": [], "gpus": [], "gpu_source": None, "gpu_error": None,
                        "runs": [], "down_since": None, "labels": []})
        return out

    async def _edit(self, change: Callable[[list[HostConfig]], list[HostConfig]]) -> None:
        path = inventory_path(self.home)
        try:
            save_inventory(path, change(load_inventory(path)))
        except InventoryError as exc:
            raise Refusal("invalid", str(exc)) from None
        await self.reload()

    async def op_hosts_add(self, name: str, target: str, options: dict[str, Any]) -> dict[str, Any]:
        try:
            if options.get("kind") == "slurm":  # the target is its login node, "local" included
                values = {"login": target, **options}
            else:
                user, address, port = parse_target(target)
                values = {"address": address, **({"user": user} if user else {}), **({"port": port} if port else {}),
                          **options}
            config = make_host(name, values)
        except InventoryError as exc:
            raise Refusal("invalid", str(exc)) from None
        await self._edit(lambda hosts: add_host(hosts, config))
        await self.hosts[name].wait_up(5)
        return self.summary(name)

    async def op_hosts_rm(self, name: str) -> dict[str, Any]:
        host = self.hosts.get(name)
        if host is not None and not host.in_inventory:
            raise Refusal("invalid", f"host {name} is not in hosts.toml; set [local] enabled = false in config.toml")
        going = self.busy(name)
        if going:
            raise Refusal("conflict", f"host {name} has {len(going)} run(s) going ({', '.join(going[:5])}); "
                                      f"`hypd hosts drain {name}` and remove it once they end, or kill them")
        await self._edit(lambda hosts: remove_host(hosts, name))
        return {"removed": name}

    async def op_hosts_drain(self, name: str, undo: bool) -> dict[str, Any]:
        host = self.hosts.get(name)
        if host is not None and not host.in_inventory:
            host.set_draining(not undo)  # not in hosts.toml: until the daemon restarts
            self.wake()
        else:
            await self._edit(lambda hosts: set_draining(hosts, name, not undo))
        return self.summary(name)
