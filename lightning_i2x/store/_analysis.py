"""What a run's records explain: salient presence, the structured explanation and the shortcut
suspects, derived from the stored arrays (``I2XRun`` inherits these)."""

from __future__ import annotations

import dataclasses

import numpy as np

from .. import analysis
from ..analysis import RELIANCE_ATTACHMENT, SUSPECT_RULE_OPTIONS, Explanation, Reliance, SuspectReport, Suspects, explain, suspect_report
from ..errors import I2XRunError
from ..options import ExplainOptions

__all__ = ["RunAnalysis", "NO_RELIANCE", "CONCEPT_SOURCES"]

CONCEPT_SOURCES = ("prototypes", "xfeatures")
"""What ``run.explain`` reads as concepts: the prototypes' GradCAM intensities (I2X) or the
x-features' contributions (XNN), stored by ``lightning_i2x.xfeatures.store_xfeatures``."""

NO_RELIANCE = ("add RelianceMeasure() to I2XCallback(measures=[...]) or call "
               "lightning_i2x.reliance_of_run(run, model) first")


class RunAnalysis:
    """Steps 4-6 and the suspect rule on what an ``I2XRun`` holds; computed on demand, the
    learning groups of each interval kept (they depend on confidences only)."""

    def presence(self, reference: int | None = None, threshold: float = analysis.SALIENCY_THRESHOLD) -> np.ndarray:
        """(N, K) prototype present in the salient region (``analysis.salient_mask``) of the reference
        checkpoint's map."""
        self._require_prototypes()
        ref = self.reference if reference is None else reference
        n = self.num_probe
        return analysis.salient_presence(self._cams[ref].reshape(n, -1), self._assignment.reshape(n, -1), self.num_prototypes, threshold)

    def explain(self, options: ExplainOptions | None = None, *, reference: int | None = None, concepts: str = "prototypes",
                **params) -> Explanation:
        """The structured explanation (Steps 4-6) with ``options`` (default: the run's recorded
        ``config.explain``, else the method's defaults); keyword ``params`` override single
        options (``run.explain(min_flips=3)``). ``concepts="xfeatures"`` reads the x-features'
        contributions in place of the prototype intensities (their ids are the columns of
        ``xfeature_concepts()``; present where the contribution is nonzero at the reference).
        Raises I2XRunError before the first record or, for x-features, when the run holds no
        contributions of its current checkpoints, and ValueError (naming the option) for an
        unknown or bad option."""
        self._require_prototypes()
        if concepts not in CONCEPT_SOURCES:
            raise ValueError(f"run.explain concepts must be one of {CONCEPT_SOURCES}, got {concepts!r}")
        if options is None:
            options = self._config.explain if self._config is not None else ExplainOptions()
        elif not isinstance(options, ExplainOptions):
            raise TypeError(f"options must be an ExplainOptions, got {type(options).__name__}")
        if params:
            unknown = sorted(set(params) - set(options.to_dict()))
            if unknown:
                raise ValueError(f"run.explain got unknown option(s) {unknown}; ExplainOptions has {sorted(options.to_dict())}")
            options = ExplainOptions(**{**options.to_dict(), **params})
        kw = options.analysis_kwargs()
        if concepts == "xfeatures":
            intensities = self.xfeature_contributions()
            presence = intensities[self.reference if reference is None else reference] != 0
        else:
            intensities, presence = self.intensities(), self.presence(reference, options.saliency_threshold)
        expl = explain(
            intensities,
            self.confidences(),
            self.labels,
            presence,
            class_names=self.class_names,
            groups=self._learning_groups(kw["min_cluster_size"], kw["max_cluster_samples"]),
            saliency_threshold=options.saliency_threshold,
            **kw,
        )
        return expl if concepts == "xfeatures" else self._with_suspects(expl)

    def _with_suspects(self, expl: Explanation) -> Explanation:
        """The explanation with its ``suspects`` when the run holds a reliance of its current
        prototypes (``stored_reliance``); unchanged otherwise."""
        rel = self.stored_reliance()
        if rel is None:
            return expl
        return dataclasses.replace(expl, suspects=Suspects(self.suspect_report(rel)))

    def stored_reliance(self) -> Reliance | None:
        """The reliance stored in the run (``RelianceMeasure`` or ``reliance_of_run``), or None when
        there is none or it was measured on other prototypes than the run's current ones (the
        prototypes are refitted at every record)."""
        stored = self.attachment(RELIANCE_ATTACHMENT)
        if stored is None:
            return None
        arrays, _checkpoint = stored
        ref = int(np.asarray(arrays.get("reference", -1)))
        rel = Reliance.from_arrays(arrays)
        if ref != (-1 if self.reference is None else self.reference) or rel.num_prototypes != self.num_prototypes:
            return None
        return rel

    def suspects(self, reliance: Reliance | None = None, **thresholds) -> list[int]:
        """The suspect ids of ``suspect_report`` (same arguments), most reliant first."""
        return list(self.suspect_report(reliance, **thresholds).suspects)

    def suspect_report(self, reliance: Reliance | None = None, **thresholds) -> SuspectReport:
        """``analysis.suspect_report`` on what the run holds: its stored reliance, its probe
        assignment and the GradCAM intensities of its checkpoints; never ground truth. The
        suspects, or why there are none (the strongest candidates and the criteria they failed,
        or "not localised"). ``thresholds`` override the rule's (``min_reliance=...``).

        Raises I2XRunError when the run has no prototypes, no stored reliance, or a reliance
        measured on earlier prototypes, saying what to do; ValueError for an unknown threshold."""
        self._require_prototypes()
        rel = self.stored_reliance() if reliance is None else reliance
        if rel is None:
            why = "holds no reliance" if self.attachment(RELIANCE_ATTACHMENT) is None else "holds a reliance measured on earlier prototypes"
            raise I2XRunError(f"{self.path} {why}: the suspect rule needs how much the model relies on each prototype; {NO_RELIANCE}")
        unknown = sorted(set(thresholds) - SUSPECT_RULE_OPTIONS)
        if unknown:
            raise ValueError(f"suspects got unknown threshold(s) {unknown}; the rule takes {sorted(SUSPECT_RULE_OPTIONS)}")
        return suspect_report(rel, self.assignment(), self.labels, intensities=self.intensities(),
                              num_prototypes=self.num_prototypes, **thresholds)

    def _learning_groups(self, min_cluster_size: int | None, max_cluster_samples: int | None) -> np.ndarray:
        """HDBSCAN labels per interval; they depend on confidences only, so each interval is
        clustered once and reused at later checkpoints."""
        conf = self._confidences
        rows = []
        for t in range(len(conf) - 1):
            key = (t, min_cluster_size, max_cluster_samples)
            if key not in self._groups:
                dy = conf[t + 1].astype(np.float64) - conf[t].astype(np.float64)
                self._groups[key] = analysis.learning_groups(dy, min_cluster_size, max_cluster_samples)
            rows.append(self._groups[key])
        return np.stack(rows) if rows else np.zeros((0, self.num_probe), np.int64)
