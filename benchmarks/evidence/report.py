"""Markdown tables of the finished runs (and the plots, via :mod:`.plots`)."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path

from .config import Arm, Regime
from .runner import load_results
from .summary import ArmSummary, Paired, RegimeSummary, summarise


def write_report(
    regimes: Sequence[Regime], arms: Sequence[Arm], out: Path, img_dir: Path, *, command: str
) -> str:
    """Writes ``OUT/report.md`` and the plots under ``img_dir``; returns the markdown."""
    summaries = [summarise(r, arms, load_results(out, r)) for r in regimes]
    bases = {r.name: _base_losses(r, out) for r in regimes}
    parts = [
        f"Command: `{command}`\n",
        "Test loss (next-token cross-entropy, lower is better) on held-out books, mean ± sd "
        "over seeds; Δ = arm − baseline paired by seed, mean and 95 % t-interval half-width; "
        "`*` where that interval excludes 0 (one comparison among many: expect about 1 in 20 "
        "by chance).\n",
    ]
    parts += overview(summaries)
    for summary in summaries:
        parts.append(regime_section(summary, bases[summary.regime.name]))
    images = []
    try:
        from .plots import per_language_plot, trade_off_plot
    except ImportError:  # matplotlib is optional for the tables
        pass
    else:
        img_dir.mkdir(parents=True, exist_ok=True)
        done = [s for s in summaries if s.baseline is not None]
        if done:
            images.append(trade_off_plot(done, img_dir / "evidence-trade-off.png"))
            for s in done:
                images.append(per_language_plot(s, img_dir / f"evidence-{s.regime.name}.png"))
    if images:
        parts.append("Plots: " + ", ".join(f"`{p}`" for p in images) + "\n")
    text = "\n".join(parts)
    (out / "report.md").write_text(text)
    return text


def _fmt(x: float, digits: int = 3) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _pm(values: list[float]) -> str:
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else math.nan
    return f"{_fmt(statistics.fmean(values))} ± {_fmt(sd)}"


def _delta(p: Paired | None) -> str:
    if p is None or not p.values:
        return "–"
    star = " *" if p.significant else ""
    return f"{p.mean:+.3f} ± {_fmt(p.half_width)}{star}"


def overview(summaries: Sequence[RegimeSummary]) -> list[str]:
    """One row per arm, per regime its paired Δ mean and Δ worst against that regime's baseline."""
    done = [s for s in summaries if s.baseline is not None]
    if not done:
        return []
    names = list(dict.fromkeys(name for s in done for name in s.arms))
    header = ["arm", *(f"{s.regime.name}: Δ mean / Δ worst" for s in done)]
    rows = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for name in names:
        cells = [name]
        for s in done:
            a = s.arms.get(name)
            if a is None or not a.complete or a.paired_mean is None:
                cells.append("–")
            elif name == s.baseline:
                cells.append("baseline")
            else:
                cells.append(f"{_short(a.paired_mean)} / {_short(a.paired_worst)}")
        rows.append("| " + " | ".join(cells) + " |")
    baselines = ", ".join(f"{s.regime.name}: {s.baseline}" for s in done)
    return [
        f"## Overview\n\nTest-loss differences to each regime's tuned-averaging baseline "
        f"({baselines}), paired by seed; `*`: 95 % interval excludes 0.\n",
        *rows,
        "",
    ]


def _short(p: Paired | None) -> str:
    if p is None or not p.values:
        return "–"
    return f"{p.mean:+.3f}{'*' if p.significant else ''}"


def _base_losses(regime: Regime, out: Path) -> dict | None:
    from .model import prepare_dir

    meta = prepare_dir(regime, out) / "meta.json"
    return json.loads(meta.read_text()) if meta.is_file() else None


def regime_section(s: RegimeSummary, base: dict | None = None) -> str:
    """The regime's tables: results, per language, and the learning-rate selection.

    Args:
        s: the regime's summary.
        base: the prepared base model's record (its held-out losses before fine-tuning).
    """
    r = s.regime
    lines = [f"## {r.name}: {r.title}\n"]
    if base is not None:
        test = base["base_test_loss"]
        lines.append(
            f"Base model ({base['parameters'] / 1e6:.2f}M parameters, pretrained on the Old "
            f"Testament) before fine-tuning: test loss {statistics.fmean(test.values()):.3f} on "
            f"average, {max(test.values()):.3f} for the worst language "
            f"({max(test, key=test.get)}).\n"
        )
    grid = ", ".join(f"{lr:g}" for lr in s.grid) if s.grid else "not decided yet"
    lines.append(
        f"K = {r.slots} slots per step (one per language), {r.steps} steps, "
        f"{r.batch_size} × {r.seq_len} tokens per slot; learning-rate grid {grid}; "
        f"baseline: **{s.baseline or 'not decided yet'}**.\n"
    )
    diag = s.arms.get("mean")
    if diag is not None and diag.complete and not math.isnan(diag.diagnostic("cos_mean")):
        lines.append(
            "Interference along the averaging trajectory (the `mean` arm's hook statistics, "
            f"averaged over steps and seeds): whole-model cosine between languages "
            f"{diag.diagnostic('cos_mean'):+.3f} on average, {diag.diagnostic('cos_min'):+.3f} at "
            f"the most conflicting pair; {100 * diag.diagnostic('conflict_rate'):.0f} % of "
            "(bucket, language pair) inner products negative.\n"
        )
    lines += _results_table(s)
    lines += _language_table(s)
    lines += _weights_table(s)
    lines += _selection_table(s)
    return "\n".join(lines)


