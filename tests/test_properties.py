"""Property tests of the I2X analysis steps and of ``explain`` on small random inputs.

Shapes are drawn small (T checkpoints 1..6, N samples 1..40, K prototypes 1..6, M classes 1..4,
L locations 1..9); the values include NaN and inf, constant maps, ties, one class, one prototype,
one or two checkpoints, and prototypes that no sample holds. Hypothesis draws the shapes and the
kind of data, NumPy (seeded by Hypothesis) fills the arrays, so an example stays cheap.
"""

from __future__ import annotations

import json
import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightning_i2x import analysis, explain

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VALUE_KINDS = ("uniform", "normal", "ties", "constant_per_sample", "constant", "zeros")
SCALES = (1e-3, 1.0, 1e3, 1e6)
NAN_FRACS = (0.0, 0.0, 0.05, 0.3, 1.0)
INF_FRACS = (0.0, 0.0, 0.05, 0.3)


# -- data ---------------------------------------------------------------------------------------
def _values(rng: np.random.Generator, shape: tuple, kind: str, scale: float) -> np.ndarray:
    """Finite values of one kind: the last axis is 'one sample' for constant_per_sample."""
    if kind == "uniform":
        return scale * rng.random(shape)
    if kind == "normal":
        return rng.normal(scale=scale, size=shape)
    if kind == "ties":
        return rng.integers(-2, 3, shape).astype(np.float64) * scale
    if kind == "constant_per_sample":
        return np.repeat(rng.normal(scale=scale, size=shape[:-1] + (1,)), shape[-1], axis=-1)
    if kind == "constant":
        return np.full(shape, rng.normal(scale=scale))
    return np.zeros(shape)


def _sprinkle(rng: np.random.Generator, v: np.ndarray, nan_frac: float, inf_frac: float) -> np.ndarray:
    """Replace a fraction of the entries by NaN and another by +-inf."""
    v = np.array(v, dtype=np.float64)
    u = rng.random(v.shape)
    v[u < nan_frac] = np.nan
    infs = (u >= nan_frac) & (u < nan_frac + inf_frac)
    v[infs] = rng.choice([np.inf, -np.inf], size=int(infs.sum()))
    return v


def _assignment(rng: np.random.Generator, n: int, length: int, k: int, mode: str) -> np.ndarray:
    a = rng.integers(0, k, (n, length))
    if mode == "one_absent" and k > 1:  # prototype k0 held by no location of any sample
        k0 = int(rng.integers(k))
        a[a == k0] = (k0 + 1) % k
    elif mode == "single":  # every location is one prototype, all others absent everywhere
        a[:] = rng.integers(k)
    elif mode == "per_sample":  # one prototype per sample
        a[:] = rng.integers(0, k, (n, 1))
    return a


@st.composite
def cams_cases(draw):
    """(cams (T, N, L) or (N, L), assignment (N, L), K)."""
    t, n, k, length = draw(st.integers(1, 6)), draw(st.integers(1, 40)), draw(st.integers(1, 6)), draw(st.integers(1, 9))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    lead = draw(st.sampled_from([(t,), (), (2, t)]))
    cams = _values(rng, lead + (n, length), draw(st.sampled_from(VALUE_KINDS)), draw(st.sampled_from(SCALES)))
    cams = _sprinkle(rng, cams, draw(st.sampled_from(NAN_FRACS)), draw(st.sampled_from(INF_FRACS)))
    a = _assignment(rng, n, length, k, draw(st.sampled_from(["random", "one_absent", "single", "per_sample"])))
    return cams, a, k


@st.composite
def delta_cases(draw):
    """Finite ridge inputs dP (N, K), dY (N, M), N >= 0, with constant and duplicated columns."""
    n, k, m = draw(st.integers(0, 40)), draw(st.integers(1, 6)), draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1e-2, 1.0, 10.0]))
    x = _values(rng, (n, k), draw(st.sampled_from(VALUE_KINDS)), scale)
    y = _values(rng, (n, m), draw(st.sampled_from(VALUE_KINDS)), scale)
    if k > 1 and draw(st.booleans()):
        x[:, -1] = x[:, 0]  # collinear columns
    if draw(st.booleans()):
        x[:, int(rng.integers(k))] = 0.0  # a prototype absent everywhere: its change is 0
    return x, y


