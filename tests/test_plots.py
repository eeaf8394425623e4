"""The figures (lightning_i2x.viz) on planted explanations, and the patches behind the gallery."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle

from lightning_i2x import I2XRun, I2XRunError
from lightning_i2x import viz as plots
from lightning_i2x.analysis import Explanation, LearningStep, UncertainPrototype, salient_mask
from lightning_i2x.prototypes import Prototypes, fit_prototypes
from lightning_i2x.viz import _figures, display_images, extract_patch, nearest_locations, patch_box, prototype_patches

NAMES = ["zero", "one", "two"]


def _planted() -> Explanation:
    """3 intervals, 4 prototypes, 3 classes; tau = 1 everywhere.

    class 0: P-0 raised it at T0 taking from class 2 and lowered it at T1 giving to class 1;
    P-1 raised it at T2 taking from class 1; P-2 flips between classes 0 and 1 (uncertain)."""
    beta = np.zeros((3, 4, 3))
    beta[0, 0] = [3.0, 0.2, -2.0]
    beta[1, 0] = [-2.5, 2.0, 0.1]
    beta[2, 1] = [2.0, -3.0, 0.0]
    beta[0, 2] = [1.5, -1.5, 0.0]
    beta[1, 2] = [-1.5, 1.5, 0.0]
    beta[2, 2] = [1.6, -1.6, 0.0]
    labels = np.repeat(np.arange(3), 4)
    presence = np.zeros((12, 4), bool)
    presence[labels == 0, 3] = True  # P-3 shared by class 0
    params = {"shared_frac": 0.8, "specialised_frac": 0.5, "min_group_members": 3, "min_flips": 2}
    return Explanation(beta, np.ones(3), np.full((3, 12), -1), presence, labels, NAMES, params, None,
                       [UncertainPrototype(2, (0, 1), 2, 3.1)], [LearningStep((0, 2), 0), LearningStep((0, 1), None)])


def _cell_rgb(fig, ax, row: int, col: int) -> np.ndarray:
    rgb = plots.to_rgb(fig)
    x, y = ax.transData.transform((col - 0.35, row + 0.3))  # off centre: the centre may hold a label
    return rgb[rgb.shape[0] - int(round(y)), int(round(x))].astype(int)


def _heat_axes(fig):
    return next(ax for ax in fig.axes if any(isinstance(im, AxesImage) and im.get_cmap().name == _figures.CMAP for im in ax.images))


def test_evolution_grid_colours_follow_the_sign_of_beta_and_name_the_competitor():
    expl = _planted()
    fig = expl.plot_evolution("zero", dpi=50)
    ax = _heat_axes(fig)
    rows = [int(t.get_text().split()[0][2:]) for t in ax.get_yticklabels()]
    assert rows[0] == 3 and set(rows) == {0, 1, 2, 3}  # the shared prototype first, then the ones that moved class 0
    assert ax.get_yticklabels()[0].get_text() == "P-3 shared"
    for r, k in enumerate(rows):
        for t in range(3):
            v = expl.beta[t, k, 0]
            red, _, blue = _cell_rgb(fig, ax, r, t)
            if v > 0.5:
                assert blue > red + 40, (k, t, red, blue)
            elif v < -0.5:
                assert red > blue + 40, (k, t, red, blue)
    labels = {(round(tx.get_position()[1]), round(tx.get_position()[0])): tx.get_text() for tx in ax.texts}
    assert labels[(rows.index(0), 0)] == "two"  # raised at T0, taken from class two
    assert labels[(rows.index(0), 1)] == "one"  # lowered at T1, given to class one
    assert labels[(rows.index(1), 2)] == "one"
    assert (rows.index(3), 0) not in labels  # not significant: no label


def test_checkpoint_graph_labels_edges_with_their_prototypes():
    expl = _planted()
    assert expl.edges(0) == [(0, 1, 0, [2]), (0, 2, 0, [0]), (2, 1, 0, [1, 2])]
    fig = expl.plot_graph(0, dpi=50)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert {"T0", "T1", "T2", "P-0", "P-2", "P-1, P-2", "one", "two"} <= set(texts)
    assert any("lost confidence to it" in t for t in texts)
    # narrow and large enough to read at TensorBoard's card width (about 350 px): every text >= 8.5 pt
    assert fig.get_size_inches()[0] <= _figures.GRAPH_WIDTH_IN
    assert min(t.get_fontsize() for t in fig.axes[0].texts) >= 8.5
    assert plots.to_rgb(fig).std() > 10


def test_confused_pair_puts_uncertain_prototypes_first_and_outlines_them():
    expl = _planted()
    fig = expl.plot_pair(0, 1, dpi=50)
    ax = _heat_axes(fig)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0] == "P-2 uncertain, 2 flips" and {"P-0", "P-1"} <= set(labels)
    assert sum(isinstance(p, Rectangle) for p in ax.patches) == 1
    red, _, blue = _cell_rgb(fig, ax, 0, 1)  # P-2 at T1 favours class one: red
    assert red > blue + 40


def test_figures_render_at_their_size_and_say_why_when_empty():
    expl = _planted()
    for fig in (expl.plot_beta(dpi=40), expl.plot_evolution(1, dpi=40), expl.plot_graph(2, dpi=40), expl.plot_pair(0, 2, dpi=40)):
        rgb = plots.to_rgb(fig)
        w, h = fig.get_size_inches() * 40
        assert abs(rgb.shape[0] - h) < 1 and abs(rgb.shape[1] - w) < 1 and rgb.shape[2] == 3 and rgb.std() > 10
        assert plots.to_png(fig)[:8] == b"\x89PNG\r\n\x1a\n"
    empty = Explanation(np.zeros((0, 4, 3)), np.zeros(0), np.zeros((0, 12), int), np.zeros((12, 4), bool),
                        np.repeat(np.arange(3), 4), NAMES, _planted().params)
    for fig in (empty.plot_beta(), empty.plot_evolution(0), empty.plot_graph(0), empty.plot_pair(0, 1)):
        assert "needs two checkpoints" in fig.axes[0].texts[0].get_text()
    flat = Explanation(np.zeros((3, 4, 3)), np.ones(3), np.full((3, 12), -1), np.zeros((12, 4), bool),
                       np.repeat(np.arange(3), 4), NAMES, _planted().params)
    assert "no prototype separated" in flat.plot_pair(1, 2).axes[0].texts[0].get_text()
    assert "no prototype moved it" in flat.plot_evolution(1).axes[0].texts[0].get_text()
    assert any("no class lost confidence" in t.get_text() for t in flat.plot_graph(1).axes[0].texts)


def test_class_markdown_holds_the_class_findings():
    md = _planted().class_markdown("zero")
    assert md.startswith("### zero")
    assert "- shared: P-3" in md
    assert "- edges: one (P-2), two (P-0) -> T0; one (P-1, P-2) -> T2" in md
    assert "- uncertain: P-2 (zero <-> one, 2 flips)" in md
    assert "zero/two @T0" in md and "zero/one unresolved" in md


# -- patches ----------------------------------------------------------------------------------------
def test_patch_box_covers_the_cell_with_context():
    assert patch_box(0, 0, (7, 7), (28, 28), context=1.0) == (-4, -4, 12, 12)
    assert patch_box(3, 6, (7, 7), (28, 28), context=0.0) == (12, 24, 4, 4)
    image = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
    crop = extract_patch(image, (-1, 2, 3, 3))
    assert crop[0].sum() == 0 and crop[1:, :2, 0].tolist() == [[2, 3], [6, 7]] and crop[1:, 2].sum() == 0


def test_fit_prototypes_returns_squared_distances_to_the_assigned_centroid():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 12)).astype(np.float32) + rng.integers(0, 4, 600)[:, None] * 3
    protos, assignment, dist = fit_prototypes(x, 5, n_components=6, seed=0, return_distances=True)
    y = protos.project(x)
    brute = ((y - protos.centroids[assignment]) ** 2).sum(1)
    np.testing.assert_allclose(dist, brute, rtol=1e-4, atol=1e-3)
    assert (((y[:, None] - protos.centroids[None]) ** 2).sum(-1).argmin(1) == assignment).all()


def _tiny_run(tmp_path, with_distances=True) -> tuple[I2XRun, np.ndarray]:
    rng = np.random.default_rng(1)
    n, h, w, k = 12, 4, 4, 3
    images = rng.normal(size=(n, 1, 16, 16)).astype(np.float32)
    run = I2XRun.create(tmp_path / "run", labels=np.arange(n) % 3, class_names=NAMES, feature_shape=(h, w), num_prototypes=k, images=images)
    run.append_checkpoint(rng.random((n, h, w)), np.full((n, 3), 1 / 3), epoch=0, global_step=1)
    assignment = rng.integers(0, k, (n, h, w))
    dist = rng.random((n, h, w)).astype(np.float32)
    protos = Prototypes(np.eye(2, dtype=np.float32), np.zeros(2, np.float32), np.zeros((k, 2), np.float32))
    run.set_prototypes(protos, assignment, reference=0, distances=dist if with_distances else None)
    return I2XRun.load(run.path), dist


def test_gallery_patches_are_the_nearest_locations_one_per_image(tmp_path):
    run, dist = _tiny_run(tmp_path)
    np.testing.assert_array_equal(run.distances(), dist)
    a = run.assignment()
    display = display_images(run.images)
    items = prototype_patches(run, n=5, context=0.5)
    for k in range(3):
        # brute force: each image's nearest location of prototype k, then the images by that distance
        best = []
        for s in range(a.shape[0]):
            cells = [(float(dist[s, i, j]), s, i, j) for i in range(4) for j in range(4) if a[s, i, j] == k]
            if cells:
                best.append(min(cells))
        expected = [(s, i, j) for _, s, i, j in sorted(best)[:5]]
        patches, locs = items[k]
        assert locs == expected
        for patch, (s, i, j) in zip(patches, locs):
            top, left, ph, pw = patch_box(i, j, (4, 4), (16, 16), 0.5)
            assert (ph, pw) == (8, 8)
            padded = np.pad(display[s], ((8, 8), (8, 8), (0, 0)))
            np.testing.assert_array_equal(patch, padded[top + 8 : top + 8 + ph, left + 8 : left + 8 + pw])


def test_runs_without_distances_load_and_rank_by_saliency(tmp_path):
    run, _ = _tiny_run(tmp_path, with_distances=False)
    assert run.distances() is None
    cams = run.cams()[0]
    a = run.assignment()
    locs = nearest_locations(a, None, 1, 3, saliency=cams)
    sal = [cams[s, i, j] for s, i, j in locs]
    assert sal == sorted(sal, reverse=True) and all(a[s, i, j] == 1 for s, i, j in locs)
    assert len({s for s, _, _ in locs}) == len(locs)
    assert plots.to_rgb(run.plot_gallery(n=3, dpi=40)).std() > 10


def test_damaged_distances_are_refused(tmp_path):
    run, _ = _tiny_run(tmp_path)
    f = run.path / run.manifest["prototypes"]["file"]
    with np.load(f) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["distances"] = arrays["distances"][:, :2]
    np.savez(f, **arrays)
    with pytest.raises(I2XRunError, match="distances"):
        I2XRun.load(run.path)


def test_overlays_outline_the_salient_prototypes(tmp_path):
    run, _ = _tiny_run(tmp_path)
    fig = run.plot_overlays("one", samples=2, top=2, dpi=40)
    axes = [ax for ax in fig.axes if ax.images]
    assert len(axes) == 2
    cams, a = run.cams()[0], run.assignment()
    for ax, s in zip(axes, np.flatnonzero(run.labels == 1)[:2]):
        named = {t.get_text() for t in ax.texts}
        hot = salient_mask(cams[s][None])[0].reshape(cams[s].shape)  # the one definition of "salient"
        present = np.unique(a[s][hot])
        means = sorted(((cams[s][a[s] == k].mean(), k) for k in present), reverse=True)[:2]
        assert named == {f"P-{k}" for _, k in means}
        assert len(ax.collections) == len(named)
    assert plots.to_rgb(fig).std() > 10
    run.images = None
    assert "no probe images" in run.plot_overlays(0).axes[0].texts[0].get_text()


def test_confusion_matrix_writes_every_count_in_its_cell_outside_pyplot():
    import matplotlib
    import matplotlib.pyplot as plt

    backend, open_before = matplotlib.get_backend(), plt.get_fignums()
    cm = np.array([[50, 2, 0], [7, 40, 1], [0, 0, 33]])
    fig = plots.confusion_matrix(cm, ["a", "b", "c"], "before")
    ax = fig.axes[0]
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): int(t.get_text()) for t in ax.texts}
    assert cells == {(i, j): int(cm[i, j]) for i in range(3) for j in range(3)}
    assert plots.to_rgb(fig).std() > 10
    # the user's pyplot state is untouched: no figure registered, the backend as it was
    assert plt.get_fignums() == open_before and matplotlib.get_backend() == backend
