"""Which runs a directory holds, and one consistent snapshot of each per request.

A run is a directory with a ``manifest.json`` of format ``lightning-i2x-run``. A fit may be
appending to it while it is served: the run's files are written atomically and the manifest last,
so every request reads the manifest once and reuses the loaded run while the manifest is
unchanged, or loads it again as a whole (retrying when a file the old manifest listed was just
replaced). Nothing a request returns mixes two states of the run.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np

from ..analysis import Explanation
from ..errors import I2XRunError
from ..store import FORMAT_NAME, MANIFEST, I2XRun

__all__ = ["find_runs", "is_run", "Snapshot", "RunCache"]

MAX_DEPTH = 8  # how deep under the served directory runs are looked for


def is_run(path: Path) -> bool:
    """``path`` holds a manifest of an I2X run (a regular file, not a link)."""
    m = Path(path) / MANIFEST
    try:
        if m.is_symlink() or not m.is_file() or m.stat().st_size > 64 * 2**20:
            return False
        data = json.loads(m.read_bytes())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT_NAME


def find_runs(root: str | os.PathLike) -> dict[str, Path]:
    """{name: run directory} of every run under ``root`` (itself included), the name being the
    path relative to ``root`` (``root``'s own name when it is a run). Symbolic links to
    directories are not followed, hidden directories and a run's own folders are skipped."""
    root = Path(root)
    found: dict[str, Path] = {}
    if not root.is_dir():
        return found
    base = len(root.parts)
    for here, dirs, _files in os.walk(root, followlinks=False):
        d = Path(here)
        if is_run(d):
            rel = d.relative_to(root).as_posix()
            found[root.resolve().name if rel == "." else rel] = d
            dirs[:] = []  # a run's checkpoints/, prototypes/ hold no runs
            continue
        dirs[:] = sorted(x for x in dirs if not x.startswith(".") and len(d.parts) - base < MAX_DEPTH)
    return dict(sorted(found.items()))


class Snapshot:
    """One loaded state of a run and what the views derive from it, each computed once."""

    def __init__(self, run: I2XRun, key: bytes):
        self.run = run
        self.key = key
        self._lock = threading.RLock()
        self._memo: dict = {}

    def memo(self, key, compute):
        with self._lock:
            if key not in self._memo:
                self._memo[key] = compute()
            return self._memo[key]

    def explanation(self) -> tuple[Explanation | None, str | None]:
        """(the run's explanation, None) or (None, why there is none yet)."""
        def compute():
            run = self.run
            if run.prototypes is None or run.num_checkpoints < 2:
                return None, "no explanation yet: it needs prototypes and at least two checkpoints"
            try:
                return run.explain(), None
            except (I2XRunError, ValueError) as e:
                return None, f"no explanation: {e}"
        return self.memo("explanation", compute)

    def assignment(self) -> np.ndarray | None:
        """(N, h*w) prototype of every location, or None before the first prototypes."""
        return self.memo("assignment", lambda: None if self.run.prototypes is None else self.run.assignment().reshape(self.run.num_probe, -1))

    def distances(self) -> np.ndarray | None:
        return self.memo("distances", lambda: None if self.run.prototypes is None else self.run.distances())

    def reliance(self):
        def compute():
            try:
                return self.run.stored_reliance()
            except I2XRunError:
                return None
        return self.memo("reliance", compute)


class RunCache:
    """The latest snapshot of each run directory, replaced when its manifest changes."""

    def __init__(self, attempts: int = 4):
        self._lock = threading.Lock()
        self._snapshots: dict[Path, Snapshot] = {}
        self._attempts = attempts

    def get(self, path: Path) -> Snapshot:
        error: I2XRunError | None = None
        for attempt in range(self._attempts):
            try:
                key = (path / MANIFEST).read_bytes()  # read once per request
            except OSError as e:
                raise I2XRunError(f"{path} holds no readable {MANIFEST}: {e}") from None
            with self._lock:
                snap = self._snapshots.get(path)
            if snap is not None and snap.key == key:
                return snap
            try:
                run = I2XRun.load(path)
            except I2XRunError as e:  # a file the manifest listed was replaced meanwhile: read again
                error = e
                time.sleep(0.05 * (attempt + 1))
                continue
            if json.loads(key) != run.manifest:  # the manifest moved on between the two reads: load again
                error = I2XRunError(f"{path} kept changing while it was read")
                continue
            snap = Snapshot(run, key)
            with self._lock:
                self._snapshots[path] = snap
            return snap
        raise error
