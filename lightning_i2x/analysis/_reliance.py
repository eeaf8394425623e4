"""What the reliance measure stores: per-prototype drops of the true class's probability when the
prototype's locations are hidden, against random locations of equal area (pure data)."""

from __future__ import annotations

import dataclasses

import numpy as np

from ..options import FILLS

__all__ = ["Reliance", "RELIANCE_ATTACHMENT", "INTERVENTIONS"]

INTERVENTIONS: tuple[str, ...] = ("pixels", "latent", "project")
"""How reliance hides a prototype: in the image's pixels (with a fill), at the target layer's
output with its feature vectors swapped for another image's (``"latent"``), or there with the
prototype's centred subspace projected out (``"project"``); stored as an index, new ones appended."""

RELIANCE_ATTACHMENT = "reliance"
"""The name the reliance is stored under in a run (``run.attachment("reliance")``)."""


@dataclasses.dataclass(frozen=True)
class Reliance:
    """Per-prototype reliance (arrays of length K; NaN where a prototype is in no probe image).

    drop: mean drop of the true class's probability when k's locations are filled.
    random_drop: the same for random locations of equal area (mean over images and draws).
    reliance: ``drop - random_drop``.
    count: images the means are over.
    class_drop, class_random_drop, class_count: the same per (prototype, true class), (K, M).
    area: mean number of k's locations per image that holds it.
    fill, n_random, seed: how it was measured.
    intervention: ``"pixels"`` (the fill replaced k's pixels), ``"latent"`` (k's feature vectors
        at the target layer were replaced by another image's; ``fill`` is then ``"resample"``) or
        ``"project"`` (their component in k's centred subspace was set to the other locations'
        mean; ``fill`` is then ``"mean"``).
    """

    drop: np.ndarray
    random_drop: np.ndarray
    reliance: np.ndarray
    count: np.ndarray
    class_drop: np.ndarray
    class_random_drop: np.ndarray
    class_count: np.ndarray
    area: np.ndarray
    fill: str = "blur"
    n_random: int = 4
    seed: int = 0
    intervention: str = "pixels"

    _ARRAYS = ("drop", "random_drop", "reliance", "count", "class_drop", "class_random_drop", "class_count", "area")

    @property
    def num_prototypes(self) -> int:
        return int(self.drop.shape[0])

    @property
    def class_reliance(self) -> np.ndarray:
        """(K, M) reliance per prototype and true class (NaN where the pair has no image)."""
        return self.class_drop - self.class_random_drop

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain numeric arrays for ``np.savez`` and ``run.save_attachment`` (the settings as 0-d
        arrays; the fill as its index in ``perturb.FILLS``, the intervention in ``INTERVENTIONS``)."""
        out = {k: np.asarray(getattr(self, k)) for k in self._ARRAYS}
        out.update(fill=np.asarray(FILLS.index(self.fill)), n_random=np.asarray(self.n_random), seed=np.asarray(self.seed),
                   intervention=np.asarray(INTERVENTIONS.index(self.intervention)))
        return out

    @classmethod
    def from_arrays(cls, arrays) -> "Reliance":
        """Inverse of ``to_arrays`` (accepts an ``np.load`` result; files written before the
        latent intervention, without ``intervention``, read as ``"pixels"``)."""
        missing = [k for k in (*cls._ARRAYS, "fill", "n_random", "seed") if k not in arrays]
        if missing:
            raise ValueError(f"reliance arrays lack {missing}")
        return cls(
            **{k: np.asarray(arrays[k]) for k in cls._ARRAYS},
            fill=_fill_name(np.asarray(arrays["fill"])), n_random=int(np.asarray(arrays["n_random"])), seed=int(np.asarray(arrays["seed"])),
            intervention=INTERVENTIONS[int(np.asarray(arrays["intervention"]))] if "intervention" in arrays else "pixels",
        )


def _fill_name(value: np.ndarray) -> str:
    """The fill stored by ``to_arrays`` (an index into FILLS; older files hold the name)."""
    return FILLS[int(value)] if value.dtype.kind in "iu" else str(value)
