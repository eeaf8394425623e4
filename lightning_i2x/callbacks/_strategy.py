"""Which Lightning strategies the callback supports, checked at ``setup``."""

from __future__ import annotations

from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy, Strategy

__all__ = ["check_strategy"]

_SHARDED = (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy)


def check_strategy(strategy: Strategy) -> None:
    """Refuse the strategies that shard the model's parameters (FSDP, DeepSpeed, model parallel):
    each rank runs its own share of the probe, with fewer batches on the last rank, while a sharded
    forward is a collective every rank must enter the same number of times, so the probe pass would
    hang. Raises ValueError naming what works."""
    if isinstance(strategy, _SHARDED):
        raise ValueError(
            f"I2XCallback does not support strategy={type(strategy).__name__} yet: a sharded model's forward is a "
            "collective that the per-rank probe pass cannot enter evenly. Use a single device, strategy='ddp' or "
            "'ddp_spawn' (the probe is split across ranks and gathered on rank 0), or record after training with "
            "trainer.validate on one device"
        )
