"""The dashboard (lightning_i2x.dashboard): its routes through werkzeug's test client (the class,
pair and side-by-side pages on planted answers), path safety, headers, the token and read-only
mode, the TensorBoard plugin in-process and its entry point, the one-file interactive report, and
real headless Chromium driving ``i2x serve``'s app."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from werkzeug.test import Client

from lightning_i2x import I2XRun, Prototypes
from lightning_i2x.__main__ import main as cli
from lightning_i2x.dashboard import CSP, DashboardApp, build_interactive_report, find_runs

from .browser import DevTools, require_chromium

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def make_run(path, k=8, n=60, t=6, m=3, hw=(4, 4), size=16, seed=0, images=True) -> I2XRun:
    """A synthetic run (no model): random maps, confidences drifting to the true class."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % m
    run = I2XRun.create(path, labels=labels, class_names=[f"c{c}" for c in range(m)], feature_shape=hw, num_prototypes=k,
                        images=rng.normal(size=(n, 1, size, size)).astype(np.float32) if images else None)
    for step in range(t):
        append(run, rng, step, t)
    protos = Prototypes(projection=rng.normal(size=(4, 8)).astype(np.float32), bias=np.zeros(4, np.float32),
                        centroids=rng.normal(size=(k, 4)).astype(np.float32))
    run.set_prototypes(protos, rng.integers(0, k, size=(n, *hw)), reference=t - 1, distances=rng.random((n, *hw)).astype(np.float32))
    return run


def append(run, rng, step, t):
    n, m = run.num_probe, run.num_classes
    conf = rng.dirichlet(np.ones(m), size=n).astype(np.float32)
    conf[np.arange(n), run.labels] += step / t
    run.append_checkpoint(rng.random((n, *run.feature_shape)).astype(np.float32), conf / conf.sum(1, keepdims=True),
                          epoch=step, global_step=10 * step)


@pytest.fixture
def logdir(tmp_path):
    make_run(tmp_path / "logs" / "mnist" / "version_0" / "i2x")
    make_run(tmp_path / "logs" / "other" / "i2x", seed=1, images=False)
    (tmp_path / "logs" / "not_a_run").mkdir()
    (tmp_path / "logs" / "not_a_run" / "manifest.json").write_text('{"format": "something-else"}')
    return tmp_path / "logs"


RUN = "mnist/version_0/i2x"


@pytest.fixture
def client(logdir):
    return Client(DashboardApp(logdir))


def get_json(client, url, status=200):
    r = client.get(url)
    assert r.status_code == status, (url, r.status_code, r.data[:300])
    assert r.mimetype == "application/json"
    return r.get_json()


def test_finds_every_run_under_a_log_directory(logdir):
    assert sorted(find_runs(logdir)) == [RUN, "other/i2x"]
    assert list(find_runs(logdir / RUN)) == ["i2x"]  # a run directory itself
    assert find_runs(logdir / "missing") == {}


def test_routes_answer_small_json_of_the_documented_shape(client):
    cfg = get_json(client, "/api/config")
    assert cfg["runs"] == [RUN, "other/i2x"] and cfg["read_only"] is False and len(cfg["token"]) > 20
    ov = get_json(client, f"/api/overview?run={RUN}")
    assert ov["class_names"] == ["c0", "c1", "c2"] and len(ov["checkpoints"]) == 6
    assert np.array(ov["confidence"]).shape == (3, 6) and len(ov["accuracy"]) == 6 and len(ov["holding"]) == 8
    assert "explanation" not in ov  # the first view is only what the run holds; the explanation comes on its own route
    ex = get_json(client, f"/api/explanation?run={RUN}")["explanation"]
    assert ex["num_intervals"] == 5 and ex["suspects"] is None
    for row in ex["uncertain"]:  # grouped: one row per prototype, its pairs inside
        assert set(row) == {"prototype", "score", "pairs"} and row["pairs"]
    assert len({r["prototype"] for r in ex["uncertain"]}) == len(ex["uncertain"])
    p = get_json(client, f"/api/prototype?run={RUN}&k=2")
    assert len(p["intensity"]) == 6 and np.array(p["beta"]).shape == (5, 3) and len(p["thresholds"]) == 5
    assert 0 < len(p["patches"]) <= 16 and p["num_holding"] >= len(p["holders"]) and p["mark"] is None
    assert all(set(h) == {"image", "label", "cells", "intensity"} for h in p["holders"])
    im = get_json(client, f"/api/image?run={RUN}&i=5")
    assert np.array(im["cams"]).shape == (6, 16) and np.array(im["cells"]).shape == (4, 4)
    assert np.array(im["confidences"]).shape == (6, 3) and len(im["distances"]) == 16 and im["image_shape"] == [16, 16]
    assert set(im["intensity"]) == {str(k) for k in np.unique(im["cells"])}
    for url in (f"/api/sprite.png?run={RUN}&k=2", f"/api/image.png?run={RUN}&i=5"):
        r = client.get(url)
        assert r.status_code == 200 and r.mimetype == "image/png" and r.data.startswith(b"\x89PNG")
    # a run without images: no sprite, the map alone
    assert get_json(client, "/api/prototype?run=other/i2x&k=0")["patches"] == []
    assert client.get("/api/sprite.png?run=other/i2x&k=0").status_code == 404
    assert get_json(client, "/api/image?run=other/i2x&i=0")["image_shape"] is None
    # bad requests
    get_json(client, f"/api/prototype?run={RUN}&k=99", 404)
    get_json(client, f"/api/prototype?run={RUN}&k=-1", 400)
    get_json(client, f"/api/image?run={RUN}&i=x", 400)
    get_json(client, "/api/overview?run=nope", 404)
    get_json(client, "/api/overview?run=not_a_run", 404)
    assert client.post(f"/api/overview?run={RUN}").status_code == 405


