"""Counting the SSH requests that reach a test sshd (tests/sshd.py), from the server's side.

Two sources, both on the server:

- sshd's own log at `LogLevel DEBUG1` (`SshdCluster.add(log_level="DEBUG1")`), which has one
  line per request the client sends over an established connection:
      Connection from ...                                         a new TCP connection
      server_input_channel_open: ctype session rchan ...          a channel opened
      server_input_channel_req: channel N request exec reply 1    a request on a channel
                                                                  (exec, subsystem, env,
                                                                  signal, window-change...)
      server_input_global_request: rtype keepalive@openssh.com    a connection-level request
- the SFTP subsystem started through this file as a proxy
  (`SshdCluster.add(sftp_server=sftp_proxy_command(log))`): it passes every byte between
  sshd and the real sftp-server unchanged and appends the type of every SFTP packet the
  client sent (INIT, OPEN, WRITE, CLOSE, MKDIR, RENAME...) to `log`, one line each.

So what is counted is what crossed the connection, not what the client meant to send.
Log bytes a host watcher streams back, and its commands, are data on a channel already
open: they are no request and are not counted here.

    python bench/sshcount.py sftp-proxy LOG REAL_SFTP_SERVER    (run by sshd, not by hand)
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

SFTP_TYPES = {1: "init", 3: "open", 4: "close", 5: "read", 6: "write", 7: "lstat", 8: "fstat", 9: "setstat",
              10: "fsetstat", 11: "opendir", 12: "readdir", 13: "remove", 14: "mkdir", 15: "rmdir",
              16: "realpath", 17: "stat", 18: "rename", 19: "readlink", 20: "symlink", 200: "extended"}
SFTP_SERVERS = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server", "/usr/libexec/sftp-server")

_OPEN = re.compile(r"server_input_channel_open: ctype (\S+)")
_REQ = re.compile(r"server_input_channel_req: channel \d+ request (\S+)")
_GLOBAL = re.compile(r"server_input_global_request: rtype (\S+)")
_CONNECT = re.compile(r"^Connection from ")


def real_sftp_server() -> str | None:
    return next((p for p in SFTP_SERVERS if os.access(p, os.X_OK)), None)


def sftp_proxy_command(log: Path) -> str | None:
    """The `Subsystem sftp` command that counts SFTP packets into `log`; None without an
    sftp-server binary to pass them to."""
    real = real_sftp_server()
    if real is None:
        return None
    return " ".join(shlex.quote(a) for a in (sys.executable, str(Path(__file__).resolve()), "sftp-proxy",
                                                str(log), real))


def count_sshd_log(path: Path, offset: int = 0) -> Counter[str]:
    """Requests in an sshd DEBUG1 log from byte `offset` on: keys "connect" (a TCP
    connection), "open:<ctype>", "req:<type>", "global:<rtype>"."""
    counts: Counter[str] = Counter()
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return counts
    for line in text.splitlines():
        if m := _OPEN.search(line):
            counts[f"open:{m.group(1)}"] += 1
        elif m := _REQ.search(line):
            counts[f"req:{m.group(1)}"] += 1
        elif m := _GLOBAL.search(line):
            counts[f"global:{m.group(1)}"] += 1
        elif _CONNECT.search(line):
            counts["connect"] += 1
    return counts


def count_sftp_log(path: Path, offset: int = 0) -> Counter[str]:
    """SFTP packets the client sent, by type, from byte `offset` of the proxy's log."""
    counts: Counter[str] = Counter()
    try:
        with open(path) as f:
            f.seek(offset)
            for line in f:
                if line.strip():
                    counts[f"sftp:{line.strip()}"] += 1
    except FileNotFoundError:
        pass
    return counts


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


# --------------------------------------------------------------------------- the proxy

def _proxy(log: str, real: str) -> int:
    child = subprocess.Popen([real], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    assert child.stdin is not None and child.stdout is not None
    log_fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def back() -> None:  # server -> client, unchanged
        out = child.stdout
        assert out is not None
        while data := out.read(1 << 16):
            view = memoryview(data)
            while view:
                view = view[os.write(1, view):]

    replies = threading.Thread(target=back, daemon=True)
    replies.start()
    buf = bytearray()
    need = 0  # bytes of the current packet still to come after its header was counted
    while data := os.read(0, 1 << 16):
        child.stdin.write(data)  # client -> server first, counted after
        buf += data
        while True:
            if need:
                take = min(need, len(buf))
                del buf[:take]
                need -= take
                if need:
                    break
            if len(buf) < 5:
                break
            length = int.from_bytes(buf[:4], "big")
            os.write(log_fd, (SFTP_TYPES.get(buf[4], str(buf[4])) + "\n").encode())
            need = 4 + length
    child.stdin.close()
    replies.join()
    return child.wait()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "sftp-proxy":
        sys.exit(_proxy(sys.argv[2], sys.argv[3]))
    print(__doc__, file=sys.stderr)
    sys.exit(2)
