"""Morpho-MNIST measures and perturbations against drawn shapes of known size and the published
values of MNIST training image 0, and linear NOTEARS against a planted DAG."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("skimage")

from lightning_i2x.twin import (  # noqa: E402
    MORPHO_NAMES,
    morpho_measures,
    notears_linear,
    set_slant,
    set_thickness,
    shear,
    structural_hamming_distance,
    thicken,
    thin,
)


def bar(thickness: int = 3, height: int = 20) -> np.ndarray:
    img = np.zeros((28, 28))
    left = 14 - thickness // 2
    img[4:4 + height, left:left + thickness] = 1.0
    return img


def rel(a, b):
    return abs(a - b) / abs(b)


@pytest.mark.parametrize("skeleton", ["thin", "medial_axis"])
def test_bar_thickness_and_rectangle_extent(skeleton):
    for t in (2, 3, 4):
        m = morpho_measures(bar(t), skeleton=skeleton)
        assert rel(m["thickness"][0], t) < 0.05, (t, m["thickness"])
        assert abs(m["slant"][0]) < 0.01
    rect = np.zeros((28, 28))
    rect[6:20, 7:19] = 1.0  # 12 wide, 14 high
    m = morpho_measures(rect, skeleton=skeleton)
    assert rel(m["width"][0], 12) < 0.05 and rel(m["height"][0], 14) < 0.05, m
    assert rel(m["area"][0], 12 * 14) < 0.05


def test_sheared_bar_has_the_slant_it_was_sheared_by():
    for angle in (-0.35, 0.2, 0.4):
        m = morpho_measures(shear(bar(3), angle))
        assert abs(m["slant"][0] - angle) < 0.05 * abs(angle), (angle, m["slant"])


def test_mnist_train_image_0_near_the_published_values(local_data_dir):
    from demo_data import load_mnist

    x = load_mnist(True, local_data_dir).tensors[0][:1, 0].numpy() * 0.5 + 0.5
    published = {"area": 107.3, "length": 50.3, "thickness": 2.46, "slant": 0.231, "width": 14.5, "height": 19.9}
    m = morpho_measures(x, skeleton="medial_axis")  # the paper's skeleton
    for k, v in published.items():
        assert rel(m[k][0], v) < 0.10, (k, m[k][0], v)
    fast = morpho_measures(x)  # the thinning: same values but the length (shorter ends)
    for k in ("area", "thickness", "slant", "width", "height"):
        assert rel(fast[k][0], published[k]) < 0.10, (k, fast[k][0])


def test_perturbations_move_the_measures_as_named(local_data_dir):
    from demo_data import load_mnist

    x = load_mnist(True, local_data_dir).tensors[0][:12, 0].numpy() * 0.5 + 0.5
    base = morpho_measures(x)
    assert (morpho_measures(thicken(x))["thickness"] > base["thickness"] + 0.5).all()
    assert (morpho_measures(thin(x))["thickness"] < base["thickness"] - 0.3).all()
    upright = set_slant(x, 0.0)
    for angle in (-0.3, 0.25):
        moved = morpho_measures(shear(upright, angle))["slant"]
        assert np.abs(moved - angle).max() < 0.03, moved
    target = np.linspace(2.0, 3.5, len(x))
    got = morpho_measures(set_thickness(x, target))["thickness"]
    assert np.abs(got - target).max() < 0.3, got - target


def test_batched_shapes_and_bad_input():
    imgs = np.stack([bar(2), bar(3), np.zeros((28, 28))])[:, None]
    m = morpho_measures(imgs)
    assert set(m) == set(MORPHO_NAMES) and all(v.shape == (3,) for v in m.values())
    assert m["area"][2] == 0 and np.isnan(m["thickness"][2])
    with pytest.raises(ValueError, match="grey images"):
        morpho_measures(np.zeros((2, 3, 28, 28)))
    with pytest.raises(ValueError, match="skeleton"):
        morpho_measures(imgs, skeleton="nope")
    with pytest.raises(ValueError, match="amount"):
        thin(imgs, amount=1.5)


def test_notears_recovers_a_planted_dag():
    rng = np.random.default_rng(0)
    d, n = 6, 1000
    truth = np.zeros((d, d))
    for i, j, w in [(0, 1, 1.5), (0, 2, -1.0), (1, 3, 1.2), (2, 3, 0.8), (3, 4, -1.5), (1, 5, 1.0)]:
        truth[i, j] = w
    x = np.zeros((n, d))
    for j in range(d):  # columns in topological order
        x[:, j] = x @ truth[:, j] + rng.normal(size=n)
    w = notears_linear(x)
    assert structural_hamming_distance(w, truth) == 0, np.round(w, 2)
    assert np.allclose(w[truth != 0], truth[truth != 0], atol=0.15)
    forbidden = np.zeros((d, d), bool)
    forbidden[3, 4] = True
    assert notears_linear(x, forbidden=forbidden)[3, 4] == 0


def test_structural_hamming_distance_counts_a_reversal_once():
    a = np.array([[0, 1, 0], [0, 0, 1], [0, 0, 0]])
    assert structural_hamming_distance(a, a) == 0
    assert structural_hamming_distance(a, a.T * 0 + np.array([[0, 0, 0], [1, 0, 1], [0, 0, 0]])) == 1
    assert structural_hamming_distance(a, np.zeros((3, 3))) == 2
