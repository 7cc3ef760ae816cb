"""Other users on the daemon's machine: the socket folder under /tmp is not taken over by a
symlink or a folder someone else made first, and the daemon's files are its user's alone
(folders 0700, files 0600) whatever the umask."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hypd.ipc import socket_path
from hypd.private import UnsafePath, private_dir
from tests.conftest import FAST_CONFIG, DaemonProc

pytestmark = pytest.mark.slow


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def deep_home(hypd_home: Path, daemon_env: dict[str, str]) -> Iterator[tuple[Path, dict[str, str]]]:
    """A home too deep for a socket path: the socket goes to a folder under /tmp."""
    home = hypd_home / ("deep-" + "x" * 100)
    home.mkdir()
    (home / "config.toml").write_text(FAST_CONFIG)
    fallback = socket_path(home).parent
    assert str(fallback).startswith("/tmp/hypd-")
    yield home, {**daemon_env, "HYPD_HOME": str(home)}
    if fallback.is_symlink():
        fallback.unlink()
    else:
        shutil.rmtree(fallback, ignore_errors=True)


def serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # The timeout only keeps a hang from stalling the suite.
    return subprocess.run([sys.executable, "-m", "hypd", "serve"], env=env, capture_output=True, text=True,
                          timeout=30)


def test_a_symlink_at_the_tmp_socket_folder_is_refused(deep_home: tuple[Path, dict[str, str]],
                                                       tmp_path: Path) -> None:
    home, env = deep_home
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o755)
    target.chmod(0o755)
    fallback = socket_path(home).parent
    fallback.symlink_to(target)  # what another user could do first
    result = serve(env)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and f"{fallback} is a symlink (to {target})" in errors[0], result.stderr
    assert mode(target) == 0o755 and not list(target.iterdir())  # neither chmod-ed nor used


@pytest.mark.skipif(os.getuid() != 0, reason="making a folder owned by another user needs root")
def test_a_tmp_socket_folder_owned_by_someone_else_is_refused(deep_home: tuple[Path, dict[str, str]]) -> None:
    home, env = deep_home
    fallback = socket_path(home).parent
    fallback.mkdir()
    fallback.chmod(0o777)
    os.chown(fallback, 4242, 4242)  # made first by another user
    result = serve(env)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and f"{fallback} belongs to uid 4242, not to you (uid {os.getuid()})" in errors[0], \
        result.stderr
    assert mode(fallback) == 0o777 and not list(fallback.iterdir())


def test_a_folder_is_checked_without_following_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir(mode=0o755)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(UnsafePath, match="is a symlink"):
        private_dir(tmp_path / "link", follow=False)
    assert private_dir(tmp_path / "link", follow=True) == f"{tmp_path / 'link'} was open to other users (mode 0755); made it 0700"
    assert mode(tmp_path / "real") == 0o700
    assert private_dir(tmp_path / "real", follow=False) is None
    (tmp_path / "file").write_text("")
    with pytest.raises(UnsafePath, match="is not a folder"):
        private_dir(tmp_path / "file", follow=False)


STUDY = """
[study]
name = "perm"
objective = { metric = "loss", goal = "minimize" }
algorithm = "grid"
retries = 0

[params]
x = { type = "choice", values = [1] }

[run]
command = "echo hi > {run_dir}/out.txt; echo 'METRICS: loss=1'"
"""


def test_files_are_private_whatever_the_umask_and_an_open_home_is_tightened(
        hypd_home: Path, daemon_env: dict[str, str]) -> None:
    hypd_home.chmod(0o755)
    (hypd_home / "daemon.log").write_text("")
    (hypd_home / "daemon.log").chmod(0o644)
    old = os.umask(0)  # the daemon inherits it
    try:
        d = DaemonProc(hypd_home, daemon_env).start()
    finally:
        os.umask(old)
    try:
        path = d.write_study("perm", STUDY)
        d.cli("submit", str(path))
        d.wait_finished("perm")
        run = d.run("perm:1")
        log = (hypd_home / "daemon.log").read_text()
        assert f"{hypd_home} was open to other users (mode 0755); made it 0700" in log
        assert any(line.endswith(f"0600 in {hypd_home} (other users could read them)") and "daemon.log" in line
                   for line in log.splitlines())
        assert mode(hypd_home) == 0o700
        for name in ("hypd.db", "hypd.db-wal", "hypd.db-shm", "daemon.log"):
            assert mode(hypd_home / name) == 0o600, name
        assert mode(Path(run["log_path"])) == 0o600 and mode(Path(run["log_path"]).parent) == 0o700
        assert mode(socket_path(hypd_home).parent) == 0o700 and mode(socket_path(hypd_home)) == 0o600
        # The run's own outputs are made with the user's umask (0 here), not the daemon's.
        assert mode(Path(run["run_dir"]) / "out.txt") == 0o666
    finally:
        d.stop(kill_runs=True)


def test_a_first_detached_start_makes_its_files_private_without_a_warning(tmp_path: Path,
                                                                           daemon_env: dict[str, str]) -> None:
    # A new user's first `hypd serve --detach` under the usual umask: nothing to tighten
    # (its own files are made 0600), so no warning about files other users could read.
    home = tmp_path / "fresh-home"
    env = {**daemon_env, "HYPD_HOME": str(home)}
    old = os.umask(0o022)
    try:
        started = subprocess.run([sys.executable, "-m", "hypd", "serve", "--detach"], env=env,
                                 capture_output=True, text=True, timeout=60)
    finally:
        os.umask(old)
    try:
        assert started.returncode == 0, started.stderr
        assert "other users could read" not in started.stdout + started.stderr
        assert mode(home / "daemon.out") == 0o600 and mode(home) == 0o700
    finally:
        subprocess.run([sys.executable, "-m", "hypd", "stop"], env=env, capture_output=True, timeout=60)