@st.composite
def beta_cases(draw):
    """beta (T-1, K, M) and a threshold choice."""
    t, k, m = draw(st.integers(1, 6)), draw(st.integers(1, 6)), draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    beta = _values(rng, (t - 1, k, m), draw(st.sampled_from(VALUE_KINDS)), draw(st.sampled_from([1e-3, 1.0, 1e3])))
    tau = draw(st.one_of(st.just("auto"), st.floats(0.0, 2.0)))
    return beta, tau, draw(st.one_of(st.just(0.0), st.floats(1e-3, 3.0)))


@st.composite
def explain_cases(draw):
    """Recorded arrays for ``explain`` plus its parameters."""
    t, n, k, m = draw(st.integers(1, 6)), draw(st.integers(1, 40)), draw(st.integers(1, 6)), draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    planted = draw(st.booleans())
    if planted:  # confidence changes driven by the intensity changes, with signs that flip
        dp_true = rng.normal(size=(t - 1, n, k))
        w = rng.normal(size=(t - 1, k, m)) * rng.choice([-1.0, 1.0], size=(t - 1, 1, 1))
        p = np.concatenate([np.zeros((1, n, k)), np.cumsum(dp_true, axis=0)])
        y_planted = np.concatenate([np.zeros((1, n, m)), np.cumsum(dp_true @ w, axis=0)])
    else:
        p = _values(rng, (t, n, k), draw(st.sampled_from(VALUE_KINDS)), draw(st.sampled_from([1e-3, 1.0, 1e3])))
    absent = rng.random((n, k)) < draw(st.sampled_from([0.0, 0.0, 0.3, 0.8]))
    absence = draw(st.sampled_from(["random", "random", "one_everywhere", "all"]))
    if absence == "one_everywhere":
        absent[:, int(rng.integers(k))] = True
    elif absence == "all":
        absent[:] = True
    p[:, absent] = np.nan  # the assignment is fixed, so absence is the same at every checkpoint
    p = _sprinkle(rng, p, draw(st.sampled_from([0.0, 0.05])), draw(st.sampled_from([0.0, 0.05])))
    if planted:
        y = y_planted
    elif draw(st.booleans()):
        logits = rng.normal(scale=draw(st.sampled_from([0.1, 1.0, 5.0])), size=(t, n, m))
        y = np.exp(logits - logits.max(axis=-1, keepdims=True))
        y /= y.sum(axis=-1, keepdims=True)
    else:
        y = _values(rng, (t, n, m), draw(st.sampled_from(VALUE_KINDS)), 1.0)
    y = _sprinkle(rng, y, draw(st.sampled_from([0.0, 0.0, 0.05, 1.0])), draw(st.sampled_from([0.0, 0.05])))
    labels = rng.integers(0, m, n)
    presence = (rng.random((n, k)) < draw(st.sampled_from([0.0, 0.5, 0.9, 1.0]))) & ~absent
    params = {
        "ridge_lambda": draw(st.sampled_from([0.1, 1.0, 10.0])),
        "tau": draw(st.one_of(st.just("auto"), st.floats(0.0, 1.0))),
        "tau_scale": draw(st.sampled_from([0.0, 0.5, 1.0, 2.0])),
        "min_flips": draw(st.integers(1, 3)),
        "shared_frac": draw(st.sampled_from([0.2, 0.5, 0.8, 1.0])),
        "specialised_frac": draw(st.sampled_from([0.2, 0.5, 1.0])),
        "min_cluster_size": draw(st.sampled_from([None, 2, 3, 5])),
    }
    if draw(st.booleans()):
        params["class_names"] = [f"class {c}" for c in range(m)]
    return p, y, labels, presence, params


