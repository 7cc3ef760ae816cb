"""hypd host watcher: one long-lived process per host that starts runs, streams their
logs and reports how they ended, so the daemon polls nothing per run.

This file runs ON the host. The daemon ships its text and runs it as
`python3 -u -c "<this file>" --root ROOT [--send-logs] [--tick 0.1]` over SSH, or locally
as `python -u hostwatch.py ...`. So it is self-contained: the standard library only,
Python 3.6 syntax, nothing from hypd.

It reads commands (one JSON object per line) on stdin and writes events (one JSON object
per line; a log frame is a header line followed by exactly "n" raw bytes) on stdout. It
exits when stdin ends (the daemon or the connection went away) and never kills runs then:
they are detached in their own sessions and go on; a later watcher adopts them.

Commands                                            Replies / events
  {"op":"launch","run","ctl","script","grace"}        started {run,pid,start} | launch_failed {run,why}
  {"op":"watch","run","ctl","offset","pid","start","grace"}  alive {run,pid,start} (if alive)
  {"op":"kill","run","grace"}                         signalled {run,found}
  {"op":"unwatch","run"}                              -
  {"op":"ping"}                                       pong
Unprompted: hello {root,nproc,pidfd,send_logs,version} first; log {run,offset,n}+bytes (--send-logs)
or size {run,size} (without); exit {run,status,stage,size} once the wrapper ended and its
log was sent up to size; clean {run,ended} once none of the run's processes remains;
error {why[,run]} for a command it cannot do.

A run's processes: its process group (pgid = the wrapper's pid, as it starts in a new
session) and every process whose environment holds HYPD_CTL=<ctl> (the wrapper exports
it), which finds children that left the group with setsid.
"""

import argparse
import json
import os
import select
import signal
import subprocess
import sys
import time

VERSION = 1
LOG_CHUNK = 1 << 20  # at most this many log bytes per run per pass: one busy run cannot starve the others
PID_WAIT = 10.0  # seconds a launch (or a watch without pid) waits for <ctl>/pid
UNKILLABLE_WAIT = 30.0  # after SIGKILL, seconds before a run is declared clean anyway
MAX_COMMAND = 64 << 20  # a longer command line is dropped (its script would be absurd)
MARKER = b"HYPD_CTL="


class StdoutGone(Exception):
    """The daemon stopped reading: nothing left to do."""


# --------------------------------------------------------------------------- /proc

