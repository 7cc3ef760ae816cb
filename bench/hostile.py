"""Hostile input against a real daemon: each case ends refused with one clear line, or
accepted and handled — never a crash (the daemon gone, a traceback) or a hang.

The cases are a table (CASES): a group, a name and a function of a Context that returns
an Outcome. Groups: "socket" (one daemon takes every line), "study files" (`hypd
submit` of hostile study files, one daemon; a SIGKILL mid-submit, a daemon of its own),
"store" (broken hypd.db files, a daemon each), "local users" (permissions, the /tmp socket
folder, a changed SSH host key). Add a case with the @case decorator; a group gets its own row in the table.

    python bench/hostile.py [--only GROUP] [-v]

Prints each case (with -v) and a table: inputs tried, refused with a clear line,
accepted and handled, crashes, hangs, and the daemons' peak RSS, with the load average.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from common import Daemon, load, proc_usage

from hypd.inventory import inventory_path, save_inventory
from hypd.ipc import socket_path
from hypd.storecheck import highwater_path

CONFIG = '[daemon]\ngpu_poll = "0.5s"\nkill_grace = "2s"\n[local]\ncpu_slots = 4\n'
HANG = 20.0  # seconds after which a case counts as a hang

GRID = """
[study]
name = "g"
objective = {{ metric = "loss", goal = "minimize" }}
algorithm = "grid"
parallel = 4
retries = 0
[params]
x = {{ type = "choice", values = [{values}] }}
[run]
command = "python3 -c 'import sys\\nfor i in range({lines}):\\n    print(\\"METRICS: step=%d loss=%s\\" % (i, sys.argv[1]))' {{x}}"
"""

CHATTY = """
[study]
name = "chatty"
objective = { metric = "loss", goal = "minimize" }
algorithm = "grid"
retries = 0
[params]
x = { type = "choice", values = [1] }
[run]
command = "python3 -c 'import sys\\nfor i in range(200000):\\n    sys.stdout.write(\\"x\\" * 999 + \\"\\\\n\\")\\nprint(\\"METRICS: loss=1\\")'"
"""


@dataclass(frozen=True)
class Outcome:
    kind: str  # "refused" (one clear line), "handled", "crash", "hang", "skipped"
    line: str


def refused(line: str) -> Outcome:
    clear = line.strip() and "\n" not in line.strip() and "Traceback" not in line
    return Outcome("refused" if clear else "crash", line.strip() or "(no line)")


@dataclass
class Context:
    base: Path
    verbose: bool
    peak_kib: dict[str, int] = field(default_factory=dict)
    _socket_daemon: Daemon | None = None
    _daemons: list[Daemon] = field(default_factory=list)

    def home(self, name: str) -> Path:
        home = Path(tempfile.mkdtemp(prefix=f"h{name[:6]}", dir="/tmp"))
        (home / "config.toml").write_text(CONFIG)
        return home

    def daemon(self, group: str, home: Path | None = None) -> Daemon:
        d = Daemon(home or self.home(group))
        d.env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), d.env.get("PATH", "")])
        self._daemons.append(d)
        return d.start()

    def socket_daemon(self) -> Daemon:
        if self._socket_daemon is None or not self._socket_daemon.alive():
            self._socket_daemon = self.daemon("socket")
        return self._socket_daemon

    def note_rss(self, group: str, d: Daemon) -> None:
        if d.alive():
            self.peak_kib[group] = max(self.peak_kib.get(group, 0), proc_usage(d.pid)[1])

    def close(self) -> None:
        for d in self._daemons:
            d.stop()
            shutil.rmtree(d.home, ignore_errors=True)


CASES: list[tuple[str, str, Callable[[Context], Outcome]]] = []


def case(group: str, name: str) -> Callable[[Callable[[Context], Outcome]], Callable[[Context], Outcome]]:
    def add(fn: Callable[[Context], Outcome]) -> Callable[[Context], Outcome]:
        CASES.append((group, name, fn))
        return fn
    return add


# ------------------------------------------------------------------ the socket

@contextlib.contextmanager
def raw(home: Path, timeout: float = HANG) -> Iterator[tuple[socket.socket, object]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(str(socket_path(home)))
    f = sock.makefile("rb")
    f.readline()  # hello
    try:
        yield sock, f
    finally:
        f.close()
        sock.close()


def one_reply(ctx: Context, data: bytes) -> Outcome:
    d = ctx.socket_daemon()
    with raw(d.home) as (sock, f):
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused and closed mid-line
            sock.sendall(data)
        line = f.readline()  # type: ignore[attr-defined]
    if not line.endswith(b"\n"):
        return Outcome("crash", f"no reply line (got {line[:80]!r})")
    msg = json.loads(line)
    if d.try_call("ping") is None:
        return Outcome("crash", "the daemon stopped answering")
    if msg.get("ok"):
        return Outcome("handled", f"ok: {json.dumps(msg.get('result'))[:80]}")
    return refused(f"{msg['error']['code']}: {msg['error']['message']}")


for _name, _line in [
    ("JSON nested 100,000 deep", b"[" * 100_000 + b"\n"),
    ("a 5,000-digit integer", b'{"v":1,"id":' + b"7" * 5000 + b"}\n"),
    ("an argument past 64 bits", b'{"v":1,"id":1,"op":"ls","args":{"limit":' + b"9" * 40 + b"}}\n"),
    ("bytes that are not UTF-8", b"\xff\xfe\xfd\n"),
    ("NaN and Infinity", b'{"v":NaN,"id":Infinity}\n'),
    ("an unknown op", b'{"v":1,"id":1,"op":"rm -rf","args":{}}\n'),
    ("an argument of the wrong type", b'{"v":1,"id":1,"op":"info","args":{"run":["x"]}}\n'),
    ("a run name with ../", b'{"v":1,"id":1,"op":"logs","args":{"run":"../../etc:1"}}\n'),
    ("a line of 2 MiB", b'"' + b"x" * (2 << 20) + b'"\n'),
    ("a lone surrogate as the id", b'{"v":1,"id":"\\ud800","op":"ping"}\n'),
]:
    case("socket", _name)(lambda ctx, line=_line: one_reply(ctx, line))


@case("socket", "1,000 requests sent without reading a reply")
def pipelined(ctx: Context) -> Outcome:
    d = ctx.socket_daemon()
    with raw(d.home) as (sock, f):
        sock.sendall(b"".join(b'{"v":1,"id":%d,"op":"ping"}\n' % i for i in range(1000)))
        ids = [json.loads(f.readline())["id"] for _ in range(1000)]  # type: ignore[attr-defined]
    return Outcome("handled", "1000 replies in order") if ids == list(range(1000)) else Outcome("crash", "out of order")


@case("socket", "200 connections at once")
def many(ctx: Context) -> Outcome:
    d = ctx.socket_daemon()
    with contextlib.ExitStack() as stack:
        conns = [stack.enter_context(raw(d.home)) for _ in range(200)]
        for sock, _ in conns:
            sock.sendall(b'{"v":1,"id":1,"op":"ping"}\n')
        ok = sum(json.loads(f.readline())["ok"] for _, f in conns)  # type: ignore[attr-defined]
    return Outcome("handled", f"{ok} of 200 answered")


@case("socket", "half a line, then the connection closed")
def half(ctx: Context) -> Outcome:
    d = ctx.socket_daemon()
    with raw(d.home) as (sock, _):
        sock.sendall(b'{"v":1,"id":1,"op":"pi')
    return Outcome("handled", "daemon still answers") if d.try_call("ping") else Outcome("crash", "daemon gone")


@case("socket", "3 subscribers that never read, 200 MB of log")
def sleepers(ctx: Context) -> Outcome:
    d = ctx.socket_daemon()
    before = proc_usage(d.pid)[1]
    conns = []
    for _ in range(3):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(str(socket_path(d.home)))
        sock.sendall(b'{"v":1,"id":1,"op":"subscribe","args":{"topics":["log"]}}\n')
        conns.append(sock)
    study = d.home / "chatty.toml"
    study.write_text(CHATTY)
    d.call("submit", path=str(study), text=study.read_text(), as_name=None)
    peak = before
    deadline = time.monotonic() + 120
    while not any(s["name"] == "chatty" and s.get("finished") for s in d.call("studies")):
        if time.monotonic() > deadline:
            return Outcome("hang", "the chatty study did not finish")
        peak = max(peak, proc_usage(d.pid)[1])
        time.sleep(0.1)
    for sock in conns:
        sock.close()
    with raw(d.home) as (sock, f):
        sock.sendall(b'{"v":1,"id":1,"op":"subscribe","args":{"topics":["log"]}}\n')
        ack = json.loads(f.readline())  # type: ignore[attr-defined]
    why = ack.get("result", {}).get("dropped", "")
    growth = (peak - before) / 1024
    if not why:
        return Outcome("crash", f"not dropped; RSS grew {growth:.0f} MiB")
    return Outcome("handled", f"dropped and told on resubscribe; RSS +{growth:.0f} MiB ({why[:60]}...)")


# ------------------------------------------------------------------ study files

STUDY = """\
[study]
name = "{name}"
objective = {{ metric = "{metric}" }}
algorithm = "{algorithm}"
gpus = 1
{extra}
[params]
{params}
[run]
command = {command}
{run}
"""
STUDY_DEFAULTS = {"metric": "loss", "algorithm": "grid", "extra": "", "params": 'x = { type = "int", low = 1, high = 3 }',
                  "command": '"true {x}"', "run": ""}


def study_daemon(ctx: Context) -> Daemon:
    """One daemon for the study-file cases (its runs want a GPU: none starts here)."""
    d = getattr(ctx, "_study_daemon", None)
    if d is None or not d.alive():
        d = ctx.daemon("study files")
        ctx._study_daemon = d  # type: ignore[attr-defined]
    return d


def submit(ctx: Context, d: Daemon, text: str, *extra: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    path = d.home / f"s{len(list(d.home.glob('s*.toml')))}.toml"
    path.write_text(text)
    result = subprocess.run([sys.executable, "-m", "hypd", "submit", str(path), *extra], env=d.env,
                            capture_output=True, text=True, timeout=HANG)
    return result, path


def submitted(ctx: Context, text: str, *extra: str) -> Outcome:
    """`hypd submit`: refused with one line and a non-zero exit, or submitted; never exit 0
    with nothing said, never a daemon that stops answering."""
    d = study_daemon(ctx)
    result, _ = submit(ctx, d, text, *extra)
    ctx.note_rss("study files", d)
    if d.try_call("ping") is None:
        return Outcome("crash", "the daemon stopped answering")
    if result.returncode == 0:
        said = result.stdout.strip()
        return Outcome("handled", said) if said.startswith("study ") else Outcome("crash", f"exit 0: {said!r}")
    line = result.stderr.strip()
    return refused(line) if result.returncode == 5 else Outcome("crash", f"exit {result.returncode}: {line[:200]}")


for _name, _kw in [
    ("a grid with step = 1e-300", {"params": 'x = { type = "float", low = 0, high = 1, step = 1e-300 }'}),
    ("a grid of 10^6 points", {"params": 'x = { type = "int", low = 1, high = 1000 }\n'
                                         'y = { type = "int", low = 1, high = 1000 }'}),
    ("random with max_trials = 2^63 - 1", {"algorithm": "random", "extra": "max_trials = 9223372036854775807"}),
    ("replicates = 2^63 - 1", {"algorithm": "random", "extra": "replicates = 9223372036854775807"}),
    ("a placeholder {x:>2000000000}", {"command": '"echo {x:>2000000000}"'}),
    ("a 100 KB command", {"command": json.dumps("echo " + "a" * 100_000 + " {x}")}),
    ("an int range of +-2^63", {"algorithm": "random",
                                "params": 'x = { type = "int", low = -9223372036854775808, high = 9223372036854775807 }'}),
    ("a name ending in a newline", {"extra": 'name = "s\\n"'}),
    ("a workdir that does not exist", {"run": 'workdir = "no/such/folder"'}),
    ("an objective no [metrics] regex reads", {"metric": "acc", "run": '[metrics]\nregex = { accuracy = "acc ([0-9.]+)" }'}),
]:
    _text = STUDY.format(name="s", **{**STUDY_DEFAULTS, **_kw})
    if "name = " in _kw.get("extra", ""):
        _text = _text.replace('name = "s"\n', "")
    case("study files", _name)(lambda ctx, text=_text: submitted(ctx, text))

case("study files", "a 10 MB study file")(
    lambda ctx: submitted(ctx, STUDY.format(name="big", **STUDY_DEFAULTS) + "#" * (10 << 20)))
case("study files", "TOML nested 100,000 deep")(lambda ctx: submitted(ctx, "x = " + "[" * 100_000 + "]" * 100_000))


@case("study files", "--as NAME with a stage's name = before [study]")
def renamed(ctx: Context) -> Outcome:
    text = ('[[run.stages]]\nname = "train"\ncommand = "true {x}"\n\n'
            + STUDY.format(name="orig", **STUDY_DEFAULTS).replace('command = "true {x}"\n', ""))
    outcome = submitted(ctx, text, "--as", "renamed")
    d = study_daemon(ctx)
    names = {s["name"] for s in d.call("studies")}
    info = d.call("info", run="renamed:1")
    if outcome.kind != "handled" or "renamed" not in names or [c[0] for c in info["commands"]] != ["train"]:
        return Outcome("crash", f"{outcome.line}; studies {sorted(names)}")
    return outcome


@case("study files", "SIGKILL of the daemon during the submit of a 10,000-point grid")
def killed_mid_submit(ctx: Context) -> Outcome:
    d = ctx.daemon("study files")
    text = STUDY.format(name="g", **{**STUDY_DEFAULTS, "params": 'x = { type = "int", low = 1, high = 100 }\n'
                                                                  'y = { type = "int", low = 1, high = 100 }'})
    path = d.home / "g.toml"
    path.write_text(text)
    cli = subprocess.Popen([sys.executable, "-m", "hypd", "submit", str(path)], env=d.env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    d.kill9()
    cli.wait(HANG)
    with contextlib.closing(sqlite3.connect(d.home / "hypd.db")) as db:
        stored = db.execute("SELECT COUNT(*) FROM runs WHERE study='g'").fetchone()[0]
    if stored not in (0, 10_000):
        return Outcome("crash", f"{stored} of 10,000 runs stored")
    d.start()
    result, _ = submit(ctx, d, text)
    ctx.note_rss("study files", d)
    runs = len(d.call("ls", state="pending", study="g", limit=None))
    d.kill9()  # (stopping would record 10,000 kills first)
    if result.returncode != 0 or runs != 10_000:
        return Outcome("crash", f"resubmitted: exit {result.returncode}, {runs} runs")
    return Outcome("handled", f"{stored or 'none'} of 10,000 stored at the kill; "
                              f"resubmitted: {result.stdout.strip()}")


# ------------------------------------------------------------------ the store

def template_store(ctx: Context) -> Path:
    """A home whose store holds a finished study (made once, copied for each case)."""
    tpl = ctx.base / "store-template"
    if not tpl.exists():
        d = ctx.daemon("store")
        study = d.home / "g.toml"
        study.write_text(GRID.format(values=", ".join(map(str, range(40))), lines=3))
        d.call("submit", path=str(study), text=study.read_text(), as_name=None)
        d.wait_study("g", 120, every=0.3)
        d.stop()
        shutil.copytree(d.home, tpl, ignore=shutil.ignore_patterns("run", "daemon.lock"))
    home = ctx.home("store")
    shutil.rmtree(home)
    shutil.copytree(tpl, home)
    return home


def serve_fails(ctx: Context, home: Path) -> Outcome:
    env = dict(os.environ, HYPD_HOME=str(home))
    try:
        result = subprocess.run([sys.executable, "-m", "hypd", "serve"], env=env, capture_output=True, text=True,
                                timeout=HANG)
    except subprocess.TimeoutExpired:
        return Outcome("hang", f"no exit within {HANG:g} s")
    errors = [x.split(": ", 1)[-1] for x in result.stderr.splitlines() if " ERROR " in x]
    if result.returncode == 0 or len(errors) != 1 or "Traceback" in result.stderr:
        return Outcome("crash", f"exit {result.returncode}: {result.stderr.strip()[-200:]}")
    return refused(errors[0])


def damaged(how: Callable[[bytes], bytes]) -> Callable[[Context], Outcome]:
    def run(ctx: Context) -> Outcome:
        home = template_store(ctx)
        db = home / "hypd.db"
        db.write_bytes(how(db.read_bytes()))
        return serve_fails(ctx, home)
    return run


def _page_overwritten(data: bytes) -> bytes:
    page = int.from_bytes(data[16:18], "big")
    middle = (len(data) // page // 2) * page
    return data[:middle] + random.Random(2).randbytes(page) + data[middle + page:]


case("store", "hypd.db truncated to half")(damaged(lambda b: b[:len(b) // 2]))
case("store", "hypd.db of random bytes")(damaged(lambda b: random.Random(1).randbytes(len(b))))
case("store", "hypd.db with a page overwritten")(damaged(_page_overwritten))


@case("store", "hypd.db emptied (0 bytes) beside its high-water record")
def emptied(ctx: Context) -> Outcome:
    home = template_store(ctx)
    (home / "hypd.db").write_bytes(b"")
    return lost_said(ctx, ctx.daemon("store", home))


def lost_said(ctx: Context, d: Daemon) -> Outcome:
    """A daemon that started on a store that lost data, and said so."""
    ctx.note_rss("store", d)
    said = [x.split(": ", 1)[-1] for x in (d.home / "daemon.log").read_text().splitlines() if "has lost data" in x]
    d.stop()
    return Outcome("handled", said[0]) if said else Outcome("crash", "the loss was not said")


@case("store", "hypd.db-wal deleted after a SIGKILL")
def lost_wal(ctx: Context) -> Outcome:
    d = ctx.daemon("store")
    study = d.home / "g.toml"
    study.write_text(GRID.format(values="1, 2, 3", lines=3))
    d.call("submit", path=str(study), text=study.read_text(), as_name=None)
    d.wait_study("g", 60, every=0.3)
    deadline = time.monotonic() + 10
    while not highwater_path(d.home / "hypd.db").exists() or json.loads(
            highwater_path(d.home / "hypd.db").read_text())["runs"] < 3:
        if time.monotonic() > deadline:
            return Outcome("hang", "no high-water record")
        time.sleep(0.2)
    d.kill9()
    os.unlink(d.home / "hypd.db-wal")
    return lost_said(ctx, d.start())


# ------------------------------------------------------------------ other users

def deep_home(ctx: Context) -> tuple[Path, Path]:
    home = ctx.home("deep") / ("deep-" + "x" * 100)
    home.mkdir()
    (home / "config.toml").write_text(CONFIG)
    return home, socket_path(home).parent


@case("local users", "a symlink at the /tmp socket folder")
def tmp_symlink(ctx: Context) -> Outcome:
    home, fallback = deep_home(ctx)
    target = home.parent / "target"
    target.mkdir()
    fallback.symlink_to(target)
    try:
        return serve_fails(ctx, home)
    finally:
        fallback.unlink()


@case("local users", "the /tmp socket folder made first by another user")
def tmp_foreign(ctx: Context) -> Outcome:
    if os.getuid() != 0:
        return Outcome("skipped", "needs root to make a folder owned by another user")
    home, fallback = deep_home(ctx)
    fallback.mkdir()
    os.chown(fallback, 4242, 4242)
    try:
        return serve_fails(ctx, home)
    finally:
        shutil.rmtree(fallback)


@case("local users", "an existing home open to others (0755), umask 000")
def open_home(ctx: Context) -> Outcome:
    home = ctx.home("perm")
    home.chmod(0o755)
    old = os.umask(0)
    try:
        d = ctx.daemon("local users", home)
    finally:
        os.umask(old)
    study = home / "g.toml"
    study.write_text(GRID.format(values="1", lines=3))
    d.call("submit", path=str(study), text=study.read_text(), as_name=None)
    d.wait_study("g", 60, every=0.3)
    run = d.call("info", run="g:1")["run"]
    modes = {p: stat.S_IMODE(os.lstat(p).st_mode) for p in
             [home, home / "hypd.db", home / "hypd.db-wal", home / "daemon.log", Path(run["log_path"])]}
    ctx.note_rss("local users", d)
    d.stop()
    loose = {str(p): f"{m:04o}" for p, m in modes.items() if m & 0o077}
    return Outcome("crash", f"open to others: {loose}") if loose else Outcome(
        "handled", "home tightened to 0700 (logged); db, wal, daemon.log, run log 0600")


@case("local users", "an SSH host whose key changed")
def changed_key(ctx: Context) -> Outcome:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import asyncssh

    from tests.sshd import sshd_cluster, sshd_unavailable
    if sshd_unavailable():
        return Outcome("skipped", f"no sshd: {sshd_unavailable()}")
    with sshd_cluster(ctx.base / "sshd") as cluster:
        server = cluster.add(gpus=None)
        impostor = asyncssh.generate_private_key(server.host_key_pub[0]).export_public_key().decode().split()
        known = ctx.base / "changed_known_hosts"
        known.write_text(f"[127.0.0.1]:{server.port} {impostor[0]} {impostor[1]}\n")
        home = ctx.home("ssh")
        (home / "config.toml").write_text(CONFIG + "enabled = false\n")
        save_inventory(inventory_path(home), [server.host_config(name="a", known_hosts=str(known))])
        d = ctx.daemon("local users", home)
        deadline = time.monotonic() + HANG
        while time.monotonic() < deadline:
            why = next((h["why"] for h in d.call("hosts") if h["name"] == "a"), "")
            if "host key" in why.lower():
                ctx.note_rss("local users", d)
                d.stop()
                return refused(why)
            time.sleep(0.3)
        d.stop()
        return Outcome("hang", "the host was neither refused nor up")


# ------------------------------------------------------------------ the table

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="one group: " + ", ".join(sorted({g for g, _, _ in CASES})))
    ap.add_argument("-v", "--verbose", action="store_true", help="print each case and its line")
    args = ap.parse_args()
    print(f"start: {load()}", flush=True)
    ctx = Context(Path(tempfile.mkdtemp(prefix="hostile")), args.verbose)
    results: list[tuple[str, str, Outcome]] = []
    try:
        for group, name, fn in CASES:
            if args.only and group != args.only:
                continue
            t0 = time.monotonic()
            try:
                outcome = fn(ctx)
            except TimeoutError:
                outcome = Outcome("hang", f"no answer within {HANG:g} s")
            except Exception as exc:  # noqa: BLE001 - a case that breaks is a finding, not the end
                outcome = Outcome("crash", f"{type(exc).__name__}: {exc}"[:200])
            if ctx._socket_daemon is not None:
                ctx.note_rss("socket", ctx._socket_daemon)
            results.append((group, name, outcome))
            if args.verbose:
                print(f"  [{group}] {name}: {outcome.kind} ({time.monotonic() - t0:.1f} s): {outcome.line[:160]}",
                      flush=True)
        sock_d = ctx._socket_daemon
        if sock_d is not None and (not sock_d.alive() or "Unhandled exception" in
                                   (sock_d.home / "daemon.log").read_text()):
            results.append(("socket", "the daemon after every case", Outcome("crash", "gone or unhandled exception")))
    finally:
        ctx.close()
        shutil.rmtree(ctx.base, ignore_errors=True)
    rows = []
    for group in dict.fromkeys(g for g, _, _ in results):
        kinds = [o.kind for g, _, o in results if g == group]
        peak = ctx.peak_kib.get(group)
        rows.append([group, sum(k != "skipped" for k in kinds), kinds.count("refused"), kinds.count("handled"),
                     kinds.count("crash"), kinds.count("hang"), f"{peak / 1024:.0f} MiB" if peak else "-"])
    total = [sum(r[i] for r in rows) for i in range(1, 6)]
    peaks = [v for v in ctx.peak_kib.values() if v]
    rows.append(["all", *total, f"{max(peaks) / 1024:.0f} MiB" if peaks else "-"])
    head = ["group", "inputs tried", "refused with a clear line", "accepted and handled", "crashes", "hangs",
            "peak daemon RSS"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")
    skipped = [f"{g}: {n} ({o.line})" for g, n, o in results if o.kind == "skipped"]
    if skipped:
        print("skipped: " + "; ".join(skipped))
    print(f"end: {load()}")
    sys.exit(1 if total[3] or total[4] else 0)  # a crash or a hang


if __name__ == "__main__":
    main()