def planted_explanation(n=60, k=8, m=3, intervals=5):
    """An explanation with known answers: P-3 shared by class 0; in interval 0 P-1 moves
    confidence from class 2 to class 0 (beta +1 / -1, tau 0.5); P-5 is uncertain between 0 and 2."""
    from lightning_i2x.analysis import Explanation, UncertainPrototype

    beta = np.zeros((intervals, k, m))
    beta[0, 1, 0], beta[0, 1, 2] = 1.0, -1.0
    beta[2, 5, 0], beta[3, 5, 2] = 0.8, 0.8
    labels = np.arange(n) % m
    presence = np.zeros((n, k), bool)
    presence[labels == 0, 3] = True
    return Explanation(beta=beta, thresholds=np.full(intervals, 0.5), groups=np.full((intervals, n), -1), presence=presence,
                       labels=labels, class_names=["c0", "c1", "c2"],
                       params={"shared_frac": 0.8, "specialised_frac": 0.5, "min_group_members": 3},
                       _uncertain=[UncertainPrototype(5, (0, 2), 3, 0.9)])


def planted_app(logdir, **kw) -> DashboardApp:
    app = DashboardApp(logdir, **kw)
    app.cache.get(app.runs()[RUN]).memo("explanation", lambda: (planted_explanation(), None))
    return app


def test_an_image_page_carries_the_runs_numbers_at_the_precision_it_shows(logdir, client):
    """The image page (asked for once per probe image, so N times in the one-file report) rounds its
    maps, distances and confidences to the 3 decimals the page displays, and nothing coarser."""
    run = I2XRun.load(logdir / RUN)
    im = get_json(client, f"/api/image?run={RUN}&i=5")
    cams = run.cams()[:, 5].reshape(run.num_checkpoints, -1)
    np.testing.assert_allclose(np.array(im["cams"], dtype=float), cams, atol=5e-4 + 1e-9)
    np.testing.assert_allclose(np.array(im["confidences"], dtype=float), run.confidences()[:, 5], atol=5e-4 + 1e-9)
    values = [v for row in im["cams"] for v in row] + im["distances"]
    assert all(len(repr(v).partition(".")[2]) <= 3 for v in values)
    assert any(len(repr(v).partition(".")[2]) == 3 for v in values)  # rounded, not truncated to fewer


def test_the_class_and_pair_pages_draw_the_planted_explanation(logdir):
    client = Client(planted_app(logdir))
    page = get_json(client, f"/api/class?run={RUN}&c=0")
    rows = {r["prototype"]: r for r in page["rows"]}
    assert page["rows"][0]["prototype"] == 3 and page["rows"][0]["kind"] == "shared" and page["shared"] == [3]
    assert rows[1]["beta"] == [1.0, 0, 0, 0, 0] and rows[1]["against"] == [2, None, None, None, None]  # Fig. 3
    assert rows[5]["against"][2] is None  # raised class 0, but no class fell past tau
    assert [g["sources"] for g in page["graph"]] == [[{"class": 2, "prototypes": [1]}], [], [], [], []]  # Fig. 4
    assert page["pairs"] == [[0, 2]] and page["thresholds"] == [0.5] * 5
    assert get_json(client, f"/api/class?run={RUN}&c=2")["graph"][0]["sources"] == []  # c2 lost, it gained nothing
    pair = get_json(client, f"/api/pair?run={RUN}&a=0&b=2")  # Fig. 5
    assert [r["prototype"] for r in pair["rows"]] == [5, 1] and pair["rows"][0]["flips"] == 3 and pair["rows"][1]["flips"] is None
    assert pair["rows"][1]["diff"][0] == 2.0 and pair["rows"][1]["over"] == [True, False, False, False, False]
    assert pair["rows"][0]["over"] == [False, False, True, True, False]
    other = get_json(client, f"/api/pair?run={RUN}&a=0&b=1")["rows"]  # separated, not uncertain: largest difference first
    assert [(r["prototype"], r["flips"]) for r in other] == [(1, None), (5, None)]
    get_json(client, f"/api/class?run={RUN}&c=3", 404)
    get_json(client, f"/api/pair?run={RUN}&a=1&b=1", 404)
    get_json(client, f"/api/class?run={RUN}&c=x", 400)


