"""The shortcut-suspect rule on planted arrays: a relied-on prototype fixed in the corners is
flagged; relied-on object parts that move, and ignored corner background, are not."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_i2x import Reliance
from lightning_i2x.analysis import prototype_geometry, suspect_prototypes

K = 4


def reliance(values):
    v = np.asarray(values, dtype=float)
    z = np.zeros((K, 2))
    return Reliance(drop=v, random_drop=np.zeros(K), reliance=v, count=np.full(K, 50), class_drop=z, class_random_drop=z,
                    class_count=np.full((K, 2), 25), area=np.ones(K))


def layout(n=50, seed=0):
    """Prototype 0: one corner cell per image (a swatch); 1: a 2x2 object part at a random place
    inside the map; 2: background elsewhere on the border; 3: the rest."""
    rng = np.random.default_rng(seed)
    a = np.full((n, 7, 7), 3)
    a[:, 0, 1:6] = 2
    a[:, 6, 1:6] = 2
    for i in range(n):
        r, c = rng.integers(1, 5, size=2)
        a[i, r : r + 2, c : c + 2] = 1
        a[i, [0, 0, 6, 6][i % 4], [0, 6, 0, 6][i % 4]] = 0
    return a


def intensities(values, n=50):
    return np.broadcast_to(np.asarray(values, float), (2, n, K)).copy()


def test_geometry():
    geo = prototype_geometry(layout(), K)
    assert geo["concentration"][0] == 1.0 and geo["border"][0] == 1.0
    assert geo["concentration"][1] < 0.5 and geo["border"][1] == 0.0
    assert geo["locations"][0] == 50


def test_planted_shortcut_is_flagged():
    a = layout()
    sus = suspect_prototypes(reliance([0.2, 0.3, 0.0, 0.01]), a, np.arange(50) % 2, intensities=intensities([0.9, 0.8, 0.1, 0.2]))
    assert sus == [0]


def test_planted_clean_case_flags_nothing():
    a = layout()
    # the corner prototype is background the model ignores: no reliance, not salient
    sus = suspect_prototypes(reliance([0.0, 0.3, 0.0, 0.05]), a, np.arange(50) % 2, intensities=intensities([0.1, 0.9, 0.1, 0.5]))
    assert sus == []
    # relied on but not salient: still not flagged (GradCAM does not point at it)
    assert suspect_prototypes(reliance([0.2, 0.3, 0.0, 0.0]), a, intensities=intensities([0.05, 0.9, 0.1, 0.5])) == []
    # without intensities the rule rests on reliance and position only
    assert suspect_prototypes(reliance([0.2, 0.3, 0.0, 0.0]), a) == [0]


def test_bad_input():
    a = layout()
    with pytest.raises(ValueError, match="assignment must be"):
        suspect_prototypes(reliance([0] * K), a[0])
    with pytest.raises(ValueError, match="intensities must be"):
        suspect_prototypes(reliance([0] * K), a, intensities=np.zeros((2, 5, K)))
    with pytest.raises(ValueError, match="labels"):
        suspect_prototypes(reliance([0] * K), a, np.zeros(3))
    with pytest.raises(ValueError, match="prototypes"):
        suspect_prototypes(reliance([0] * K), a, num_prototypes=8)
