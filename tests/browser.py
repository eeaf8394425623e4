"""Helpers for the tests that drive headless Chromium and TensorBoard through
``examples/screenshot_tensorboard.py`` (the script that makes the README's screenshot)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "screenshot_tensorboard.py"


def screenshot_module():
    spec = importlib.util.spec_from_file_location("screenshot_tensorboard", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def require_chromium(what: str) -> None:
    """Skip (or, with I2X_REQUIRE_BROWSER=1 as in CI, fail) when no Chromium is installed."""
    if screenshot_module().find_chromium() is None:
        message = f"no Chromium for {what} (install Debian's chromium package, or set $I2X_CHROMIUM)"
        if os.environ.get("I2X_REQUIRE_BROWSER") == "1":
            pytest.fail(f"I2X_REQUIRE_BROWSER=1 but {message}")
        pytest.skip(message)


class DevTools:
    """Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
    NUL-separated JSON on the child's fds 3 and 4), standard library only: real mouse and input
    events, screenshots, and every URL the page requested (``requests``)."""

    def __init__(self, size: tuple[int, int] = (1400, 1000)):
        import subprocess
        import tempfile

        exe = screenshot_module().find_chromium()
        self._profile = tempfile.TemporaryDirectory(prefix="i2x-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def fds():  # the child reads commands on fd 3 and writes answers on fd 4
            os.dup2(to_child_r, 3)
            os.dup2(from_child_w, 4)

        flags = screenshot_module().CHROMIUM_FLAGS
        self.proc = subprocess.Popen([exe, *flags, "--remote-debugging-pipe", f"--user-data-dir={self._profile.name}",
                                      f"--window-size={size[0]},{size[1]}", "about:blank"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=fds, pass_fds=(3, 4))  # the pipe needs fds 3 and 4 in the child
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf, self._id, self.requests, self.console = b"", 0, [], []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Network", "Runtime"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1], deviceScaleFactor=1, mobile=False)

    def _read(self) -> dict:
        import json

        while b"\0" not in self._buf:
            chunk = os.read(self._from_child, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed its DevTools pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        event = json.loads(msg)
        if event.get("method") == "Network.requestWillBeSent":
            self.requests.append(event["params"]["request"]["url"])
        elif event.get("method") == "Runtime.exceptionThrown":
            self.console.append(event["params"]["exceptionDetails"].get("text", ""))
        return event

    def call(self, method: str, session: bool = False, **params) -> dict:
        import json

        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        while True:
            event = self._read()
            if event.get("id") == self._id:
                if "error" in event:
                    raise RuntimeError(f"{method}: {event['error']}")
                return event.get("result", {})

    def send(self, method: str, **params) -> dict:
        return self.call(method, session=True, **params)

    def eval(self, expression: str):
        out = self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in out:
            raise RuntimeError(f"{expression}: {out['exceptionDetails']}")
        return out["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20.0):
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = self.eval(expression)
            except RuntimeError:  # the page is still loading (no body, no element yet)
                value = None
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"{expression!r} stayed false for {timeout} s; console: {self.console}")

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def mouse(self, kind: str, x: float, y: float) -> None:
        self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left" if kind != "mouseMoved" else "none", clickCount=1)

    def click(self, x: float, y: float) -> None:
        self.mouse("mouseMoved", x, y)
        self.mouse("mousePressed", x, y)
        self.mouse("mouseReleased", x, y)

    def center(self, selector: str, fx: float = 0.5, fy: float = 0.5) -> tuple[float, float]:
        import json

        r = self.eval(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView({{block: 'center'}});"
                      " const r = e.getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; })()")
        return r[0] + fx * r[2], r[1] + fy * r[3]

    def screenshot(self, out) -> None:
        import base64

        Path(out).write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_child)
        os.close(self._from_child)
        self._profile.cleanup()
