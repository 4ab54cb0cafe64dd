"""The figures: the empirical trade-off front (worst vs mean language) and per-language bars."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from .summary import RegimeSummary

_COLOURS = {"averaging": "tab:blue", "static": "tab:cyan", "control": "tab:gray"}
_METHOD_COLOURS = {
    "mgda": "tab:red",
    "cagrad": "tab:orange",
    "upgrad": "tab:green",
    "pcgrad": "tab:purple",
    "nash_mtl": "tab:brown",
}


def _colour(arm) -> str:
    return _METHOD_COLOURS.get(arm.aggregator, _COLOURS.get(arm.family, "black"))


def _marker(arm) -> str:
    if arm.family != "moo":
        return "s" if arm.family in ("averaging", "static") else "x"
    return {
        ("bucket", False): "o",
        ("bucket", True): "D",
        ("global", False): "^",
        ("global", True): "v",
    }[(arm.granularity, arm.direction_only)]


def trade_off_plot(summaries: Sequence[RegimeSummary], path: Path) -> Path:
    """Worst-language vs mean test loss per arm (seed means, with seed sd), one panel per regime.

    Lower-left is better on both; the arms no other arm beats on both form the empirical front.
    """
    fig, axes = plt.subplots(1, len(summaries), figsize=(6 * len(summaries), 5), squeeze=False)
    for ax, s in zip(axes[0], summaries):
        points = []
        for a in s.complete_arms():
            means, worsts = a.per_seed("mean"), a.per_seed("worst")
            x, y = statistics.fmean(means), statistics.fmean(worsts)
            xerr = statistics.stdev(means) if len(means) > 1 else 0
            yerr = statistics.stdev(worsts) if len(worsts) > 1 else 0
            ax.errorbar(
                x,
                y,
                xerr=xerr,
                yerr=yerr,
                fmt=_marker(a.arm),
                color=_colour(a.arm),
                ms=7 if a.arm.name == s.baseline else 5,
                alpha=0.8,
                mfc="none" if a.arm.direction_only else None,
            )
            points.append((x, y, a.arm.name))
        front = [
            p for p in points if not any(q[0] <= p[0] and q[1] <= p[1] and q != p for q in points)
        ]
        for x, y, name in front:
            ax.annotate(name, (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
        front.sort()
        ax.plot([p[0] for p in front], [p[1] for p in front], "k:", lw=0.8)
        ax.set_title(f"{s.regime.name} (baseline {s.baseline})")
        ax.set_xlabel("mean test loss over languages")
        ax.set_ylabel("worst language's test loss")
    handles = [
        plt.Line2D([], [], color=c, marker="o", ls="", label=m) for m, c in _METHOD_COLOURS.items()
    ] + [
        plt.Line2D([], [], color=_COLOURS["averaging"], marker="s", ls="", label="averaging (τ)"),
        plt.Line2D([], [], color=_COLOURS["static"], marker="s", ls="", label="static weights"),
        plt.Line2D([], [], color=_COLOURS["control"], marker="x", ls="", label="random"),
        plt.Line2D([], [], color="k", marker="o", ls="", label="bucket"),
        plt.Line2D([], [], color="k", marker="^", ls="", label="global"),
        plt.Line2D([], [], color="k", marker="D", mfc="none", ls="", label="direction-only"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=6, fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def per_language_plot(s: RegimeSummary, path: Path) -> Path:
    """Per language, each arm's paired test-loss difference to the baseline (mean ± sd over
    seeds): one panel per method with its four variants, and one for the other arms."""
    langs = s.regime.languages
    panels: dict[str, list] = {}
    for a in s.complete_arms():
        if a.arm.name == s.baseline or not a.paired_lang:
            continue
        panels.setdefault(a.arm.aggregator if a.arm.family == "moo" else "others", []).append(a)
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(max(8, 1.3 * len(langs)), 2.4 * len(panels)),
        squeeze=False,
        sharex=True,
    )
    for ax, (title, arms) in zip(axes[:, 0], panels.items()):
        width = 0.8 / len(arms)
        for i, a in enumerate(arms):
            xs = [j + (i - (len(arms) - 1) / 2) * width for j in range(len(langs))]
            ys = [a.paired_lang[lang].mean for lang in langs]
            errs = [
                a.paired_lang[lang].sd if len(a.paired_lang[lang].values) > 1 else 0
                for lang in langs
            ]
            ax.bar(xs, ys, width, yerr=errs, label=a.arm.name, capsize=2)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_ylabel("Δ test loss")
        ax.set_title(title, fontsize=9, loc="left")
        ax.legend(fontsize=7, ncol=4, loc="upper right")
    axes[-1, 0].set_xticks(range(len(langs)), langs)
    fig.suptitle(
        f"{s.regime.name}: per-language Δ test loss against {s.baseline} (below 0: better)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
