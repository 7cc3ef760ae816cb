"""The daemon's files are its user's alone: folders 0700, files 0600, whatever the umask.

A folder is checked through a descriptor opened without following a symlink (where one
is not the user's own choice), so another user who made the path first — a symlink to
somewhere else, or a folder of their own under /tmp — is refused rather than chmod-ed
and used. Standard library only.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

# The files the daemon keeps in $HYPD_HOME (run logs live in runs/, inside the 0700 home).
HOME_FILES = ("hypd.db", "hypd.db-wal", "hypd.db-shm", "hypd.db-highwater", "daemon.log", "daemon.out",
              "daemon.lock", "config.toml", "hosts.toml")


class UnsafePath(Exception):
    """A path the daemon will not use; the message is one line saying why and what to do."""


def private_dir(path: Path, *, follow: bool) -> str | None:
    """Make `path` a folder only this user can use: created 0700 if missing; one that
    others can read or enter is tightened to 0700 (the returned line says so, for the
    log). UnsafePath for a symlink (unless `follow`: a home may be a link the user made),
    something that is not a folder, or a folder another user owns."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | (0 if follow else os.O_NOFOLLOW))
    except OSError as exc:
        if exc.errno == errno.ELOOP or (exc.errno == errno.ENOTDIR and os.path.islink(path)):
            raise UnsafePath(f"{path} is a symlink (to {os.readlink(path)}), which hypd does not follow here: "
                             "someone may have put it there to take over the daemon's socket; remove it "
                             "if you did not make it") from None
        if exc.errno == errno.ENOTDIR:
            raise UnsafePath(f"{path} is not a folder; move it away or set HYPD_HOME elsewhere") from None
        raise UnsafePath(f"cannot use {path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid():
            raise UnsafePath(f"{path} belongs to uid {st.st_uid}, not to you (uid {os.getuid()}): hypd will not "
                             "use a folder another user controls; remove it or set HYPD_HOME elsewhere")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            os.fchmod(fd, 0o700)
            return f"{path} was open to other users (mode {mode:04o}); made it 0700"
        return None
    finally:
        os.close(fd)


def private_files(folder: Path, names: tuple[str, ...] = HOME_FILES) -> list[str]:
    """Tighten these files of `folder` to 0600 where others could read them (written by an
    older hypd, or under another umask); the names tightened."""
    tightened = []
    for name in names:
        try:
            st = os.lstat(folder / name)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
            os.chmod(folder / name, 0o600)
            tightened.append(name)
    return tightened


def append_private(path: Path) -> int:
    """A descriptor appending to `path`, created 0600 (not left to the umask, then
    tightened with a warning)."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
