"""The record pipeline, with no Trainer: the probe set materialised once, the probe pass and its
evidence, opening or resuming a run, the checks a fit must pass before training, each record's
analysis (append + refit, explain, measures) and the end-of-fit step, and the background worker."""

from ._distributed import Group, distributed_probe_pass, head_images
from ._pipeline import (
    MAX_STORED_PROBE_BYTES,
    ProbeEvidence,
    Recorder,
    gather_evidence,
    open_or_resume,
    open_run,
    probe_pass,
    probe_share,
    resume_run,
    run_fingerprint,
    run_state,
)
from ._probe import materialise_probe, probe_fingerprint
from ._setup import check_fit, check_writable
from ._steps import Attempt, analyse_record, finish_fit
from ._worker import AnalysisWorker

__all__ = [
    "ProbeEvidence", "probe_pass", "Recorder", "AnalysisWorker", "open_run", "resume_run", "open_or_resume", "run_state",
    "run_fingerprint", "MAX_STORED_PROBE_BYTES", "materialise_probe", "probe_fingerprint", "check_fit", "check_writable",
    "Attempt", "analyse_record", "finish_fit", "gather_evidence", "probe_share", "Group", "distributed_probe_pass", "head_images",
]
