"""benchmarks/_common.py: what every results table records (commit, versions, load), and the
ratio line with n/a for a figure a run could not measure."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import _common  # noqa: E402


def test_commit_outside_git_does_not_crash(monkeypatch, tmp_path):
    monkeypatch.setattr(_common, "REPO", tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert _common.commit() == "unknown (no git)"


def test_commit_and_versions_in_this_checkout():
    c = _common.commit()
    assert c == "unknown (no git)" or c.split("+")[0].isalnum()
    assert "torch " in _common.versions() and "numpy " in _common.versions()


def test_ratio_line_writes_n_a_and_rejects_nan():
    assert _common.ratio_line({"a": 1.23456, "b": None}) == "a=1.235 b=n/a"
    assert _common.parse_ratio_line("a=1.235 b=n/a") == {"a": 1.235, "b": None}
    with pytest.raises(ValueError, match="not a finite number"):
        _common.ratio_line({"a": float("nan")})


def test_report_records_commit_packages_and_load(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["benchmarks/x.py", "--out", "t.md"])
    out = tmp_path / "t.md"
    _common.report("T", "body", {"a": 1.0, "b": None}, str(out), {"cpu": "c"}, quick=True)
    text = out.read_text()
    for field in ("- commit: ", "- packages: ", "- load average at start: ", "- load average at end: ", "- command: `python "):
        assert field in text, field
    assert "Ratios: `a=1 b=n/a`" in text and capsys.readouterr().out.strip().splitlines()[-1] == "a=1 b=n/a"