def proc_stat(pid):
    """(state letter, pgrp, start time) of a process, or None if there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = data[data.rfind(b")") + 2:].split()
    if len(fields) < 20:
        return None
    try:
        return fields[0].decode(), int(fields[2]), fields[19].decode()
    except ValueError:
        return None


def live_start(pid):
    """The start time of a live (not zombie) process, or None."""
    st = proc_stat(pid)
    if st is None or st[0] in ("Z", "X", "x"):
        return None
    return st[2]


def boot_time():
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("btime "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def started_long_after(start, path, slack=5.0):
    """Whether a process with this start time began well after `path` (the pid file) was
    written: then it is not the process that wrote it but a later one with its pid."""
    btime = boot_time()
    try:
        written = os.stat(path).st_mtime
        began = btime + int(start) / float(os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, TypeError):
        return False
    return began > written + slack


def signal_if_same(pid, start, sig):
    """Signal pid only if it is still the process that started at `start`."""
    if live_start(pid) != start:
        return False
    try:
        os.kill(pid, sig)
        return True
    except OSError:
        return False


def read_pid(ctl_path):
    try:
        with open(os.path.join(ctl_path, "pid")) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def read_exit(ctl_path):
    """(status, stage) from <ctl>/exit, or (None, None) if there is no complete one."""
    try:
        with open(os.path.join(ctl_path, "exit")) as f:
            parts = f.read().split()
        if len(parts) == 2:
            return int(parts[0]), parts[1]
    except (OSError, ValueError):
        pass
    return None, None


def log_head(ctl_path, limit=300):
    try:
        with open(os.path.join(ctl_path, "log"), "rb") as f:
            text = f.read(limit).decode("utf-8", "replace")
    except OSError:
        return ""
    return " ".join(text.split())


def scan(runs, me):
    """{run key: {pid: (start, pgrp)}} of the live processes of each run: in its process group
    (started no earlier than its wrapper, so a later user of the number does not count)
    or carrying its marker in the environment. One pass over /proc for all runs."""
    found = dict((run.key, {}) for run in runs)
    by_pgrp = dict((run.pid, run) for run in runs if run.pid is not None)
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for name in names:
        if not name.isdigit() or int(name) == me:
            continue
        pid = int(name)
        st = proc_stat(pid)
        if st is None or st[0] in ("Z", "X", "x"):
            continue  # a zombie is already dead; it only waits for its parent
        run = by_pgrp.get(st[1])
        if run is not None and (run.start is None or int(st[2]) >= int(run.start)):
            found[run.key][pid] = (st[2], st[1])
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        for run in runs:
            if env.startswith(run.marker) or (b"\0" + run.marker) in env:
                found[run.key][pid] = (st[2], st[1])
                break
    return found


# --------------------------------------------------------------------------- state

class Run:
    """One watched run. Phases: "launch" (our child, waiting for its pid file), "find" (a
    watch without pid, waiting for the pid file), "run" (the wrapper is known)."""

    def __init__(self, key, ctl, grace):
        self.key = key
        self.ctl = ctl
        self.path = os.path.expanduser(ctl)
        self.marker = MARKER + os.fsencode(ctl) + b"\0"
        self.grace = grace
        self.phase = "run"
        self.deadline = 0.0  # end of the wait for the pid file
        self.pid = None
        self.start = None  # field 22 of /proc/<pid>/stat, as text
        self.pidfd = None
        self.dead = False  # the wrapper process has ended
        self.offset = 0  # send-logs: next byte to send; else: the size last reported
        self.backlog = False  # more log bytes wait than one pass sends
        self.log_size = 0
        self.exit_sent = False
        self.kill_at = None  # after a kill command: when to SIGKILL what is left
        self.leftovers = {}  # pid -> start: processes the clean phase had to end
        self.term_until = None  # clean phase: SIGKILL leftovers after this
        self.killed_at = None  # clean phase: when SIGKILL was sent
        self.failed = False  # an internal error was reported for this run
        self.termed = set()  # pids already sent SIGTERM (by a kill or the clean phase): once each


class Out:
    """Events to stdout: a JSON line each, a log frame's bytes right after its header."""

    def send(self, obj, data=b""):
        line = json.dumps(obj, separators=(",", ":")).encode() + b"\n"  # ASCII: no raw newline inside
        view = memoryview(line + data if data else line)
        while view:
            try:
                n = os.write(1, view)
            except (BrokenPipeError, ConnectionResetError):
                raise StdoutGone() from None
            view = view[n:]

    def error(self, why, run=None):
        obj = {"ev": "error", "why": why}
        if run is not None:
            obj["run"] = run
        self.send(obj)


def pump_log(out, run, send_logs):
    """Send what is new in <ctl>/log (send-logs: at most LOG_CHUNK bytes), or its size when
    that changed. Sets run.log_size and run.backlog."""
    try:
        fd = os.open(os.path.join(run.path, "log"), os.O_RDONLY)
    except OSError:
        run.log_size = run.offset if send_logs else 0  # nothing to send (again)
        run.backlog = False
        return
    try:
        size = os.fstat(fd).st_size
        if send_logs:
            if size > run.offset:
                data = os.pread(fd, min(LOG_CHUNK, size - run.offset), run.offset)
                if data:
                    out.send({"ev": "log", "run": run.key, "offset": run.offset, "n": len(data)}, data)
                    run.offset += len(data)
        elif size != run.offset:
            out.send({"ev": "size", "run": run.key, "size": size})
            run.offset = size
    except OSError:
        size = run.offset
    finally:
        os.close(fd)
    run.log_size = size
    run.backlog = send_logs and size > run.offset


