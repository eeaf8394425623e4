"""The run directory's format: its name and versions, the manifest's checks, reading arrays."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import I2XRunError, OptionsError
from ..options import RunConfig

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "READABLE_VERSIONS", "MANIFEST", "MARKS", "MARK_VALUES", "PROBE_IMAGES", "load_npz",
           "read_probe_images", "check_manifest", "read_config"]


FORMAT_NAME = "lightning-i2x-run"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
# what people marked (the dashboard): its own file beside the manifest, never in it
MARKS = "marks.json"
MARKS_FORMAT = "lightning-i2x-marks"
MARK_VALUES = ("shortcut", "fine")
PROBE_IMAGES = "probe-images.npy"


def load_npz(path: Path, keys: Sequence[str], optional: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """The named numeric arrays of an .npz file (never unpickled); any failure is an I2XRunError
    naming the file."""
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz archive")
        with data:
            out = {k: data[k] for k in keys}
            out.update({k: data[k] for k in optional if k in data.files})
    except FileNotFoundError:
        raise I2XRunError(f"{path} is listed in the run's manifest but missing") from None
    except Exception as e:  # a damaged zip fails in many ways (BadZipFile, NotImplementedError, zlib.error, ...)
        raise I2XRunError(f"{path} is damaged or not an I2X run file ({type(e).__name__}: {e})") from None
    for k, v in out.items():
        if v.dtype.kind not in "biuf":
            raise I2XRunError(f"{path} is damaged or not an I2X run file (array {k!r} has dtype {v.dtype})")
    return out


def read_probe_images(path: Path, num_probe: int) -> np.ndarray:
    """The stored probe images (N, C, H, W) float16, memory-mapped read-only: only the images a view
    shows are read. An I2XRunError names the file when it is missing, damaged or of another shape."""
    try:
        images = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise I2XRunError(f"{path} is listed in the run's manifest but missing") from None
    except Exception as e:
        raise I2XRunError(f"{path} is damaged or not an I2X run file ({type(e).__name__}: {e})") from None
    if not isinstance(images, np.ndarray) or images.dtype != np.float16 or images.ndim != 4 or images.shape[0] != num_probe:
        raise I2XRunError(f"{path} does not hold the run's {num_probe} probe images as (N, C, H, W) float16")
    return images


def check_manifest(manifest: Any, where: Path) -> None:
    """The fields ``load`` reads, with the types it expects; file names must stay inside the run."""

    def bad(what: str) -> I2XRunError:
        return I2XRunError(f"{where} is damaged: {what}")

    def count(v: Any, low: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= low

    def rel_file(v: Any) -> bool:
        return isinstance(v, str) and bool(v) and not Path(v).is_absolute() and ".." not in Path(v).parts

    m = manifest
    if not isinstance(m.get("class_names"), list) or not all(isinstance(c, str) for c in m["class_names"]):
        raise bad("class_names is not a list of names")
    if not count(m.get("num_probe"), 0) or not count(m.get("num_prototypes"), 1):
        raise bad("num_probe / num_prototypes are not counts")
    fs = m.get("feature_shape")
    if not isinstance(fs, list) or len(fs) != 2 or not all(count(v, 1) for v in fs):
        raise bad(f"feature_shape {fs!r} is not [h, w]")
    if not isinstance(m.get("checkpoints"), list):
        raise bad("checkpoints is not a list")
    for i, c in enumerate(m["checkpoints"]):
        if not (isinstance(c, dict) and c.get("index") == i and rel_file(c.get("file"))
                and count(c.get("epoch"), 0) and count(c.get("global_step"), 0)):
            raise bad(f"checkpoint entry {i} is malformed: {c!r}")
        metrics = c.get("metrics", {})
        if not (isinstance(metrics, dict) and all(isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
                                                  for k, v in metrics.items())):
            raise bad(f"checkpoint entry {i} has malformed metrics: {metrics!r}")
    attachments = m.get("attachments", {})
    if not isinstance(attachments, dict) or not all(
            isinstance(a, dict) and rel_file(a.get("file")) and str(a["file"]).endswith((".json", ".npz"))
            and count(a.get("checkpoint"), 0) and a["checkpoint"] < len(m["checkpoints"]) for a in attachments.values()):
        raise bad(f"attachments entry is malformed: {attachments!r}")
    images = m.get("probe_images")
    if images is not None and not (rel_file(images) and str(images).endswith(".npy")):
        raise bad(f"probe_images {images!r} is not an .npy file inside the run")
    pr = m.get("prototypes")
    if pr is not None and not (isinstance(pr, dict) and rel_file(pr.get("file")) and count(pr.get("reference"), 0)
                               and pr["reference"] < len(m["checkpoints"])):
        raise bad(f"prototypes entry is malformed: {pr!r}")
    for key, kind in (("fingerprint", dict), ("errors", list)):
        if not isinstance(m.get(key), kind):
            raise bad(f"{key} is not a {kind.__name__}")
    if m["version"] == 1 and not isinstance(m.get("config"), dict):
        raise bad("config is not a dict")


def read_config(manifest: dict, where: Path) -> RunConfig | None:
    """The typed configuration; an unknown or missing value fails loudly."""
    raw = manifest.get("config")
    try:
        if manifest["version"] == 1:
            return RunConfig.from_version_1(raw) if raw else None
        return None if raw is None else RunConfig.from_dict(raw)
    except OptionsError as e:
        raise I2XRunError(f"{where} is damaged: its config does not read: {e}") from None
