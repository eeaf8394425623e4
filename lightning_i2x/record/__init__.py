"""The record pipeline, with no Trainer: the probe set materialised once, the probe pass and its
evidence, opening or resuming a run, the checks a fit must pass before training, each record's
analysis (append + refit, explain, measures) and the end-of-fit step, and the background worker."""

from ._pipeline import MAX_STORED_PROBE_BYTES, ProbeEvidence, Recorder, open_run, probe_pass, resume_run, run_fingerprint
from ._probe import materialise_probe, probe_fingerprint
from ._worker import AnalysisWorker

__all__ = [
    "ProbeEvidence", "probe_pass", "Recorder", "AnalysisWorker", "open_run", "resume_run", "run_fingerprint",
    "MAX_STORED_PROBE_BYTES", "materialise_probe", "probe_fingerprint",
]