class Ender:
    """Ending a run's processes: a kill (SIGTERM now, SIGKILL after its grace) and the
    clean phase after the wrapper ended (leftovers: SIGTERM, SIGKILL after the run's
    grace, then `clean`). Both look the processes up in /proc, at most once a tick."""

    def __init__(self, out, send_logs, tick, forget):
        self.out = out
        self.send_logs = send_logs
        self.tick = tick
        self.forget = forget  # called with a run once its clean was sent
        self.me = os.getpid()
        self.next_scan = 0.0
        self.scan_now = False  # a run needs its processes looked up at once (it just ended)

    def kill(self, run, grace):
        """SIGTERM the run's group and marked processes; whether there was any."""
        group = False
        if run.pid is not None and not run.dead and live_start(run.pid) == run.start:
            try:
                os.killpg(run.pid, signal.SIGTERM)
                group = True
            except OSError:
                pass
        found = group
        for pid, (start, pgrp) in scan([run], self.me)[run.key].items():
            run.termed.add(pid)
            if not (group and pgrp == run.pid):  # once is enough: a second TERM can mean "hurry" to a trap
                found = signal_if_same(pid, start, signal.SIGTERM) or found
        run.kill_at = time.monotonic() + grace
        return found

    def step(self, runs, now):
        due = [run for run in runs if run.exit_sent or (run.kill_at is not None and now >= run.kill_at)]
        if not due or (not self.scan_now and now < self.next_scan):
            return
        self.scan_now = False
        self.next_scan = now + self.tick
        found = scan(due, self.me)
        for run in due:
            procs = found[run.key]
            if run.kill_at is not None and now >= run.kill_at:
                run.kill_at = None
                for pid, (start, _pgrp) in procs.items():
                    signal_if_same(pid, start, signal.SIGKILL)
            if run.exit_sent:
                self.clean_step(run, procs, now)

    def clean_step(self, run, procs, now):
        if procs and not (run.killed_at is not None and now - run.killed_at > UNKILLABLE_WAIT):
            for pid, (start, _pgrp) in procs.items():
                if pid not in run.leftovers:
                    run.leftovers[pid] = start
                    if pid not in run.termed:
                        run.termed.add(pid)
                        signal_if_same(pid, start, signal.SIGTERM)
            if run.term_until is None:
                run.term_until = now + run.grace
            if now >= run.term_until:
                for pid, (start, _pgrp) in procs.items():
                    signal_if_same(pid, start, signal.SIGKILL)
                if run.killed_at is None:
                    run.killed_at = now
            return
        if procs:
            self.out.error(f"pids {sorted(procs)} of run {run.key} do not end after SIGKILL", run.key)
        pump_log(self.out, run, self.send_logs)  # what the leftovers wrote before they ended
        if run.backlog:
            return  # the next passes send the rest first
        self.out.send({"ev": "clean", "run": run.key, "ended": sorted(run.leftovers)})
        self.forget(run)


class Pidfds:
    """Runs watched by pidfd (Linux 5.3+): the poll wakes the moment one ends. Without
    pidfds, each run is looked up in /proc every pass instead."""

    def __init__(self, poller, enabled, children):
        self.poller = poller
        self.enabled = enabled
        self.children = children  # the watcher's wrappers it started: pid -> Popen
        self.by_fd = {}  # pidfd -> Run

    def fired(self, fd):
        run = self.by_fd.get(fd)
        self.close(fd)
        if run is not None:
            run.dead = True
            run.pidfd = None

    def close(self, fd):
        self.by_fd.pop(fd, None)
        try:
            self.poller.unregister(fd)
        except (KeyError, ValueError):
            pass
        try:
            os.close(fd)
        except OSError:
            pass

    def open(self, run):
        """Watch run.pid with a pidfd when there are pidfds. False if the process is not
        (any more) the one that started at run.start."""
        if not self.enabled:
            return True
        try:
            fd = os.pidfd_open(run.pid)
        except ProcessLookupError:
            return False
        except OSError:
            return True  # out of fds, say: this run is looked up in /proc each tick instead
        # Opened first, checked after: if the start time still matches, the pidfd holds our process.
        if live_start(run.pid) != run.start and run.pid not in self.children:
            os.close(fd)
            return False
        run.pidfd = fd
        self.by_fd[fd] = run
        self.poller.register(fd, select.POLLIN)
        return True

    def forget(self, run):
        if run.pidfd is not None:
            self.close(run.pidfd)
            run.pidfd = None


