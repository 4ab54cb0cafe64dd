"""Fine-tuning quality at a fixed budget: plain averaging vs bucket, parameter and global MOO.

Runs the main example (``examples/multilingual/finetune.py``: a pretrained base model
fine-tuned on six languages in four scripts, 2 gloo ranks x K = 3 slots, so every step holds
every language) once per configuration and seed, with the same steps, data and base model,
and prints a markdown table: per configuration the validation loss averaged over languages,
the worst language's loss, their spread over seeds (standard deviation), the change against
plain averaging, each language's loss, and the peak extra memory the hook held.

    python benchmarks/quality.py [--seeds 0 1 2] [--steps 150] [--configs mean:bucket mgda:bucket]

Each run is a separate process (Lightning's launcher), so this takes a while: about
(steps x 0.5 s + 40 s) per run on two CPU cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [
    "mean:bucket",
    "mgda:bucket",
    "pcgrad:bucket",
    "cagrad:bucket",
    "mgda:parameter",
    "mgda:global",
]


def run_one(config: str, seed: int, args: argparse.Namespace) -> dict:
    """Runs the example once (or reads a finished run) and returns its results."""
    aggregator, granularity = config.split(":")
    name = f"{aggregator}-{granularity}-s{seed}"
    # The example writes each run into a new folder OUT/NAME/version_N.
    finished = sorted((args.out / name).glob("version_*/results.json"))
    if not finished:
        cmd = [
            sys.executable,
            "-m",
            "examples.multilingual.finetune",
            "--aggregator",
            aggregator,
            "--granularity",
            granularity,
            "--seed",
            str(seed),
            "--steps",
            str(args.steps),
            "--logger",
            "csv",
            "--no-report",
            "--out",
            str(args.out),
            "--name",
            name,
            "--val-every",
            str(args.steps),
            *args.extra,
        ]
        print(f"running {name} ...", file=sys.stderr, flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        finished = sorted((args.out / name).glob("version_*/results.json"))
    latest = max(finished, key=lambda path: int(path.parent.name.removeprefix("version_")))
    out = json.loads(latest.read_text())
    metrics = Path(out["run_dir"]) / "csv" / "metrics.csv"
    out["peak_extra_mb"] = _last(metrics, "interference/comm/peak_extra_mb")
    return out


def _last(metrics: Path, key: str) -> float:
    value = math.nan
    with metrics.open() as f:
        for row in csv.DictReader(f):
            if row.get(key):
                value = float(row[key])
    return value


def _mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {std:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument(
        "--configs", nargs="+", default=CONFIGS, help="aggregator:granularity pairs"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "quality")
    parser.add_argument("extra", nargs="*", help="more example options, after --")
    args = parser.parse_args()
    table = {c: [run_one(c, s, args) for s in args.seeds] for c in args.configs}
    languages = sorted(next(iter(table.values()))[0]["val_loss"])
    base = args.configs[0]

    def mean_loss(r: dict) -> float:
        return statistics.mean(r["val_loss"].values())

    def worst_loss(r: dict) -> float:
        return max(r["val_loss"].values())

    base_mean = statistics.mean(mean_loss(r) for r in table[base])
    base_worst = statistics.mean(worst_loss(r) for r in table[base])
    print(
        f"{len(args.seeds)} seeds x {args.steps} steps, languages {', '.join(languages)}; "
        f"validation loss (lower is better), mean ± std over seeds; Δ against {base}\n"
    )
    header = [
        "aggregator:granularity",
        "mean loss",
        "Δ mean",
        "worst loss",
        "Δ worst",
        *languages,
        "hook peak extra MB",
        "s / run",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for config, runs in table.items():
        means = [mean_loss(r) for r in runs]
        worsts = [worst_loss(r) for r in runs]
        per_lang = [
            f"{statistics.mean(r['val_loss'][lang] for r in runs):.3f}" for lang in languages
        ]
        cells = [
            config,
            _mean_std(means),
            f"{statistics.mean(means) - base_mean:+.3f}",
            _mean_std(worsts),
            f"{statistics.mean(worsts) - base_worst:+.3f}",
            *per_lang,
            f"{max(r['peak_extra_mb'] for r in runs):.2f}",
            f"{statistics.mean(r['seconds'] for r in runs):.0f}",
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