def test_the_class_page_says_why_before_an_explanation(tmp_path):
    make_run(tmp_path / "young", t=1)
    page = get_json(Client(DashboardApp(tmp_path / "young")), "/api/class?c=1")
    assert page["rows"] == [] and "at least two checkpoints" in page["note"]


def repaired_runs(root, n=60, m=3):
    """Two runs on one probe, planted: "before" predicts images 0, 1, 2 wrong at its last
    checkpoint, "after" fixes them and breaks image 5; both right everywhere else."""
    labels = np.arange(n) % m
    for name, wrong in (("before", [0, 1, 2]), ("after", [5])):
        run = I2XRun.create(root / name, labels=labels, class_names=["c0", "c1", "c2"], feature_shape=(2, 2), num_prototypes=2)
        for step, bad in enumerate(([], wrong)):
            pred = labels.copy()
            pred[bad] = (labels[bad] + 1) % m
            conf = np.full((n, m), 0.1, np.float32)
            conf[np.arange(n), pred] = 0.8
            run.append_checkpoint(np.ones((n, 2, 2), np.float32), conf, epoch=step, global_step=step)
    return root


def test_two_runs_side_by_side_on_the_same_probe(tmp_path):
    make_run(tmp_path / "runs" / "elsewhere", n=30)
    client = Client(DashboardApp(repaired_runs(tmp_path / "runs")))
    d = get_json(client, "/api/compare?run=before&t=1&other=after&u=1")
    assert d["fixed"] == {"count": 3, "images": [0, 1, 2]} and d["broken"] == {"count": 1, "images": [5]} and d["changed"] == 4
    assert d["accuracy"] == [0.95, round(59 / 60, 5)] and d["checkpoints"] == [1, 1]
    one_wrong = pytest.approx((19 * 0.8 + 0.1) / 20, abs=1e-5)  # a class with one of its 20 images wrong
    assert d["confidence"][0] == [one_wrong] * 3 and d["confidence"][1] == [pytest.approx(0.8, abs=1e-5)] * 2 + [one_wrong]
    # one run at two checkpoints: checkpoint 0 was right everywhere
    same = get_json(client, "/api/compare?run=before&t=0&u=1")
    assert same["broken"]["images"] == [0, 1, 2] and same["fixed"]["count"] == 0
    get_json(client, "/api/compare?run=before&t=2&other=after&u=1", 404)
    r = get_json(client, "/api/compare?run=before&t=0&other=elsewhere&u=0", 400)
    assert "other probe sets" in r["error"]
    get_json(client, "/api/compare?run=before&t=0&other=nope&u=0", 404)


def test_every_response_has_a_type_nosniff_and_html_a_strict_csp(client):
    urls = ["/", "/index.html", "/index.js", "/static/app.js", "/static/draw.js", "/static/pages.js", "/static/style.css", "/api/config", f"/api/overview?run={RUN}",
            f"/api/sprite.png?run={RUN}&k=0", "/api/nothing", "/static/secret.py", f"/api/file?run={RUN}&path=..%2Fx"]
    for url in urls:
        r = client.get(url)
        assert r.headers.get("Content-Type"), url
        assert r.headers["X-Content-Type-Options"] == "nosniff", url
    for url in ("/", "/index.html"):
        r = client.get(url)
        assert r.mimetype == "text/html" and r.headers["Content-Security-Policy"] == CSP
    assert "default-src 'none'" in CSP and "unsafe-inline" not in CSP and "unsafe-eval" not in CSP
    # the page itself loads nothing from outside
    assert not re.search(r"(src|href)=\"(https?:)?//", client.get("/").text)