class Watcher:
    """The loop: commands from stdin, pidfds, and a pass over every run each tick."""

    def __init__(self, root, send_logs, tick, use_pidfd, pid_wait=PID_WAIT):
        self.root = root
        self.send_logs = send_logs
        self.tick = tick
        self.use_pidfd = use_pidfd
        self.pid_wait = pid_wait
        self.runs = {}  # key -> Run
        self.children = {}  # pid -> Popen: wrappers we started, reaped as they end
        self.poller = select.poll()
        self.pidfds = Pidfds(self.poller, use_pidfd, self.children)
        self.out = Out()
        self.send = self.out.send
        self.error = self.out.error
        self.ender = Ender(self.out, send_logs, tick, self.forget)

    # -- main loop

    def serve(self):
        self.send({"ev": "hello", "root": self.root, "nproc": os.cpu_count(), "pidfd": self.use_pidfd,
                   "send_logs": self.send_logs, "version": VERSION})
        self.poller.register(0, select.POLLIN)
        pending = bytearray()
        while True:
            for fd, _mask in self.poller.poll(int(self.timeout() * 1000)):
                if fd != 0:
                    self.pidfds.fired(fd)
                    continue
                try:
                    data = os.read(0, 1 << 16)
                except OSError:
                    data = b""
                if not data:
                    return  # the daemon is gone; the runs go on
                pending += data
                while True:
                    nl = pending.find(b"\n")
                    if nl < 0:
                        break
                    line = bytes(pending[:nl])
                    del pending[:nl + 1]
                    self.command(line)
                if len(pending) > MAX_COMMAND:
                    self.error(f"command line longer than {MAX_COMMAND} bytes dropped")
                    pending = bytearray()  # the rest of it will come as garbage: errors, then back in step
            self.service()

    def timeout(self):
        if any(run.backlog for run in self.runs.values()):
            return 0.0
        if any(run.phase != "run" for run in self.runs.values()):
            return min(self.tick, 0.01)  # a launch waits for its pid file: look often
        return self.tick

    def forget(self, run):
        self.pidfds.forget(run)
        if self.runs.get(run.key) is run:
            del self.runs[run.key]

    # -- commands

    def command(self, line):
        if not line.strip():
            return
        try:
            cmd = json.loads(line.decode("utf-8"))
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
            self.error(f"bad command (not JSON): {type(exc).__name__}: {str(exc)[:200]}")
            return
        if not isinstance(cmd, dict):
            self.error("bad command: not a JSON object")
            return
        op = cmd.get("op")
        handlers = {"launch": self.op_launch, "watch": self.op_watch, "kill": self.op_kill,
                    "unwatch": self.op_unwatch, "ping": self.op_ping}
        handler = handlers.get(op) if isinstance(op, str) else None
        if handler is None:
            self.error(f"unknown op {op!r}")
            return
        run = cmd.get("run") if isinstance(cmd.get("run"), str) else None
        try:
            handler(cmd)
        except BadCommand as exc:
            self.error(f"bad {op} command: {exc}", run)
        except StdoutGone:
            raise
        except Exception as exc:  # a bug must cost one command, not the watcher and every run's events
            self.error(f"internal error in {op}: {type(exc).__name__}: {exc}", run)

    def op_ping(self, cmd):
        self.send({"ev": "pong"})

    def op_unwatch(self, cmd):
        run = self.runs.get(field(cmd, "run", str))
        if run is not None:
            self.forget(run)

    def op_launch(self, cmd):
        key = field(cmd, "run", str, empty=False)
        ctl = field(cmd, "ctl", str, empty=False)
        script = field(cmd, "script", str)
        grace = number(cmd, "grace", 10.0)
        if key in self.runs:
            self.send({"ev": "launch_failed", "run": key, "why": f"run {key} is already watched here"})
            return
        run = Run(key, ctl, grace)
        try:
            if os.path.isdir(run.path) and os.listdir(run.path):
                # An earlier run's folder (the daemon's store lost that run): kept, not reused.
                os.rename(run.path, f"{run.path}.set-aside-{int(time.time())}")
            os.makedirs(run.path, mode=0o700, exist_ok=True)
            tmp = os.path.join(run.path, "run.sh.tmp")
            with open(tmp, "w") as f:
                f.write(script)
            os.replace(tmp, os.path.join(run.path, "run.sh"))
            for name in ("pid", "exit"):
                try:
                    os.unlink(os.path.join(run.path, name))
                except FileNotFoundError:
                    pass
            log_fd = os.open(os.path.join(run.path, "log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND,
                             0o600)
        except OSError as exc:
            self.send({"ev": "launch_failed", "run": key, "why": f"cannot prepare {ctl}: {exc.strerror or exc}"})
            return
        try:
            # A local daemon keeps its own files private (umask 077) and hands runs the
            # user's umask back: their outputs are theirs to share.
            umask = {"umask": int(os.environ["HYPD_RUN_UMASK"], 8)} if os.environ.get("HYPD_RUN_UMASK") else {}
            child = subprocess.Popen(["/bin/sh", os.path.join(run.path, "run.sh")], stdin=subprocess.DEVNULL,
                                     stdout=log_fd, stderr=subprocess.STDOUT, start_new_session=True,
                                     close_fds=True, cwd="/", **umask)
        except OSError as exc:
            self.send({"ev": "launch_failed", "run": key, "why": f"cannot start /bin/sh: {exc.strerror or exc}"})
            return
        finally:
            os.close(log_fd)
        self.children[child.pid] = child
        run.pid = child.pid
        st = proc_stat(child.pid)  # our unreaped child: its number cannot be reused yet
        run.start = st[2] if st else None
        run.phase = "launch"
        run.deadline = time.monotonic() + self.pid_wait
        self.runs[key] = run
        self.pidfds.open(run)

    def op_watch(self, cmd):
        key = field(cmd, "run", str, empty=False)
        ctl = field(cmd, "ctl", str, empty=False)
        offset = integer(cmd, "offset", 0)
        pid = cmd.get("pid")
        start = cmd.get("start")
        if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0):
            raise BadCommand("pid must be a positive integer or null")
        if start is not None and (isinstance(start, bool) or not isinstance(start, (int, str))):
            raise BadCommand("start must be a string, an integer or null")
        grace = number(cmd, "grace", 10.0)
        run = self.runs.get(key)
        if run is not None:
            # The daemon asks again from its own size (a failed local write): send again from there.
            run.offset = offset
            run.grace = grace
            run.exit_sent = False
            return
        run = Run(key, ctl, grace)
        run.offset = offset
        self.runs[key] = run
        if pid is None:
            run.phase = "find"
            run.deadline = time.monotonic() + self.pid_wait
            self.find_pid(run, time.monotonic())
        else:
            self.adopt(run, pid, None if start is None else str(start))

    def op_kill(self, cmd):
        key = field(cmd, "run", str)
        grace = number(cmd, "grace", 10.0)
        run = self.runs.get(key)
        found = run is not None and self.ender.kill(run, grace)
        self.send({"ev": "signalled", "run": key, "found": found})

    # -- finding the wrapper

    def adopt(self, run, pid, start):
        """Take on a started wrapper: alive (same start time) or already gone."""
        run.phase = "run"
        run.pid = pid
        st = proc_stat(pid)
        # Dead, a zombie, or not a process group leader as every wrapper is: not (any more) the run.
        current = st[2] if st is not None and st[0] not in ("Z", "X", "x") and st[1] == pid else None
        if current is not None and start is None:
            # No recorded start time: trust the pid file unless this process began well after it.
            if started_long_after(current, os.path.join(run.path, "pid")):
                current = None
            start = current
        run.start = start
        if current is None or current != start or not self.pidfds.open(run):
            run.dead = True
            return
        self.send({"ev": "alive", "run": run.key, "pid": pid, "start": start})

    def find_pid(self, run, now):
        pid = read_pid(run.path)
        if pid is not None:
            self.adopt(run, pid, None)
        elif now > run.deadline or os.path.exists(os.path.join(run.path, "exit")):
            run.phase = "run"
            run.dead = True  # never started, or long gone: its exit file (if any) says how it ended

    def check_launch(self, run, now):
        if read_pid(run.path) is not None:
            run.phase = "run"
            self.send({"ev": "started", "run": run.key, "pid": run.pid, "start": run.start})
            return
        child = self.children.get(run.pid)
        ended = run.dead or child is None or child.poll() is not None
        if ended and read_pid(run.path) is None:
            why = "run.sh ended without writing its pid file"
        elif now > run.deadline:
            why = f"run.sh wrote no pid file within {self.pid_wait:g} s"
            try:
                os.killpg(run.pid, signal.SIGKILL)  # it would run on with nobody knowing
            except OSError:
                pass
        else:
            return
        head = log_head(run.path)
        self.send({"ev": "launch_failed", "run": run.key, "why": why + ("; its log says: " + head if head else "")})
        self.forget(run)

    # -- every pass

    def service(self):
        now = time.monotonic()
        for pid, child in list(self.children.items()):
            if child.poll() is not None:  # reaped: no zombie stays behind
                del self.children[pid]
        for run in list(self.runs.values()):
            try:
                self.service_run(run, now)
            except StdoutGone:
                raise
            except Exception as exc:  # say it once; the other runs go on
                if not run.failed:
                    run.failed = True
                    self.error(f"internal error watching {run.key}: {type(exc).__name__}: {exc}", run.key)
        self.ender.step(list(self.runs.values()), now)

    def service_run(self, run, now):
        if run.phase == "launch":
            self.check_launch(run, now)
        elif run.phase == "find":
            self.find_pid(run, now)
        if run.phase != "run" or self.runs.get(run.key) is not run:
            return
        if not run.dead and run.pidfd is None:
            run.dead = live_start(run.pid) != run.start  # gone, zombie, or its number reused
        pump_log(self.out, run, self.send_logs)
        if run.dead and not run.exit_sent and not run.backlog and run.offset >= run.log_size:
            status, stage = read_exit(run.path)
            self.send({"ev": "exit", "run": run.key, "status": status, "stage": stage, "size": run.offset})
            run.exit_sent = True
            self.ender.scan_now = True


