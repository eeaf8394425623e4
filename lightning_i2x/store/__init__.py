"""The run store: ``I2XRun`` reads, appends and caches a run directory (atomic, versioned, no
pickle). It knows no measure and no figure beyond its presentation accessors."""

from ._analysis import CONCEPT_SOURCES, NO_RELIANCE
from ._format import FORMAT_NAME, FORMAT_VERSION, MANIFEST, MARK_VALUES, MARKS, READABLE_VERSIONS
from ._run import I2XRun
from ._xfeatures import XFEATURE_CONTRIBUTIONS

__all__ = ["I2XRun", "NO_RELIANCE", "CONCEPT_SOURCES", "XFEATURE_CONTRIBUTIONS", "FORMAT_NAME", "FORMAT_VERSION", "READABLE_VERSIONS", "MANIFEST", "MARKS", "MARK_VALUES"]