def _results_table(s: RegimeSummary) -> list[str]:
    header = [
        "arm",
        "lr",
        "seeds",
        "test mean",
        "Δ mean",
        "test worst",
        "Δ worst",
        "worst language",
        "update length",
        "hook extra MB",
        "s / run",
    ]
    rows = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for a in s.arms.values():
        if not a.complete:
            state = "(not finished)" if a.grid else "(not run)"
            rows.append(f"| {a.arm.name} | {state} |" + " |" * (len(header) - 2))
            continue
        rows.append(
            "| "
            + " | ".join(
                [
                    f"**{a.arm.name}**" if a.arm.name == s.baseline else a.arm.name,
                    f"{a.lr:g}" + (" (edge)" if a.at_edge else ""),
                    str(len(a.runs)),
                    _pm(a.per_seed("mean")),
                    _delta(a.paired_mean),
                    _pm(a.per_seed("worst")),
                    _delta(a.paired_worst),
                    s.worst_language(a),
                    _length(a),
                    _fmt(a.peak_mb, 1) if a.arm.aggregator else "0",
                    f"{a.seconds:.0f}",
                ]
            )
            + " |"
        )
    return [
        "Results on the test books (update length: the aggregator's update over the mean's, "
        "whole model, averaged over steps; → the length applied with direction-only):\n",
        *rows,
        "",
    ]


def _length(a: ArmSummary) -> str:
    own, applied = a.diagnostic("own_length_ratio"), a.diagnostic("length_ratio")
    if math.isnan(own):
        return "–"
    if a.arm.direction_only:
        return f"{own:.2f} → {applied:.2f}"
    return f"{own:.2f}"


def _language_table(s: RegimeSummary) -> list[str]:
    langs = s.regime.languages
    header = ["arm", *langs]
    rows = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for a in s.arms.values():
        if not a.complete:
            continue
        cells = [a.arm.name]
        for lang in langs:
            p = a.paired_lang.get(lang)
            value = _fmt(a.language_mean(lang))
            if p is not None and p.values and a.arm.name != s.baseline:
                value += f" ({p.mean:+.3f}{'*' if p.significant else ''})"
            cells.append(value)
        rows.append("| " + " | ".join(cells) + " |")
    return [
        f"Per language, test loss (mean over seeds; in brackets Δ against {s.baseline}):\n",
        *rows,
        "",
    ]


def _weights_table(s: RegimeSummary) -> list[str]:
    """Which languages each weighting favours: static weights, and the hook's weights averaged
    over steps, buckets (by size) and seeds."""
    langs = s.regime.languages
    rows = []
    for a in s.complete_arms():
        if a.arm.loss_weights:
            shares = next(iter(a.runs.values()))["loss_weights"]
        elif a.arm.aggregator and a.arm.aggregator != "mean":
            per_run = [r["diagnostics"]["weight_share"] for r in a.runs.values()]
            shares = {lang: statistics.fmean(w[lang] for w in per_run) for lang in langs}
        else:
            continue
        rows.append(
            "| " + " | ".join([a.arm.name, *(f"{shares[lang]:.2f}" for lang in langs)]) + " |"
        )
    if not rows:
        return []
    header = "| arm | " + " | ".join(langs) + " |"
    return [
        f"Weight of each language (uniform: {1 / len(langs):.2f}; the hook's weights are shares "
        "averaged over steps and buckets, before any direction-only rescaling):\n",
        header,
        "|---" * (len(langs) + 1) + "|",
        *rows,
        "",
    ]


def _selection_table(s: RegimeSummary) -> list[str]:
    if not s.grid:
        return []
    header = ["arm", *(f"lr {lr:g}" for lr in s.grid), "chosen"]
    rows = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for a in s.arms.values():
        if not a.grid:
            continue  # not run in this regime
        cells = [a.arm.name, *(_fmt(a.grid.get(lr, math.nan)) for lr in s.grid)]
        cells.append("–" if a.lr is None else f"{a.lr:g}")
        rows.append("| " + " | ".join(cells) + " |")
    return ["Learning-rate selection (validation mean loss, first seed):\n", *rows, ""]
