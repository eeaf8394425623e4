"""The TensorBoard views (lightning_i2x.viz): written by the callback, read back from the event
files and from a real TensorBoard server."""

from __future__ import annotations

import io
import urllib.parse
import urllib.request
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter

from lightning_i2x import I2XCallback, I2XRun
from lightning_i2x import viz as plots
from lightning_i2x import viz as views
from lightning_i2x.analysis import select_prototypes
from lightning_i2x.options import ViewOptions
from lightning_i2x.prototypes import fit_prototypes
from lightning_i2x.viz import drawn_classes, drawn_pairs, log_views

from .browser import require_chromium, screenshot_module
from .conftest import TinyCNN, trainer_kwargs


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _not_blank(rgb: np.ndarray) -> bool:
    """Real content: contrast, and no single colour covering nearly all of it."""
    colours, counts = np.unique(rgb.reshape(-1, 3), axis=0, return_counts=True)
    return rgb.std() > 10 and counts.max() < 0.97 * counts.sum() and len(colours) > 8


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, digits):
    """A 3-epoch fit on digits with the default views drawn at every checkpoint; its log dir,
    callback and event accumulator."""
    tmp = tmp_path_factory.mktemp("views")
    train, probe = digits
    cb = I2XCallback(probe, num_prototypes=8, views=ViewOptions(time_budget=None))
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(**trainer_kwargs(tmp, callbacks=[cb], limit_train_batches=8))
    trainer.fit(TinyCNN(), DataLoader(train, batch_size=64, shuffle=True), DataLoader(probe, batch_size=100))
    logdir = tmp / "lightning_logs" / "version_0"
    acc = EventAccumulator(str(logdir), size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    acc.Reload()
    return logdir, cb, acc, trainer.global_step


def test_every_documented_tag_is_written_with_real_images(fitted):
    logdir, cb, acc, last_step = fitted
    run, expl, options = cb.run, cb.explanation, cb.views
    classes, pairs = drawn_classes(run, expl, options), drawn_pairs(run, expl, options)
    assert len(classes) == 3 and len(pairs) == 2
    expected = {views.TAG_GALLERY, views.TAG_BETA, views.TAG_PAIR.format(slot=1), views.TAG_PAIR.format(slot=2)}
    for slot in (1, 2, 3):
        expected |= {t.format(slot=slot) for t in (views.TAG_EVOLUTION, views.TAG_GRAPH, views.TAG_OVERLAY)}
    tags = acc.Tags()
    assert set(tags["images"]) == expected  # a fixed set of cards, whatever the classes drawn
    for tag in expected:
        event = acc.Images(tag)[-1]
        assert event.step == last_step
        rgb = _png(event.encoded_image_string)
        assert rgb.shape == (event.height, event.width, 3) and event.width >= 150 and event.height >= 90, tag
        assert _not_blank(rgb), tag
    # the images are the figures of the classes and pairs selected, at the configured dpi
    def last(tag):
        return _png(acc.Images(tag)[-1].encoded_image_string)

    np.testing.assert_array_equal(last(views.TAG_BETA), plots.to_rgb(plots.ridge_heatmap(expl, dpi=options.dpi)))
    np.testing.assert_array_equal(last(views.TAG_GALLERY), plots.to_rgb(plots.prototype_gallery(run, select_prototypes(expl, 32), dpi=options.dpi)))
    np.testing.assert_array_equal(last("i2x/class2/evolution"), plots.to_rgb(plots.evolution_grid(expl, classes[1], run=run, dpi=options.dpi)))
    np.testing.assert_array_equal(last("i2x/class3/graph"), plots.to_rgb(plots.checkpoint_graph(expl, classes[2], dpi=options.dpi)))
    np.testing.assert_array_equal(last("i2x/class1/overlay"), plots.to_rgb(plots.saliency_overlays(run, classes[0], dpi=options.dpi)))
    np.testing.assert_array_equal(last("i2x/pair2"), plots.to_rgb(plots.confused_pair(expl, *pairs[1], run=run, dpi=options.dpi)))
    # overlays and the gallery are there from the first checkpoint; interval views from the second
    assert len(acc.Images(views.TAG_GALLERY)) == 3 and len(acc.Images(views.TAG_BETA)) == 2


def test_text_scalars_and_custom_scalars_layout(fitted):
    _, cb, acc, _ = fitted
    run, expl = cb.run, cb.explanation
    tags = acc.Tags()

    def text(tag):
        return acc.Tensors(f"{tag}/text_summary")[-1].tensor_proto.string_val[0].decode()

    assert "Uncertain prototypes" in text(views.TAG_SUMMARY)
    for c, name in enumerate(run.class_names):
        md = text(views.TAG_CLASS_TEXT.format(cls=name))
        assert md.startswith(f"### {name}")
        shared = expl.shared_prototypes(c)
        assert f"- shared: {', '.join(f'P-{k}' for k in shared) or 'none'}" in md
        assert "- edges:" in md and "- uncertain:" in md and "- learning order:" in md
        series = acc.Scalars(views.TAG_CONFIDENCE.format(cls=name))
        assert len(series) == 3 and 0 <= series[-1].value <= 1
        members = run.labels == c
        assert series[-1].value == pytest.approx(run.confidences()[-1][members, c].mean(), rel=1e-5)
    assert len(acc.Scalars(views.TAG_TRUE_CONFIDENCE)) == 3
    assert acc.Scalars(views.TAG_UNCERTAIN)[-1].value == len(expl.uncertain)
    intensity = [t for t in tags["scalars"] if t.startswith("i2x/intensity/P-")]
    assert 1 <= len({t for t in intensity}) and all(len(acc.Scalars(t)) >= 1 for t in intensity)
    layout = layout_pb2.Layout()
    layout.ParseFromString(acc.Tensors("custom_scalars__config__")[-1].tensor_proto.string_val[0])
    charts = {c.title: list(c.multiline.tag) for cat in layout.category for c in cat.chart}
    assert charts["confidence per class"][0] == "i2x/confidence/.*"
    assert charts["intensity of the top prototypes"] == ["i2x/intensity/.*"]
    assert charts["uncertain prototypes"] == [views.TAG_UNCERTAIN]


class _Recorder:
    """A SummaryWriter stand-in that keeps what it is given."""

    def __init__(self):
        self.images, self.texts, self.scalars = {}, {}, {}

    def add_image(self, tag, img, step, dataformats):
        assert dataformats == "HWC" and img.dtype == np.uint8
        self.images[tag] = img

    def add_text(self, tag, text, step):
        self.texts[tag] = text

    def add_scalar(self, tag, value, step):
        self.scalars[tag] = value

    def add_custom_scalars(self, layout):
        self.layout = layout


def test_options_choose_what_is_drawn(fitted):
    _, cb, _, _ = fitted
    run, expl = I2XRun.load(cb.run.path), cb.explanation
    w = _Recorder()
    log_views(w, run, expl, 0, ViewOptions(classes=("d2", 7), max_pairs=1, overlay_samples=0, gallery_patches=0, dpi=30))
    assert set(w.images) == {"i2x/beta", "i2x/class1/evolution", "i2x/class1/graph", "i2x/class2/evolution", "i2x/class2/graph", "i2x/pair1"}
    np.testing.assert_array_equal(w.images["i2x/class2/evolution"], plots.to_rgb(plots.evolution_grid(expl, 7, run=run, dpi=30)))
    assert max(img.shape[1] for img in w.images.values()) < 600  # dpi 30
    w = _Recorder()
    log_views(w, run, expl, 0, ViewOptions(figures=False))
    assert not w.images and len(w.texts) == 11 and "i2x/confidence/d0" in w.scalars
    with pytest.raises(KeyError, match="nope"):
        log_views(_Recorder(), run, expl, 0, ViewOptions(classes=("nope",)))


def test_a_run_without_images_skips_the_image_views_with_a_warning(fitted):
    _, cb, _, _ = fitted
    run = I2XRun.load(cb.run.path)
    run.images = None
    w = _Recorder()
    with pytest.warns(RuntimeWarning, match="no probe images"):
        log_views(w, run, cb.explanation, 0)
    assert views.TAG_BETA in w.images and "i2x/class1/evolution" in w.images
    assert not any(t.endswith(("/overlay", "/gallery")) for t in w.images)


def test_the_time_budget_skips_images_but_not_scalars_and_the_end_of_fit_draws_the_last(tmp_path, digits):
    """A budget no drawing can meet: the first checkpoint draws (nothing measured yet), the next
    ones write scalars and text only, and the end of fit draws the final explanation."""
    train, probe = digits
    cb = I2XCallback(probe, num_prototypes=8, views=ViewOptions(time_budget=1e-9))
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[cb], limit_train_batches=8, max_epochs=4))
    trainer.fit(TinyCNN(), DataLoader(train, batch_size=64, shuffle=True), DataLoader(probe, batch_size=100))
    acc = EventAccumulator(str(tmp_path / "lightning_logs" / "version_0"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    record_steps = [c["global_step"] for c in cb.run.checkpoints]
    assert [e.step for e in acc.Scalars(views.TAG_UNCERTAIN)] == record_steps == [8, 16, 24, 32]
    assert [e.step for e in acc.Images(views.TAG_GALLERY)] == [8, 32]
    assert [e.step for e in acc.Images(views.TAG_BETA)] == [32]  # interval views need two checkpoints
    with pytest.raises(ValueError, match=r"ViewOptions.time_budget must be a fraction in \(0, 1\] or None, got 0"):
        ViewOptions(time_budget=0)


def test_view_arguments_are_validated():
    probe = (np.zeros((2, 1, 8, 8), np.float32), np.zeros(2, np.int64))
    for kw, match in ((dict(max_classes=-1), "ViewOptions.max_classes must be an integer >= 0"),
                      (dict(dpi=5), r"ViewOptions.dpi must be an integer in \[20, 300\], got 5"),
                      (dict(dpi=500), r"ViewOptions.dpi must be an integer in \[20, 300\], got 500"),
                      (dict(classes=[]), "ViewOptions.classes must be a non-empty list"),
                      (dict(gallery_patches=1.5), "ViewOptions.gallery_patches must be an integer >= 0, got 1.5")):
        with pytest.raises(ValueError, match=match):
            ViewOptions(**kw)
    assert ViewOptions(classes="seven").classes == ("seven",)
    cb = I2XCallback(probe, views=ViewOptions(classes=[2, "seven"], figures=False, dpi=72))
    assert cb.views == ViewOptions(figures=False, classes=(2, "seven"), dpi=72)
    assert I2XCallback(probe, views=False).views == ViewOptions(figures=False)
    # the 0.1 names are gone in 0.3, as their warnings promised (CHANGELOG: the migration table)
    for old in ("view_classes", "log_views", "view_dpi", "cam_target", "explain_kwargs", "finetune_kwargs"):
        with pytest.raises(TypeError, match=f"unexpected keyword argument '{old}'"):
            I2XCallback(probe, **{old: None})


def test_a_failing_view_is_warned_and_training_goes_on(tmp_path, digits, monkeypatch):
    import lightning_i2x.callbacks._i2x as callback_module

    monkeypatch.setattr(callback_module, "log_figures", lambda *a, **k: 1 / 0)
    train, probe = digits
    cb = I2XCallback(probe, num_prototypes=4, views=ViewOptions(time_budget=None))
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=2, callbacks=[cb], limit_train_batches=3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TinyCNN(), DataLoader(train, batch_size=64), DataLoader(probe, batch_size=100))
    assert [str(w.message).split(":")[1].strip() for w in caught if "I2XCallback" in str(w.message)] == ["views failed at epoch 0, step 3"]
    assert cb.explanation is not None and cb.explanation.num_intervals == 1
    assert [e["where"] for e in I2XRun.load(cb.run.path).errors] == ["views", "views"]


# -- a real TensorBoard server --------------------------------------------------------------------
def _demo_sized_logdir(path: Path) -> tuple[Path, I2XRun, object]:
    """The demo's shapes without its training: 1000 probe images (real digits, 28 px), 7x7 maps,
    K = 32, 10 classes, 8 checkpoints whose confidences drift towards the labels; every
    checkpoint's views logged as the callback logs them."""
    rng = np.random.default_rng(0)
    d = load_digits()
    images = np.pad(np.kron(d.images[:1000], np.ones((3, 3))), ((0, 0), (2, 2), (2, 2)))[:, None].astype(np.float32)  # 28 px
    labels = d.target[:1000]
    n, t_, m, k = 1000, 8, 10, 32
    run = I2XRun.create(path / "i2x", labels=labels, class_names=[str(c) for c in range(m)], feature_shape=(7, 7),
                        num_prototypes=k, images=images)
    feats = images.reshape(n, 7, 4, 7, 4).transpose(0, 1, 3, 2, 4).reshape(n * 49, 16)
    feats = feats + rng.normal(scale=0.05, size=feats.shape).astype(np.float32)
    protos, assignment, dist = fit_prototypes(feats, k, seed=0, return_distances=True)
    writer = SummaryWriter(str(path))
    onehot = np.eye(m)[labels]
    base_cam = images.reshape(n, 7, 4, 7, 4).mean(axis=(2, 4))
    expl = None
    for t in range(t_):
        logits = (t + 1) * 0.6 * onehot + rng.normal(scale=1.0, size=(n, m))
        conf = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        cams = np.clip(base_cam / base_cam.max() + rng.normal(scale=0.2, size=base_cam.shape), 0, 1)
        index = run.append_checkpoint(cams, conf, epoch=t // 4, global_step=100 * (t + 1))
        run.set_prototypes(protos, assignment, reference=index, distances=dist)
        expl = run.explain()
        log_views(writer, run, expl, 100 * (t + 1))
    writer.close()
    return path, run, expl


@pytest.mark.slow
def test_a_tensorboard_server_serves_the_i2x_views(tmp_path):
    shot = screenshot_module()
    logdir, run, expl = _demo_sized_logdir(tmp_path / "tb")
    size = sum(f.stat().st_size for f in logdir.glob("events.out.tfevents.*"))
    assert size < 8 * 2**20  # the defaults keep a demo-sized event file small
    options = ViewOptions()
    with shot.tensorboard_server(logdir) as base:
        image_tags = shot.i2x_image_tags(base)
        [(run_name, tags)] = image_tags.items()
        assert len(drawn_classes(run, expl, options)) == 3
        assert set(tags) == {"i2x/gallery", "i2x/beta", "i2x/pair1", "i2x/pair2"} | {
            f"i2x/class{n}/{v}" for n in (1, 2, 3) for v in ("evolution", "graph", "overlay")}
        for tag in ("i2x/gallery", "i2x/class1/evolution", "i2x/pair1"):
            q = urllib.parse.urlencode({"run": run_name, "tag": tag, "sample": 0})
            entries = shot.get_json(f"{base}/data/plugin/images/images?{q}")
            assert [e["step"] for e in entries][-1] == 800
            with urllib.request.urlopen(f"{base}/data/plugin/images/individualImage?{entries[-1]['query']}", timeout=10) as r:
                assert _not_blank(_png(r.read())), tag
        text_tags = shot.get_json(f"{base}/data/plugin/text/tags")[run_name]
        assert {"i2x/summary/text_summary"} | {f"i2x/summary/{c}/text_summary" for c in run.class_names} <= set(text_tags)
        q = urllib.parse.urlencode({"run": run_name, "tag": "i2x/summary/3/text_summary"})
        html = shot.get_json(f"{base}/data/plugin/text/text?{q}")[-1]["text"]
        assert "shared:" in html and "learning order" in html
        layout = shot.get_json(f"{base}/data/plugin/custom_scalars/layout")
        assert {c["title"] for cat in layout["category"] for c in cat["chart"]} == {
            "confidence per class", "intensity of the top prototypes", "uncertain prototypes"}
        require_chromium("the dashboard screenshot (the server checks above passed)")
        png = shot.screenshot(shot.dashboard_url(base, "i2x/(gallery|class1)"), tmp_path / "tb.png", (1200, 900), 15000)
        assert _not_blank(_png(png.read_bytes()))
        # the checkpoint graph reads at the card's default width: measure how large the browser draws it
        graph = shot.screenshot(shot.dashboard_url(base, "i2x/class1/graph$"), tmp_path / "graph.png", (1200, 900), 15000)
        scale = _displayed_scale_of_graph(_png(graph.read_bytes()), drawn_classes(run, expl, options)[0], options.dpi)
        smallest_pt = 8.5  # plots.checkpoint_graph's smallest text
        assert smallest_pt / 72 * options.dpi * scale >= 8.0, f"text drawn {smallest_pt / 72 * options.dpi * scale:.1f} px high"


def _displayed_scale_of_graph(screen: np.ndarray, c: int, dpi: int) -> float:
    """Displayed / natural size of the checkpoint graph in a screenshot: the interval nodes T_t are
    discs in class c's colour, one row (0.78 in) apart in the figure; their spacing on screen gives
    the scale the browser drew the image at."""
    from matplotlib.colors import to_rgb
    from scipy import ndimage

    colour = np.array(to_rgb(f"C{c % 10}")) * 255
    near = np.abs(screen[..., :3].astype(float) - colour).sum(axis=-1) < 40
    blobs, count = ndimage.label(near)
    sizes = ndimage.sum(near, blobs, range(1, count + 1))
    centres = ndimage.center_of_mass(near, blobs, [i + 1 for i in np.flatnonzero(sizes >= 40)])
    ys = np.sort([y for y, _ in centres])
    assert ys.size >= 3, f"found {ys.size} interval nodes in the screenshot"
    return float(np.median(np.diff(ys))) / (0.78 * dpi)


def test_a_deferred_sink_hands_the_workers_calls_to_the_replaying_thread_in_order():
    """The background analysis logs through a DeferredSink: nothing reaches a logger from the
    worker's thread (Lightning's loggers are not thread-safe); ``replay`` delivers every call, in
    order, on the thread that calls it, and a second replay delivers nothing twice."""
    import threading

    class Recording:
        def __init__(self):
            self.seen = []

        def add_scalar(self, tag, value, step):
            self.seen.append((tag, value, step, threading.get_ident()))

        def add_text(self, tag, text, step):
            self.seen.append((tag, text, step, threading.get_ident()))

        def add_image(self, tag, image, step, dataformats):
            self.seen.append((tag, image.shape, step, threading.get_ident()))

    target = Recording()
    sink = views.DeferredSink(views.LogSink([target]))
    assert sink and sink.takes_images

    def worker():
        sink.scalars({"i2x/a": 1.0, "i2x/b": 2.0}, 3)
        sink.text("i2x/summary", "text", 3)
        sink.image("i2x/figure", np.zeros((2, 2, 3), np.uint8), 3)

    def worker_steps():
        worker()
        sink.group()

    thread = threading.Thread(target=worker_steps)
    thread.start()
    thread.join()
    assert target.seen == []
    failures = []
    assert sink.replay(failures.append) == 3 and failures == []
    assert [s[:3] for s in target.seen] == [("i2x/a", 1.0, 3), ("i2x/b", 2.0, 3), ("i2x/summary", "text", 3), ("i2x/figure", (2, 2, 3), 3)]
    assert {s[3] for s in target.seen} == {threading.get_ident()}
    assert sink.replay(failures.append) == 0 and len(target.seen) == 4
    sink.scalars({"i2x/open": 1.0}, 4)  # a step still open (the worker is in it) waits for its group()
    assert sink.replay(failures.append) == 0 and len(target.seen) == 4
    sink.group()
    assert sink.replay(failures.append) == 1 and target.seen[-1][:3] == ("i2x/open", 1.0, 4)


def test_overlay_captions_name_the_runs_saliency_method(fitted):
    """The overlay says GradCAM only when the maps are GradCAM's: an iGOS++ run's are named iGOS++."""
    from types import SimpleNamespace

    from lightning_i2x.saliency import saliency_label
    from lightning_i2x.viz._figures import run_saliency_label

    run = fitted[1].run
    assert run.config.cam == "gradcam"
    assert "GradCAM (T" in plots.saliency_overlays(run, 0)._suptitle.get_text()
    assert run_saliency_label(SimpleNamespace(config=SimpleNamespace(cam="igos++"))) == "iGOS++"
    assert run_saliency_label(SimpleNamespace(config=None)) == "saliency"
    assert [saliency_label(n) for n in ("igos", "gradcam++", "hirescam", "no-such")] == ["I-GOS", "GradCAM++", "HiResCAM", "saliency"]