# -- Step 3: intensities ------------------------------------------------------------------------
@FAST
@given(cams_cases())
def test_intensity_is_nan_exactly_where_absent_and_a_mean_of_the_clean_saliency(case):
    cams, a, k = case
    n, length = a.shape
    out = analysis.prototype_intensity(cams, a, k)
    assert out.shape == cams.shape[:-2] + (n, k)
    absent = analysis.prototype_counts(a, k) == 0
    assert np.array_equal(np.isnan(out), np.broadcast_to(absent, out.shape))
    assert not np.isinf(out).any()
    clean = np.where(np.isfinite(cams), cams, 0.0).reshape(-1, n, length)
    rows = out.reshape(-1, n, k)
    for r in range(rows.shape[0]):
        for i in range(n):
            sample_lo, sample_hi = clean[r, i].min(), clean[r, i].max()
            for kk in np.flatnonzero(~absent[i]):
                vals = clean[r, i, a[i] == kk]
                tol = 1e-12 * max(1.0, abs(vals).max())
                got = rows[r, i, kk]
                assert vals.min() - tol <= got <= vals.max() + tol
                assert sample_lo - tol <= got <= sample_hi + tol
                assert math.isclose(got, vals.mean(), rel_tol=1e-9, abs_tol=tol)


@FAST
@given(st.integers(1, 6), st.integers(1, 40), st.integers(1, 6), st.integers(1, 9), st.floats(-1e6, 1e6), st.integers(0, 2**32 - 1))
def test_intensity_of_a_constant_map_is_the_constant(t, n, k, length, c, seed):
    a = _assignment(np.random.default_rng(seed), n, length, k, "random")
    out = analysis.prototype_intensity(np.full((t, n, length), c), a, k)
    present = analysis.prototype_counts(a, k) > 0
    np.testing.assert_allclose(out[:, present], c, rtol=1e-12, atol=1e-300)
    assert np.isnan(out[:, ~present]).all()


def test_intensity_of_non_finite_saliency_is_zero_not_nan():
    cams = np.array([[[np.nan, np.inf, -np.inf, 2.0]]])
    out = analysis.prototype_intensity(cams, np.array([[0, 0, 1, 1]]), 3)
    np.testing.assert_array_equal(out[0, 0, :2], [0.0, 1.0])
    assert np.isnan(out[0, 0, 2])


# -- Step 4 inputs: interval deltas ---------------------------------------------------------------
@FAST
@given(cams_cases(), st.integers(1, 4), st.sampled_from(NAN_FRACS), st.sampled_from(INF_FRACS), st.integers(0, 2**32 - 1))
def test_interval_deltas_are_finite_and_zero_where_a_value_is_missing(case, m, nan_frac, inf_frac, seed):
    cams, a, k = case
    if cams.ndim != 3:
        cams = cams.reshape(-1, *cams.shape[-2:])
    rng = np.random.default_rng(seed)
    p = analysis.prototype_intensity(cams, a, k)
    y = _sprinkle(rng, rng.random(p.shape[:2] + (m,)), nan_frac, inf_frac)
    dp, dy = analysis.interval_deltas(p, y)
    t, n = p.shape[:2]
    assert dp.shape == (t - 1, n, k) and dy.shape == (t - 1, n, m)
    assert np.isfinite(dp).all() and np.isfinite(dy).all()
    both_p = np.isfinite(p[1:]) & np.isfinite(p[:-1])
    both_y = np.isfinite(y[1:]) & np.isfinite(y[:-1])
    np.testing.assert_array_equal(dp[both_p], p[1:][both_p] - p[:-1][both_p])
    np.testing.assert_array_equal(dy[both_y], y[1:][both_y] - y[:-1][both_y])
    assert (dp[~both_p] == 0).all() and (dy[~both_y] == 0).all()


