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


def _family_row(cell, split, discovery, plain, ceiling, share="0.50", control="+0.0"):
    return (f"| {cell} | {split} | {discovery} | 1.00 | 0.20 | {plain} ± 1.0 | 80.0 ± 1.0 | {ceiling} ± 1.0 | 90.0 ± 1.0 | "
            f"{share} | 0.00 | 0.90 | 0.10 | 0.00 | {control} | 1.00 | 0.25 | 1.00 |")


def test_the_family_block_asks_discovery_only_where_the_model_leans_on_a_localised_shortcut(tmp_path):
    header = "| cell | split | " + " | ".join(f"c{i}" for i in range(16)) + " |\n|" + "---|" * 18 + "\n"
    seeds = "| seed | suspects | a | b | c | d | e | suspects (clean model) | t | r | ro | rd | refined (clean model) | rt |\n|" + "---|" * 14 + "\n"
    clean = "| 0 | [3] | x | yes | 1 | 0.2 | p | [] | 1 s | [1] | R-1: 1.00 | yes | [] | 1 s |\n"
    alarm = "| 0 | [3] | x | yes | 1 | 0.2 | p | [7] | 1 s | [1] | R-1: 1.00 | yes | [4, 5] | 1 s |\n"
    rows = [_family_row("mnist:maxpool:swatch", "held-out", "0.67", "60.0", "80.0"),   # leans, missed
            _family_row("mnist:maxpool:tag", "held-out", "0.00", "80.0", "80.5"),      # gap 0.5: not asked
            _family_row("mnist:maxpool:cast", "held-out", "0.33", "40.0", "80.0", control="-2.5"),  # a suspect on the cast
            _family_row("mnist:flatten:swatch", "held-out", "1.00", "60.0", "80.0", share="0.85")]  # found, closed
    (tmp_path / "shortcut-family-mnist-cpu.md").write_text(
        "# t\n\n- commit: abc1234\n\nRatios: `discovery_rate=0.5`\n\n" + header + "".join(r + "\n" for r in rows) + "\n"
        + "".join(f"### c{i}\n\n" + seeds + (alarm if i == 2 else clean) + "\n" for i in range(4)))
    tables = publish.read_tables(tmp_path)
    lines = publish.shortcut_family(tables).splitlines()[2:]
    assert len(lines) == 4
    assert "| +20.0 | 0.67: **no** |" in lines[0] and "0.50: **no** (0.90)" in lines[0]
    assert "0.00 (not asked: no gap)" in lines[1] and "**no**" not in lines[1]
    assert "abstained in 0.67 of seeds: **no**" in lines[2] and "1 of 1: **no**" in lines[2]
    assert "| 1.00, 0.25; 1 of 1: **no** |" in lines[2] and "| 1.00, 0.25; 0 of 1 |" in lines[0]  # refined false alarms
    assert "| 1.00 |" in lines[3] and "**no**" not in lines[3]
    assert publish.family_discovery(tables) == "1 of 2"  # the cast and the untaken tag are not asked


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


