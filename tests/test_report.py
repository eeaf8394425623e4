"""The HTML report (lightning_i2x.viz) and ``i2x report``: self-contained, every view embedded,
and it opens in headless Chromium without errors."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser

import lightning.pytorch as pl
import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from lightning_i2x import I2XCallback, I2XRun
from lightning_i2x.__main__ import main as cli
from lightning_i2x.options import ViewOptions
from lightning_i2x.viz import build_report, drawn_pairs

from .browser import require_chromium, screenshot_module
from .conftest import TinyCNN, trainer_kwargs


@pytest.fixture(scope="module")
def run(tmp_path_factory, digits):
    """A 3-epoch run on digits, recorded without TensorBoard."""
    tmp = tmp_path_factory.mktemp("report")
    train, probe = digits
    cb = I2XCallback(probe, num_prototypes=8, run_dir=tmp / "run")
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(**trainer_kwargs(tmp, callbacks=[cb], logger=False, limit_train_batches=8))
    trainer.fit(TinyCNN(), DataLoader(train, batch_size=64, shuffle=True), DataLoader(probe, batch_size=100))
    return I2XRun.load(cb.run.path)


class _Views(HTMLParser):
    """Collects each <figure class="view"> (id, kind) with its <img> src, and every URL attribute."""

    def __init__(self):
        super().__init__()
        self.figures, self.urls, self._open = [], [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.urls += [v for k, v in attrs if k in ("src", "href", "action", "poster") and v is not None]
        if tag == "figure" and "view" in a.get("class", ""):
            self._open = [a["id"], a["data-view"], None]
            self.figures.append(self._open)
        elif tag == "img" and self._open is not None:
            self._open[2] = a["src"]


def _parse(html: str) -> _Views:
    p = _Views()
    p.feed(html)
    return p


def _decode(src: str) -> np.ndarray:
    assert src.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"))


def test_the_report_embeds_every_view_and_loads_nothing_from_outside(run):
    html = build_report(run)
    p = _parse(html)
    names = run.class_names
    pairs = drawn_pairs(run, run.explain(), ViewOptions(max_pairs=3))
    assert len(pairs) == 3
    expected = {"view-confidence", "view-gallery", "view-beta"} | {f"view-pair-{names[a]}-{names[b]}" for a, b in pairs}
    expected |= {f"view-{v}-{c}" for c in names for v in ("evolution", "graph", "overlay")}
    assert {f[0] for f in p.figures} == expected
    for view_id, kind, src in p.figures:
        assert view_id.startswith(f"view-{kind}")
        rgb = _decode(src)
        assert rgb.shape[0] >= 80 and rgb.shape[1] >= 150 and rgb.std() > 10, view_id
    # self-contained: every URL is a data URI or an in-page anchor, and nothing else points out
    assert all(u.startswith(("data:image/png;base64,", "#")) for u in p.urls)
    assert not re.search(r"https?://|url\(|<link|<iframe|@import", html)
    # the findings and each class's summary are there as text
    expl = run.explain()
    assert "<h3>Uncertain prototypes</h3>" in html
    for c, name in enumerate(names):
        article = html.split(f'<article class="class" id="class-{name}">', 1)[1].split("</article>", 1)[0]
        shared = ", ".join(f"P-{k}" for k in expl.shared_prototypes(c)) or "none"
        assert f"<li>shared: {shared}</li>" in article
        assert f'id="view-evolution-{name}"' in article


def test_i2x_report_command_with_a_progress_bar(run, tmp_path, capsys):
    out = tmp_path / "sub" / "r.html"
    assert cli(["report", str(run.path), "--out", str(out), "--classes", "d2", "7", "--max-pairs", "1", "--dpi", "50"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out)
    assert "i2x report" in captured.err and "100%" in captured.err
    ids = {f[0] for f in _parse(out.read_text()).figures}
    assert {i for i in ids if i.startswith("view-evolution-")} == {"view-evolution-d2", "view-evolution-d7"}
    assert sum(i.startswith("view-pair-") for i in ids) == 1
    assert cli(["report", str(run.path), "--out", str(tmp_path / "x.html"), "--classes", "nope", "--no-progress"]) == 2
    assert "nope" in capsys.readouterr().err and not (tmp_path / "x.html").exists()
    assert cli(["summary", str(run.path)]) == 0
    assert "## Uncertain prototypes" in capsys.readouterr().out


def test_a_run_without_images_still_reports(run):
    bare = I2XRun.load(run.path)
    bare.images = None
    html = build_report(bare, classes=[3], max_pairs=1)
    kinds = {f[1] for f in _parse(html).figures}
    assert kinds == {"confidence", "beta", "pair", "evolution", "graph"}
    assert "holds no probe images" in html


@pytest.mark.slow
def test_the_report_opens_in_chromium_without_errors(run, tmp_path):
    require_chromium("the report check")
    shot = screenshot_module()
    page = tmp_path / "report.html"
    page.write_text(build_report(run, dpi=60))
    n_views = len(_parse(page.read_text()).figures)
    done = shot.chromium(page.as_uri(), "--enable-logging=stderr", "--v=0", "--dump-dom", "--virtual-time-budget=5000")
    assert done.returncode == 0, done.stderr[-2000:]
    assert not [line for line in done.stderr.splitlines() if ":CONSOLE" in line]  # no JavaScript console message
    body = re.search(r"<body[^>]*>", done.stdout).group(0)
    assert f'data-images="{n_views}"' in body and 'data-broken="0"' in body  # every image decoded
    png = shot.screenshot(page.as_uri(), tmp_path / "report.png", (1200, 3000), 3000)
    rgb = np.asarray(Image.open(png).convert("RGB"))
    assert rgb.shape == (3000, 1200, 3)
    top, lower = rgb[:600], rgb[1200:]
    assert top.std() > 10 and lower.std() > 10  # text at the top, figures further down


def test_report_leaves_out_the_faithfulness_figure_when_nothing_was_measured(run):
    """A run without FaithfulnessMeasure has no such figure (the fit with it, drawn, is in
    tests/test_faithfulness_measure.py)."""
    assert "faithfulness/deletion_auc" not in run.metrics()
    assert 'data-view="faithfulness"' not in build_report(run, classes=[0], max_pairs=0, gallery_patches=0)
