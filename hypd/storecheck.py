"""Checks of the database file at start: is it an SQLite file, whole, and does it still
hold everything it once held?

A damaged file (random bytes, truncated, pages that do not check out) stops the daemon
with one line naming the file and the way out. A store that lost data — its `-wal` file
deleted after a crash, an older copy put back — is found by a high-water record kept in
a small file beside it (`hypd.db-highwater`): the largest run id, number of studies and
largest state-change row the store has held. SQLite cannot say this itself: the newest
commits live in the `-wal` file, so a database that lost them looks whole. The record is
written from what was committed (never ahead of the store), so it only errs by missing
a loss of the last second's commits.
"""

from __future__ import annotations

import json
import os
import struct
import time
from dataclasses import asdict, dataclass
from pathlib import Path

SQLITE_MAGIC = b"SQLite format 3\x00"

# What a count goes up by, never down: runs are numbered and never deleted, studies are
# never removed, every state change adds a row.
HIGHWATER_SQL = ("SELECT (SELECT IFNULL(MAX(id), 0) FROM runs), (SELECT COUNT(*) FROM studies), "
                 "(SELECT IFNULL(MAX(rowid), 0) FROM transitions)")


class DamagedStore(Exception):
    """The database file cannot be used; the message is one line naming it and the way out."""


def way_out(path: Path) -> str:
    return (f"move it aside (mv {path} {path}.broken) to start with an empty store, "
            f"or put back a backup (with its {path.name}-wal file)")


def check_header(path: Path) -> None:
    """Raise DamagedStore when the file is not an SQLite database or is shorter than its
    own header says (truncated). Reads 100 bytes: instant at any size."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            header = f.read(100)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise DamagedStore(f"cannot read {path}: {exc.strerror or exc}") from None
    if size == 0:
        return  # SQLite writes a new database here
    if len(header) < 100 or not header.startswith(SQLITE_MAGIC):
        raise DamagedStore(f"{path} is not an SQLite database (damaged or overwritten); {way_out(path)}")
    page_size = struct.unpack(">H", header[16:18])[0]
    page_size = 65536 if page_size == 1 else page_size
    pages, change, valid_for = struct.unpack(">I", header[28:32])[0], header[24:28], header[92:96]
    if change == valid_for and pages and size < pages * page_size:
        raise DamagedStore(f"{path} is truncated ({size} of {pages * page_size} bytes); {way_out(path)}")


def check_pages(path: Path, problems: list[str]) -> None:
    """PRAGMA quick_check's answer (["ok"] when the pages check out)."""
    if problems != ["ok"]:
        said = " ".join(" ".join(problems[:3]).replace("*** in database main ***", "").split())  # one line
        raise DamagedStore(f"{path} is damaged ({said[:300]}); {way_out(path)}")


@dataclass(frozen=True)
class HighWater:
    runs: int  # the largest run id
    studies: int
    transitions: int  # the largest state-change row
    at: float = 0.0  # when it was recorded

    def lost(self, now: HighWater) -> list[str]:
        """What the store held at this mark and does not hold now."""
        out = []
        if now.runs < self.runs:
            out.append(f"runs #{now.runs + 1}-#{self.runs}")
        if now.studies < self.studies:
            out.append(f"{self.studies - now.studies} of {self.studies} studies")
        if now.transitions < self.transitions:
            out.append(f"{self.transitions - now.transitions} state changes")
        return out

    def same(self, other: HighWater) -> bool:
        return (self.runs, self.studies, self.transitions) == (other.runs, other.studies, other.transitions)


def highwater_path(db: Path) -> Path:
    return db.with_name(db.name + "-highwater")


def read_highwater(db: Path) -> HighWater | None:
    try:
        doc = json.loads(highwater_path(db).read_text())
        return HighWater(int(doc["runs"]), int(doc["studies"]), int(doc["transitions"]), float(doc.get("at", 0)))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # none yet (or unreadable): written anew from the store


def write_highwater(db: Path, mark: HighWater) -> None:
    """Atomically, 0600 (blocking: call it off the event loop)."""
    path = highwater_path(db)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(mark), f)
    os.replace(tmp, path)


def lost_data_line(db: Path, was: HighWater, now: HighWater) -> str | None:
    """One line saying what the store lost since the mark, or None."""
    lost = was.lost(now)
    if not lost:
        return None
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(was.at)) if was.at else "earlier"
    return (f"{db} has lost data: it no longer holds {', '.join(lost)} that it held at {when} "
            f"(its {db.name}-wal file deleted, or an older copy put back?); the runs it still has go on, "
            f"and earlier runs' folders are set aside, never written into")
