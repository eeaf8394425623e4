"""Command line: ``i2x summary RUN_DIR``, ``i2x report RUN_DIR --out FILE [--interactive]`` and
``i2x serve RUN_DIR|LOG_DIR`` (also ``python -m lightning_i2x``)."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from .errors import I2XRunError
from .store import I2XRun

HIDDEN_BY = {"latent": "latent swap at the target layer", "project": "its subspace projected out at the target layer"}
"""How each latent intervention hid a prototype, for the summary (the pixel one names its fill)."""


def reliance_summary(run: I2XRun, top: int = 8) -> str:
    """The stored reliance (``RelianceMeasure``): the most relied-on prototypes and the shortcut
    suspects, or how to measure it when the run holds none."""
    rel = run.stored_reliance()
    if rel is None:
        return ("## Reliance\n\nNot measured: add `RelianceMeasure()` to `I2XCallback(measures=[...])` or call "
                "`lightning_i2x.reliance_of_run(run, model)`.\n")
    report = run.suspect_report(rel)
    suspects = report.suspects
    order = [int(k) for k in np.argsort(-np.nan_to_num(rel.reliance, nan=-np.inf), kind="stable") if np.isfinite(rel.reliance[k])]
    lines = ["## Reliance", "",
             "Drop of the true class's probability when a prototype is hidden, beyond hiding as much of the image at random "
             f"({HIDDEN_BY.get(rel.intervention, rel.fill + ' fill')}, "
             f"{rel.n_random} random draws).", "",
             "| prototype | reliance | drop | random drop | probe images | suspect |", "|---|---|---|---|---|---|"]
    for k in order[:top]:
        lines.append(f"| P-{k} | {rel.reliance[k]:+.3f} | {rel.drop[k]:.3f} | {rel.random_drop[k]:.3f} | {int(rel.count[k])} | "
                     f"{'yes' if k in suspects else ''} |")
    lines += ["", "Shortcut suspects: " + report.summary() +
              (" (fix: `PerturbationFinetuner(run, FinetuneOptions(prototypes=\"suspects\", mode=\"mask\"))`)" if suspects else ""), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="i2x", description="Read I2X runs recorded by lightning_i2x.I2XCallback.")
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("summary", help="print the findings of a run as text")
    s.add_argument("run_dir")
    s.add_argument("--json", action="store_true", help="print the whole explanation as JSON instead")
    r = sub.add_parser("report", help="write a self-contained HTML report (images embedded)")
    r.add_argument("run_dir")
    r.add_argument("--out", required=True, help="the HTML file to write")
    r.add_argument("--classes", nargs="+", metavar="CLASS", help="classes to draw, by index or name (default: all)")
    r.add_argument("--max-pairs", type=int, default=3, help="confused pairs to draw (default 3)")
    r.add_argument("--dpi", type=int, default=80, help="image resolution (default 80)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    r.add_argument("--interactive", action="store_true",
                   help="write the interactive dashboard as one self-contained HTML file instead (opens offline)")
    r.add_argument("--max-mb", type=float, default=48.0, help="--interactive: the most data inlined, in MiB (default 48)")
    v = sub.add_parser("serve", help="serve the interactive dashboard of every run under a directory")
    v.add_argument("directory", help="a run directory or a log directory holding runs")
    v.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    v.add_argument("--port", type=int, default=6007, help="port (default 6007; 0 picks a free one)")
    v.add_argument("--read-only", action="store_true", help="refuse every write (the marks)")
    args = ap.parse_args(argv)
    if args.command == "serve":
        from .dashboard import find_runs, serve

        if not find_runs(args.directory):
            print(f"i2x: no I2X run under {args.directory} (a run directory holds a manifest.json of format lightning-i2x-run)",
                  file=sys.stderr)
            return 2
        serve(args.directory, host=args.host, port=args.port, read_only=args.read_only)
        return 0
    if args.command == "report" and args.interactive:
        from .dashboard import write_interactive_report

        try:
            out = write_interactive_report(args.run_dir, args.out, max_bytes=int(args.max_mb * 2**20))
        except I2XRunError as e:
            print(f"i2x: {e}", file=sys.stderr)
            return 2
        print(out)
        return 0
    try:
        run = I2XRun.load(args.run_dir)
        expl = run.explain()
    except I2XRunError as e:
        print(f"i2x: {e}", file=sys.stderr)
        return 2
    if args.command == "report":
        from .viz import write_report

        classes = None if not args.classes else tuple(int(c) if c.isdigit() else c for c in args.classes)
        try:
            out = write_report(run, args.out, explanation=expl, classes=classes, max_pairs=args.max_pairs, dpi=args.dpi,
                               progress=not args.no_progress)
        except (KeyError, IndexError, ValueError) as e:
            print(f"i2x: {e}", file=sys.stderr)
            return 2
        print(out)
    elif args.json:
        print(json.dumps(expl.to_dict(), indent=1))
    else:
        print(f"# I2X run {run.path}\n")
        print(f"{run.num_checkpoints} checkpoints, {run.num_prototypes} prototypes, {run.num_probe} probe images, "
              f"target layer {run.config.target_layer if run.config else None!r}\n")
        print(expl.to_markdown())
        print(reliance_summary(run))
        if run.errors:
            print(f"{len(run.errors)} explainer errors recorded; first: {run.errors[0]['type']}: {run.errors[0]['message']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