# -- Step 5: ridge ------------------------------------------------------------------------------
@FAST
@given(delta_cases(), st.floats(0.01, 100.0), st.booleans())
def test_ridge_equals_least_squares_on_the_augmented_system(case, lam, center):
    x, y = case
    n, k = x.shape
    m = y.shape[1]
    beta = analysis.ridge(x, y, lam, center=center)
    assert beta.shape == (k, m)
    assert np.isfinite(beta).all()
    if n == 0:
        assert (beta == 0).all()
        return
    xc = x - x.mean(axis=0) if center else x
    yc = y - y.mean(axis=0) if center else y
    aug_x = np.vstack([xc, math.sqrt(lam) * np.eye(k)])
    aug_y = np.vstack([yc, np.zeros((k, m))])
    expected = np.linalg.lstsq(aug_x, aug_y, rcond=None)[0]
    np.testing.assert_allclose(beta, expected, rtol=1e-6, atol=1e-9 * (1.0 + np.abs(expected).max()))
    zero_cols = np.all(xc == 0, axis=0)  # a prototype that never changes explains nothing
    assert (beta[zero_cols] == 0).all()


@FAST
@given(delta_cases(), st.booleans())
def test_ridge_without_penalty_solves_the_normal_equations(case, center):
    x, y = case
    beta = analysis.ridge(x, y, 0.0, center=center)
    assert beta.shape == (x.shape[1], y.shape[1]) and np.isfinite(beta).all()
    if x.shape[0]:
        xc = x - x.mean(axis=0) if center else x
        yc = y - y.mean(axis=0) if center else y
        grad = xc.T @ (xc @ beta - yc)
        scale = 1.0 + np.abs(xc).max() ** 2 * (1.0 + np.abs(yc).max()) * x.shape[0]
        assert np.abs(grad).max() <= 1e-8 * scale


@FAST
@given(delta_cases(), st.floats(0.01, 100.0), st.sampled_from([1e120, 1e150]), st.sampled_from([1.0, 1e150]))
def test_ridge_of_huge_inputs_is_finite_and_scales_exactly(case, lam, c, d):
    """beta(c x, d y, lam c^2) = beta(x, y, lam) d / c, even where (c x)^T (c x) would overflow
    (c = 1e150: c^2 = 1e300, so any sum of squares of |x| > 13 overflows); c is bounded so that
    lam c^2 itself stays finite and every example asserts."""
    x, y = case
    assert np.isfinite(lam * c * c)
    with np.errstate(over="raise"):
        huge = analysis.ridge(c * x, d * y, lam * c * c)
    expected = analysis.ridge(x, y, lam) * (d / c)
    assert np.isfinite(huge).all()
    xmax = np.abs(x).max(initial=0.0)
    natural = d * np.abs(y).max(initial=0.0) / (c * xmax) if xmax > 0 else 0.0  # the scale of beta
    np.testing.assert_allclose(huge, expected, rtol=1e-6, atol=1e-9 * max(natural, np.abs(expected).max(initial=0.0), 1e-300))


# -- Step 4: learning groups ----------------------------------------------------------------------
@FAST
@given(st.integers(1, 40), st.integers(1, 4), st.sampled_from(VALUE_KINDS), st.sampled_from([0.0, 0.1, 1.0]),
       st.sampled_from([None, 2, 3, 5]), st.integers(0, 2**32 - 1))
def test_learning_groups_label_every_sample(n, m, kind, nan_frac, mcs, seed):
    rng = np.random.default_rng(seed)
    dy = _values(rng, (n, m), kind, 0.1)
    if kind == "uniform":  # well separated blobs, so there is something to find
        dy += rng.integers(0, 2, (n, 1)) * 5.0
    dy = _sprinkle(rng, dy, nan_frac, 0.0)
    labels = analysis.learning_groups(dy, mcs)
    size = analysis.default_min_cluster_size(n) if mcs is None else mcs
    assert labels.shape == (n,) and labels.dtype == np.int64
    assert (labels >= -1).all()
    assert (labels[~np.isfinite(dy).all(axis=1)] == -1).all()
    found = sorted(set(labels.tolist()) - {-1})
    assert found == list(range(len(found)))  # groups numbered 0..G-1
    for g in found:
        assert (labels == g).sum() >= size
    if n < size:
        assert (labels == -1).all()


