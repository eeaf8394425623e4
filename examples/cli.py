"""LightningCLI with ``I2XCallback`` configured in YAML: the callback, its probe set and its view
options are all given by ``class_path`` / ``init_args``.

    python examples/cli.py fit --config examples/cli_config.yaml

Data: ``data.data_dir`` and the probe's ``data_dir`` (null: $I2X_DATA_DIR, else ../shared/data,
else a torchvision download, as in ``examples/demo_data.py``).

The option groups (``views``, ``explain``, ``prototypes``, ...) are nested ``init_args``; each is
checked when the callback is built, before training.

A probe set is data, not a YAML value: ``MNISTProbe`` below is a Dataset whose constructor takes
plain arguments, so ``probe: {class_path: cli.MNISTProbe, init_args: {per_class: 20}}`` builds it
(``cli`` is this file, importable because Python puts its folder on ``sys.path``). Any Dataset
class with such a constructor works the same way.
"""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.cli import LightningCLI
from torch.utils.data import DataLoader, Subset, TensorDataset

from demo_data import balanced_indices, load_mnist
from demo_models import SmallCNN


class MNISTProbe(TensorDataset):
    """``per_class`` MNIST test images of each class, drawn with a fixed seed: an I2X probe set."""

    def __init__(self, per_class: int = 20, data_dir: str | None = None, seed: int = 0):
        test = load_mnist(train=False, data_dir=data_dir)
        idx = balanced_indices(test.tensors[1], per_class, seed)
        super().__init__(test.tensors[0][idx], test.tensors[1][idx])
        self.classes = test.classes


class MNISTDataModule(pl.LightningDataModule):
    """The first ``train_size`` MNIST training images and the first ``val_size`` test images."""

    def __init__(self, data_dir: str | None = None, train_size: int = 60000, val_size: int = 2000, batch_size: int = 128):
        super().__init__()
        self.data_dir, self.train_size, self.val_size, self.batch_size = data_dir, train_size, val_size, batch_size

    def setup(self, stage: str) -> None:
        train, test = load_mnist(train=True, data_dir=self.data_dir), load_mnist(train=False, data_dir=self.data_dir)
        self.train_set = Subset(train, range(min(self.train_size, len(train))))
        self.val_set = Subset(test, range(min(self.val_size, len(test))))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=500)


def main(args: list[str] | None = None) -> LightningCLI:
    return LightningCLI(SmallCNN, MNISTDataModule, args=args, save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    main()