@pytest.mark.parametrize("path", [
    "../manifest.json", "..", "/etc/passwd", "checkpoints/../manifest.json", "checkpoints%2F..%2F..%2Fx", "..%2F..%2Fetc%2Fpasswd",
    "checkpoints/ckpt-99999.npz", "prototypes", "checkpoints\\..\\manifest.json", "attachments/evil-00000.json", "marks.json",
])
def test_only_the_files_the_manifest_lists_are_served(logdir, path, tmp_path):
    outside = tmp_path / "secret.json"
    outside.write_text('{"secret": 1}')
    run_dir = logdir / RUN
    (run_dir / "attachments").mkdir(exist_ok=True)
    os.symlink(outside, run_dir / "attachments" / "evil-00000.json")  # listed, but pointing out of the run
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["attachments"]["evil"] = {"file": "attachments/evil-00000.json", "checkpoint": 0}
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    client = Client(DashboardApp(logdir))
    r = client.get(f"/api/file?run={RUN}&path={path}")
    assert r.status_code == 404 and b"secret" not in r.data
    ok = client.get(f"/api/file?run={RUN}&path=checkpoints/ckpt-00000.npz")
    assert ok.status_code == 200 and ok.headers["Content-Disposition"].startswith("attachment") and ok.data[:2] == b"PK"
    assert client.get(f"/api/file?run={RUN}&path=manifest.json").get_json()["format"] == "lightning-i2x-run"


def test_writes_need_the_token_and_are_refused_read_only(logdir):
    app = DashboardApp(logdir)
    client = Client(app)
    manifest = (logdir / RUN / "manifest.json").read_bytes()
    url = f"/api/marks?run={RUN}"
    assert client.post(url, json={"prototype": 3, "mark": "shortcut"}).status_code == 403
    assert client.post(url, json={"prototype": 3, "mark": "shortcut"}, headers={"X-I2X-Token": "wrong"}).status_code == 403
    ok = {"X-I2X-Token": app.token}
    assert client.post(url, data="prototype=3", headers=ok, content_type="application/x-www-form-urlencoded").status_code == 400
    assert client.post(url, json={"prototype": 3, "mark": "evil"}, headers=ok).status_code == 400
    assert client.post(url, json={"prototype": 99, "mark": "fine"}, headers=ok).status_code == 404
    r = client.post(url, json={"prototype": 3, "mark": "shortcut"}, headers=ok)
    assert r.status_code == 200 and r.get_json()["marks"] == {"3": "shortcut"}
    client.post(url, json={"prototype": 5, "mark": "fine"}, headers=ok)
    assert get_json(client, url)["marks"] == {"3": "shortcut", "5": "fine"}
    assert I2XRun.load(logdir / RUN).marks() == {3: "shortcut", 5: "fine"}
    assert (logdir / RUN / "marks.json").exists() and (logdir / RUN / "manifest.json").read_bytes() == manifest
    client.post(url, json={"prototype": 5, "mark": None}, headers=ok)
    assert I2XRun.load(logdir / RUN).marks() == {3: "shortcut"}

    ro = DashboardApp(logdir, read_only=True)
    assert get_json(Client(ro), "/api/config")["token"] is None
    assert Client(ro).post(url, json={"prototype": 3, "mark": "fine"}, headers={"X-I2X-Token": ro.token}).status_code == 403
    assert I2XRun.load(logdir / RUN).marks() == {3: "shortcut"}


def test_marks_of_earlier_prototypes_are_not_returned(logdir):
    run = I2XRun.load(logdir / RUN)
    run.set_mark(1, "shortcut")
    run.set_prototypes(run.prototypes, run.assignment(), reference=2)  # refitted: other prototypes, same ids
    assert I2XRun.load(logdir / RUN).marks() == {}


def test_marked_prototypes_are_what_the_finetuning_targets(logdir):
    from lightning_i2x import FinetuneOptions, I2XRunError
    from lightning_i2x.finetune._targets import prototype_target

    assert FinetuneOptions(prototypes="marked").prototypes == "marked"
    run = I2XRun.load(logdir / RUN)
    with pytest.raises(I2XRunError, match="no prototype marked"):
        prototype_target(run, "marked")
    run.set_mark(4, "shortcut")
    run.set_mark(1, "fine")
    run.set_mark(6, "shortcut")
    assert prototype_target(I2XRun.load(logdir / RUN), "marked").prototypes == (4, 6)


def test_only_loopback_host_names_when_bound_to_loopback(logdir):
    client = Client(DashboardApp(logdir, allowed_hosts={"127.0.0.1", "localhost", "::1"}))
    assert client.get("/api/config").status_code == 200  # the test client's host is localhost
    assert client.get("/api/config", headers={"Host": "127.0.0.1:6007"}).status_code == 200
    assert client.get("/api/config", headers={"Host": "evil.example:6007"}).status_code == 400  # DNS rebinding


