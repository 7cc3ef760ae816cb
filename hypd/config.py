"""The daemon's settings: $HYPD_HOME/config.toml, every key optional.

    [daemon]
    poll_interval = "0.5s"     # accepted from older configs; unused (runs are watched by events)
    gpu_poll = "5s"            # how often GPUs are read (SSH hosts: nvidia-smi streams at this interval)
    kill_grace = "10s"         # SIGTERM, then SIGKILL after this long

    [local]                    # the local machine as a host
    enabled = true
    cpu_slots = 8              # default: one per core
    gpus = [0, 1]              # which GPUs hypd may use; default: all
    max_per_gpu = 1            # runs that may share a GPU
    busy_memory_mib = 1024     # a GPU hypd did not hand out is busy with someone else's
    busy_utilization = 30      #   work above either threshold
    labels = ["a100"]          # what a study's hosts = { labels = [...] } picks hosts by
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypd.scheduler import label_list
from hypd.study import parse_duration

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class LocalHostConfig:
    enabled: bool = True
    cpu_slots: int = field(default_factory=lambda: os.cpu_count() or 1)
    gpus: tuple[int, ...] | None = None
    max_per_gpu: int = 1  # runs that may share one GPU (with gpu_mem in their study)
    busy_memory_mib: int = 1024
    busy_utilization: int = 30
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    poll_interval: float = 0.5
    gpu_poll: float = 5.0
    kill_grace: float = 10.0
    local: LocalHostConfig = field(default_factory=LocalHostConfig)


def load_config(home: Path) -> Config:
    path = home / "config.toml"
    if not path.exists():
        return Config()
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    unknown = set(doc) - {"daemon", "local"}
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(sorted(unknown))}; known: [daemon], [local]")
    daemon = doc.get("daemon", {})
    local = doc.get("local", {})
    _known(path, "daemon", daemon, {"poll_interval", "gpu_poll", "kill_grace"})
    _known(path, "local", local, {"enabled", "cpu_slots", "gpus", "max_per_gpu", "busy_memory_mib",
                                  "busy_utilization", "labels"})
    try:
        durations = {k: parse_duration(v) for k, v in daemon.items()}
    except ValueError as exc:
        raise ConfigError(f"{path}: [daemon]: {exc}") from None
    local_kwargs: dict[str, Any] = {}
    for key, value in local.items():
        if key == "enabled":
            if not isinstance(value, bool):
                raise ConfigError(f"{path}: local.enabled must be true or false")
        elif key == "gpus":
            if not isinstance(value, list) or not all(isinstance(g, int) and not isinstance(g, bool) and g >= 0
                                                      for g in value):
                raise ConfigError(f"{path}: local.gpus must be a list of GPU indexes, e.g. [0, 1]")
            value = tuple(value)
        elif key == "labels":
            value = label_list(value)
            if value is None:
                raise ConfigError(f'{path}: local.labels must be a list of short names, e.g. ["a100"]')
        elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{path}: local.{key} must be a whole number >= 0")
        local_kwargs[key] = value
    return Config(**durations, local=LocalHostConfig(**local_kwargs))


def _known(path: Path, section: str, table: Any, keys: set[str]) -> None:
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{section}] must be a table")
    for key in table:
        if key not in keys:
            raise ConfigError(f"{path}: {section}.{key}: unknown key; known: {', '.join(sorted(keys))}")
