"""A study's [prepare] step: what names it on a host (a hash of its command and of its
files' content), so that it runs once per host and again only when one of them changed.

The step itself runs inside the first run that reaches a host (hypd/wrapper.py); the
others there wait for it. Files are read here, on the daemon's machine (in a thread).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from hypd.study import StudySpec

# study -> (what the files looked like: path, size, mtime; the hash then)
_seen: dict[str, tuple[tuple[object, ...], str]] = {}


def prepare_dir(root: str, spec: StudySpec, generation: int = 0) -> str:
    """The prepare step's folder on a host whose hypd root is `root`."""
    return str(Path(root) / "prepare" / spec.name / prepare_hash(spec, generation))


def prepare_hash(spec: StudySpec, generation: int = 0) -> str:
    """16 hex digits over the prepare command, every file it names (a folder: each file
    under it; content read again only when a file's size or time changed) and how many
    times it was asked for again (`hypd retry STUDY --prepare`)."""
    assert spec.prepare is not None
    files = _listing(Path(spec.workdir), spec.prepare.files)
    key = (spec.prepare.command, generation, *files)
    cached = _seen.get(spec.name)
    if cached is not None and cached[0] == key:
        return cached[1]
    h = hashlib.sha256(f"{spec.prepare.command}\0{generation}".encode())
    for rel, size, _ in files:
        h.update(f"\0{rel}\0{size}\0".encode())
        if size >= 0:
            with open(Path(spec.workdir) / rel, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    digest = h.hexdigest()[:16]
    _seen[spec.name] = (key, digest)
    return digest


def _listing(workdir: Path, names: tuple[str, ...]) -> list[tuple[str, int, int]]:
    """(path relative to workdir, size, mtime in ns) of each file; a missing one counts as
    size -1 (its appearing later is a change)."""
    out = []
    for name in names:
        path = workdir / name
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for f in sorted(files):
                    p = Path(root) / f
                    st = p.stat()
                    out.append((str(p.relative_to(workdir)), st.st_size, st.st_mtime_ns))
        elif path.exists():
            st = path.stat()
            out.append((name, st.st_size, st.st_mtime_ns))
        else:
            out.append((name, -1, 0))
    return out