def test_a_run_being_written_is_served_whole(logdir):
    client = Client(DashboardApp(logdir))
    assert len(get_json(client, f"/api/overview?run={RUN}")["checkpoints"]) == 6
    run = I2XRun.load(logdir / RUN)
    rng = np.random.default_rng(5)
    stop, seen, errors = threading.Event(), [], []

    def read():
        while not stop.is_set():
            r = client.get(f"/api/overview?run={RUN}")
            if r.status_code != 200:
                errors.append(r.data)
                continue
            ov = r.get_json()
            seen.append(len(ov["checkpoints"]))
            assert np.array(ov["confidence"]).shape == (3, len(ov["checkpoints"]))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for step in range(6, 10):
            append(run, rng, step, 10)
            run.set_prototypes(run.prototypes, run.assignment(), reference=step)
    finally:
        stop.set()
        reader.join()
    assert not errors and seen == sorted(seen)
    assert len(get_json(client, f"/api/overview?run={RUN}")["checkpoints"]) == 10


def test_the_tensorboard_plugin_in_process(logdir):
    from tensorboard.plugins import base_plugin

    from lightning_i2x_tensorboard import I2XDashboardLoader

    plugin = I2XDashboardLoader().load(base_plugin.TBContext(logdir=str(logdir)))
    assert plugin.plugin_name == "i2x" and plugin.is_active()
    assert plugin.frontend_metadata().es_module_path == "/index.js"
    client = Client(plugin.get_plugin_apps()["/*"])
    assert get_json(client, "/data/plugin/i2x/api/runs")["runs"] == [RUN, "other/i2x"]
    assert len(get_json(client, f"/data/plugin/i2x/api/overview?run={RUN}")["checkpoints"]) == 6
    entry = client.get("/data/plugin/i2x/index.js")
    assert entry.mimetype == "text/javascript" and b"export function render" in entry.data
    page = client.get("/data/plugin/i2x/index.html")
    assert page.headers["Content-Security-Policy"] == CSP and b'src="static/app.js"' in page.data
    empty = I2XDashboardLoader().load(base_plugin.TBContext(logdir=str(logdir / "not_a_run")))
    assert not empty.is_active()


