"""The CLI as a tool in scripts, against a real daemon: tables aligned by display width,
UTF-8 TSV, an empty `ls`, the same exit status for the same situation, values refused by
name, `render`'s middle values, and every import declared."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import pty
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from rich.cells import cell_len

from conftest import REPO, DaemonProc
from hypd.ipc import ExitCode

pytestmark = pytest.mark.slow

WIDE = r"""
[study]
name = "wide"
objective = { metric = "loss" }
algorithm = "grid"
parallel = 3
[params]
x = { type = "choice", values = ["猫の手", "🐍", "a\tb\\c"] }
[run]
command = "echo {x}"
"""

RANDOM = """
[study]
name = "r"
objective = { metric = "loss" }
algorithm = "random"
max_trials = 1
[params]
lr = { type = "float", low = 0.001, high = 0.1, log = true }
opt = { type = "choice", values = ["adam", "sgd", "rmsprop"] }
[run]
command = "echo {lr} {opt}"
"""


def on_a_terminal(daemon: DaemonProc, *args: str) -> tuple[int, str]:
    """Run the CLI with its stdout on a pseudo-terminal, as a person at a shell would."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "hypd", *args], env=daemon.env, stdout=follower,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the other side closed
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    return proc.wait(30), out.decode().replace("\r\n", "\n")


def test_tables_align_by_display_width_and_tsv_is_utf8_escaping_only_what_breaks_rows(daemon: DaemonProc) -> None:
    daemon.cli("submit", str(daemon.write_study("wide", WIDE)))
    daemon.wait_finished("wide", timeout=60)
    lines = daemon.cli("ls", "--study", "wide").stdout.splitlines()
    header, rows = lines[0], lines[1:]
    assert len(rows) == 3
    # The last column (a run's last line) starts at the same display column on every row,
    # CJK characters and emoji taking two cells.
    start = cell_len(header[:header.index("LAST LINE")])
    for row, value in zip(rows, ["a\\tb\\c", "🐍", "猫の手"]):  # newest first; a tab shown as \t
        assert row.endswith(value) and cell_len(row[:len(row) - len(value)]) == start, row

    tsv = subprocess.run([sys.executable, "-m", "hypd", "ls", "--study", "wide", "--tsv"], env=daemon.env,
                         capture_output=True, check=True).stdout
    assert b"\\u" not in tsv and "猫の手".encode() in tsv and "🐍".encode() in tsv
    text = tsv.decode("utf-8")
    rows = [line.split("\t") for line in text.splitlines()]
    assert len(rows) == 4 and {len(r) for r in rows} == {12}
    assert rows[1][-1] == "a\\tb\\\\c"  # the tab and the backslash escaped, nothing else
    assert rows[1][9] == '{"x": "a\\\\tb\\\\\\\\c"}'  # the JSON text {"x": "a\tb\\c"}, escaped alike


def test_an_empty_ls_says_so_on_a_terminal_and_nothing_to_a_script(daemon: DaemonProc) -> None:
    quiet = daemon.cli("ls", "--state", "pending")
    assert (quiet.returncode, quiet.stdout) == (0, "")
    status, out = on_a_terminal(daemon, "ls", "--state", "pending")
    assert (status, out) == (0, "no runs match state=pending\n")


def test_no_daemon_is_exit_3_for_the_tui_as_for_the_cli(hypd_home: Path, daemon_env: dict[str, str]) -> None:
    for args in (["tui"], ["ls"], ["studies"]):
        result = subprocess.run([sys.executable, "-m", "hypd", *args], env=daemon_env, capture_output=True,
                                text=True, timeout=30, stdin=subprocess.DEVNULL)
        assert result.returncode == ExitCode.NO_DAEMON == 3, (args, result.stderr)
        assert "no hypd daemon is running" in result.stderr


def test_a_bad_value_names_its_parameter_and_render_takes_middle_values(daemon: DaemonProc) -> None:
    path = str(daemon.write_study("r", RANDOM))
    daemon.cli("submit", path)
    bad = daemon.cli("suggest", "r", "lr=x", check=False)
    assert bad.returncode == ExitCode.INVALID
    assert "lr: 'x' is not a number (the study's range is 0.001 to 0.1)" in bad.stderr
    bad = daemon.cli("render", path, "lr=fast", check=False)
    assert bad.returncode == ExitCode.INVALID and "lr: 'fast' is not a number" in bad.stderr
    out = daemon.cli("render", path)
    assert out.stdout.strip() == "echo 0.01 sgd"  # the middle of the log range, the middle choice
    assert "# not given, so a middle value: lr=0.01, opt=sgd" in out.stderr


def test_every_import_is_declared_with_bounds_where_apis_broke(tmp_path: Path) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    # An import that only an extra needs (pandas for Client.to_pandas) is declared by that extra.
    extras = [d for group in project.get("optional-dependencies", {}).values() for d in group]
    declared = {re.split(r"[<>=!~; \[]", d, maxsplit=1)[0].lower(): d for d in [*extras, *project["dependencies"]]}
    imported: set[str] = set()
    for path in (REPO / "hypd").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m != "hypd"}
    providers = importlib.metadata.packages_distributions()
    missing = {m for m in third_party if m != "tomli"
               and not any(d.lower() in declared for d in providers.get(m, [m]))}
    assert not missing, f"imported but not declared in pyproject.toml: {sorted(missing)}"
    assert "rich" in third_party and "rich" in declared
    for name in ("ax-platform", "textual", "asyncssh"):
        assert "<" in declared[name], f"{name} needs an upper bound on its major version"