# --------------------------------------------------------------------------- command fields

class BadCommand(Exception):
    pass


def field(cmd, name, kind, empty=True):
    value = cmd.get(name)
    if not isinstance(value, kind) or (not empty and not value):
        what = "a" if empty else "a non-empty"
        raise BadCommand(f"{name} must be {what} {kind.__name__}")
    return value


def integer(cmd, name, default):
    value = cmd.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadCommand(f"{name} must be a non-negative integer")
    return value


def number(cmd, name, default):
    value = cmd.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise BadCommand(f"{name} must be a non-negative number")
    return float(value)


# --------------------------------------------------------------------------- entry point

def pidfd_works():
    if not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
        return True
    except OSError:
        return False


def main(argv=None):
    parser = argparse.ArgumentParser(prog="hostwatch", description="hypd host watcher")
    parser.add_argument("--root", required=True)
    parser.add_argument("--send-logs", action="store_true", help="send log bytes, not only sizes")
    parser.add_argument("--tick", type=float, default=0.1)
    parser.add_argument("--no-pidfd", action="store_true", help=argparse.SUPPRESS)  # tests the /proc fallback
    parser.add_argument("--pid-wait", type=float, default=PID_WAIT, help=argparse.SUPPRESS)  # tests shorten it
    args = parser.parse_args(argv)
    if os.environ.get("SHLVL", "0") in ("", "0"):
        # Started by `exec python3 ...` from a bash login shell, which left SHLVL at 0 beside
        # SSH_CLIENT: each run's `bash -c` would then take itself for the shell sshd started and
        # source ~/.bashrc again (280 ms per stage with pyenv's init; conda's can change PATH).
        os.environ["SHLVL"] = "1"
    root = os.path.expanduser(args.root)
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as exc:
        sys.stderr.write(f"hostwatch: cannot create {root}: {exc.strerror or exc}\n")
        return 2
    os.set_blocking(1, True)
    watcher = Watcher(os.path.realpath(root), args.send_logs, max(0.001, args.tick),
                      pidfd_works() and not args.no_pidfd, args.pid_wait)
    try:
        watcher.serve()
    except (StdoutGone, KeyboardInterrupt):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
