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
