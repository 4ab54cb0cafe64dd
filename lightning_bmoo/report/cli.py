"""``bmoo-report RUN_DIR [RUN_DIR ...] -o report.html``: the command line of the report.

Exit status: 0 when every run found is in the page; 1 when the page was written but some run
could not be read (each is listed in the page and on stderr); 2 when nothing was written (bad
arguments, no run found, or no readable run). Loads neither torch nor Lightning, and wandb
only to decode W&B logs.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from .errors import LogError, RunDirError
from .sources import Run, drop_duplicates, find_runs, load_run


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command's options (``bmoo-report --help``)."""
    p = argparse.ArgumentParser(
        prog="bmoo-report",
        description="Offline HTML report of lightning_bmoo runs (gradient-conflict dashboard).",
        epilog="Exit status: 0 all runs shown; 1 page written without some unreadable run; "
        "2 nothing written.",
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
    p.add_argument(
        "--partial",
        action="store_true",
        help="show the readable part of a damaged W&B log (under an 'incomplete log' banner) "
        "instead of leaving the run out",
    )
    return p.parse_args(argv)


def collect(
    run_dirs: Sequence[Path], labels: Sequence[str], *, partial: bool = False
) -> tuple[list[Run], list[tuple[Path, str]]]:
    """Runs under every directory, labelled, duplicates dropped, names made unique.

    Returns:
        The runs, and ``(run_dir, error)`` of every run whose log could not be read.

    Raises:
        RunDirError: for more labels than directories, or a directory without any run.
    """
    if len(labels) > len(run_dirs):
        raise RunDirError(f"{len(labels)} --label given for {len(run_dirs)} RUN_DIR")
    runs: list[Run] = []
    failed: list[tuple[Path, str]] = []
    for i, path in enumerate(run_dirs):
        label = labels[i] if i < len(labels) else None
        found = find_runs(path)
        if not found:
            raise RunDirError(
                f"{path}: no run found. Expected a Lightning CSVLogger directory (with "
                "metrics.csv) or an offline W&B run directory (with a run-<id>.wandb file), "
                "or a folder above one."
            )
        for source, run_dir in found:
            try:
                run = load_run(source, run_dir, label if len(found) == 1 else None, partial=partial)
            except LogError as error:
                failed.append((run_dir, str(error)))
                continue
            if label and len(found) > 1:
                run.name = f"{label}:{run.name}"
            runs.append(run)
    runs = drop_duplicates(runs)
    # Two "version_0" from different save dirs must stay tellable apart in legends.
    counts = Counter(run.name for run in runs)
    seen: Counter[str] = Counter()
    for run in runs:
        if counts[run.name] > 1:
            seen[run.name] += 1
            run.name = f"{run.name} ({seen[run.name]})"
    return runs, failed


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command; returns its exit status (see the module's docstring)."""
    args = parse_args(argv)
    try:
        runs, failed = collect(args.run_dirs, args.label, partial=args.partial)
    except RunDirError as e:
        print(f"bmoo-report: error: {e}", file=sys.stderr)
        return 2
    hint = "" if args.partial else "; --partial shows the part before it"
    for _, error in failed:
        damaged = "corrupt at byte" in error
        print(f"bmoo-report: error: {error}{hint if damaged else ''}", file=sys.stderr)
    if not runs:
        return 2
    from .page import build_report

    page = build_report(runs, title=args.title, snapshots=args.snapshots, failed=failed)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(page, encoding="utf-8")
    for run in runs:
        if run.problem:
            print(f"bmoo-report: warning: {run.problem}; showing the part before it")
        elif run.finished is False:
            print(f"bmoo-report: note: {run.name} is unfinished (its log has no exit record)")
        for path in run.duplicates:
            print(f"bmoo-report: note: {path} holds the same run as {run.path}; shown once")
    names = ", ".join(run.name for run in runs)
    print(f"Wrote {args.output} ({len(page) / 1e6:.1f} MB): {names}")
    if failed:
        print(f"bmoo-report: {len(failed)} run(s) left out (listed in the page)", file=sys.stderr)
    return 1 if failed else 0
