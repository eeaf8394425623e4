"""The run directory: what the callback records at every checkpoint, and ``I2XRun`` to read it.

Format (version 2; everything NumPy ``.npz`` without pickles, or JSON):

    <run_dir>/manifest.json            format name and version, classes, shapes, the typed
                                       configuration (``RunConfig``: probe pass, prototype
                                       and explanation options), fingerprint, the list of
                                       checkpoints, the current
                                       prototypes file, recorded errors
    <run_dir>/probe.npz                labels (N,) int64 (runs of 0.2 and earlier: also the images)
    <run_dir>/probe-images.npy         images (N, C, H, W) float16 if stored; read memory-mapped,
                                       so a large probe costs no memory until an image is shown
    <run_dir>/checkpoints/ckpt-00000.npz   cams (N, h, w) float16, confidences (N, M) float32,
                                       optional: pooled (N, d) float32, the target layer's map
                                       averaged over its locations (0.3 records it; x-features)
    <run_dir>/attachments/<name>.json|npz  what further measures stored (reliance, a SAG, ...),
                                       each tied to the checkpoint it was measured at
    <run_dir>/marks.json               what people marked in the dashboard ("shortcut" / "fine"
                                       per prototype of the current prototypes file), not in the manifest
    <run_dir>/prototypes/proto-00000.npz   projection (p, d), bias (p,), centroids (K, p),
                                       assignment (N, h, w) int32 (from the reference model),
                                       distances (N, h, w) float32, optional: each location's
                                       squared distance to its centroid (for galleries)

Every file is written atomically and the manifest last, so a reader always finds a consistent
prefix of the checkpoints: a file the manifest does not list is ignored. Version 1 (0.1.x) differs
only in its free-form ``config``; it loads, its config read as ``RunConfig.from_version_1``, and
explains as it did.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import analysis
from .._core import write_json, write_npy_chunked, write_npz
from ..errors import I2XRunError
from ..options import RunConfig
from ..prototypes import Prototypes
from ._analysis import RunAnalysis
from ._format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST,
    PROBE_IMAGES,
    READABLE_VERSIONS,
    check_manifest,
    load_npz,
    read_config,
    read_probe_images,
)
from ._marks import RunMarks
from ._xfeatures import RunXFeatures

__all__ = ["I2XRun"]

class I2XRun(RunAnalysis, RunXFeatures, RunMarks):
    """A recorded I2X run: read with ``I2XRun.load(path)``, no Trainer and no model needed.

    The callback appends to the same object while training (``callback.run``).
    """

    def __init__(self, path: Path, manifest: dict, labels: np.ndarray, images: np.ndarray | None):
        self.path = Path(path)
        self._manifest = manifest
        self.labels = labels
        self.images = images
        self._cams: list[np.ndarray] = []
        self._confidences: list[np.ndarray] = []
        self._pooled: list[np.ndarray | None] = []
        self._prototypes: Prototypes | None = None
        self._assignment: np.ndarray | None = None
        self._distances: np.ndarray | None = None
        self._config: RunConfig | None = None
        self._groups: dict[tuple[int, int | None], np.ndarray] = {}
        self._stacked: dict[str, np.ndarray] = {}  # cams, confidences, intensities: dropped on every change
        # the training thread (checkpoints, errors) and the background analysis (prototypes, metrics,
        # attachments) both edit the manifest: each edit and its write hold this lock
        self._manifest_lock = threading.RLock()

    # -- creation and loading -------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        labels: np.ndarray,
        class_names: Sequence[str],
        feature_shape: tuple[int, int],
        num_prototypes: int,
        config: RunConfig | None = None,
        fingerprint: dict[str, Any] | None = None,
        images: np.ndarray | None = None,
    ) -> I2XRun:
        """Start a new run directory. Raises I2XRunError when it already holds a run, TypeError
        when ``config`` is not a ``RunConfig``."""
        path = Path(path)
        if config is not None and not isinstance(config, RunConfig):
            raise TypeError(f"config must be a lightning_i2x.options.RunConfig or None, got {type(config).__name__}")
        if (path / MANIFEST).exists():
            raise I2XRunError(f"{path} already holds an I2X run; choose another run_dir or load it with I2XRun.load")
        (path / "checkpoints").mkdir(parents=True, exist_ok=True)
        (path / "prototypes").mkdir(exist_ok=True)
        labels = np.asarray(labels, dtype=np.int64)
        write_npz(path / "probe.npz", labels=labels)
        if images is not None:
            write_npy_chunked(path / PROBE_IMAGES, images, np.float16)
        manifest = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "class_names": [str(c) for c in class_names],
            "num_probe": int(labels.shape[0]),
            "feature_shape": [int(s) for s in feature_shape],
            "num_prototypes": int(num_prototypes),
            "config": None if config is None else config.to_dict(),
            "fingerprint": fingerprint or {},
            **({"probe_images": PROBE_IMAGES} if images is not None else {}),
            "checkpoints": [],
            "prototypes": None,
            "attachments": {},
            "errors": [],
        }
        write_json(path / MANIFEST, manifest)
        run = cls(path, manifest, labels, None if images is None else read_probe_images(path / PROBE_IMAGES, labels.shape[0]))
        run._config = config
        return run

    @classmethod
    def load(cls, path: str | Path) -> I2XRun:
        """Read a run directory; raises ``I2XRunError`` with the reason when it is not readable."""
        path = Path(path)
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except FileNotFoundError:
            raise I2XRunError(f"{path} holds no I2X run (no {MANIFEST})") from None
        except (ValueError, RecursionError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise I2XRunError(f"{path / MANIFEST} is damaged: {e}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
            raise I2XRunError(f"{path / MANIFEST} is not a {FORMAT_NAME} manifest")
        if manifest.get("version") not in READABLE_VERSIONS:
            raise I2XRunError(
                f"{path / MANIFEST} is format version {manifest.get('version')}; this lightning-i2x reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}: upgrade lightning-i2x to read it"
            )
        check_manifest(manifest, path / MANIFEST)
        config = read_config(manifest, path / MANIFEST)
        if not (path / "probe.npz").exists():
            raise I2XRunError(f"{path} has no probe.npz")
        probe = load_npz(path / "probe.npz", ("labels",), optional=("images",))
        labels, images = probe["labels"], probe.get("images")
        if labels.shape != (manifest["num_probe"],) or labels.dtype.kind not in "iu" or (images is not None and images.shape[:1] != labels.shape):
            raise I2XRunError(f"{path / 'probe.npz'} does not match the run's {manifest['num_probe']} probe samples")
        if manifest.get("probe_images") is not None:
            images = read_probe_images(path / manifest["probe_images"], manifest["num_probe"])
        run = cls(path, manifest, labels.astype(np.int64), images)
        run._config = config
        n, m = run.num_probe, run.num_classes
        h, w = manifest["feature_shape"]
        for entry in manifest["checkpoints"]:
            data = load_npz(path / entry["file"], ("cams", "confidences"), optional=("pooled",))
            if data["cams"].shape != (n, h, w) or data["confidences"].shape != (n, m):
                raise I2XRunError(f"{path / entry['file']} has shapes {data['cams'].shape}, {data['confidences'].shape}; expected {(n, h, w)}, {(n, m)}")
            pooled = data.get("pooled")
            if pooled is not None and (pooled.ndim != 2 or pooled.shape[0] != n):
                raise I2XRunError(f"{path / entry['file']} holds pooled features of shape {pooled.shape}; expected ({n}, d)")
            run._cams.append(data["cams"])
            run._confidences.append(data["confidences"])
            run._pooled.append(pooled)
        if manifest["prototypes"] is not None:
            file = path / manifest["prototypes"]["file"]
            data = load_npz(file, ("projection", "bias", "centroids", "inertia", "assignment"), optional=("distances",))
            proj, bias, cent, assignment = data["projection"], data["bias"], data["centroids"], data["assignment"]
            k = run.num_prototypes
            if (
                proj.ndim != 2 or bias.shape != proj.shape[:1] or cent.shape != (k, proj.shape[0]) or data["inertia"].size != 1
                or assignment.shape != (n, h, w) or assignment.dtype.kind not in "iu"
                or (assignment.size and (assignment.min() < 0 or assignment.max() >= k))
            ):
                raise I2XRunError(f"{file} does not match the run's shapes")
            dist = data.get("distances")
            if dist is not None and (dist.shape != (n, h, w) or dist.dtype.kind != "f" or not np.all(np.isfinite(dist))):
                raise I2XRunError(f"{file} holds distances that do not match the run's shapes or are not finite")
            run._prototypes = Prototypes.from_arrays(data)
            run._assignment = assignment.astype(np.int64)
            run._distances = None if dist is None else dist.astype(np.float32)
        return run

    # -- appending (used by the callback) -------------------------------------------------------
    def append_checkpoint(self, cams: np.ndarray, confidences: np.ndarray, *, epoch: int, global_step: int,
                          pooled: np.ndarray | None = None) -> int:
        """Store one checkpoint's maps, confidences and (optional) pooled features (N, d); returns its index."""
        n, m = self.num_probe, self.num_classes
        h, w = self.feature_shape
        cams16 = np.asarray(cams, dtype=np.float16).reshape(n, h, w)
        conf = np.asarray(confidences, dtype=np.float32).reshape(n, m)
        arrays = {"cams": cams16, "confidences": conf}
        if pooled is not None:
            arrays["pooled"] = np.asarray(pooled, dtype=np.float32).reshape(n, -1)
        index = self.num_checkpoints
        name = f"checkpoints/ckpt-{index:05d}.npz"
        write_npz(self.path / name, **arrays)
        self._cams.append(cams16)
        self._confidences.append(conf)
        self._pooled.append(arrays.get("pooled"))
        self._stacked.clear()
        with self._manifest_lock:
            self._manifest["checkpoints"].append({"index": index, "epoch": int(epoch), "global_step": int(global_step), "file": name})
            self._write_manifest()
        return index

    def set_prototypes(
        self, prototypes: Prototypes, assignment: np.ndarray, *, reference: int, distances: np.ndarray | None = None
    ) -> None:
        """Replace the prototypes and the (N, h, w) assignment fitted on checkpoint ``reference``;
        ``distances`` (each location's squared distance to its centroid) lets galleries pick a
        prototype's nearest locations."""
        shape = (self.num_probe, *self.feature_shape)
        assignment = np.asarray(assignment).reshape(shape)
        arrays = {"assignment": assignment.astype(np.int32), **prototypes.to_arrays()}
        if distances is not None:
            arrays["distances"] = np.asarray(distances, dtype=np.float32).reshape(shape)
        old = self._manifest["prototypes"]
        name = f"prototypes/proto-{reference:05d}.npz"
        write_npz(self.path / name, **arrays)
        self._prototypes, self._assignment = prototypes, assignment.astype(np.int64)
        self._distances = arrays.get("distances")
        self._stacked.pop("intensities", None)
        with self._manifest_lock:
            self._manifest["prototypes"] = {"file": name, "reference": int(reference)}
            self._write_manifest()
        if old is not None and old["file"] != name:
            (self.path / old["file"]).unlink(missing_ok=True)

    def truncate(self, num_checkpoints: int, prototypes: tuple[Prototypes, np.ndarray, int] | None = None) -> None:
        """Keep the first ``num_checkpoints`` (a resumed fit drops what was recorded after its
        Lightning checkpoint) and, if given, reinstate the (prototypes, assignment, reference)
        current at that moment. The writer of the run calls this when it reopens the run, so the
        files a crash or the truncation left unlisted (temporary files, dropped checkpoints, older
        prototypes) are deleted; readers never see them either way."""
        if not 0 <= num_checkpoints <= self.num_checkpoints:
            raise I2XRunError(f"{self.path} has {self.num_checkpoints} checkpoints; cannot keep {num_checkpoints}")
        del self._cams[num_checkpoints:], self._confidences[num_checkpoints:], self._pooled[num_checkpoints:]
        del self._manifest["checkpoints"][num_checkpoints:]
        attachments = self._manifest.get("attachments", {})
        for name in [n for n, a in attachments.items() if a["checkpoint"] >= num_checkpoints]:
            del attachments[name]
        self._groups.clear()
        self._stacked.clear()
        if prototypes is not None:
            self.set_prototypes(prototypes[0], prototypes[1], reference=prototypes[2])
        elif self.reference is not None and self.reference >= num_checkpoints:
            self._manifest["prototypes"], self._prototypes, self._assignment, self._distances = None, None, None, None
        self._write_manifest()
        self._remove_unlisted()

    def _remove_unlisted(self) -> None:
        listed = {c["file"] for c in self._manifest["checkpoints"]}
        listed |= {a["file"] for a in self._manifest.get("attachments", {}).values()}
        if self._manifest["prototypes"] is not None:
            listed.add(self._manifest["prototypes"]["file"])
        for folder in ("checkpoints", "prototypes", "attachments"):
            if not (self.path / folder).is_dir():
                continue
            for f in (self.path / folder).iterdir():
                if f"{folder}/{f.name}" not in listed and f.is_file():
                    f.unlink(missing_ok=True)
        for f in self.path.glob(".*.tmp-*"):
            f.unlink(missing_ok=True)

    def record_metrics(self, values: dict[str, float], checkpoint: int | None = None) -> None:
        """Keep scalar measures of a checkpoint (default the latest), e.g. faithfulness AUCs;
        ``metrics()`` reads them back as series over the checkpoints."""
        index = self.num_checkpoints - 1 if checkpoint is None else int(checkpoint)
        if not 0 <= index < self.num_checkpoints:
            raise I2XRunError(f"{self.path} has no checkpoint {index} to record metrics for")
        clean = {}
        for k, v in values.items():
            if not isinstance(k, str) or not isinstance(v, (int, float, np.floating, np.integer)) or isinstance(v, bool):
                raise TypeError(f"metrics must map names to numbers, got {k!r}: {v!r}")
            clean[k] = float(v)
        with self._manifest_lock:
            self._manifest["checkpoints"][index].setdefault("metrics", {}).update(clean)
            self._write_manifest()

    def metrics(self) -> dict[str, np.ndarray]:
        """{name: (T,) values over the checkpoints, NaN where a checkpoint did not measure it}."""
        entries = self._manifest["checkpoints"]
        names = sorted({k for c in entries for k in c.get("metrics", {})})
        return {k: np.array([c.get("metrics", {}).get(k, np.nan) for c in entries], dtype=np.float64) for k in names}

    def save_attachment(self, name: str, *, data: dict | None = None, arrays: dict[str, np.ndarray] | None = None,
                        checkpoint: int | None = None) -> None:
        """Store what a further measure computed (JSON-able ``data`` or numeric ``arrays``) under
        ``name``, tied to a checkpoint (default the latest): a resumed run that drops that checkpoint
        drops it too. Replaces an earlier attachment of the same name."""
        if (data is None) == (arrays is None):
            raise ValueError("save_attachment needs exactly one of data= (JSON) or arrays= (numeric arrays)")
        if not name or not all(ch.isalnum() or ch in "-_" for ch in name):
            raise ValueError(f"attachment names use letters, digits, '-' and '_'; got {name!r}")
        index = self.num_checkpoints - 1 if checkpoint is None else int(checkpoint)
        if not 0 <= index < self.num_checkpoints:
            raise I2XRunError(f"{self.path} has no checkpoint {index} to attach {name!r} to")
        (self.path / "attachments").mkdir(exist_ok=True)
        file = f"attachments/{name}-{index:05d}." + ("json" if data is not None else "npz")
        if data is not None:
            write_json(self.path / file, data)
        else:
            write_npz(self.path / file, **{k: np.asarray(v) for k, v in arrays.items()})
        with self._manifest_lock:
            attachments = self._manifest.setdefault("attachments", {})
            old = attachments.get(name)
            attachments[name] = {"file": file, "checkpoint": index}
            self._write_manifest()
        if old is not None and old["file"] != file:
            (self.path / old["file"]).unlink(missing_ok=True)

    def attachment(self, name: str) -> tuple[dict | dict[str, np.ndarray], int] | None:
        """(the stored data or arrays, the checkpoint it belongs to), or None when there is none.
        Raises I2XRunError naming the file when it is damaged."""
        entry = self._manifest.get("attachments", {}).get(name)
        if entry is None:
            return None
        file = self.path / entry["file"]
        if file.suffix == ".npz":
            try:
                with np.load(file, allow_pickle=False) as z:
                    keys = list(z.files)
            except FileNotFoundError:
                raise I2XRunError(f"{file} is listed in the run's manifest but missing") from None
            except Exception as e:
                raise I2XRunError(f"{file} is damaged or not an I2X run file ({type(e).__name__}: {e})") from None
            return load_npz(file, keys), int(entry["checkpoint"])
        try:
            return json.loads(file.read_text()), int(entry["checkpoint"])
        except FileNotFoundError:
            raise I2XRunError(f"{file} is listed in the run's manifest but missing") from None
        except (ValueError, OSError) as e:
            raise I2XRunError(f"{file} is damaged: {e}") from None

    @property
    def attachments(self) -> list[str]:
        """The names of the stored attachments."""
        return sorted(self._manifest.get("attachments", {}))

    def record_error(self, where: str, error: BaseException, *, epoch: int, global_step: int) -> None:
        """Keep an explainer failure in the manifest so the run says what it missed."""
        with self._manifest_lock:
            self._manifest["errors"].append(
                {"where": where, "type": type(error).__name__, "message": str(error), "epoch": int(epoch), "global_step": int(global_step)}
            )
            self._write_manifest()

    def _write_manifest(self) -> None:
        with self._manifest_lock:
            write_json(self.path / MANIFEST, self._manifest)

    # -- reading ---------------------------------------------------------------------------------
    @property
    def manifest(self) -> dict:
        return json.loads(json.dumps(self._manifest))

    @property
    def num_checkpoints(self) -> int:
        return len(self._cams)

    @property
    def num_prototypes(self) -> int:
        return int(self._manifest["num_prototypes"])

    @property
    def num_probe(self) -> int:
        return int(self._manifest["num_probe"])

    @property
    def class_names(self) -> list[str]:
        return list(self._manifest["class_names"])

    @property
    def num_classes(self) -> int:
        return len(self._manifest["class_names"])

    @property
    def feature_shape(self) -> tuple[int, int]:
        h, w = self._manifest["feature_shape"]
        return int(h), int(w)

    @property
    def checkpoints(self) -> list[dict]:
        """One dict per checkpoint: index, epoch, global_step."""
        return [{k: c[k] for k in ("index", "epoch", "global_step")} for c in self._manifest["checkpoints"]]

    @property
    def errors(self) -> list[dict]:
        return list(self._manifest["errors"])

    @property
    def config(self) -> RunConfig | None:
        """What the run was recorded with (None for a run made with ``create`` and no config)."""
        return self._config

    @property
    def format_version(self) -> int:
        """The format the directory was written in (1: lightning-i2x 0.1; appending keeps it)."""
        return int(self._manifest["version"])

    @property
    def fingerprint(self) -> dict:
        return dict(self._manifest["fingerprint"])

    @property
    def prototypes(self) -> Prototypes | None:
        return self._prototypes

    @property
    def reference(self) -> int | None:
        """Index of the checkpoint whose model the prototypes come from."""
        p = self._manifest["prototypes"]
        return None if p is None else int(p["reference"])

    def assignment(self) -> np.ndarray:
        """(N, h, w) prototype id of every probe location (from the reference model)."""
        self._require_prototypes()
        return self._assignment.copy()

    def distances(self) -> np.ndarray | None:
        """(N, h, w) squared distance of every probe location to its prototype's centroid, or
        None for runs recorded without them (older runs, or prototypes reinstated on resume)."""
        self._require_prototypes()
        return None if self._distances is None else self._distances.copy()

    def cams(self) -> np.ndarray:
        """(T, N, h, w) float32 CAM maps at feature resolution (stacked once per change; read-only)."""
        return self._cached("cams", lambda: np.stack(self._cams).astype(np.float32) if self._cams
                            else np.zeros((0, self.num_probe, *self.feature_shape), np.float32))

    def confidences(self) -> np.ndarray:
        """(T, N, M) softmax probabilities (stacked once per change; read-only)."""
        return self._cached("confidences", lambda: np.stack(self._confidences) if self._confidences
                            else np.zeros((0, self.num_probe, self.num_classes), np.float32))

    def latest_confidences(self) -> np.ndarray:
        """(N, M) softmax probabilities of the latest checkpoint, without stacking the history."""
        if not self._confidences:
            raise I2XRunError(f"{self.path} has no checkpoint yet")
        return self._confidences[-1]

    def intensities(self) -> np.ndarray:
        """(T, N, K) mean saliency of each prototype in each sample, NaN where absent (computed once
        per change of the checkpoints or prototypes; read-only)."""
        self._require_prototypes()
        n = self.num_probe
        return self._cached("intensities", lambda: analysis.prototype_intensity(
            self.cams().reshape(self.num_checkpoints, n, -1), self._assignment.reshape(n, -1), self.num_prototypes))

    def _cached(self, key: str, compute) -> np.ndarray:
        if key not in self._stacked:
            value = compute()
            value.setflags(write=False)
            self._stacked[key] = value
        return self._stacked[key]

    def plot_gallery(self, prototypes: Sequence[int] | None = None, **kw):
        """Each prototype as the probe patches nearest its centroid (a matplotlib figure; see
        ``lightning_i2x.plots.prototype_gallery``)."""
        from .. import viz as plots

        return plots.prototype_gallery(self, prototypes, **kw)

    def plot_overlays(self, c: int | str, **kw):
        """GradCAM over probe images of class c with the salient prototypes outlined (a matplotlib
        figure; see ``lightning_i2x.plots.saliency_overlays``)."""
        from .. import viz as plots

        return plots.saliency_overlays(self, c, **kw)

    def _require_prototypes(self) -> None:
        if self._assignment is None:
            raise I2XRunError(f"{self.path} has no prototypes yet (no checkpoint has been recorded)")

    def __repr__(self) -> str:
        return f"I2XRun({str(self.path)!r}, checkpoints={self.num_checkpoints}, probe={self.num_probe}, K={self.num_prototypes}, classes={self.num_classes})"
