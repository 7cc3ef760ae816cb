"""The SSH hosts the daemon may use: $HYPD_HOME/hosts.toml. Pure, plus reading and writing
that file.

    [hosts.gpu1]
    address = "10.0.0.5"          # required: a name or address `ssh` understands
    port = 22                     # default: 22 (or the Port of ~/.ssh/config)
    user = "me"                   # default: ~/.ssh/config's User, else your local name
    key = "~/.ssh/id_ed25519"     # default: your default keys and the agent
    use_ssh_config = true         # read ~/.ssh/config as `ssh` does
    known_hosts = true            # true: ~/.ssh/known_hosts; a path: that file;
                                  #   false: do not check the host key (not recommended)
    gpus = [0, 1]                 # which GPUs hypd may use; default: all
    max_per_gpu = 1               # runs sharing one GPU
    workdir = "~/.hypd-runs"      # root on the host: runs/ (control files) and studies/ (outputs)
    setup = "source ~/venv/bin/activate"   # a line run before each trial
    busy_memory_mib = 1024        # a GPU hypd did not hand out is busy with someone else's
    busy_utilization = 30         #   work above either threshold
    cpu_slots = 8                 # runs with gpus = 0 at once; default: the host's core count
    lost_after = "2m"             # how long the host may be unreachable before its runs are lost
    draining = false              # true: start nothing new there; running runs go on
    labels = ["a100"]             # what a study's hosts = { labels = [...] } picks hosts by

Every function raises `InventoryError` (a ValueError) with one line naming the file, the
key and the fix; nothing here touches the network.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from hypd.scheduler import label_list
from hypd.study import parse_duration

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RESERVED_NAMES = frozenset({"local"})
DEFAULT_WORKDIR = "~/.hypd-runs"
DEFAULT_LOST_AFTER = 120.0
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_BARE_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")


class InventoryError(ValueError):
    """A hosts file or a host entry that cannot be used; the message is one line."""


@dataclass(frozen=True)
class HostConfig:
    """One SSH host as hosts.toml describes it (see the module docstring)."""

    name: str
    address: str
    port: int = 22
    user: str | None = None
    key: str | None = None  # path of a private key
    use_ssh_config: bool = True
    known_hosts: bool | str = True  # True: ~/.ssh/known_hosts; a path: that file; False: no check
    gpus: tuple[int, ...] | None = None
    max_per_gpu: int = 1
    workdir: str = DEFAULT_WORKDIR
    setup: str = ""
    busy_memory_mib: int = 1024
    busy_utilization: int = 30
    cpu_slots: int | None = None  # None: the host's core count
    lost_after: float = DEFAULT_LOST_AFTER  # seconds
    draining: bool = False
    labels: tuple[str, ...] = ()  # what a study's `hosts = { labels = [...] }` matches

    @property
    def target(self) -> str:
        """`user@address:port` as `parse_target` reads it (port left out when 22)."""
        address = f"[{self.address}]" if ":" in self.address else self.address
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port != 22 else ""
        return f"{user}{address}{port}"

    @property
    def ssh_command(self) -> str:
        """The ssh command line that reaches the host as hypd tries to, for a user to run
        by hand when it cannot connect."""
        parts = ["ssh", "-p", str(self.port)]
        if self.key:
            parts += ["-i", self.key]
        if self.known_hosts is False:
            parts += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        elif isinstance(self.known_hosts, str):
            parts += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        if not self.use_ssh_config:
            parts += ["-F", "none"]
        parts.append(f"{self.user}@{self.address}" if self.user else self.address)
        return " ".join(shlex.quote(p) for p in parts)


_FIELDS = {f.name: f for f in fields(HostConfig)}
KNOWN_KEYS = tuple(f for f in _FIELDS if f != "name")


def _describe(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def setup_line(value: Any, fail: Callable[[str], InventoryError]) -> str:
    """A host's `setup` (any kind of host): one line of shell run before each run's stages."""
    if not isinstance(value, str) or "\n" in value or "\r" in value:
        raise fail('must be one line of shell, e.g. setup = "source ~/venv/bin/activate"')
    return value.strip()


def _check_value(key: str, value: Any, where: str = "") -> Any:
    """The value for HostConfig field `key`, converted (lists to tuples, durations to
    seconds); InventoryError saying how to write it otherwise."""
    what = _describe(where, key)

    def fail(fix: str) -> InventoryError:
        return InventoryError(f"{what} {fix}, not {value!r}")

    def whole(minimum: int, example: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise fail(f"must be a whole number >= {minimum}, e.g. {key} = {example}")
        return value

    if key == "address":
        if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value) or "@" in value:
            raise fail('must be a host name or address without user or spaces, e.g. address = "10.0.0.5"')
        return value.strip()
    if key == "port":
        port = whole(1, "22")
        if port > 65535:
            raise fail("must be a port number 1-65535, e.g. port = 22")
        return port
    if key == "user":
        if value is None:
            return None
        if not isinstance(value, str) or not value or any(c.isspace() or c in "@:" for c in value):
            raise fail('must be a user name, e.g. user = "alice"')
        return value
    if key == "key":
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise fail('must be the path of a private key, e.g. key = "~/.ssh/id_ed25519"')
        return value
    if key in ("use_ssh_config", "draining"):
        if not isinstance(value, bool):
            raise fail(f"must be true or false, e.g. {key} = true")
        return value
    if key == "known_hosts":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip():
            return value
        raise fail('must be true (~/.ssh/known_hosts), a file path, or false (no host key check)')
    if key == "gpus":
        if value is None:
            return None
        if (not isinstance(value, (list, tuple))
                or not all(isinstance(g, int) and not isinstance(g, bool) and g >= 0 for g in value)):
            raise fail("must be a list of GPU indexes, e.g. gpus = [0, 1]")
        return tuple(sorted(set(value)))
    if key == "max_per_gpu":
        return whole(1, "1")
    if key == "workdir":
        if not isinstance(value, str) or not value.strip():
            raise fail(f'must be a folder on the host, e.g. workdir = "{DEFAULT_WORKDIR}"')
        if not (value.startswith("/") or value == "~" or value.startswith("~/")):
            raise fail(f'must be absolute or start with ~/, e.g. workdir = "{DEFAULT_WORKDIR}"')
        return value
    if key == "setup":
        return setup_line(value, fail)
    if key == "busy_memory_mib":
        return whole(0, "1024")
    if key == "busy_utilization":
        pct = whole(0, "30")
        if pct > 100:
            raise fail("must be a percentage 0-100, e.g. busy_utilization = 30")
        return pct
    if key == "cpu_slots":
        if value is None:
            return None
        return whole(0, "8")
    if key == "labels":
        labels = label_list(value)
        if labels is None:
            raise fail('must be a list of short names (letters, digits, _ . -), e.g. labels = ["a100"]')
        return labels
    if key == "lost_after":
        try:
            return parse_duration(value)
        except ValueError:
            raise fail('must be a duration, e.g. lost_after = "2m" or "90s"') from None
    raise InventoryError(f"{what}: unknown key; known: {', '.join(KNOWN_KEYS)}")


def check_name(name: Any, where: str = "") -> str:
    """A valid host name, or InventoryError."""
    what = f"{where}: " if where else ""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InventoryError(f"{what}host name {name!r}: use letters, digits, '.', '_' and '-' "
                             "(starting with a letter or digit), e.g. gpu1")
    if name in RESERVED_NAMES:
        raise InventoryError(f"{what}host name {name!r} is reserved for the daemon's own machine; "
                             "choose another name")
    return name


def make_host(name: str, values: Mapping[str, Any], where: str = "") -> Any:
    """A HostConfig from a table of values (as in hosts.toml), every value checked; with
    kind = "slurm", a hypd.slurm.config.SlurmConfig."""
    check_name(name, where)
    prefix = f"{where}: hosts.{name}" if where else f"hosts.{name}"
    kind = values.get("kind", "ssh")
    if kind == "slurm":
        from hypd.slurm.config import make_slurm_host

        return make_slurm_host(name, values, prefix)
    if kind != "ssh":
        raise InventoryError(f'{prefix}.kind must be "ssh" (the default) or "slurm", not {kind!r}')
    values = {k: v for k, v in values.items() if k != "kind"}
    if "address" not in values:
        raise InventoryError(f'{prefix}: address is missing; add e.g. address = "10.0.0.5"')
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in _FIELDS or key == "name":
            raise InventoryError(f"{prefix}.{key}: unknown key; known: {', '.join(KNOWN_KEYS)}")
        kwargs[key] = _check_value(key, value, prefix)
    return HostConfig(name=name, **kwargs)


def _keys(host: Any) -> tuple[str, ...]:
    return tuple(f.name for f in fields(host) if f.name != "name")


def check_host(host: Any) -> Any:
    """The same host with every field checked and normalised; InventoryError otherwise."""
    values = {k: getattr(host, k) for k in _keys(host)}
    return make_host(host.name, {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()
                                 if v is not None or k in ("gpus", "cpu_slots", "user", "key")})


# --------------------------------------------------------------------------- targets

def parse_target(target: str) -> tuple[str | None, str, int | None]:
    """`[user@]address[:port]` -> (user or None, address, port or None).

    IPv6 addresses take brackets when a port follows (`[::1]:2222`); a bare IPv6 address
    (`::1`) is read as an address without a port.
    """
    text = target.strip()
    if not text or any(c.isspace() for c in text):
        raise InventoryError(f"{target!r}: give a host as [user@]address[:port], e.g. alice@10.0.0.5:22")
    user: str | None = None
    if "@" in text:
        user, _, text = text.rpartition("@")
        if not user or "@" in user or ":" in user:
            raise InventoryError(f"{target!r}: bad user name; give [user@]address[:port], e.g. alice@10.0.0.5")
    port_text: str | None = None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise InventoryError(f"{target!r}: unclosed '['; write IPv6 addresses as [::1]:22")
        address, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise InventoryError(f"{target!r}: expected ':port' after ']', e.g. [::1]:22")
            port_text = rest[1:]
    elif text.count(":") == 1:
        address, _, port_text = text.partition(":")
    else:
        address = text
    if not address:
        raise InventoryError(f"{target!r}: no address; give [user@]address[:port], e.g. 10.0.0.5")
    port: int | None = None
    if port_text is not None:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise InventoryError(f"{target!r}: port must be a number 1-65535, e.g. {address}:22")
        port = int(port_text)
    return user, address, port


# --------------------------------------------------------------------------- list helpers

def add_host(hosts: Iterable[HostConfig], host: HostConfig) -> list[HostConfig]:
    """The list with `host` (checked) appended; InventoryError if its name is taken or reserved."""
    host = check_host(host)
    current = list(hosts)
    if any(h.name == host.name for h in current):
        raise InventoryError(f"host {host.name!r} already exists; remove it first or choose another name")
    return current + [host]


def remove_host(hosts: Iterable[HostConfig], name: str) -> list[HostConfig]:
    """The list without host `name`; InventoryError if there is none."""
    current = list(hosts)
    kept = [h for h in current if h.name != name]
    if len(kept) == len(current):
        raise InventoryError(_no_such_host(current, name))
    return kept


def set_draining(hosts: Iterable[HostConfig], name: str, draining: bool = True) -> list[HostConfig]:
    """The list with host `name`'s `draining` set; InventoryError if there is none."""
    current = list(hosts)
    if not any(h.name == name for h in current):
        raise InventoryError(_no_such_host(current, name))
    return [replace(h, draining=draining) if h.name == name else h for h in current]


