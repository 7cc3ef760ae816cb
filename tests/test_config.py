"""hypd.config.load_config: defaults, durations, refusals that name the file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from hypd.config import Config, ConfigError, LocalHostConfig, load_config


def load(tmp_path: Path, text: str) -> Config:
    (tmp_path / "config.toml").write_text(text)
    return load_config(tmp_path)


def refused(tmp_path: Path, text: str | bytes, *fragments: str) -> str:
    path = tmp_path / "config.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_defaults_without_a_file(tmp_path: Path) -> None:
    config = load_config(tmp_path)
    assert config == Config()
    assert (config.poll_interval, config.gpu_poll, config.kill_grace) == (0.5, 5.0, 10.0)
    local = config.local
    assert (local.enabled, local.gpus, local.busy_memory_mib, local.busy_utilization) == (True, None, 1024, 30)
    assert local.cpu_slots == (os.cpu_count() or 1)


def test_an_empty_file_is_the_defaults(tmp_path: Path) -> None:
    assert load(tmp_path, "") == Config()
    assert load(tmp_path, "# nothing\n[daemon]\n[local]\n") == Config()


def test_a_missing_home_is_the_defaults(tmp_path: Path) -> None:
    assert load_config(tmp_path / "does" / "not" / "exist") == Config()


def test_everything_set(tmp_path: Path) -> None:
    config = load(tmp_path, """
[daemon]
poll_interval = "0.1s"
gpu_poll = "2s"
kill_grace = "1m"

[local]
enabled = false
cpu_slots = 3
gpus = [0, 2]
busy_memory_mib = 512
busy_utilization = 10
""")
    assert config == Config(poll_interval=0.1, gpu_poll=2.0, kill_grace=60.0,
                            local=LocalHostConfig(enabled=False, cpu_slots=3, gpus=(0, 2), busy_memory_mib=512,
                                                  busy_utilization=10))


def test_one_key_leaves_the_others_at_their_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, '[local]\ncpu_slots = 4\n')
    assert config.local == LocalHostConfig(cpu_slots=4)
    assert (config.poll_interval, config.gpu_poll, config.kill_grace) == (0.5, 5.0, 10.0)


@pytest.mark.parametrize("value, seconds", [
    ('"0.5s"', 0.5), ('"90s"', 90.0), ('"10m"', 600.0), ('"1h30m"', 5400.0), ('"2.5h"', 9000.0),
    ('"250ms"', 0.25), ('"1d"', 86400.0), ("3", 3.0), ("0.25", 0.25), ('"7"', 7.0), ('" 1 m "', 60.0),
])
def test_durations(tmp_path: Path, value: str, seconds: float) -> None:
    config = load(tmp_path, f"[daemon]\nkill_grace = {value}\n")
    assert config.kill_grace == pytest.approx(seconds)


@pytest.mark.parametrize("value", ['"0s"', "0", "-1", '"-1s"', '"fast"', '"10 minutes"', '""', "true",
                                   "[1]", "{ s = 1 }", "inf", "nan", '"1h30"'])
def test_bad_durations(tmp_path: Path, value: str) -> None:
    refused(tmp_path, f"[daemon]\npoll_interval = {value}\n", "[daemon]")


@pytest.mark.parametrize("text, named", [
    ("[deamon]\n", "deamon"),
    ("[hosts]\nx = 1\n", "hosts"),
    ("top = 1\n", "top"),
    ("[daemon]\n[extra]\n[more]\n", "extra, more"),
])
def test_unknown_section(tmp_path: Path, text: str, named: str) -> None:
    refused(tmp_path, text, f"unknown section(s) {named}", "[daemon], [local]")


@pytest.mark.parametrize("section, key", [
    ("daemon", "poll"), ("daemon", "cpu_slots"), ("daemon", "Kill_grace"),
    ("local", "slots"), ("local", "gpu"), ("local", "poll_interval"), ("local", "busy_memory"),
])
def test_unknown_key(tmp_path: Path, section: str, key: str) -> None:
    refused(tmp_path, f"[{section}]\n{key} = 1\n", f"{section}.{key}: unknown key", "known: ")


def test_unknown_key_lists_the_known_ones(tmp_path: Path) -> None:
    message = refused(tmp_path, "[daemon]\npoll = 1\n")
    assert message.endswith("known: gpu_poll, kill_grace, poll_interval")


@pytest.mark.parametrize("text", ["daemon = 3\n", 'local = "yes"\n', "daemon = [1, 2]\n"])
def test_section_not_a_table(tmp_path: Path, text: str) -> None:
    refused(tmp_path, text, "must be a table")


@pytest.mark.parametrize("key, value, fragment", [
    ("enabled", "1", "local.enabled must be true or false"),
    ("enabled", '"true"', "local.enabled must be true or false"),
    ("cpu_slots", "-1", "local.cpu_slots must be a whole number >= 0"),
    ("cpu_slots", "1.5", "local.cpu_slots must be a whole number"),
    ("cpu_slots", '"4"', "local.cpu_slots must be a whole number"),
    ("cpu_slots", "true", "local.cpu_slots must be a whole number"),
    ("busy_memory_mib", "false", "local.busy_memory_mib must be a whole number"),
    ("busy_utilization", "[30]", "local.busy_utilization must be a whole number"),
    ("gpus", "0", "local.gpus must be a list of GPU indexes"),
    ("gpus", '"0,1"', "local.gpus must be a list of GPU indexes"),
    ("gpus", "[-1]", "local.gpus must be a list of GPU indexes"),
    ("gpus", "[0, 1.5]", "local.gpus must be a list of GPU indexes"),
    ("gpus", '["0"]', "local.gpus must be a list of GPU indexes"),
])
def test_bad_local_values(tmp_path: Path, key: str, value: str, fragment: str) -> None:
    refused(tmp_path, f"[local]\n{key} = {value}\n", fragment)


def test_boolean_gpu_indexes_are_refused(tmp_path: Path) -> None:
    refused(tmp_path, "[local]\ngpus = [true, false]\n", "local.gpus")


@pytest.mark.parametrize("key, value, expected", [
    ("cpu_slots", "0", 0), ("gpus", "[]", ()), ("gpus", "[3, 1]", (3, 1)), ("busy_utilization", "0", 0),
    ("enabled", "true", True),
])
def test_edge_values_accepted(tmp_path: Path, key: str, value: str, expected: Any) -> None:
    assert getattr(load(tmp_path, f"[local]\n{key} = {value}\n").local, key) == expected


@pytest.mark.parametrize("text", ["[daemon\n", "poll_interval = \n", "[daemon]\nkill_grace = 1s\n",
                                  "[daemon]\nx = 1\nx = 2\n"])
def test_not_toml(tmp_path: Path, text: str) -> None:
    refused(tmp_path, text, "line")


def test_not_utf8(tmp_path: Path) -> None:
    refused(tmp_path, b"[daemon]\n# \xff\xfe\n")


def test_config_is_a_folder(tmp_path: Path) -> None:
    (tmp_path / "config.toml").mkdir()
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value).startswith(f"{tmp_path / 'config.toml'}: ")


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)
