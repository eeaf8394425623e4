"""What a run was recorded with (``RunConfig``) and helpers over option groups."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

from .._core import is_int
from ..errors import OptionsError
from ._base import _Options
from ._groups import ExplainOptions, IGOSOptions, ProbePassOptions, PrototypeOptions


@dataclass(frozen=True)
class RunConfig(_Options):
    """What a run was recorded with, stored in its manifest and read back strictly (format 2)."""

    target_layer: str
    cam: str
    every_n_epochs: int
    probe_pass: ProbePassOptions
    prototypes: PrototypeOptions
    explain: ExplainOptions

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_layer": self.target_layer, "cam": self.cam, "every_n_epochs": self.every_n_epochs,
            "probe_pass": self.probe_pass.to_dict(), "prototypes": self.prototypes.to_dict(), "explain": self.explain.to_dict(),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, strict: bool = True) -> RunConfig:
        if not isinstance(values, dict):
            raise OptionsError(f"RunConfig must be stored as a mapping, got {type(values).__name__}")
        names = {f.name for f in fields(cls)}
        unknown, missing = sorted(set(values) - names), sorted(names - set(values))
        if unknown or missing:
            raise OptionsError(f"RunConfig: unknown {unknown}, missing {missing}")
        if not isinstance(values["target_layer"], str) or not isinstance(values["cam"], str) or not is_int(values["every_n_epochs"]):
            raise OptionsError(f"RunConfig: target_layer and cam must be strings, every_n_epochs an integer: {values!r}")
        return cls(
            values["target_layer"], values["cam"], values["every_n_epochs"],
            ProbePassOptions.from_stored(values["probe_pass"], strict=strict),
            PrototypeOptions.from_stored(values["prototypes"], strict=strict),
            ExplainOptions.from_stored(values["explain"], strict=strict),
        )

    @classmethod
    def from_version_1(cls, config: dict[str, Any]) -> RunConfig:
        """The typed form of a format-1 manifest's free-form ``config`` (lightning-i2x 0.1)."""
        c = dict(config)
        try:
            explain = ExplainOptions.from_stored({"min_flips": 2, **dict(c.get("explain_kwargs") or {})}, strict=False)  # 0.1's default
            return cls(
                str(c["target_layer"]), str(c.get("cam", "gradcam")), int(c.get("every_n_epochs", 1)),
                ProbePassOptions(cam_target=c.get("cam_target", "label"), normalise_maps=bool(c.get("normalise_maps", True)),
                                 igos=IGOSOptions.legacy()),
                PrototypeOptions(pca_components=int(c.get("pca_components", 64)), kmeans_iters=int(c.get("kmeans_iters", 20)),
                                 seed=int(c.get("seed", 0))),
                explain,
            )
        except KeyError as e:
            raise OptionsError(f"a version-1 config without {e}") from None


def check_groups(owner: str, **groups: tuple[Any, type, bool]) -> None:
    """TypeError naming the argument when a value is not its option group: ``name=(value, group,
    none_allowed)``, e.g. ``check_groups("I2XCallback", views=(views, ViewOptions, False))``."""
    for name, (value, group, optional) in groups.items():
        if not (isinstance(value, group) or (optional and value is None)):
            raise TypeError(f"{owner}.{name} must be a lightning_i2x.{group.__name__}{' or None' if optional else ''}, got {type(value).__name__}")


def replace(options: Any, **changes: Any) -> Any:
    """A copy of an option group with some fields changed (validated again)."""
    return dataclasses.replace(options, **changes)