def _no_such_host(hosts: list[HostConfig], name: str) -> str:
    known = ", ".join(h.name for h in hosts) or "none"
    return f"no host {name!r} (hosts: {known})"


# --------------------------------------------------------------------------- the file

def inventory_path(home: str | Path) -> Path:
    return Path(home) / "hosts.toml"


def load_inventory(path: str | Path) -> list[HostConfig]:
    """The hosts in `path`, in file order; [] if the file does not exist."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise InventoryError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    return parse_inventory(text, str(path))


def parse_inventory(text: str, source: str = "hosts.toml") -> list[HostConfig]:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InventoryError(f"{source}: not valid TOML: {exc}") from None
    unknown = set(doc) - {"hosts"}
    if unknown:
        raise InventoryError(f"{source}: unknown top-level key(s) {', '.join(sorted(unknown))}; "
                             "describe each host in a [hosts.NAME] table")
    table = doc.get("hosts", {})
    if not isinstance(table, dict):
        raise InventoryError(f"{source}: hosts must be tables, e.g. [hosts.gpu1] with address = \"10.0.0.5\"")
    hosts = []
    for name, values in table.items():
        if not isinstance(values, dict):
            raise InventoryError(f"{source}: hosts.{name} must be a table: [hosts.{name}] then address = ...")
        hosts.append(make_host(name, values, source))
    return hosts


def _toml_string(value: str) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text.replace("\x7f", "\\u007f")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InventoryError(f"cannot write {value!r} to hosts.toml")
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise InventoryError(f"cannot write {value!r} to hosts.toml")


def _duration_text(seconds: float) -> str:
    if float(seconds).is_integer():
        s = int(seconds)
        if s % 3600 == 0:
            return f"{s // 3600}h"
        if s % 60 == 0:
            return f"{s // 60}m"
        return f"{s}s"
    return f"{seconds:g}s"


def format_inventory(hosts: Iterable[HostConfig]) -> str:
    """hosts.toml text for `hosts`: address always, other keys only where not the default."""
    lines = ["# Hosts for hypd (see `hypd hosts add --help`); written by hypd, comments are not kept.", ""]
    for host in hosts:
        key = host.name if _BARE_KEY_RE.match(host.name) else _toml_string(host.name)
        lines.append(f"[hosts.{key}]")
        defaults = {f.name: f.default for f in fields(host)}
        for name in _keys(host):
            value = getattr(host, name)
            if name not in ("address", "kind") and value == defaults[name]:
                continue
            if value is None:
                continue
            text = (_toml_string(_duration_text(value)) if name in ("lost_after", "poll")
                    else _toml_value(value))
            lines.append(f"{name} = {text}")
        lines.append("")
    return "\n".join(lines)


def save_inventory(path: str | Path, hosts: Iterable[HostConfig]) -> None:
    """Write `hosts` to `path` atomically (a reader sees the old file or the new one)."""
    path = Path(path)
    hosts = [check_host(h) for h in hosts]
    names = [h.name for h in hosts]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InventoryError(f"{path}: host name(s) {', '.join(duplicates)} given twice; keep one of each")
    text = format_inventory(hosts)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".hosts.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException:
            _unlink_quietly(tmp)
            raise
    except OSError as exc:
        raise InventoryError(f"{path}: cannot write: {exc.strerror or exc}") from None


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
