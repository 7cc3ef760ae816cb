"""A Slurm cluster as hosts.toml describes it. Pure.

    [hosts.cluster]
    kind = "slurm"
    login = "alice@login.cluster.edu"   # [user@]address[:port], or "local" (hypd runs on the login node)
    partition = "gpu"                    # default: the cluster's default partition
    account = "lab42"                    # optional
    max_jobs = 32                        # hypd's jobs in the queue at once, queued ones included
    sbatch = ["--time=02:00:00", "--constraint=a100"]   # passed to sbatch as they are
    workdir = "~/hypd-runs"             # on the cluster's shared filesystem
    setup = "source ~/venv/bin/activate" # a line run before each trial, in its job
    poll = "2s"                          # how often the queue is read (one squeue for every job)
    lost_after = "2m"                    # login node unreachable this long: its runs are lost
    labels = ["a100"]                    # what a study's hosts = { labels = [...] } matches
    key / known_hosts / use_ssh_config   # as for SSH hosts, for the login node
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hypd.inventory import DEFAULT_LOST_AFTER, HostConfig, InventoryError, parse_target, setup_line
from hypd.scheduler import label_list
from hypd.study import parse_duration

DEFAULT_WORKDIR = "~/hypd-runs"


@dataclass(frozen=True)
class SlurmConfig:
    name: str
    login: str = "local"
    partition: str | None = None
    account: str | None = None
    max_jobs: int = 16
    sbatch: tuple[str, ...] = ()
    workdir: str = DEFAULT_WORKDIR
    setup: str = ""
    poll: float = 2.0
    lost_after: float = DEFAULT_LOST_AFTER
    key: str | None = None
    known_hosts: bool | str = True
    use_ssh_config: bool = True
    draining: bool = False
    labels: tuple[str, ...] = ()  # what a study's `hosts = { labels = [...] }` matches
    kind: str = "slurm"

    @property
    def local(self) -> bool:
        return self.login == "local"

    @property
    def target(self) -> str:
        return self.login

    def ssh_config(self) -> HostConfig:
        """How the login node is reached (not for a local login)."""
        user, address, port = parse_target(self.login)
        return HostConfig(self.name, address, port or 22, user, self.key, self.use_ssh_config, self.known_hosts,
                          workdir=self.workdir, lost_after=self.lost_after)


KNOWN_KEYS = ("kind", "login", "partition", "account", "max_jobs", "sbatch", "workdir", "setup", "poll",
              "lost_after", "key", "known_hosts", "use_ssh_config", "draining", "labels")


def make_slurm_host(name: str, values: Mapping[str, Any], prefix: str) -> SlurmConfig:
    """A SlurmConfig from a [hosts.NAME] table with kind = "slurm"; InventoryError naming
    the key and the fix otherwise."""
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in KNOWN_KEYS:
            raise InventoryError(f"{prefix}.{key}: unknown key for a Slurm host; known: {', '.join(KNOWN_KEYS)}")
        if key == "kind":
            continue
        kwargs[key] = _check(key, value, f"{prefix}.{key}")
    return SlurmConfig(name=name, **kwargs)


def _check(key: str, value: Any, what: str) -> Any:
    def fail(fix: str) -> InventoryError:
        return InventoryError(f"{what} {fix}, not {value!r}")

    def text(example: str, optional: bool = False) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value.strip() or any(c in value for c in "\n\r"):
            raise fail(f"must be one line of text, e.g. {key} = {example}")
        return value.strip()

    if key == "login":
        login = text('"alice@login.cluster.edu" or "local"')
        if login != "local":
            try:
                parse_target(login)  # type: ignore[arg-type]
            except InventoryError as exc:
                raise fail(f'must be "local" or [user@]address[:port] ({exc})') from None
        return login
    if key in ("partition", "account"):
        word = text('"gpu"', optional=True)
        if word is not None and any(c.isspace() for c in word):
            raise fail(f'must be one word, e.g. {key} = "gpu"')
        return word
    if key == "max_jobs":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise fail("must be a whole number >= 1, e.g. max_jobs = 32")
        return value
    if key == "sbatch":
        if not isinstance(value, (list, tuple)) or not all(isinstance(a, str) and a.startswith("-") for a in value):
            raise fail('must be a list of sbatch options, e.g. sbatch = ["--time=02:00:00", "--constraint=a100"]')
        for managed in ("--output", "--job-name", "--comment", "--parsable", "--open-mode", "--chdir", "-o", "-J"):
            if any(a == managed or a.startswith(managed + "=") for a in value):
                raise fail(f"must not set {managed}: hypd sets it for each run")
        return tuple(value)
    if key == "workdir":
        path = text(f'"{DEFAULT_WORKDIR}"')
        if not (path.startswith("/") or path == "~" or path.startswith("~/")):  # type: ignore[union-attr]
            raise fail(f'must be absolute or start with ~/ (on the shared filesystem), e.g. workdir = "{DEFAULT_WORKDIR}"')
        return path
    if key == "setup":
        return setup_line(value, fail)
    if key in ("poll", "lost_after"):
        try:
            seconds = parse_duration(value)
        except ValueError:
            raise fail(f'must be a duration, e.g. {key} = "2s"') from None
        if seconds <= 0:
            raise fail(f'must be longer than 0, e.g. {key} = "2s"')
        return seconds
    if key == "key":
        return text('"~/.ssh/id_ed25519"', optional=True)
    if key == "known_hosts":
        if isinstance(value, bool) or (isinstance(value, str) and value.strip()):
            return value
        raise fail("must be true (~/.ssh/known_hosts), a file path, or false (no host key check)")
    if key == "labels":
        labels = label_list(value)
        if labels is None:
            raise fail('must be a list of short names (letters, digits, _ . -), e.g. labels = ["a100"]')
        return labels
    if key in ("use_ssh_config", "draining"):
        if not isinstance(value, bool):
            raise fail(f"must be true or false, e.g. {key} = true")
        return value
    raise InventoryError(f"{what}: unknown key")  # pragma: no cover - KNOWN_KEYS is checked first