# -- salient presence ---------------------------------------------------------------------------
@FAST
@given(cams_cases(), st.sampled_from([0.25, 0.5, 0.9]))
def test_salient_presence_holds_the_peak_and_only_present_prototypes(case, threshold):
    cams, a, k = case
    n, length = a.shape
    cam = cams.reshape(-1, n, length)[0]
    pres = analysis.salient_presence(cam, a, k, threshold)
    assert pres.shape == (n, k) and pres.dtype == bool
    counts = analysis.prototype_counts(a, k)
    assert not (pres & (counts == 0)).any()
    clean = np.where(np.isfinite(cam), cam, 0.0)
    for i in range(n):
        spread = clean[i].max() - clean[i].min()
        if spread == 0:  # a constant map has no salient region
            assert not pres[i].any()
        elif spread > 1e-4:
            assert pres[i, a[i, int(np.argmax(clean[i]))]]


# -- Step 6 helpers ------------------------------------------------------------------------------
@FAST
@given(beta_cases())
def test_interval_thresholds(case):
    beta, tau, tau_scale = case
    th = analysis.interval_thresholds(beta, tau, tau_scale)
    assert th.shape == (beta.shape[0],)
    assert np.isfinite(th).all() and (th >= 0).all()
    if tau == "auto":  # follows the scale of beta: equivariant, bounded by it, ~0 for a constant beta
        atol = 1e-12 * tau_scale * (np.abs(beta).max() if beta.size else 0.0)  # rounding of a ~0 spread
        np.testing.assert_allclose(analysis.interval_thresholds(-3.0 * beta, tau, tau_scale), 3.0 * th, rtol=1e-9, atol=3 * atol)
        np.testing.assert_allclose(analysis.interval_thresholds(beta, tau, 2.0 * tau_scale), 2.0 * th, rtol=1e-9, atol=2 * atol)
        if beta.size:
            assert (th <= tau_scale * np.abs(beta).max() * (1 + 1e-9)).all()
        if beta.size and (beta == beta.flat[0]).all():
            assert (th <= 1e-12 * tau_scale * abs(beta.flat[0])).all()  # 0 up to rounding
    else:
        assert (th == tau).all()


@FAST
@given(beta_cases())
def test_pair_flips_match_a_direct_count(case):
    beta, tau, tau_scale = case
    th = analysis.interval_thresholds(beta, tau, tau_scale)
    intervals, k, m = beta.shape
    for a in range(m):
        for b in range(a + 1, m):
            flips, magnitude, last = analysis.pair_flips(beta, th, a, b)
            assert flips.shape == magnitude.shape == last.shape == (k,)
            for kk in range(k):
                s = beta[:, kk, a] - beta[:, kk, b]
                signs = [(t, np.sign(s[t])) for t in range(intervals) if abs(s[t]) > th[t]]
                changes = [t2 for (t1, s1), (t2, s2) in zip(signs, signs[1:]) if s1 != s2]
                assert flips[kk] == len(changes)
                assert last[kk] == (changes[-1] if changes else -1)
                mags = [abs(s[t]) for t, _ in signs]
                assert math.isclose(magnitude[kk], float(np.mean(mags)) if mags else 0.0, rel_tol=1e-9, abs_tol=1e-300)


