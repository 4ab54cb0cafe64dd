"""How the bucket-MOO hook's cost grows with languages, slots, granularity and bucket size.

Three curves, each point against plain DDP measured in the same gloo processes, interleaved
step by step (the method of ``hook_overhead.py``, whose model and runner it uses):

* ``T``: languages per step 2, 4, 8, 16 at K = 8 slots per rank (T needs W K >= T slots);
* ``K``: slots per rank 1, 2, 4, 8 at T = 2 (plain DDP then also runs K backward passes per
  step, each with its all-reduce: the hook must move K slots of gradients, too);
* ``bucket``: DDP's bucket cap at T = 2, K = 1;

each at granularity ``bucket``, ``parameter`` and ``global``, MGDA over the sharded
transport. Printed per point: median step time and its ratio to plain DDP (median and range
over ``--repeats`` runs), the hook's time split by phase (``StepStats.seconds``), bytes sent
and the hook's peak extra memory. ``--plot`` saves the curves as an image.

    python benchmarks/hook_scaling.py [--steps 6] [--repeats 1] [--curves T K bucket]
        [--plot docs/img/hook-scaling.png]
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict

from hook_overhead import run_repeated

from lightning_bmoo.comm.stats import PHASES

GRANULARITIES = ("bucket", "parameter", "global")


def curve_runs(curve: str, args: argparse.Namespace) -> list[list[dict]]:
    """The process groups of one curve: each a list of configurations, plain DDP first."""

    def group(bucket_mb: float, K: int, Ts: list[int]) -> list[dict]:
        base = {"bucket_mb": bucket_mb, "slots": K, "transport": "sharded"}
        plain = dict(base, aggregator=None, transport="-", granularity="-", languages=Ts[0])
        return [plain] + [
            dict(base, aggregator="mgda", granularity=g, languages=T)
            for T in Ts
            for g in args.granularities
        ]

    if curve == "T":
        return [group(args.bucket_mb, args.t_slots, [T for T in args.languages])]
    if curve == "K":
        return [group(args.bucket_mb, K, [2]) for K in args.slots]
    if curve == "bucket":
        return [group(mb, 1, [2]) for mb in args.bucket_sizes]
    raise ValueError(f"Unknown curve {curve!r}: T, K or bucket.")


def measure(args: argparse.Namespace) -> list[dict]:
    """Every point of every curve, with its plain DDP baseline, ``--repeats`` times."""
    points = []
    for curve in args.curves:
        for configs in curve_runs(curve, args):
            measured = run_repeated(configs, args.steps, 2, args.repeats, warmup=2)
            plains = measured[0][0]
            for config, (runs, ratios) in zip(configs[1:], measured[1:]):
                points.append(
                    {
                        "curve": curve,
                        "config": config,
                        "plain_ms": 1e3 * statistics.median(p["step"] for p in plains),
                        "step_ms": 1e3 * statistics.median(run["step"] for run in runs),
                        "ratio": statistics.median(ratios),
                        "ratio_lo": min(ratios),
                        "ratio_hi": max(ratios),
                        "hook_ms": 1e3 * statistics.median(run["hook"] for run in runs),
                        "phases_ms": {
                            phase: 1e3 * statistics.median(run["phases"][phase] for run in runs)
                            for phase in PHASES
                        },
                        "sent_mb": runs[0]["sent"] / 1e6,
                        # Plain DDP's traffic: K ring all-reduces, 2 (W - 1) / W n each (W = 2).
                        "all_reduce_mb": config["slots"] * runs[0]["numel"] * 4 / 1e6,
                        "held_mb": max(run["held_mb"] for run in runs),
                        "groups": runs[0]["groups"],
                        "numel": runs[0]["numel"],
                    }
                )
    return points


def print_tables(points: list[dict], args: argparse.Namespace) -> None:
    numel = points[0]["numel"]
    print(
        f"2 gloo ranks x 1 thread, {numel / 1e6:.1f}M parameters, MGDA, sharded transport; "
        f"median of {args.steps} interleaved steps, {args.repeats} repeat(s) (range in brackets)\n"
    )
    print(
        "| curve | T | K | bucket MB | granularity | groups | plain ms | step ms | x plain "
        "| hook ms | " + " | ".join(PHASES) + " | MB sent | x K all-reduces | held MB |"
    )
    print("|---" * (13 + len(PHASES)) + "|")
    for p in points:
        c = p["config"]
        spread = f" [{p['ratio_lo']:.3f}-{p['ratio_hi']:.3f}]" if args.repeats > 1 else ""
        print(
            f"| {p['curve']} | {c['languages']} | {c['slots']} | {c['bucket_mb']:g} "
            f"| {c['granularity']} | {p['groups']} | {p['plain_ms']:.0f} | {p['step_ms']:.0f} "
            f"| {p['ratio']:.3f}{spread} | {p['hook_ms']:.1f} | "
            + " | ".join(f"{p['phases_ms'][phase]:.1f}" for phase in PHASES)
            + f" | {p['sent_mb']:.1f} | {p['sent_mb'] / p['all_reduce_mb']:.3f} "
            f"| {p['held_mb']:.1f} |"
        )


def plot(points: list[dict], path: str) -> None:
    """Ratio to plain DDP along each curve, and where the hook's time goes along ``T``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_of = {
        "T": ("languages", "languages per step T (K = 8)", "log"),
        "K": ("slots", "slots per rank K (T = 2)", "log"),
        "bucket": ("bucket_mb", "bucket cap MB (T = 2, K = 1)", "log"),
    }
    curves = [c for c in axes_of if any(p["curve"] == c for p in points)]
    fig, axes = plt.subplots(1, len(curves) + 1, figsize=(4.2 * (len(curves) + 1), 3.6))
    for ax, curve in zip(axes, curves):
        key, label, scale = axes_of[curve]
        lines = defaultdict(list)
        for p in points:
            if p["curve"] == curve:
                lines[p["config"]["granularity"]].append(p)
        for granularity, pts in lines.items():
            xs = [p["config"][key] for p in pts]
            ax.errorbar(
                xs,
                [p["ratio"] for p in pts],
                yerr=[
                    [p["ratio"] - p["ratio_lo"] for p in pts],
                    [p["ratio_hi"] - p["ratio"] for p in pts],
                ],
                marker="o",
                capsize=3,
                label=granularity,
            )
        ax.set_xscale(scale, base=2)
        ax.set_xlabel(label)
        ax.set_ylabel("step time / plain DDP")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.legend(fontsize=8)
    ax = axes[-1]
    pts = [p for p in points if p["curve"] == curves[0] and p["config"]["granularity"] == "bucket"]
    key = axes_of[curves[0]][0]
    bottom = [0.0] * len(pts)
    for phase in PHASES:
        heights = [p["phases_ms"][phase] for p in pts]
        ax.bar([str(p["config"][key]) for p in pts], heights, bottom=bottom, label=phase)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_xlabel(axes_of[curves[0]][1] + ", granularity bucket")
    ax.set_ylabel("hook ms per step, by phase")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"\nsaved {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--curves", nargs="+", default=["T", "K", "bucket"])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--languages", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--t-slots", type=int, default=8, help="K of the T curve")
    parser.add_argument("--slots", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--bucket-mb", type=float, default=5.0, help="cap of the T and K curves")
    parser.add_argument("--bucket-sizes", type=float, nargs="+", default=[1.0, 5.0, 25.0])
    parser.add_argument("--granularities", nargs="+", default=list(GRANULARITIES))
    parser.add_argument("--plot", help="save the curves to this image (PNG or SVG)")
    args = parser.parse_args()
    points = measure(args)
    print_tables(points, args)
    if args.plot:
        plot(points, args.plot)


if __name__ == "__main__":
    main()
