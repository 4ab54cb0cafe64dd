"""``python -m lightning_bmoo.report RUN_DIR [RUN_DIR ...] -o report.html``.

Writes one self-contained HTML page comparing the runs found under the given directories
(Lightning CSVLogger dirs and/or offline W&B run dirs).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from .html import build_report
from .sources import Run, RunDirError, load_runs


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bmoo-report",
        description="Offline HTML report of lightning_bmoo runs (gradient-conflict dashboard).",
    )
    p.add_argument(
        "run_dirs",
        nargs="+",
        type=Path,
        metavar="RUN_DIR",
        help="a CSVLogger dir (holding metrics.csv), an offline W&B run dir "
        "(holding run-<id>.wandb), or a folder above them: every run found is included",
    )
    p.add_argument("-o", "--output", type=Path, default=Path("report.html"), help="output file")
    p.add_argument(
        "-l",
        "--label",
        action="append",
        default=[],
        metavar="NAME",
        help="name for the run of the matching RUN_DIR (repeat, in order); "
        "for a RUN_DIR holding several runs, used as a prefix",
    )
    p.add_argument("--title", default="lightning_bmoo run report", help="page title")
    p.add_argument(
        "--snapshots",
        type=int,
        default=5,
        help="heatmaps drawn per matrix at evenly spaced steps, last step included (default 5)",
    )
    return p.parse_args(argv)


def collect(run_dirs: Sequence[Path], labels: Sequence[str]) -> list[Run]:
    """Runs under every directory, labelled, with names made unique."""
    if len(labels) > len(run_dirs):
        raise RunDirError(f"{len(labels)} --label given for {len(run_dirs)} RUN_DIR")
    runs: list[Run] = []
    for i, path in enumerate(run_dirs):
        label = labels[i] if i < len(labels) else None
        found = load_runs(path, label)
        if label and len(found) > 1:
            for run in found:
                run.name = f"{label}:{run.name}"
        runs.extend(found)
    # Two "version_0" from different save dirs must stay tellable apart in legends.
    counts = Counter(run.name for run in runs)
    seen: Counter[str] = Counter()
    for run in runs:
        if counts[run.name] > 1:
            seen[run.name] += 1
            run.name = f"{run.name} ({seen[run.name]})"
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        runs = collect(args.run_dirs, args.label)
    except (RunDirError, FileNotFoundError, ValueError) as e:
        print(f"bmoo-report: error: {e}", file=sys.stderr)
        return 2
    page = build_report(runs, title=args.title, snapshots=args.snapshots)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(page, encoding="utf-8")
    names = ", ".join(run.name for run in runs)
    print(f"Wrote {args.output} ({len(page) / 1e6:.1f} MB): {names}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