def test_the_entry_point_is_registered_and_imports_nothing_heavy():
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="tensorboard_plugins") if e.name == "i2x"]
    assert ep.value == "lightning_i2x_tensorboard:I2XDashboardLoader"
    code = ("import sys, lightning_i2x_tensorboard; "
            "print(sorted(m for m in ('torch', 'lightning', 'lightning_i2x', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.replace("'", '"')) == []


def test_the_entry_point_leaves_tensorboard_running_when_we_fail(monkeypatch, caplog):
    from tensorboard.plugins import base_plugin

    import lightning_i2x.dashboard as dashboard
    from lightning_i2x_tensorboard import I2XDashboardLoader

    def broken():
        raise RuntimeError("boom")

    monkeypatch.setattr(dashboard, "tensorboard_plugin", broken)
    assert I2XDashboardLoader().load(base_plugin.TBContext(logdir=".")) is None
    assert "boom" in caplog.text


def test_the_tab_refuses_a_tensorboard_older_than_the_oldest_tested(monkeypatch, caplog, logdir):
    from tensorboard import version
    from tensorboard.plugins import base_plugin

    import lightning_i2x_tensorboard as entry

    assert entry._release("2.21.0") == (2, 21, 0) and entry._release("2.22.0a1") == (2, 22, 0) and entry._release("2.3") == (2, 3)
    assert entry._release(version.VERSION) >= entry.OLDEST_TENSORBOARD  # the installed one is supported: the tests above ran on it
    monkeypatch.setattr(version, "VERSION", "2.14.1")
    assert entry.I2XDashboardLoader().load(base_plugin.TBContext(logdir=str(logdir))) is None
    assert "needs TensorBoard >= 2.21" in caplog.text and "2.14.1" in caplog.text and "i2x serve" in caplog.text


def test_the_interactive_report_is_one_file_that_needs_no_network(logdir, tmp_path):
    page = build_interactive_report(logdir / RUN)
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)
    assert "default-src &#x27;none&#x27;" in csp and "connect-src &#x27;none&#x27;" in csp and "unsafe-inline" not in csp
    assert not re.search(r"(src|href)=\"(https?:)?//", page) and '<link' not in page
    data = json.loads(re.search(r'<script type="application/json" id="i2x-data">(.*?)</script>', page, re.S).group(1))
    assert data["static"] and data["left_out"]["images"] == 0
    assert data["responses"]["api/explanation?run=i2x"]["explanation"]["num_intervals"] == 5
    assert "api/class?c=2&run=i2x" in data["responses"]
    assert "api/overview?run=i2x" in data["responses"] and "api/prototype?k=7&run=i2x" in data["responses"]
    assert data["images"]["api/sprite.png?k=0&run=i2x"].startswith("data:image/png;base64,")
    def left_out(max_bytes):
        small = build_interactive_report(logdir / RUN, max_bytes=max_bytes)
        return json.loads(re.search(r'id="i2x-data">(.*?)</script>', small, re.S).group(1))["left_out"]["images"]

    assert left_out(1) == 60  # the overview and the prototypes always; images only up to the cap
    assert 0 < left_out(len(page) * 3 // 4) < 60
    out = tmp_path / "dash.html"
    assert cli(["report", str(logdir / RUN), "--out", str(out), "--interactive"]) == 0 and out.read_text().startswith("<!doctype html>")
    assert cli(["report", str(logdir / "not_a_run"), "--out", str(out), "--interactive"]) == 2


def test_serve_refuses_a_directory_without_runs(tmp_path, capsys):
    assert cli(["serve", str(tmp_path)]) == 2
    assert "no I2X run" in capsys.readouterr().err


def test_serve_binds_loopback_and_says_so_otherwise(logdir, monkeypatch, capsys):
    import werkzeug.serving

    from lightning_i2x.dashboard import _serve

    bound = []

    class Server:
        server_port = 1234

        def serve_forever(self):
            raise KeyboardInterrupt

        def server_close(self):
            pass

    def fake(host, port, app, threaded):
        bound.append((host, app.allowed_hosts))
        return Server()

    monkeypatch.setattr(werkzeug.serving, "make_server", fake)
    _serve.serve(logdir)
    assert bound[-1][0] == "127.0.0.1" and "evil.example" not in bound[-1][1]
    assert "http://127.0.0.1:1234/" in capsys.readouterr().out
    _serve.serve(logdir, host="0.0.0.0")
    assert bound[-1] == ("0.0.0.0", None) and "not only on this machine" in capsys.readouterr().err


# -- a real browser ----------------------------------------------------------------------------------
@contextlib.contextmanager
def serving(app):
    """``app`` on a free loopback port in a thread: yields its base URL, shuts it down on exit."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def chromium(what: str):
    """A headless Chromium (``DevTools``) closed on exit; its ``requests`` and ``console`` stay readable."""
    require_chromium(what)
    b = DevTools(size=(1300, 900))
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def live_server(logdir):
    with serving(DashboardApp(logdir, allowed_hosts={"127.0.0.1", "localhost"})) as base:
        yield base, logdir


def test_the_dashboard_in_headless_chromium(live_server, tmp_path):
    """Moving the slider changes the views, hovering a cell names its prototype, clicking a patch
    opens its probe image, marking writes marks.json, and no request leaves 127.0.0.1."""
    base, logdir = live_server
    shots = DOCS if os.environ.get("I2X_UPDATE_SCREENSHOTS") == "1" else tmp_path
    with chromium("the dashboard test") as b:
        b.goto(base + f"#run={RUN}")
        b.wait_for("document.body.dataset.view === 'overview' && !!document.querySelector('#conf-now td')")
        before = b.eval("document.querySelector('#conf-now').textContent")
        b.eval("(() => { const s = document.querySelector('#ckpt'); s.value = 1; s.dispatchEvent(new Event('input')); })()")
        assert b.eval("document.querySelector('#conf-now').textContent") != before
        assert b.eval("document.querySelector('#ckpt-label').textContent").startswith("checkpoint 1 / 5")
        b.eval("(() => { const s = document.querySelector('#ckpt'); s.value = 5; s.dispatchEvent(new Event('input')); })()")
        b.wait_for("document.querySelector('#view').dataset.explained === '1' && !!document.querySelector('#order')")
        resolved = b.eval("document.querySelectorAll('#order li.resolved').length")
        b.eval("(() => { const s = document.querySelector('#ckpt'); s.value = 0; s.dispatchEvent(new Event('input')); })()")
        assert b.eval("document.querySelectorAll('#order li.resolved').length") == 0  # nothing resolved before interval 0
        b.eval("(() => { const s = document.querySelector('#ckpt'); s.value = 5; s.dispatchEvent(new Event('input')); })()")
        assert b.eval("document.querySelectorAll('#order li.resolved').length") == resolved
        b.screenshot(shots / "dashboard-overview.png")

        b.goto(base + f"#run={RUN}&view=prototype&k=2")
        b.wait_for("document.body.dataset.view === 'prototype' && document.querySelector('#sprite') && document.querySelector('#sprite').complete"
                   " && document.querySelector('#sprite').naturalWidth > 0")
        now = b.eval("document.querySelector('#proto-now').textContent")
        b.eval("(() => { const s = document.querySelector('#ckpt'); s.value = 2; s.dispatchEvent(new Event('input')); })()")
        assert b.eval("document.querySelector('#proto-now').textContent") != now
        b.click(*b.center("#marks button[data-mark='shortcut']"))
        b.wait_for("document.querySelector('#marks').dataset.saved === 'shortcut'")
        assert I2XRun.load(logdir / RUN).marks() == {2: "shortcut"}
        b.screenshot(shots / "dashboard-prototype.png")
        first = b.eval("document.querySelector('#sprite').naturalWidth")
        assert first > 0
        patch = json.loads(Client(DashboardApp(logdir)).get(f"/api/prototype?run={RUN}&k=2").data)["patches"][0]["image"]
        b.click(*b.center("#sprite", fx=0.02))  # the first patch
        b.wait_for(f"document.body.dataset.view === 'image' && location.hash.includes('i={patch}')")

        b.wait_for("!!document.querySelector('#image-canvas')")
        cell = json.loads(Client(DashboardApp(logdir)).get(f"/api/image?run={RUN}&i={patch}").data)["cells"][1][2]
        x, y = b.center("#image-canvas", fx=(2 + 0.5) / 4, fy=(1 + 0.5) / 4)
        b.mouse("mouseMoved", x, y)
        b.wait_for("document.querySelector('#cell-info').textContent.startsWith('cell (1, 2)')")
        assert b.eval("document.querySelector('#cell-info').dataset.prototype") == str(cell)
        assert f"P-{cell}" in b.eval("document.querySelector('#cell-info').textContent")
        t_before = b.eval("document.querySelector('#image-now').textContent")
        b.eval("(() => { const s = document.querySelector('#ckpt'); s.value = 4; s.dispatchEvent(new Event('input')); })()")
        assert b.eval("document.querySelector('#image-now').textContent") != t_before
        assert b.eval("document.querySelector('#image-canvas').dataset.t") == "4"
        b.click(*b.center("#outlines"))
        assert b.eval("document.querySelector('#outlines').checked") is False
        b.click(*b.center("#outlines"))
        b.mouse("mouseMoved", x, y)
        b.screenshot(shots / "dashboard-image.png")
        assert not b.console, b.console
    outside = [u for u in b.requests if not (u.startswith(base) or u.startswith(("data:", "blob:", "about:")))]
    assert b.requests and not outside, outside


def test_the_class_and_pair_pages_in_headless_chromium(logdir, tmp_path):
    """The overview links to the class and pair pages; the slider frames the interval in the grid
    and the graph; clicking an edge's prototype label opens that prototype's page."""
    shots = DOCS if os.environ.get("I2X_UPDATE_SCREENSHOTS") == "1" else tmp_path
    with serving(planted_app(logdir, allowed_hosts={"127.0.0.1"})) as base, chromium("the class page test") as b:
        b.goto(base + f"#run={RUN}")
        b.wait_for("document.querySelector('#view').dataset.explained === '1' && !!document.querySelector('#uncertain [data-pair]')")
        b.click(*b.center("#uncertain [data-pair='0-2']"))
        b.wait_for("document.body.dataset.view === 'pair' && !!document.querySelector('#pair-grid')")
        assert b.eval("document.querySelector('#pair-now').textContent") == "interval 4: none past τ"
        b.eval("(() => { const s = document.querySelector('#ckpt'); s.value = 0; s.dispatchEvent(new Event('input')); })()")
        assert b.eval("document.querySelector('#pair-now').textContent") == "interval 0: P-1 towards c0"
        b.screenshot(shots / "dashboard-pair.png")
        b.goto(base + f"#run={RUN}")
        b.wait_for("document.body.dataset.view === 'overview' && !!document.querySelector('#class-links [data-class]')")
        b.click(*b.center("#class-links [data-class='0']"))
        b.wait_for("document.body.dataset.view === 'class' && !!document.querySelector('#graph')")
        assert b.eval("document.querySelector('#evolution').dataset.interval") == "0"  # the slider is at checkpoint 0
        b.eval("(() => { const s = document.querySelector('#ckpt'); s.value = 3; s.dispatchEvent(new Event('input')); })()")
        assert b.eval("document.querySelector('#evolution').dataset.interval") == "3"
        assert b.eval("document.querySelector('#graph').dataset.interval") == "3"
        assert "no class lost confidence" in b.eval("document.querySelector('#class-now').textContent")
        b.eval("(() => { const s = document.querySelector('#ckpt'); s.value = 0; s.dispatchEvent(new Event('input')); })()")
        assert b.eval("document.querySelector('#class-now').textContent") == "interval 0 (τ 0.500): c2 → c0 by P-1"
        b.screenshot(shots / "dashboard-class.png")
        b.click(*b.center("#graph [data-edge='2-0-0']"))
        b.wait_for("document.body.dataset.view === 'prototype' && location.hash.includes('k=1')")
        assert not b.console, b.console
    assert all(u.startswith((base, "data:", "blob:", "about:")) for u in b.requests), b.requests


def test_two_runs_side_by_side_in_headless_chromium(tmp_path):
    """The header opens the side-by-side page; the second run's slider moves its checkpoint and
    the lists of fixed and broken images follow; a listed image opens in its run."""
    shots = DOCS if os.environ.get("I2X_UPDATE_SCREENSHOTS") == "1" else tmp_path
    app = DashboardApp(repaired_runs(tmp_path / "runs"), allowed_hosts={"127.0.0.1"})
    with serving(app) as base, chromium("the side-by-side test") as b:
        b.goto(base + "#run=before")
        b.wait_for("document.body.dataset.view === 'overview' && !!document.querySelector('#compare-link')")
        b.click(*b.center("#compare-link"))
        b.wait_for("document.querySelector('#view') && document.querySelector('#view').dataset.compared === '1-1'")
        assert b.eval("document.querySelector('#compare-other').value") == "after"
        fixed = "[...document.querySelectorAll('#compare-changes [data-kind=fixed] [data-image]')].map((a) => a.dataset.image).join(',')"
        assert b.eval(fixed) == "0,1,2"
        b.eval("(() => { const s = document.querySelector('#ckpt-other'); s.value = 0; s.dispatchEvent(new Event('input')); })()")
        b.wait_for("document.querySelector('#view').dataset.compared === '1-0'")
        assert b.eval(fixed) == "0,1,2"
        assert b.eval("document.querySelectorAll('#compare-changes [data-kind=broken] [data-image]').length") == 0  # after@0: all right
        b.eval("(() => { const s = document.querySelector('#ckpt'); s.value = 0; s.dispatchEvent(new Event('input')); })()")
        b.wait_for("document.querySelector('#view').dataset.compared === '0-0'")
        assert "0 probe images change class" in b.eval("document.querySelector('#compare-changes').textContent")
        b.eval("(() => { const s = document.querySelector('#ckpt'); s.value = 1; s.dispatchEvent(new Event('input')); })()")
        b.eval("(() => { const s = document.querySelector('#ckpt-other'); s.value = 1; s.dispatchEvent(new Event('input')); })()")
        b.wait_for("document.querySelector('#view').dataset.compared === '1-1'")
        b.screenshot(shots / "dashboard-compare.png")
        b.click(*b.center("#compare-changes [data-kind=broken] [data-image='5']"))
        b.wait_for("document.body.dataset.view === 'image' && location.hash.includes('run=before') && location.hash.includes('i=5')")
        assert not b.console, b.console
    assert all(u.startswith((base, "data:", "blob:", "about:")) for u in b.requests), b.requests


def test_the_interactive_report_opens_offline_in_chromium(logdir, tmp_path):
    out = tmp_path / "dash.html"
    out.write_text(build_interactive_report(logdir / RUN))
    with chromium("the interactive report test") as b:
        b.goto(out.as_uri() + "#view=prototype&k=1")
        b.wait_for("document.body.dataset.view === 'prototype' && document.querySelector('#sprite').naturalWidth > 0")
        b.goto(out.as_uri() + "#view=image&i=3")
        b.wait_for("document.body.dataset.view === 'image' && !!document.querySelector('#image-canvas')")
        b.goto(out.as_uri() + "#view=class&c=1")
        b.wait_for("document.body.dataset.view === 'class' && !!document.querySelector('#evolution') && !!document.querySelector('#graph')")
        rows = json.loads(Client(DashboardApp(logdir)).get(f"/api/class?run={RUN}&c=1").data)["rows"]
        assert b.eval("document.querySelectorAll('#evolution .proto-label').length") == len(rows) > 0
        assert not b.console, b.console
    assert all(u.startswith(("file:", "data:", "blob:", "about:")) for u in b.requests), b.requests