# -- explain ------------------------------------------------------------------------------------
def _check_explanation(expl, p, y, labels, presence, params):
    t, n, k = p.shape
    m = y.shape[2]
    assert expl.beta.shape == (t - 1, k, m) and np.isfinite(expl.beta).all()
    assert expl.thresholds.shape == (t - 1,) and np.isfinite(expl.thresholds).all() and (expl.thresholds >= 0).all()
    assert expl.groups.shape == (t - 1, n)
    assert expl.num_intervals == t - 1 and expl.num_prototypes == k and expl.num_classes == m
    assert expl.intensities.shape == (t, n, k)  # it carries what it was built from

    # a prototype absent from every sample never changes, so it explains nothing
    never = np.isnan(p).all(axis=(0, 1))
    assert (expl.beta[:, never, :] == 0).all()

    text = json.dumps(expl.to_dict(), allow_nan=False)
    assert json.loads(text)["num_prototypes"] == k
    md = expl.to_markdown()
    assert isinstance(md, str) and md.endswith("\n")

    unc = expl.uncertain
    assert all(u.flips >= params["min_flips"] for u in unc)
    assert all(0 <= u.classes[0] < u.classes[1] < m and 0 <= u.prototype < k for u in unc)
    assert all(x.score >= y_.score for x, y_ in zip(unc, unc[1:]))
    assert all(u.flips <= max(t - 2, 0) for u in unc)
    assert all(not never[u.prototype] for u in unc)
    if m == 1 or t <= 2:  # a flip needs two classes and two intervals
        assert unc == []

    order = expl.learning_order()
    assert sorted(s.classes for s in order) == [(a, b) for a in range(m) for b in range(a + 1, m)]
    assert all(s.interval is None or 0 <= s.interval < t - 1 for s in order)
    if t == 1:
        assert all(s.interval is None for s in order)

    for c in range(m):
        shared, special = expl.shared_prototypes(c), expl.specialised_prototypes(c)
        assert not set(shared) & set(special)
        assert all(0 <= kk < k for kk in shared + special)
        members = labels == c
        if members.any():
            frac = presence[members].mean(axis=0)
            assert shared == [kk for kk in range(k) if frac[kk] >= params["shared_frac"]]
        else:
            assert shared == [] and special == []
        named = set()
        for t_, b, to, ks in expl.edges(c):
            assert to == c and b != c and 0 <= b < m and 0 <= t_ < t - 1 and ks
            tau = expl.thresholds[t_]
            for kk in ks:
                assert expl.beta[t_, kk, c] > tau and expl.beta[t_, kk, b] < -tau
                named.add((t_, b, kk))
        expected = {
            (t_, b, kk)
            for t_ in range(t - 1) for b in range(m) if b != c for kk in range(k)
            if expl.beta[t_, kk, c] > expl.thresholds[t_] and expl.beta[t_, kk, b] < -expl.thresholds[t_]
        }
        assert named == expected
    if m == 1:
        assert expl.edges(0) == []


@FAST
@given(explain_cases())
def test_explain_on_random_recordings(case):
    p, y, labels, presence, params = case
    expl = explain(p, y, labels, presence, **params)
    _check_explanation(expl, p, y, labels, presence, params)
    assert expl.class_names == params.get("class_names", [str(c) for c in range(y.shape[2])])


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 2), st.integers(1, 12), st.integers(1, 2), st.integers(0, 2**32 - 1))
def test_explain_degenerate_shapes(t, n, m, seed):
    """One or two checkpoints, one prototype, one or two classes."""
    rng = np.random.default_rng(seed)
    p = rng.random((t, n, 1))
    y = rng.random((t, n, m))
    labels = rng.integers(0, m, n)
    presence = rng.random((n, 1)) < 0.5
    params = {"min_flips": 1, "shared_frac": 0.8, "specialised_frac": 0.5}
    expl = explain(p, y, labels, presence, **params)
    _check_explanation(expl, p, y, labels, presence, params)


def test_explain_with_every_prototype_absent_and_no_finite_confidence():
    t, n, k, m = 4, 10, 3, 3
    p = np.full((t, n, k), np.nan)
    y = np.full((t, n, m), np.nan)
    labels = np.arange(n) % m
    presence = np.zeros((n, k), bool)
    params = {"min_flips": 1, "shared_frac": 0.8, "specialised_frac": 0.5}
    expl = explain(p, y, labels, presence, **params)
    _check_explanation(expl, p, y, labels, presence, params)
    assert (expl.beta == 0).all() and expl.uncertain == []
    assert all(s.interval is None for s in expl.learning_order())
