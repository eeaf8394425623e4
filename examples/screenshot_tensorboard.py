"""Screenshot TensorBoard's i2x views with headless Chromium (how docs/tensorboard.png is made).

    python examples/screenshot_tensorboard.py LOGDIR [--out docs/tensorboard.png] [--tags REGEX]

Starts TensorBoard on 127.0.0.1 (a free port) over LOGDIR, waits until it serves the i2x image
tags, opens its IMAGES dashboard filtered by ``--tags`` in headless Chromium (Debian's ``chromium``
package; ``$I2X_CHROMIUM`` names another binary), saves the PNG and stops the server. The tests
reuse ``tensorboard_server``, ``chromium`` and ``screenshot``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--mute-audio",
)


def find_chromium() -> str | None:
    """The Chromium binary: ``$I2X_CHROMIUM``, else the first of chromium / chromium-browser on PATH."""
    for name in (os.environ.get("I2X_CHROMIUM"), "/usr/bin/chromium", "chromium", "chromium-browser"):
        if name and (path := shutil.which(name)):
            return path
    return None


def chromium(url: str, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run headless Chromium on ``url`` with a fresh throw-away profile; returns the finished process."""
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("no Chromium found (install Debian's chromium package, or set $I2X_CHROMIUM)")
    with tempfile.TemporaryDirectory(prefix="i2x-chromium-") as profile:
        return subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url],
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def screenshot(url: str, out: str | os.PathLike, size: tuple[int, int] = (1400, 1000), budget_ms: int = 20000) -> Path:
    """Save a PNG of ``url`` after ``budget_ms`` of virtual time (JavaScript apps need it to draw)."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    done = chromium(url, f"--screenshot={out}", f"--window-size={size[0]},{size[1]}", f"--virtual-time-budget={budget_ms}")
    if not out.exists():
        raise RuntimeError(f"Chromium wrote no screenshot (exit {done.returncode}): {done.stderr[-2000:]}")
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 10.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def i2x_image_tags(base: str) -> dict[str, list[str]]:
    """{run: [i2x image tags]} as the server lists them now."""
    listing = get_json(f"{base}/data/plugin/images/tags")
    return {run: sorted(t for t in tags if t.startswith("i2x/")) for run, tags in listing.items()}


@contextlib.contextmanager
def tensorboard_server(logdir: str | os.PathLike, timeout: float = 120.0) -> Iterator[str]:
    """A TensorBoard server on 127.0.0.1 over ``logdir``, yielded as its base URL once it lists the
    i2x image tags and their number has stopped growing (it loads event files in the background).
    The server is stopped on exit, whatever happens."""
    log = tempfile.TemporaryFile()
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline, last = time.monotonic() + timeout, None
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"TensorBoard exited with {proc.returncode}: {log.read().decode(errors='replace')[-2000:]}")
            try:
                count = sum(len(v) for v in i2x_image_tags(base).values())
                if count and count == last:
                    break
                last = count
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"TensorBoard at {base} listed no i2x image tags within {timeout:.0f} s")
            time.sleep(1.0)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def dashboard_url(base: str, tags: str = "i2x") -> str:
    """The IMAGES dashboard with its tag filter set to the regular expression ``tags``."""
    return f"{base}/#images&tagFilter={urllib.parse.quote(tags, safe='')}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("logdir", help="TensorBoard log directory (e.g. i2x_demo)")
    ap.add_argument("--out", default="docs/tensorboard.png")
    ap.add_argument("--tags", default="i2x/(class1|gallery|pair1)", help="regular expression of the image tags shown")
    ap.add_argument("--size", default="1400,1100", help="window WIDTH,HEIGHT in pixels")
    ap.add_argument("--budget-ms", type=int, default=20000, help="virtual time Chromium gives the page to draw")
    args = ap.parse_args(argv)
    width, height = (int(v) for v in args.size.split(","))
    with tensorboard_server(args.logdir) as base:
        out = screenshot(dashboard_url(base, args.tags), args.out, (width, height), args.budget_ms)
    print(f"{out} ({out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
