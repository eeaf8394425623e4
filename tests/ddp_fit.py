"""Run by tests/test_distributed.py: a 2-process gloo DDP fit with I2XCallback on real digits.

    python tests/ddp_fit.py OUT_DIR [FAIL_RANK|-] [PROBE_SIZE]

Saves the model's weights at every I2X record (rank 0) to OUT_DIR/weights-E.pt, so the test can
replay the same weights in one process and compare the explanations. With FAIL_RANK, the probe
pass of that rank raises at the second record. PROBE_SIZE (default 201, at most 297) images follow
the 1,500 training digits.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lightning_i2x.record._pipeline as record_module  # noqa: E402
from lightning_i2x import I2XCallback, ProbePassOptions  # noqa: E402
from tests.conftest import TinyCNN  # noqa: E402

for noise in (".*does not have many workers.*", ".*LeafSpec.*", ".*GPU available but not used.*"):
    warnings.filterwarnings("ignore", noise)


class SaveWeights(pl.Callback):
    """Keep each validation end's weights (rank 0), the ones the I2X record saw."""

    def __init__(self, out: Path):
        self.out = out

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.is_global_zero and not trainer.sanity_checking:
            torch.save(pl_module.state_dict(), self.out / f"weights-{trainer.current_epoch}.pt")


def digits(probe: int = 201):
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    y = torch.tensor(d.target, dtype=torch.int64)
    return TensorDataset(x[:1500], y[:1500]), TensorDataset(x[1500 : 1500 + probe], y[1500 : 1500 + probe])  # odd probe sizes


def fail_on(rank: int) -> None:
    real, calls = record_module.probe_batches, []

    def probe_batches(*args, **kwargs):
        calls.append(1)
        if dist.get_rank() == rank and len(calls) == 2:
            raise RuntimeError(f"injected probe failure on rank {rank}")
        return real(*args, **kwargs)

    record_module.probe_batches = probe_batches


def main(out: Path, fail_rank: int | None, probe_size: int) -> None:
    if fail_rank is not None:
        fail_on(fail_rank)
    pl.seed_everything(0, verbose=False)
    train, probe = digits(probe_size)
    cb = I2XCallback(probe, num_prototypes=8, run_dir=out / "run", probe_pass=ProbePassOptions(batch_size=64))
    trainer = pl.Trainer(
        strategy="ddp", accelerator="cpu", devices=2, max_epochs=3, default_root_dir=out,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, enable_checkpointing=False,
        callbacks=[cb, SaveWeights(out)],
    )
    trainer.fit(TinyCNN(), DataLoader(train, batch_size=64, shuffle=True), DataLoader(probe, batch_size=100))
    if trainer.is_global_zero:
        (out / "done").write_text(str(cb.run.num_checkpoints))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2] != "-" else None, int(sys.argv[3]) if len(sys.argv) > 3 else 201)
