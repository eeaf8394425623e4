"""What people marked in the dashboard: ``marks.json`` beside the manifest, never in it, and
valid only for the prototypes file it names (``I2XRun`` inherits these)."""

from __future__ import annotations

import json

from .._core import write_json
from ..errors import I2XRunError
from ._format import MARK_VALUES, MARKS, MARKS_FORMAT

__all__ = ["RunMarks"]


class RunMarks:
    """Reading and writing the marks ("shortcut" / "fine") of a run's current prototypes."""

    def marks(self) -> dict[int, str]:
        """{prototype: "shortcut" | "fine"} as people marked the run's current prototypes (the
        dashboard writes them to ``marks.json`` beside the manifest); marks made on earlier
        prototypes (they are refitted at every record) are not returned. Empty when none."""
        try:
            raw = json.loads((self.path / MARKS).read_text())
        except FileNotFoundError:
            return {}
        except (ValueError, OSError) as e:
            raise I2XRunError(f"{self.path / MARKS} is damaged: {e}") from None
        current = self._manifest["prototypes"]
        if not isinstance(raw, dict) or raw.get("format") != MARKS_FORMAT or current is None or raw.get("prototypes") != current["file"]:
            return {}
        marks = raw.get("marks")
        if not isinstance(marks, dict):
            raise I2XRunError(f"{self.path / MARKS} is damaged: marks is not a mapping")
        return {int(k): v for k, v in marks.items() if str(k).isdigit() and int(k) < self.num_prototypes and v in MARK_VALUES}

    def set_mark(self, prototype: int, mark: str | None) -> dict[int, str]:
        """Mark a current prototype ``"shortcut"`` or ``"fine"`` (None: clear its mark); written
        atomically to ``marks.json``, never to the manifest. Returns every mark. ``marks()`` and
        ``FinetuneOptions(prototypes="marked")`` read them."""
        self._require_prototypes()
        k = int(prototype)
        if not 0 <= k < self.num_prototypes:
            raise ValueError(f"prototype {k} is not a prototype of the run; its prototypes are 0..{self.num_prototypes - 1}")
        if mark is not None and mark not in MARK_VALUES:
            raise ValueError(f"a mark is one of {MARK_VALUES} or None, got {mark!r}")
        marks = self.marks()
        if mark is None:
            marks.pop(k, None)
        else:
            marks[k] = mark
        write_json(self.path / MARKS, {"format": MARKS_FORMAT, "version": 1, "prototypes": self._manifest["prototypes"]["file"],
                                       "marks": {str(p): v for p, v in sorted(marks.items())}})
        return marks
