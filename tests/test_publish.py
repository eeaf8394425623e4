"""The figures docs/benchmarks.md and README.md quote from benchmarks/results/ are the tables' own:
every marked block (``<!-- results:NAME -->``) is what benchmarks/publish.py writes from them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import publish  # noqa: E402


def test_every_block_agrees_with_the_tables():
    tables = publish.read_tables()
    stale = []
    for path in publish.TARGETS:
        _, changed = publish.render(path.read_text(), tables)
        stale += [f"{path.name}: {name}" for name in changed]
    assert not stale, f"run `python benchmarks/publish.py`: {stale}"


def test_every_block_is_placed_and_every_placed_block_is_known():
    placed = [name for path in publish.TARGETS for name in publish.blocks_in(path.read_text())]
    assert set(placed) == set(publish.BLOCKS), set(placed) ^ set(publish.BLOCKS)
    assert "status" in publish.blocks_in((ROOT / "README.md").read_text())


def test_every_quoted_figure_names_a_key_its_table_has_or_will_have():
    tables = publish.read_tables()
    for _label, table, _key, _kind, _goal in publish.PERFORMANCE:
        assert table in tables, table  # a figure from a table that does not exist would stay n/a for ever


def test_a_changed_table_makes_the_block_stale(tmp_path):
    (tmp_path / "sag-cpu.md").write_text("# t\n\n- date: 2026-01-01T00:00:00+00:00\n- commit: abc1234\n\n"
                                         "Ratios: `sag_seconds_per_image_cnn=1.5 multi_mse_share_cnn=n/a`\n")
    tables = publish.read_tables(tmp_path)
    assert tables["sag-cpu"].ratios == {"sag_seconds_per_image_cnn": 1.5, "multi_mse_share_cnn": None}
    assert tables["sag-cpu"].fields["commit"] == "abc1234"
    text, changed = publish.render("x\n<!-- results:sag -->\nold\n<!-- /results:sag -->\ny\n", tables)
    assert changed == ["sag"] and "a median 1.50 s on a 4x4 grid" in text and "n/a (grid)" in text
    assert publish.render(text, tables)[1] == []  # written once, it agrees
    tables["sag-cpu"].ratios["sag_seconds_per_image_cnn"] = 2.5
    assert publish.render(text, tables)[1] == ["sag"]
    with pytest.raises(ValueError, match="unknown results block"):
        publish.render("<!-- results:nope -->\n<!-- /results:nope -->\n", tables)


def test_every_missed_goal_says_why():
    """The README's goal table gives a reason for each missed goal, and names no ratio it lacks."""
    keys = {(table, key) for _label, table, key, _kind, goal in publish.PERFORMANCE if goal}
    assert set(publish.WHY_MISSED) <= keys, set(publish.WHY_MISSED) - keys
    assert "not recorded |" not in publish.performance_goals(publish.read_tables())


def test_goals_are_judged_in_the_unit_shown():
    assert publish.met(0.04, "<= 5", "pct") == "yes" and publish.met(0.06, "<= 5", "pct") == "**no**"
    assert publish.met(1.13, "<= 10", "growth") == "**no**" and publish.met(3.9, ">= 3", "x") == "yes"
    assert publish.met(None, "<= 1", "x") == "n/a" and publish.met(1.0, "", "x") == ""


def test_the_benchmarks_readme_names_every_script():
    """benchmarks/README.md's table has a row for every benchmarks/*.py (its smoke test included)."""
    text = (ROOT / "benchmarks" / "README.md").read_text()
    rows = {line.split("|")[1].strip().strip("`") for line in text.splitlines() if line.startswith("| `")}
    scripts = {p.name for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_")}
    assert scripts <= rows, scripts - rows
    for line in text.splitlines():
        if line.startswith("| `"):
            for test in (w.strip("`;,") for w in line.split() if w.strip("`").startswith("tests/")):
                assert (ROOT / test).is_file(), test
