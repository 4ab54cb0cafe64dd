"""Command line: run the protocol (resumably), then write the tables and the plots.

python -m benchmarks.evidence [--regimes balanced imbalanced capacity] [--arms ...]
    [--workers 2] [--budget-hours 6] [--out runs/evidence] [--img-dir DIR] [--report-only]
python -m benchmarks.evidence --quick      # a smoke run of the whole pipeline, not a result
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import ARMS, QUICK, QUICK_ARMS, REFERENCE_ARM, REGIMES

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.evidence",
        description="When does bucket-level MOO beat tuned averaging? A fair benchmark.",
    )
    parser.add_argument("--regimes", nargs="+", choices=list(REGIMES), default=list(REGIMES))
    parser.add_argument(
        "--arms",
        nargs="+",
        choices=list(ARMS),
        default=None,
        help=f"default: all; {REFERENCE_ARM}'s pilot runs in any case",
    )
    parser.add_argument("--workers", type=int, default=2, help="processes, one thread each")
    parser.add_argument(
        "--budget-hours",
        type=float,
        default=6.0,
        help="start no run after this much wall time (finished runs are kept)",
    )
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument("--img-dir", type=Path, default=None, help="plots (default OUT/img)")
    parser.add_argument("--report-only", action="store_true", help="tables from finished runs")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: tiny model, 3 steps, 2 arms (unless --arms), 2 seeds; not a result",
    )
    args = parser.parse_args(argv)

    if args.quick:
        regimes = [QUICK]
        arms = [ARMS[a] for a in (args.arms or QUICK_ARMS)]
        out = args.out or ROOT / "runs" / "evidence-quick"
    else:
        regimes = [REGIMES[r] for r in args.regimes]
        arms = [ARMS[a] for a in (args.arms or ARMS)]
        out = args.out or ROOT / "runs" / "evidence"
    if not any(a.name == REFERENCE_ARM for a in arms):
        arms.insert(0, ARMS[REFERENCE_ARM])

    from .report import write_report
    from .runner import run_protocol

    complete = True
    if not args.report_only:
        complete = run_protocol(
            regimes, arms, out, workers=args.workers, budget_hours=args.budget_hours
        )
    command = "python -m benchmarks.evidence " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    text = write_report(regimes, arms, out, args.img_dir or out / "img", command=command.strip())
    print(text)
    return 0 if complete or args.report_only else 3


if __name__ == "__main__":
    sys.exit(main())
