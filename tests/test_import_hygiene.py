"""Layers that cannot leak: each entry point is imported in a fresh interpreter and the
modules it pulled in are checked."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("ax", "torch", "botorch", "textual", "aiosqlite", "asyncssh", "pynvml")


def imported(code: str) -> set[str]:
    probe = f"{code}\nimport sys, json; print(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_cli_imports_nothing_heavy() -> None:
    mods = imported("import hypd.cli; hypd.cli.build_parser()")
    assert not mods & set(HEAVY), mods & set(HEAVY)
    assert "asyncio" not in mods  # `hypd ls` pays only for what it uses


def test_python_client_imports_nothing_heavy() -> None:
    mods = imported("from hypd.client import Client")
    assert not mods & {*HEAVY, "pandas", "numpy", "asyncio"}, mods & {*HEAVY, "pandas", "numpy", "asyncio"}


def test_report_helper_imports_only_the_standard_library() -> None:
    mods = imported("from hypd import report")
    assert not mods & set(HEAVY)


@pytest.mark.parametrize("module", ["hypd.study", "hypd.scheduler", "hypd.runstate", "hypd.metrics",
                                    "hypd.wrapper", "hypd.search"])
def test_core_imports_no_adapter(module: str) -> None:
    mods = imported(f"import {module}")
    assert not mods & set(HEAVY), mods & set(HEAVY)


def test_daemon_never_imports_textual() -> None:
    mods = imported("import hypd.daemon")
    assert "textual" not in mods and "ax" not in mods and "torch" not in mods
