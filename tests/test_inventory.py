"""Unit tests for hypd.inventory: hosts.toml read, checked and written back; targets parsed;
hosts added, removed and drained. Pure and fast: no network."""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from hypd.inventory import (
    DEFAULT_LOST_AFTER,
    DEFAULT_WORKDIR,
    HostConfig,
    InventoryError,
    add_host,
    format_inventory,
    inventory_path,
    load_inventory,
    parse_target,
    remove_host,
    save_inventory,
    set_draining,
)

FULL = HostConfig(
    name="gpu1", address="10.0.0.5", port=2222, user="alice", key="~/.ssh/id_ed25519", use_ssh_config=False,
    known_hosts="~/.ssh/hypd_known_hosts", gpus=(0, 1, 3), max_per_gpu=2, workdir="/scratch/hypd",
    setup='source ~/venv/bin/activate && export X="a b"', busy_memory_mib=2048, busy_utilization=50,
    cpu_slots=12, lost_after=300.0, draining=True)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hosts.toml"
    path.write_text(text)
    return path


def refusal(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(InventoryError) as info:
        load_inventory(path)
    message = str(info.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    return message


# --------------------------------------------------------------------------- reading

def test_missing_file_is_no_hosts(tmp_path: Path) -> None:
    assert load_inventory(tmp_path / "hosts.toml") == []
    assert inventory_path(tmp_path) == tmp_path / "hosts.toml"


def test_minimal_host_gets_the_defaults(tmp_path: Path) -> None:
    [host] = load_inventory(write(tmp_path, '[hosts.a]\naddress = "box.example.org"\n'))
    assert host == HostConfig(name="a", address="box.example.org")
    assert (host.port, host.user, host.key, host.use_ssh_config, host.known_hosts) == (22, None, None, True, True)
    assert (host.gpus, host.max_per_gpu, host.workdir, host.setup) == (None, 1, DEFAULT_WORKDIR, "")
    assert (host.busy_memory_mib, host.busy_utilization, host.cpu_slots) == (1024, 30, None)
    assert host.lost_after == DEFAULT_LOST_AFTER == 120.0 and host.draining is False


def test_every_key_is_read_in_file_order(tmp_path: Path) -> None:
    text = """
[hosts.zeta]
address = "10.0.0.9"

[hosts.gpu1]
address = "10.0.0.5"
port = 2222
user = "alice"
key = "~/.ssh/id_ed25519"
use_ssh_config = false
known_hosts = "~/.ssh/hypd_known_hosts"
gpus = [3, 0, 1]
max_per_gpu = 2
workdir = "/scratch/hypd"
setup = 'source ~/venv/bin/activate && export X="a b"'
busy_memory_mib = 2048
busy_utilization = 50
cpu_slots = 12
lost_after = "5m"
draining = true
"""
    hosts = load_inventory(write(tmp_path, text))
    assert [h.name for h in hosts] == ["zeta", "gpu1"]
    assert hosts[1] == FULL


@pytest.mark.parametrize("value, seconds", [('"2m"', 120.0), ('"90s"', 90.0), ("45", 45.0), ('"1h30m"', 5400.0)])
def test_lost_after_durations(tmp_path: Path, value: str, seconds: float) -> None:
    [host] = load_inventory(write(tmp_path, f'[hosts.a]\naddress = "h"\nlost_after = {value}\n'))
    assert host.lost_after == seconds


def test_known_hosts_false_is_the_explicit_opt_out(tmp_path: Path) -> None:
    [host] = load_inventory(write(tmp_path, '[hosts.a]\naddress = "h"\nknown_hosts = false\n'))
    assert host.known_hosts is False


@pytest.mark.parametrize("body, expected", [
    ('address = "h"\ncolour = "red"', "hosts.a.colour: unknown key; known: address, port"),
    ('port = 22', "hosts.a: address is missing; add e.g. address"),
    ('address = "h"\nport = 70000', "hosts.a.port must be a port number 1-65535"),
    ('address = "h"\nport = "22"', "hosts.a.port must be a whole number >= 1"),
    ('address = "h"\ngpus = [0, -1]', "hosts.a.gpus must be a list of GPU indexes, e.g. gpus = [0, 1]"),
    ('address = "h"\ngpus = 2', "hosts.a.gpus must be a list of GPU indexes"),
    ('address = "h"\nknown_hosts = 1', "hosts.a.known_hosts must be true (~/.ssh/known_hosts), a file path, or false"),
    ('address = "h"\nlost_after = "soon"', 'hosts.a.lost_after must be a duration, e.g. lost_after = "2m"'),
    ('address = "h"\nlost_after = 0', "hosts.a.lost_after must be a duration"),
    ('address = "h"\nworkdir = "runs"', "hosts.a.workdir must be absolute or start with ~/"),
    ('address = "h"\nmax_per_gpu = 0', "hosts.a.max_per_gpu must be a whole number >= 1"),
    ('address = "h"\nbusy_utilization = 101', "hosts.a.busy_utilization must be a percentage 0-100"),
    ('address = "h"\ncpu_slots = true', "hosts.a.cpu_slots must be a whole number >= 0"),
    ('address = "h"\ndraining = "yes"', "hosts.a.draining must be true or false"),
    ('address = "alice@h"', "hosts.a.address must be a host name or address without user"),
    ('address = "h"\nuser = "a b"', "hosts.a.user must be a user name"),
    ('address = "h"\nsetup = """a\nb"""', "hosts.a.setup must be one line of shell"),
])
def test_bad_values_are_refused_naming_file_key_and_fix(tmp_path: Path, body: str, expected: str) -> None:
    assert expected in refusal(tmp_path, f"[hosts.a]\n{body}\n")


def test_bad_files_are_refused(tmp_path: Path) -> None:
    assert "not valid TOML" in refusal(tmp_path, "[hosts.a\naddress=1")
    assert "unknown top-level key(s) host" in refusal(tmp_path, '[host.a]\naddress = "h"\n')
    assert "hosts.a must be a table" in refusal(tmp_path, 'hosts = { a = 1 }\n')
    assert "reserved for the daemon's own machine" in refusal(tmp_path, '[hosts.local]\naddress = "h"\n')
    assert "host name '-x'" in refusal(tmp_path, '[hosts."-x"]\naddress = "h"\n')


# --------------------------------------------------------------------------- writing

def test_save_and_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "home" / "hosts.toml"
    hosts = [FULL, HostConfig(name="b.lab", address="::1"), HostConfig(name="c", address="h", lost_after=2.5),
             HostConfig(name="d", address="h", known_hosts=False, setup='echo "quote" \\ back\ttab é')]
    save_inventory(path, hosts)
    assert load_inventory(path) == hosts
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["hosts.toml"]  # no temporary file left


def test_saved_file_lists_only_what_differs_from_the_defaults(tmp_path: Path) -> None:
    text = format_inventory([HostConfig(name="a", address="h", port=2200, lost_after=60.0)])
    assert '[hosts.a]\naddress = "h"\nport = 2200\nlost_after = "1m"\n' in text
    assert "workdir" not in text and "gpus" not in text


def test_save_replaces_atomically_and_refuses_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "hosts.toml"
    save_inventory(path, [HostConfig(name="a", address="h1")])
    inode = path.stat().st_ino
    save_inventory(path, [HostConfig(name="a", address="h2")])
    assert load_inventory(path)[0].address == "h2"
    assert path.stat().st_ino != inode  # a new file renamed over the old one
    with pytest.raises(InventoryError, match="given twice"):
        save_inventory(path, [HostConfig(name="a", address="h"), HostConfig(name="a", address="g")])
    with pytest.raises(InventoryError, match="port"):
        save_inventory(path, [HostConfig(name="a", address="h", port=0)])
    assert load_inventory(path)[0].address == "h2"  # untouched by the refusals


def test_save_to_an_unwritable_place_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InventoryError) as info:
        save_inventory(blocker / "hosts.toml", [HostConfig(name="a", address="h")])
    assert "cannot write" in str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------------------- targets

@pytest.mark.parametrize("target, expected", [
    ("box", (None, "box", None)),
    ("alice@box", ("alice", "box", None)),
    ("alice@10.0.0.5:2222", ("alice", "10.0.0.5", 2222)),
    ("box:22", (None, "box", 22)),
    ("[::1]:2222", (None, "::1", 2222)),
    ("bob@[fe80::1]", ("bob", "fe80::1", None)),
    ("::1", (None, "::1", None)),
])
def test_parse_target(target: str, expected: tuple[str | None, str, int | None]) -> None:
    assert parse_target(target) == expected


@pytest.mark.parametrize("target, expected", [
    ("", "give a host as [user@]address[:port]"),
    ("a b", "give a host as"),
    ("@box", "bad user name"),
    ("box:http", "port must be a number 1-65535"),
    ("box:0", "port must be a number"),
    ("[::1", "unclosed '['"),
    ("[::1]x", "expected ':port' after ']'"),
    ("alice@:22", "no address"),
])
def test_parse_target_refusals(target: str, expected: str) -> None:
    with pytest.raises(InventoryError, match=expected.replace("[", r"\[").replace("(", r"\(")):
        parse_target(target)


def test_target_property_round_trips() -> None:
    for host in (FULL, HostConfig(name="a", address="::1", port=2200), HostConfig(name="b", address="h")):
        user, address, port = parse_target(host.target)
        assert (user, address, port or 22) == (host.user, host.address, host.port)


# --------------------------------------------------------------------------- list helpers

def test_add_remove_and_drain() -> None:
    hosts = add_host([], HostConfig(name="a", address="h1"))
    hosts = add_host(hosts, HostConfig(name="b", address="h2", gpus=(1, 0, 1)))
    assert [h.name for h in hosts] == ["a", "b"]
    assert hosts[1].gpus == (0, 1)  # checked and normalised
    with pytest.raises(InventoryError, match="host 'a' already exists"):
        add_host(hosts, HostConfig(name="a", address="other"))
    with pytest.raises(InventoryError, match="reserved"):
        add_host(hosts, HostConfig(name="local", address="h"))
    with pytest.raises(InventoryError, match="host name 'bad name'"):
        add_host(hosts, HostConfig(name="bad name", address="h"))
    with pytest.raises(InventoryError, match="port"):
        add_host(hosts, HostConfig(name="c", address="h", port=-1))

    drained = set_draining(hosts, "b")
    assert [h.draining for h in drained] == [False, True]
    assert [h.draining for h in set_draining(drained, "b", False)] == [False, False]
    assert [h.draining for h in hosts] == [False, False]  # the input list is left alone
    with pytest.raises(InventoryError, match=r"no host 'z' \(hosts: a, b\)"):
        set_draining(hosts, "z")

    assert [h.name for h in remove_host(hosts, "a")] == ["b"]
    with pytest.raises(InventoryError, match="no host 'z'"):
        remove_host(hosts, "z")


def test_helpers_compose_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "hosts.toml"
    user, address, port = parse_target("alice@10.0.0.7:2200")
    save_inventory(path, add_host(load_inventory(path), HostConfig(name="n1", address=address, user=user,
                                                                   port=port or 22)))
    save_inventory(path, set_draining(load_inventory(path), "n1"))
    [host] = load_inventory(path)
    assert host == replace(HostConfig(name="n1", address="10.0.0.7", user="alice", port=2200), draining=True)
    assert os.access(path, os.R_OK)