def test_a_table_is_stale_exactly_when_code_it_measured_changed(tmp_path):
    import subprocess

    from _freshness import freshness

    def git(*args):
        return subprocess.run(["git", "-C", str(tmp_path), *args], capture_output=True, text=True, check=True).stdout.strip()

    files = {"lightning_i2x/__init__.py": "", "lightning_i2x/a.py": "from .b import g\n\n\ndef f():\n    return g()\n\n\ndef unused():\n    return 0\n",
             "lightning_i2x/b.py": "def g():\n    return 1\n\n\nx = 1\n", "lightning_i2x/c.py": "y = 1\n",
             "benchmarks/_common.py": "", "examples/demo_data.py": "",
             "benchmarks/s.py": "import _common\nimport s_family\nfrom lightning_i2x.a import f\nfrom s_tools import h\n",
             "benchmarks/s_tools.py": "from lightning_i2x import c\n\n\ndef h():\n    return 1\n\n\ndef unrelated():\n    return c.y\n",
             "benchmarks/s_family.py": "from demo_models import M\n", "examples/demo_models.py": ""}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tree")
    made = git("rev-parse", "--short", "HEAD")
    fields = {"commit": made, "command": "python benchmarks/s.py --out benchmarks/results/s-cpu.md"}
    judge = lambda f=fields: freshness("s-cpu", f, tmp_path)  # noqa: E731
    assert judge().verdict == "current"

    def commit_change(name, old="", new="# changed\n"):
        text = (tmp_path / name).read_text()
        (tmp_path / name).write_text(text.replace(old, new) if old else text + new)
        git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", name)

    commit_change("lightning_i2x/c.py")  # not reached from the script
    commit_change("examples/demo_data.py")  # not imported by the script
    commit_change("lightning_i2x/a.py", "return 0", "return 2")  # a definition the script's f does not reach
    commit_change("lightning_i2x/b.py", "x = 1", "x = 2")
    commit_change("lightning_i2x/b.py", "    return 1\n", "    # a comment\n    return 1\n")  # no change of code
    commit_change("lightning_i2x/a.py", "from .b import g\n", "from .b import g, x\n")  # another name in g's import
    assert judge().verdict == "current"
    commit_change("examples/demo_models.py")  # imported by a module the script imports: whole files
    f = judge()
    assert (f.verdict, f.changed) == ("stale", ("examples/demo_models.py",))
    fields["commit"] = git("rev-parse", "--short", "HEAD")
    commit_change("benchmarks/s_tools.py", "return c.y", "return c.y + 1")  # a helper's definition the script does not use
    commit_change("lightning_i2x/c.py", "y = 1", "y = 2")  # reached only through it
    assert judge().verdict == "current"
    commit_change("benchmarks/s_tools.py", "return 1", "return 2")  # the helper's definition the script imports
    f = judge()
    assert (f.verdict, f.changed) == ("stale", ("benchmarks/s_tools.py:h",))
    fields["commit"] = git("rev-parse", "--short", "HEAD")
    commit_change("benchmarks/s_tools.py", "", "\nimport warnings\n\nwarnings.filterwarnings('ignore')\n")  # runs on import
    f = judge()
    assert (f.verdict, f.changed) == ("stale", ("benchmarks/s_tools.py:<on import>",))
    fields["commit"] = git("rev-parse", "--short", "HEAD")
    commit_change("lightning_i2x/b.py", "return 1", "return 3")  # g, reached through f's call
    f = judge()
    assert (f.verdict, f.changed) == ("stale", ("lightning_i2x/b.py:g",))
    fields["commit"] = git("rev-parse", "--short", "HEAD")
    assert judge().verdict == "current"
    (tmp_path / "lightning_i2x/__init__.py").write_text("print()\n")  # uncommitted, and run on import whatever is used
    assert judge().changed == ("lightning_i2x/__init__.py:<on import>",)
    assert judge({**fields, "commit": fields["commit"] + "+dirty"}).verdict == "stale"
    assert judge({**fields, "commit": "0000000"}).verdict == "unknown"
    assert judge({**fields, "commit": "unknown (no git)"}).verdict == "unknown"


def test_the_measured_definitions_of_a_real_benchmark_follow_its_names():
    from _freshness import WHOLE, measured_definitions, measured_files

    faith = measured_files(ROOT / "benchmarks" / "faithfulness.py")
    assert {"benchmarks/faithfulness.py", "benchmarks/_common.py", "examples/demo_data.py", "examples/demo_models.py",
            "lightning_i2x/saliency/_igos.py", "lightning_i2x/measures/__init__.py", "lightning_i2x/__init__.py"} <= faith
    assert not any(f.startswith("lightning_i2x/dashboard/") for f in faith)  # nothing it imports reaches the app
    # xnn.py trains the SRAE; the faithfulness benchmark only imports the package, whose defaults build SRAEOptions()
    srae = "lightning_i2x/xfeatures/_srae.py"
    assert {"train_srae", "SRAEOptions"} <= measured_definitions(ROOT / "benchmarks" / "xnn.py")[srae]
    assert "train_srae" not in measured_definitions(ROOT / "benchmarks" / "faithfulness.py")[srae]
    assert "SRAEOptions" in measured_definitions(ROOT / "benchmarks" / "faithfulness.py")[srae]
    # bench_import times `import lightning_i2x` in a child interpreter (code in a string): every module it imports, whole
    imports = measured_definitions(ROOT / "benchmarks" / "bench_import.py")
    assert WHOLE in imports["lightning_i2x/store/_run.py"] and WHOLE in imports["lightning_i2x/__init__.py"]


def test_every_benchmark_takes_its_start_load_before_it_runs():
    """``_common.machine()`` records "load average at start": a script that calls it inside its
    ``_common.report(...)`` (at the end) records the load at the end under that name."""
    import ast

    late = []
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "report":
                inner = [n for arg in [*node.args, *(k.value for k in node.keywords)] for n in ast.walk(arg)]
                if any(isinstance(n, ast.Call) and getattr(n.func, "attr", None) == "machine" for n in inner):
                    late.append(path.name)
    assert not late, f"call _common.machine() at the start of main(), not inside report(): {late}"
