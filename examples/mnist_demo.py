"""Train a small CNN on MNIST with I2XCallback attached, print what it found and write the HTML
report (``report.html`` beside the TensorBoard logs) and the interactive one (``dashboard.html``),
and print the ``i2x serve`` command.

    python examples/mnist_demo.py [--data-dir DIR] [--epochs 2] [--out i2x_demo]

Data: --data-dir, else $I2X_DATA_DIR, else ../shared/data when it exists, else a torchvision
download into ~/.cache/lightning_i2x.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, Subset

from lightning_i2x import I2XCallback, I2XRun
from lightning_i2x.dashboard import write_interactive_report
from lightning_i2x.viz import write_report

from demo_data import balanced_indices, load_mnist
from demo_models import SmallCNN


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None, help="folder holding mnist/ (default: $I2X_DATA_DIR, ../shared/data, or download)")
    ap.add_argument("--out", default="i2x_demo", help="where TensorBoard logs and the I2X run go")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-size", type=int, default=60000, help="training images per epoch")
    ap.add_argument("--val-checks-per-epoch", type=int, default=3, help="I2X checkpoints per epoch")
    ap.add_argument("--probe-per-class", type=int, default=100)
    ap.add_argument("--num-prototypes", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    pl.seed_everything(args.seed, verbose=False)
    t0 = time.perf_counter()
    train = load_mnist(train=True, data_dir=args.data_dir)
    test = load_mnist(train=False, data_dir=args.data_dir)
    train_set = Subset(train, range(min(args.train_size, len(train))))
    probe = Subset(test, balanced_indices(test.tensors[1], args.probe_per_class).tolist())
    probe.classes = test.classes
    val = Subset(test, range(2000))

    logger = TensorBoardLogger(args.out, name="mnist")
    callback = I2XCallback(probe, target_layer="features", num_prototypes=args.num_prototypes)
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        logger=logger,
        callbacks=[callback],
        val_check_interval=1.0 / args.val_checks_per_epoch,
        num_sanity_val_steps=0,
        enable_model_summary=False,
        deterministic=True,
    )
    trainer.fit(
        SmallCNN(lr=1e-2),  # the one-cycle peak: warm-up to 1e-2, then annealed over the fit
        DataLoader(train_set, batch_size=64, shuffle=True),
        DataLoader(val, batch_size=500),
    )

    run = I2XRun.load(callback.run.path)
    expl = run.explain()
    names = run.class_names
    print()
    print(f"I2X run:          {run.path}  ({run.num_checkpoints} checkpoints, {run.num_prototypes} prototypes, {run.num_probe} probe images)")
    events = sum(f.stat().st_size for f in Path(logger.log_dir).glob("events.out.tfevents.*"))
    print(f"TensorBoard logs: {Path(logger.log_dir)}   (view: tensorboard --logdir {args.out}; event files {events / 2**20:.1f} MiB)")
    print(f"validation accuracy: {trainer.callback_metrics['val_acc']:.4f}; finished in {time.perf_counter() - t0:.0f} s")
    probe_acc = (run.confidences().argmax(axis=2) == run.labels).mean(axis=1)
    print("probe accuracy at each record: " + " ".join(f"{a:.3f}" for a in probe_acc))
    print()
    if expl.uncertain:
        print("Top uncertain prototypes (evidence the model kept reassigning between two classes):")
        for u in expl.uncertain[:8]:
            a, b = u.classes
            print(f"  P-{u.prototype:<3d} {names[a]} <-> {names[b]}   flips={u.flips}  score={u.score:.3g}")
    else:
        print("No uncertain prototype found (no pair's evidence flipped sign twice).")
    print()
    for c in range(len(names)):
        print(f"  class {names[c]}: shared {expl.shared_prototypes(c)}  specialised {expl.specialised_prototypes(c)}")
    resolved = [s for s in expl.learning_order() if s.interval is not None]
    print()
    print("Learning order (pair @ interval resolved): " + ", ".join(f"{names[s.classes[0]]}/{names[s.classes[1]]}@T{s.interval}" for s in resolved[:12]))
    if run.errors:
        print(f"explainer errors recorded: {run.errors}")
    report = write_report(run, Path(logger.log_dir) / "report.html", explanation=expl, progress=True)
    print()
    print(f"HTML report: {report.resolve()}  ({report.stat().st_size / 2**20:.1f} MiB; open it in a browser)")
    dashboard = write_interactive_report(run, Path(logger.log_dir) / "dashboard.html")
    print(f"interactive report: {dashboard.resolve()}  ({dashboard.stat().st_size / 2**20:.1f} MiB; opens offline)")
    print(f"dashboard: i2x serve {args.out}   (then open http://127.0.0.1:6007/)")


if __name__ == "__main__":
    main()
